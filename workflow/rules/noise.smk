# Per-exposure sky level and noise sigma, measured from the data (a batch a job, as
# ingest), and the survey's gain and read noise from exposure pairs.


rule noise:
    input:
        "results/ingest/{survey}/{batch}",
    output:
        directory("results/noise/{survey}/{batch}"),
    params:
        stores=get_batch_stores,
        cfg=step_config("noise"),
        version=STEP_VERSIONS["noise"],
    conda:
        "../../envs/noise.yaml"
    log:
        "logs/noise/{survey}/{batch}.log",
    benchmark:
        "benchmarks/noise/{survey}/{batch}.tsv"
    resources:
        mem_mb=4000,
        runtime=lambda wildcards, input: 10 + 2 * len(BATCHES[wildcards.batch]),
    shell:
        "python -m astrodenoise noise {params.stores:q} --out-dir {output:q} --config {params.cfg:q} > {log:q} 2>&1"


rule noise_survey:
    input:
        # The argument file lists the exposures; naming them here too orders the DAG.
        lists="results/lists/{survey}/exposures.args",
        images=batch_dirs("ingest", EXPOSURES),
        noise=batch_dirs("noise", EXPOSURES),
        registrations=registration_paths(),
    output:
        json="results/noise/{survey}/_survey/noise.json",
        png=report(
            "results/noise/{survey}/_survey/mean_variance.png",
            caption="../report/noise.rst",
            category="Noise model",
        ),
    params:
        version=STEP_VERSIONS["noise_survey"],
    conda:
        "../../envs/noise.yaml"
    log:
        "logs/noise/{survey}/survey.log",
    benchmark:
        "benchmarks/noise/{survey}/survey.tsv"
    resources:
        mem_mb=8000,
        runtime=30,
    shell:
        "python -m astrodenoise noise-survey @{input.lists:q}"
        " --out {output.json:q} --plot {output.png:q} > {log:q} 2>&1"
