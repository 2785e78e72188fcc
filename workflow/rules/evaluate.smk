# Metrics per exposure: blank-sky noise, PSNR/SSIM against truth, photometric bias.


rule evaluate:
    input:
        unpack(get_truth),
        image="results/ingest/{survey}/{exposure}.zarr",
        noise="results/noise/{survey}/{exposure}.json",
        denoised=expand("results/predict/{{survey}}/{method}/{{exposure}}.zarr", method=METHODS),
    output:
        json="results/evaluate/{survey}/{exposure}.json",
        png=report(
            "results/evaluate/{survey}/{exposure}.png",
            caption="../report/evaluate.rst",
            category="Exposures",
        ),
    params:
        cfg=step_config("evaluate"),
        denoised=lambda wc, input: [f"{m}={p}" for m, p in zip(METHODS, input.denoised)],
        truth=lambda wc, input: ["--truth", input.truth, "--catalog", input.catalog]
        if IS_DEMO
        else [],
        version=STEP_VERSIONS["evaluate"],
    log:
        "logs/evaluate/{survey}/{exposure}.log",
    benchmark:
        "benchmarks/evaluate/{survey}/{exposure}.tsv"
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "astrodenoise evaluate {input.image:q} --noise {input.noise:q}"
        " --denoised {params.denoised:q} {params.truth:q}"
        " --out-json {output.json:q} --out-png {output.png:q} --config {params.cfg:q} > {log:q} 2>&1"
