# Metrics per exposure, one field a job: blank-sky noise, PSNR/SSIM against the truth,
# photometric bias; the field is the unit because its exposures share a truth (demo) or,
# for real data, reference each other.


rule evaluate:
    input:
        unpack(get_truth),
        images=get_field_batches,
        noise=lambda wildcards: batch_dirs("noise", field_exposures(wildcards.field)),
        denoised=get_field_denoised,
        registration="results/register/{survey}/{field}.json",
    output:
        report(
            directory("results/evaluate/{survey}/{field}"),
            patterns=["{exposure}.png"],
            caption="../report/evaluate.rst",
            category="Exposures",
        ),
    params:
        images=get_field_images,
        noise=lambda wildcards: [noise_path(e) for e in field_exposures(wildcards.field)],
        # The directory of each method's denoised stores, <exposure>.zarr inside.
        denoised=lambda wildcards: [f"{m}=results/predict/{wildcards.survey}/{m}" for m in METHODS],
        truth=lambda wildcards, input: ["--truth", input.truth, "--catalog", input.catalog]
        if IS_DEMO
        else [],
        cfg=step_config("evaluate"),
        version=STEP_VERSIONS["evaluate"],
    conda:
        "../../envs/evaluate.yaml"
    log:
        "logs/evaluate/{survey}/{field}.log",
    benchmark:
        "benchmarks/evaluate/{survey}/{field}.tsv"
    resources:
        mem_mb=4000,
        runtime=lambda wildcards: 10 + 5 * len(field_exposures(wildcards.field)),
    shell:
        "python -m astrodenoise evaluate {params.images:q} --noise {params.noise:q}"
        " --denoised {params.denoised:q} {params.truth:q} --registration {input.registration:q}"
        " --out-dir {output:q} --config {params.cfg:q} > {log:q} 2>&1"
