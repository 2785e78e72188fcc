# Tiled, seamless inference: denoised zarr store and FITS file (input header and WCS kept),
# for every trained method, one exposure a job.


def _predict_commands():
    """One `astrodenoise predict` call per method (indices, not names, in the template).

    Paths are formatted from input and wildcards, not from params functions: at 10,000
    exposures every params function costs Snakemake seconds of planning."""
    return " && ".join(
        "python -m astrodenoise predict {input.image:q}/{wildcards.exposure:q}.zarr"
        " --noise {input.noise:q}/{wildcards.exposure:q}.json"
        f" --model {{input.models[{i}]:q}} --out-zarr {{output.zarr[{i}]:q}}"
        f" --out-fits {{output.fits[{i}]:q}} --threads {{threads}} --config {{params.cfg:q}}"
        " --execution {EXECUTION[predict]:q}"
        for i in range(len(METHODS))
    )


rule predict:
    input:
        unpack(get_exposure_batches),
        models=expand("results/train/{{survey}}/{method}/model.pt", method=METHODS),
    output:
        zarr=[directory(f"results/predict/{{survey}}/{m}/{{exposure}}.zarr") for m in METHODS],
        fits=expand("results/predict/{{survey}}/{method}/{{exposure}}.fits", method=METHODS),
    params:
        cfg=step_config("predict"),
        version=STEP_VERSIONS["predict"],
    conda:
        "../../envs/predict.yaml"
    log:
        "logs/predict/{survey}/{exposure}.log",
    benchmark:
        "benchmarks/predict/{survey}/{exposure}.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        f"( {_predict_commands()} ) > {{log:q}} 2>&1"
