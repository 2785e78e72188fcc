# FITS exposures -> chunked zarr v3 stores (header and WCS kept as attributes), one
# batch of exposures a job (inputs.batch_size; one exposure a batch on small surveys).


rule ingest:
    input:
        get_batch_raw,
    output:
        directory("results/ingest/{survey}/{batch}"),
    params:
        cfg=step_config("ingest"),
        version=STEP_VERSIONS["ingest"],
    conda:
        "../../envs/ingest.yaml"
    log:
        "logs/ingest/{survey}/{batch}.log",
    benchmark:
        "benchmarks/ingest/{survey}/{batch}.tsv"
    resources:
        mem_mb=4000,
        runtime=lambda wildcards, input: 10 + 2 * len(input),
    shell:
        "python -m astrodenoise ingest {input:q} --out-dir {output:q} --config {params.cfg:q} > {log:q} 2>&1"
