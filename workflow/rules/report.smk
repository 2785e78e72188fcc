# The self-contained HTML report of the survey.


rule report:
    input:
        lists="results/lists/{survey}/evaluations.args",
        evaluations=expand("results/evaluate/{{survey}}/{field}", field=FIELDS),
        noise=batch_dirs("noise", EXPOSURES),
        noise_survey="results/noise/{survey}/_survey/noise.json",
        noise_plot="results/noise/{survey}/_survey/mean_variance.png",
        curves=expand("results/train/{{survey}}/{method}/curve.csv", method=METHODS),
        models=expand("results/train/{{survey}}/{method}/model.pt", method=METHODS),
    output:
        html=report(
            "results/report/{survey}/report.html",
            caption="../report/report.rst",
            category="Report",
        ),
        summary="results/report/{survey}/summary.json",
    params:
        curves=lambda wc, input: [f"{m}={p}" for m, p in zip(METHODS, input.curves)],
        models=lambda wc, input: [f"{m}={p}" for m, p in zip(METHODS, input.models)],
        # What the results depend on: the execution block (how the steps ran) is left out,
        # so that changing it reruns nothing, the report included.
        cfg=json.dumps({k: v for k, v in config.items() if k != "execution"}, sort_keys=True),
        version=STEP_VERSIONS["report"],
    conda:
        "../../envs/report.yaml"
    log:
        "logs/report/{survey}.log",
    benchmark:
        "benchmarks/report/{survey}.tsv"
    resources:
        mem_mb=2000,
        runtime=10,
    shell:
        "python -m astrodenoise report --survey {wildcards.survey} @{input.lists:q} --curves {params.curves:q}"
        " --noise-survey {input.noise_survey:q} --noise-plot {input.noise_plot:q}"
        " --models {params.models:q} --config {params.cfg:q} --out {output.html:q} --summary {output.summary:q} > {log:q} 2>&1"
