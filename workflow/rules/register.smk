# Registration of the exposures of each field onto its first exposure's pixel grid.


rule register:
    input:
        get_field_images,
    output:
        "results/register/{survey}/{field}.json",
    params:
        version=STEP_VERSIONS["register"],
    log:
        "logs/register/{survey}/{field}.log",
    benchmark:
        "benchmarks/register/{survey}/{field}.tsv"
    resources:
        mem_mb=8000,
        runtime=30,
    shell:
        "astrodenoise register --images {input:q} --out {output:q} > {log:q} 2>&1"
