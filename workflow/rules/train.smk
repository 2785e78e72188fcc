# One self-supervised model per method, trained on all exposures of the survey.


rule train:
    input:
        images=exposure_paths("results/ingest/{survey}/{exposure}.zarr"),
        noise=exposure_paths("results/noise/{survey}/{exposure}.json"),
        registrations=registration_paths(),
    output:
        model="results/train/{survey}/{method}/model.pt",
        curve=report(
            "results/train/{survey}/{method}/curve.csv",
            caption="../report/train.rst",
            category="Training",
        ),
    params:
        cfg=step_config("train", drop=("methods",)),
        fields=[e["field"] for e in EXPOSURES.values()],
        version=STEP_VERSIONS["train"],
    log:
        "logs/train/{survey}/{method}.log",
    benchmark:
        "benchmarks/train/{survey}/{method}.tsv"
    threads: 8  # capped at --cores on a workstation
    resources:
        mem_mb=8000,
        runtime=240,
    shell:
        "astrodenoise train --method {wildcards.method} --images {input.images:q}"
        " --noise {input.noise:q} --fields {params.fields:q} --out {output.model:q}"
        " --curve {output.curve:q} --registrations {input.registrations:q}"
        " --threads {threads} --config {params.cfg:q} > {log:q} 2>&1"
