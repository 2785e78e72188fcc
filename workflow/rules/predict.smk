# Tiled, seamless inference: denoised zarr store and FITS file (input header and WCS kept).


rule predict:
    input:
        image="results/ingest/{survey}/{exposure}.zarr",
        noise="results/noise/{survey}/{exposure}.json",
        model="results/train/{survey}/{method}/model.pt",
    output:
        zarr=directory("results/predict/{survey}/{method}/{exposure}.zarr"),
        fits="results/predict/{survey}/{method}/{exposure}.fits",
    params:
        cfg=step_config("predict"),
        version=STEP_VERSIONS["predict"],
    log:
        "logs/predict/{survey}/{method}/{exposure}.log",
    benchmark:
        "benchmarks/predict/{survey}/{method}/{exposure}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "astrodenoise predict {input.image:q} --noise {input.noise:q} --model {input.model:q}"
        " --out-zarr {output.zarr:q} --out-fits {output.fits:q} --threads {threads}"
        " --config {params.cfg:q} > {log:q} 2>&1"
