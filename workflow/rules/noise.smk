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
