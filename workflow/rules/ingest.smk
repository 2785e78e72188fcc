# FITS exposure -> chunked zarr v3 store (header and WCS kept as attributes).


rule ingest:
    input:
        get_raw_fits,
    output:
        directory("results/ingest/{survey}/{exposure}.zarr"),
    params:
        cfg=step_config("ingest"),
        version=STEP_VERSIONS["ingest"],
    log:
        "logs/ingest/{survey}/{exposure}.log",
    benchmark:
        "benchmarks/ingest/{survey}/{exposure}.tsv"
    resources:
        mem_mb=4000,
        runtime=20,
    shell:
        "astrodenoise ingest {input:q} --out {output:q} --config {params.cfg:q} > {log:q} 2>&1"
