# One self-supervised model per method, trained on all exposures of the survey.


rule train:
    input:
        # The exposures, their noise and registrations are listed in the argument file;
        # the survey noise fit depends on all of them, so it stands in for them here.
        # (Naming 10,000 exposures here made Snakemake's DAG quadratic: every predict job
        # scanned this rule's input list.)
        lists="results/lists/{survey}/exposures.args",
        noise_survey="results/noise/{survey}/_survey/noise.json",
    output:
        model="results/train/{survey}/{method}/model.pt",
        curve=report(
            "results/train/{survey}/{method}/curve.csv",
            caption="../report/train.rst",
            category="Training",
        ),
        plot=report(
            "results/train/{survey}/{method}/curve.png",
            caption="../report/train.rst",
            category="Training",
        ),
    params:
        # The shared keys and this method's own block only: editing train.n2n reruns n2n.
        cfg=lambda wildcards: step_config(
            "train", drop=("methods", *(m for m in ("n2n", "n2v") if m != wildcards.method))
        ),
        version=STEP_VERSIONS["train"],
    conda:
        "../../envs/train.yaml"
    log:
        "logs/train/{survey}/{method}.log",
    benchmark:
        "benchmarks/train/{survey}/{method}.tsv"
    threads: 8  # capped at --cores on a workstation
    resources:
        mem_mb=8000,
        runtime=240,
    shell:
        "python -m astrodenoise train --method {wildcards.method} @{input.lists:q} --out {output.model:q}"
        " --curve {output.curve:q} --plot {output.plot:q}"
        " --threads {threads} --config {params.cfg:q} > {log:q} 2>&1"
