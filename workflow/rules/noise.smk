# Per-exposure sky level and noise sigma, measured from the data.


rule noise:
    input:
        "results/ingest/{survey}/{exposure}.zarr",
    output:
        "results/noise/{survey}/{exposure}.json",
    params:
        cfg=step_config("noise"),
        version=STEP_VERSIONS["noise"],
    log:
        "logs/noise/{survey}/{exposure}.log",
    benchmark:
        "benchmarks/noise/{survey}/{exposure}.tsv"
    resources:
        mem_mb=4000,
        runtime=20,
    shell:
        "astrodenoise noise {input:q} --out {output:q} --config {params.cfg:q} > {log:q} 2>&1"


rule noise_survey:
    input:
        images=exposure_paths("results/ingest/{survey}/{exposure}.zarr"),
        noise=exposure_paths("results/noise/{survey}/{exposure}.json"),
        registrations=registration_paths(),
    output:
        json="results/noise/{survey}/_survey/noise.json",
        png=report(
            "results/noise/{survey}/_survey/mean_variance.png",
            caption="../report/noise.rst",
            category="Noise model",
        ),
    params:
        fields=[e["field"] for e in EXPOSURES.values()],
        version=STEP_VERSIONS["noise"],
    log:
        "logs/noise/{survey}/survey.log",
    benchmark:
        "benchmarks/noise/{survey}/survey.tsv"
    resources:
        mem_mb=8000,
        runtime=30,
    shell:
        "astrodenoise noise-survey --images {input.images:q} --noise {input.noise:q}"
        " --fields {params.fields:q} --registrations {input.registrations:q}"
        " --out {output.json:q} --plot {output.png:q} > {log:q} 2>&1"
