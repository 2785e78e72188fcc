# Metrics per exposure, one field a job: blank-sky noise, PSNR/SSIM against the truth,
# photometric bias; the field is the unit because its exposures share a truth (demo) or,
# for real data, reference each other. Injection-recovery (artificial sources of known
# flux, denoised with each model) runs here too.


rule evaluate:
    input:
        unpack(get_truth),
        images=get_field_batches,
        noise=lambda wildcards: batch_dirs("noise", field_exposures(wildcards.field)),
        denoised=get_field_denoised,
        registration="results/register/{survey}/{field}.json",
        # Injection-recovery denoises the injected exposures with the same models.
        models=expand("results/train/{{survey}}/{method}/model.pt", method=METHODS),
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
        models=lambda wildcards, input: [f"{m}={p}" for m, p in zip(METHODS, input.models)],
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
        " --denoised {params.denoised:q} --models {params.models:q} {params.truth:q}"
        " --registration {input.registration:q}"
        " --out-dir {output:q} --config {params.cfg:q} > {log:q} 2>&1"
