# Registration of the exposures of each field onto its first exposure's pixel grid.


rule register:
    input:
        get_field_batches,
    output:
        "results/register/{survey}/{field}.json",
    params:
        images=get_field_images,
        version=STEP_VERSIONS["register"],
    conda:
        "../../envs/register.yaml"
    log:
        "logs/register/{survey}/{field}.log",
    benchmark:
        "benchmarks/register/{survey}/{field}.tsv"
    resources:
        mem_mb=8000,
        runtime=30,
    shell:
        "python -m astrodenoise register --images {params.images:q} --out {output:q} > {log:q} 2>&1"
