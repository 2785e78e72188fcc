# The built-in demo survey: raw exposures, truth images and source catalogues.


rule simulate:
    output:
        raw=[f"{SIM_DIR}/raw/{e}.fits" for e in EXPOSURES] if IS_DEMO else [],
        truth=[f"{SIM_DIR}/truth/{f}.fits" for f in FIELDS] if IS_DEMO else [],
        catalog=[f"{SIM_DIR}/catalog/{f}.ecsv" for f in FIELDS] if IS_DEMO else [],
    params:
        outdir=lambda wc, output: os.path.dirname(os.path.dirname(output.raw[0])),
        cfg=step_config("simulate"),
        version=STEP_VERSIONS["simulate"],
    conda:
        "../../envs/simulate.yaml"
    log:
        f"logs/simulate/{SURVEY}.log",
    benchmark:
        f"benchmarks/simulate/{SURVEY}.tsv"
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "python -m astrodenoise simulate --out {params.outdir:q} --config {params.cfg:q} > {log:q} 2>&1"
