"""Benchmark: denoising quality of the trained networks against classical denoisers.

Scores the self-supervised networks (Noise2Noise, Noise2Void) and the baselines of
:mod:`astrodenoise.baselines` (Gaussian smoothing, non-local means and BM3D on the
generalised-Anscombe-transformed image) on the same single exposures of the demo
survey, in one run, and writes ``benchmarks/quality_results.json`` and ``.md``; with
``--survey check`` the same on the independent GalSim check survey
(``benchmarks/check_survey.py``, workflow run with ``config/check.yaml``), written to
``benchmarks/quality_check.json`` and ``.md``: never used to choose a setting.

    .venv/bin/snakemake --cores 2                   # simulate, noise, train the demo survey
    .venv/bin/python benchmarks/quality.py          # score results/train/demo/*/model.pt
    .venv/bin/python benchmarks/quality.py --model n2v=other.pt --out /tmp/q
    .venv/bin/python benchmarks/quality.py --train --set transform=gat   # train here first
    .venv/bin/python benchmarks/quality.py --predict-set average=false restore_flux=false
    .venv/bin/python benchmarks/check_survey.py          # the check survey, then its workflow:
    .venv/bin/snakemake --cores 2 --configfile config/check.yaml
    .venv/bin/python benchmarks/quality.py --survey check

Every run scores the models twice: on the survey's own exposures (the ones they were
trained on: what the workflow delivers for those data) and on **unseen fields** of the
same survey (its generator with the next seed, ``results/simulate/<survey>-unseen``, noise
measured as the noise step measures it; ``UNSEEN_FIELDS`` of them): sources no network
has seen. A network trained
on a few fields learns their actual sources (Noise2Noise on the demo's 2 fields x 3
exposures: faint-star flux bias +0.4% at 2 x FWHM on its own fields, +14% on unseen
ones), so only the unseen fields say what a survey too large to be memorised gets. On
them the benchmark also runs the evaluate step's injection-recovery (its defaults), whose
sources are new to the networks by construction, and sets it against the truth of the
same fields: the check without truth must read what the truth reads there. The workflow
report's injection on the survey's own fields is set against their truth as well.
``--no-unseen`` skips the unseen fields.

``--train`` trains both networks (or ``--methods``) on the demo exposures with the
``train`` block of config/config.yaml (``--set key=value`` overrides a key, YAML values),
saves them under benchmarks/quality_models/ (``--model-dir``) and records the training
time (``train_seconds``, with the 1-minute load average at the end of training, since the
CPU may be shared). The networks' images are made as the predict step makes them, with
the ``predict`` block of config/config.yaml (mean over the dihedral transforms, flux
restoration; ``--predict-set key=value`` overrides a key, e.g. ``restore_flux=false``).

Metrics (per exposure; the table shows the mean over exposures, or the pooled median):

- ``psnr``: 10 log10(range^2 / MSE) against the noise-free truth, range = max - min of
  the truth, all pixels (metrics.psnr). Cosmic rays (in the input, not in the truth)
  dominate the input's MSE, so a method that removes them wins here by that alone.
- ``psnr_clean``: the same over pixels not hit by a cosmic ray. Hit pixels are those
  where ``input - truth`` exceeds 8 times the local noise (sqrt(sigma^2 + signal/gain)),
  grown by 2 pixels; the same pixels are left out for every method.
- ``ssim``: structural similarity against the truth (scikit-image, same range).
- ``rms_ratio``: robust RMS (MAD) of ``input - background`` over blank sky divided by
  that of ``image - background`` (metrics.blank_sky_rms; background and blank-sky mask
  from the input, as the evaluate step does).
- ``bias_bright`` / ``bias_faint``: median of ``(F - F_true) / F_true`` over the
  catalogue sources with true-flux S/N > 50 / between 5 and 20 whose own flux is at least
  half the truth's light in their 3 x FWHM aperture (photometry.own_light), pooled over all
  exposures. ``F`` is the aperture sum (radius = PSF FWHM) of ``image - background``,
  ``F_true`` that of ``truth - background``; S/N from the true aperture flux, the
  blank-sky sigma and the gain. ``se_*`` is its bootstrap standard error. The noisy
  input's own bias shows what the metric reads for a perfect (identity) method.
- ``apertures``: the same median bias, and its robust scatter (MAD), at circular apertures
  of 1, 2 and 3 x FWHM, each minus the local sky (the mean of an annulus of 4-6 FWHM
  without the truth's source mask and without what a 3-sigma clip of the input rejects,
  photometry.aperture_suite, as the evaluate step measures) on the image and on the truth
  alike, the same pixels for both: the
  wings a denoiser flattens show at 2 and 3 x FWHM, the core it keeps at 1 x. Classes by
  the true 1 x FWHM S/N as above.
  ``kron``: SExtractor's MAG_AUTO aperture (photometry.kron_fluxes), defined on the
  truth (segmented above 1 noise sigma) and laid on every image, less the same masked local sky
  as the circular apertures (from beyond the Kron aperture where it reaches past 4 FWHM).
- ``change_bright`` / ``change_faint``: median of ``(F - F_input) / F_true``: the
  change of flux the method itself makes, free of the input's noise.
- ``detections``: 5-sigma detections in source-free sky, summed over exposures. The
  image minus background is smoothed with a Gaussian of the PSF FWHM (matched filter);
  sigma is the robust RMS of that smoothed image over source-free sky, measured on the
  same image; a detection is a group of at least 5 connected pixels above 5 sigma.
  Source-free sky: pixels where the truth minus its background is below 2% of the
  blank-sky sigma, shrunk by 3 pixels. ``new_detections`` = detections - the input's
  (most of the input's are cosmic rays, so a method that removes them can hide blobs it
  makes); ``unmatched`` = detections that share no pixel with any of the input's: what
  the method made (noise peaks of the input, typically 3-4 sigma there, turned into
  blobs), whatever it removed.
- ``seconds``: wall time of the denoiser per exposure (training time excluded).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import check_survey
import numpy as np
import yaml
from astropy.stats import mad_std
from astropy.table import Table
from photutils.segmentation import detect_sources
from scipy import ndimage
from skimage.metrics import structural_similarity

from astrodenoise import io
from astrodenoise.baselines import DENOISERS
from astrodenoise.evaluate import EvaluateConfig
from astrodenoise.inject import injection_recovery, summarise_recovery
from astrodenoise.metrics import blank_sky_rms, psnr
from astrodenoise.model import UNet, UNetConfig
from astrodenoise.noise import estimate_noise
from astrodenoise.noise_model import NoiseModel, pixel_sigma, read_noise_model
from astrodenoise.photometry import (
    APERTURES,
    SKY_ANNULUS,
    aperture_fluxes,
    aperture_radius,
    aperture_snr,
    aperture_suite,
    bias_by_aperture,
    bias_se,
    catalog_zeropoint,
    median_se,
    own_light,
    snr_classes,
)
from astrodenoise.psf import measure_psf
from astrodenoise.sampling import Exposure
from astrodenoise.simulate import SimulationConfig, write_demo_survey
from astrodenoise.sky import estimate_background, source_mask
from astrodenoise.tiling import PredictConfig, denoise_planes
from astrodenoise.train import TrainConfig, method_settings, train_model
from astrodenoise.transform import exposure_normalisation

REPO = Path(__file__).resolve().parents[1]


def noise_json(results: Path, survey: str, exposure: str) -> Path:
    """The noise-step JSON of an exposure (directly under the survey, or in a batch folder)."""
    found = sorted((results / "noise" / survey).rglob(f"{exposure}.json"))
    if not found:
        raise FileNotFoundError(f"no noise JSON for {exposure} under {results / 'noise' / survey}")
    return found[0]


#: Fields of unseen sky scored per survey: enough faint sources for a median whose
#: standard error is near 1 point.
UNSEEN_FIELDS = 6


def write_unseen(results: Path, survey: str, *, n_fields: int = UNSEEN_FIELDS) -> str:
    """Write ``n_fields`` fields of ``survey`` that no network has seen and return their
    survey name, ``<survey>-unseen``: the same generator and settings (config/config.yaml's
    simulate block for the demo, :class:`check_survey.CheckConfig` for the check survey)
    with the next seed, and each exposure's noise JSON as the noise step measures it
    (:func:`astrodenoise.noise.estimate_noise`, gain from the header)."""
    name = f"{survey}-unseen"
    out = results / "simulate" / name
    for folder in (out, results / "noise" / name):  # this benchmark's own: no stale field stays
        shutil.rmtree(folder, ignore_errors=True)
    if survey == "demo":
        settings = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["simulate"]
        config = SimulationConfig.from_dict(settings)
        write_demo_survey(out, dataclasses.replace(config, seed=config.seed + 1, n_fields=n_fields))
    elif survey == "check":
        config = check_survey.CheckConfig()
        unseen = dataclasses.replace(config, seed=config.seed + 1, n_fields=n_fields)
        check_survey.write_check_survey(out, unseen)
    else:
        raise ValueError(f"no generator for unseen fields of survey {survey!r}; run with --no-unseen")
    for raw in sorted((out / "raw").glob("*.fits")):
        data, header = io.read_fits_image(raw)[:2]
        noise = estimate_noise(data.astype(np.float32), header=header) | {"exposure": raw.stem}
        io.write_json(results / "noise" / name / f"{raw.stem}.json", noise)
    return name


def demo_exposures(results: Path, survey: str) -> list[Exposure]:
    """The demo survey's raw exposures (one pixel grid per field) with their noise model."""
    exposures = []
    for raw in sorted((results / "simulate" / survey / "raw").glob("*.fits")):
        data = io.read_fits_image(raw)[0].astype(np.float32)
        exposures.append(Exposure(name=raw.stem, field=raw.stem.rsplit("_", 1)[0], data=data,
                                  noise=read_noise_model(noise_json(results, survey, raw.stem))))
    return exposures


def train_models(results: Path, survey: str, overrides: dict, out_dir: Path,
                 methods: list[str]) -> tuple[dict, dict]:
    """Train ``methods`` with config.yaml's train block (each method with its own block
    merged in) plus ``overrides``, which win over both; return
    ({method: checkpoint path}, {method: {"train_seconds", "load_1min"}})."""
    settings = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["train"]
    settings = {k: v for k, v in settings.items() if k != "methods"}
    exposures = demo_exposures(results, survey)
    paths, timing = {}, {}
    out_dir.mkdir(parents=True, exist_ok=True)
    for method in methods:
        config = TrainConfig.from_dict(method_settings(settings, method) | overrides)
        start = time.perf_counter()
        checkpoint = train_model(exposures, config)
        timing[method] = {"train_seconds": round(time.perf_counter() - start, 1),
                          "load_1min": os.getloadavg()[0]}
        paths[method] = out_dir / f"{method}.pt"
        io.save_checkpoint(paths[method], checkpoint)
    return paths, timing


def denoise_with_checkpoint(data: np.ndarray, noise: NoiseModel, checkpoint: dict, *,
                            config: PredictConfig) -> np.ndarray:
    """Whole-image prediction of a trained checkpoint as the predict step makes it (ADU in,
    ADU out, NaN kept; dihedral mean and flux restoration as ``config`` says)."""
    model = UNet(UNetConfig.from_dict(checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model"])
    norm = exposure_normalisation(checkpoint["normalisation"], noise)
    return denoise_planes(data, model.eval(), norm=norm, config=config)[0]


def cosmic_ray_pixels(data, truth, noise: NoiseModel) -> np.ndarray:
    """Bool (ny, nx), True where a cosmic ray hit (input far above the truth), grown 2 px."""
    sigma = pixel_sigma(truth, sky=noise.sky, sigma=noise.sigma, gain=noise.gain)
    return ndimage.binary_dilation((data - truth) / sigma > 8, iterations=2)


def source_free_sky(truth, sigma: float) -> np.ndarray:
    """Bool (ny, nx), True on sky with no source light above 2% of the noise."""
    background, _ = estimate_background(truth)
    free = (truth - background) < 0.02 * sigma
    return ndimage.binary_erosion(free, iterations=3)


def detection_map(image, background, free, fwhm: float) -> np.ndarray:
    """Label image of the 5-sigma matched-filter detections of >= 5 pixels inside ``free``
    (True = counted); 0 = none."""
    smoothed = ndimage.gaussian_filter(np.nan_to_num(image - background), fwhm / 2.3548)
    rms = mad_std(smoothed[free])
    segments = detect_sources(np.where(free, smoothed, 0.0), 5 * rms, n_pixels=5)
    return np.zeros(image.shape, int) if segments is None else segments.data


def unmatched_detections(labels: np.ndarray, input_labels: np.ndarray) -> int:
    """Detections of ``labels`` that share no pixel with any detection of the input."""
    found = np.unique(labels[labels > 0])
    matched = np.unique(labels[(labels > 0) & (input_labels > 0)])
    return int(len(found) - len(matched))


def score(image, ctx: dict) -> dict:
    """All per-exposure metrics of one image (see the module docstring)."""
    truth, clean = ctx["truth"], ~ctx["cr"]
    data_range = float(truth.max() - truth.min())
    filled = np.where(np.isfinite(image), image, truth)
    flux = aperture_fluxes(image - ctx["background"], ctx["positions"], radius=ctx["radius"])
    labels = detection_map(image, ctx["background"], ctx["free"], ctx["fwhm"])
    return {
        "psnr": psnr(image, truth),
        "psnr_clean": psnr(np.where(clean, image, np.nan), truth),
        "ssim": float(structural_similarity(filled, truth, data_range=data_range)),
        "rms_blank": blank_sky_rms(image, background=ctx["background"], mask=ctx["mask"]),
        "flux": flux,
        "apertures": _apertures(image, ctx),
        "detections": len(np.unique(labels)) - 1,
        "unmatched": unmatched_detections(labels, ctx["input_detections"]),
    }


def exposure_context(raw: Path, noise_json: Path, truth_fits: Path, catalog: Path) -> dict:
    """Everything shared by the methods on one exposure: data, truth, masks, apertures."""
    data = io.read_fits_image(raw)[0].astype(np.float32)
    truth = io.read_fits_image(truth_fits)[0].astype(np.float64)
    noise = read_noise_model(noise_json)
    background, rms = estimate_background(data)
    table = Table.read(catalog, format="ascii.ecsv")
    fwhm = float(table.meta["fwhm_pix"])
    positions = np.column_stack([table["x"], table["y"]])
    radius = aperture_radius(fwhm)
    reference = aperture_fluxes(truth - background, positions, radius=radius)
    free = source_free_sky(truth, noise.sigma)
    # sources whose apertures hold mostly their neighbours' light are in no S/N class
    own = own_light(np.asarray(table["flux"], float), truth - background, positions, fwhm=fwhm)
    context = {"data": data, "input_detections": detection_map(data, background, free, fwhm),
            "truth": truth, "noise": noise,
            "background": background, "mask": source_mask(data, background, rms),
            # the photometry's sky annuli leave out the truth's sources, as evaluate does
            "sky_mask": source_mask(truth, background, rms),
            "cr": cosmic_ray_pixels(data, truth, noise), "free": free,
            "fwhm": fwhm, "positions": positions, "radius": radius, "reference": reference,
            "kron_reference": truth - background,
            "snr": np.where(own, aperture_snr(reference, radius=radius, sigma=noise.sigma, gain=noise.gain),
                            np.nan)}
    return context | {"apertures": _apertures(truth, context)}


def _apertures(image: np.ndarray, ctx: dict) -> dict[str, np.ndarray]:
    """Fluxes at 1, 2, 3 x FWHM (local sky, the truth's source mask left out of the
    annulus) and in Kron apertures defined on the truth (segmented above 1 noise sigma),
    for the catalogue sources of the exposure: the evaluate step's measurement."""
    return aperture_suite({"image": image}, ctx["positions"], fwhm=ctx["fwhm"],
                          kron_reference=ctx["kron_reference"], threshold=ctx["noise"].sigma,
                          select=ctx["data"], background=ctx["background"], mask=ctx["sky_mask"])["image"]


def summarise(per_exposure: list[dict], contexts: list[dict], methods: list[str]) -> dict:
    """Means over exposures and pooled photometry medians per method."""
    rng = np.random.default_rng(0)
    snr = np.concatenate([c["snr"] for c in contexts])
    ref = np.concatenate([c["reference"] for c in contexts])
    flux_in = np.concatenate([e["input"]["flux"] for e in per_exposure])
    classes = {name: pick & (ref > 0) for name, pick in snr_classes(snr).items()}
    summary = {}
    for m in methods:
        rows = [e[m] for e in per_exposure]
        flux = np.concatenate([r["flux"] for r in rows])
        out = {k: float(np.mean([r[k] for r in rows])) for k in ("psnr", "psnr_clean", "ssim", "seconds")}
        out["rms_ratio"] = float(np.mean([e["input"]["rms_blank"] / e[m]["rms_blank"] for e in per_exposure]))
        out["detections"] = int(sum(r["detections"] for r in rows))
        out["new_detections"] = out["detections"] - int(sum(e["input"]["detections"] for e in per_exposure))
        out["unmatched"] = int(sum(r["unmatched"] for r in rows))
        for name, pick in classes.items():
            out[f"bias_{name}"], out[f"se_{name}"] = median_se(
                (flux[pick] - ref[pick]) / ref[pick], rng)
            out[f"change_{name}"] = float(np.median((flux[pick] - flux_in[pick]) / ref[pick]))
            out[f"n_{name}"] = int(pick.sum())
        out["apertures"] = _aperture_biases([e[m]["apertures"] for e in per_exposure],
                                            [c["apertures"] for c in contexts], snr)
        summary[m] = out
    return summary


def _aperture_biases(measured: list[dict], truth: list[dict], snr: np.ndarray) -> dict:
    """{aperture: {class: {"n", "bias", "scatter"}}}: median and robust scatter (MAD) of
    (F - F_true) / F_true pooled over exposures (photometry.bias_by_aperture)."""
    pooled = {key: np.concatenate([m[key] for m in measured]) for key in measured[0]}
    reference = {key: np.concatenate([t[key] for t in truth]) for key in truth[0]}
    return bias_by_aperture(pooled, reference, snr)


def _prediction_line(config: dict) -> str:
    restore = (f"threshold {config['restore_threshold']} sigma, grown {config['restore_grow']} px, "
               f"smoothed {config['restore_sigma']} px, sharpened above "
               f"{config.get('restore_sharpen', 0)} sigma"
               if config["restore_flux"] else "off")
    return (f"Network images as the predict step makes them: mean over the 8 dihedral transforms "
            f"{'on' if config['average'] else 'off'}; flux restoration {restore}; outlier repair "
            + (f"{config['outlier_threshold']} sigma, contrast {config['outlier_contrast']}."
               if config.get("repair_outliers") else "off."))


def _percent(value: float | None, spread: float | None, *, form: str = "({:.2f})") -> str:
    """``+1.23 (4.56)``: a fraction and its spread in percent; n/a for what was not measured."""
    if value is None:
        return "n/a"
    return f"{100 * value:+.2f} " + ("n/a" if spread is None else form.format(100 * spread))


def _aperture_table(summary: dict) -> list[str]:
    """Markdown rows of the flux bias at 1, 2 and 3 x FWHM, each with its robust scatter."""
    keys = list(APERTURES)
    head = " | ".join(f"{cls} {k[:-4] + '×FWHM' if k != 'kron' else 'Kron'} %"
                      for cls in ("bright", "faint") for k in keys)
    lines = ["", f"Flux bias by aperture, local sky the mean of a {SKY_ANNULUS[0]:g}-"
             f"{SKY_ANNULUS[1]:g} FWHM annulus without the truth's source mask and the input's "
             "3σ-clipped pixels "
             "(the same pixels in the truth); Kron: 2.5 Kron radii defined on the truth, laid on every "
             "image: median % (robust scatter %).",
             "", f"| method | {head} |", "|---|" + "---|" * (2 * len(keys))]
    for m, s in summary.items():
        cells = [_percent(a["bias"], a["scatter"])
                 for cls in ("bright", "faint") for a in (s["apertures"][k][cls] for k in keys)]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def _median_se(cell: dict) -> float | None:
    """Asymptotic standard error of a median (:func:`astrodenoise.photometry.bias_se`)."""
    return bias_se(cell)


def agreement(injected: dict, summary: dict) -> dict:
    """Per method and aperture, an injection-recovery bias (no truth used; ``injected``:
    {method: :func:`astrodenoise.inject.summarise_recovery` of it}) beside the truth-based
    bias of the same method on the same fields (``summary``): {method: {aperture: {class:
    {"injected", "injected_se", "truth", "truth_se", "difference"}}}}."""
    out = {}
    for method, row in injected.items():
        if not row or method not in summary or "apertures" not in row:
            continue
        out[method] = {}
        for key, cells in row["apertures"].items():
            out[method][key] = {}
            for cls in ("bright", "faint"):
                got, ref = cells[f"{cls}_bias"], summary[method]["apertures"][key][cls]
                out[method][key][cls] = {
                    "injected": got, "injected_se": cells[f"{cls}_se"], "truth": ref["bias"],
                    "truth_se": _median_se(ref),
                    "difference": None if got is None or ref["bias"] is None else got - ref["bias"]}
    return out


def injection_agreement(results: Path, survey: str, summary: dict) -> dict:
    """:func:`agreement` of the workflow report's injection-recovery (its summary.json) with
    the truth-based ``summary`` of the survey's own exposures; empty without a report."""
    path = results / "report" / survey / "summary.json"
    if not path.exists():
        return {}
    rows = {row["method"]: row for row in json.loads(path.read_text()).get("injection", [])}
    return agreement(rows, summary)


def _agreement_table(agreement: dict, caption: str) -> list[str]:
    """Markdown rows: injected-source bias (± SE) [its difference from the truth's ±
    the standard error of that difference, points]."""
    if not agreement:
        return []
    keys = list(APERTURES)
    head = " | ".join(f"{cls} {k[:-4] + '×FWHM' if k != 'kron' else 'Kron'}" for cls in ("bright", "faint")
                      for k in keys)
    lines = ["", caption + " Injected % ± SE [injected − truth ± its SE, points].", "",
             f"| method | {head} |", "|---|" + "---|" * (2 * len(keys))]
    for method, cells in agreement.items():
        row = []
        for cls in ("bright", "faint"):
            for key in keys:
                c = cells[key][cls]
                se = [v for v in (c["injected_se"], c["truth_se"]) if v is not None]
                spread = f" ± {100 * np.hypot(*se):.1f}" if len(se) == 2 else ""
                difference = "n/a" if c["difference"] is None else f"{100 * c['difference']:+.1f}{spread}"
                row.append(f"{_percent(c['injected'], c['injected_se'], form='± {:.2f}')} [{difference}]")
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    return lines


def _main_table(summary: dict) -> list[str]:
    lines = ["| method | PSNR dB | PSNR clean dB | SSIM | RMS ratio | bright bias % | faint bias % "
             "| bright change % | faint change % | 5σ det. (new) | unmatched | s/exposure |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for m, s in summary.items():
        lines.append(
            f"| {m} | {s['psnr']:.2f} | {s['psnr_clean']:.2f} | {s['ssim']:.4f} | {s['rms_ratio']:.2f} "
            f"| {100 * s['bias_bright']:+.2f} ± {100 * s['se_bright']:.2f} "
            f"| {100 * s['bias_faint']:+.2f} ± {100 * s['se_faint']:.2f} "
            f"| {100 * s['change_bright']:+.2f} | {100 * s['change_faint']:+.2f} "
            f"| {s['detections']} ({s['new_detections']:+d}) | {s['unmatched']} | {s['seconds']:.2f} |")
    return lines


def _sources_line(summary: dict) -> str:
    n = next(iter(summary.values()))
    return (f"Sources pooled over exposures: {n['n_bright']} bright (S/N > 50), {n['n_faint']} faint "
            "(5 < S/N < 20), of those whose own flux is at least half the light in their 3×FWHM aperture.")


def markdown(summary: dict, meta: dict, unseen: dict | None = None) -> str:
    """The summary as markdown tables (biases in percent): the survey's own exposures,
    then ``unseen`` fields (:func:`write_unseen`), then injection against both."""
    lines = [f"# Denoising quality on the {meta['survey']} survey ({meta['n_exposures']} single exposures)",
             "", "Metric definitions: module docstring of benchmarks/quality.py.", "",
             "## The survey's own exposures (the networks were trained on them)", ""]
    lines += _main_table(summary) + _aperture_table(summary) + ["", _sources_line(summary)]
    if unseen:
        lines += ["", f"## Unseen fields of the same survey ({meta['unseen']['n_exposures']} exposures of "
                  f"{meta['unseen']['survey']}: same generator, next seed; no network has seen their "
                  "sources)", ""]
        lines += _main_table(unseen) + _aperture_table(unseen) + ["", _sources_line(unseen)]
    lines += ["", "## Injection-recovery against the truth"]
    if unseen:
        lines += _agreement_table(meta["unseen"].get("injection_agreement", {}),
                                  "On the unseen fields: the evaluate step's injection-recovery (its "
                                  "defaults) against the truth, same fields, same models; both sets of "
                                  "sources are new to the networks: the two must agree.")
    lines += _agreement_table(meta.get("injection_agreement", {}),
                              "On the survey's own fields: the workflow report's injection-recovery against "
                              "the truth of the sources the networks were trained on (where a network has "
                              "learnt them, the truth reads better than new sources get).")
    if "load_1min" in meta:
        lines += ["", f"Seconds per exposure measured at a 1-minute load average of {meta['load_1min']:.1f} "
                  f"on {os.cpu_count()} cores (other work on the machine slows them)."]
    lines += ["", f"Models: {meta['models']}; kept steps {meta['model_steps']}; "
              f"domain {meta['normalisation']}.", "", _prediction_line(meta["predict_config"]), ""]
    for m, s in summary.items():
        if "train_seconds" in s:
            lines.append(f"Training {m}: {s['train_seconds']:.0f} s (1-minute load average "
                         f"{s['load_1min']:.1f} on {os.cpu_count()} cores).")
    lines.append("")
    return "\n".join(lines)


def run(results: Path, survey: str, models: dict[str, Path], baselines: list[str], *,
        config: PredictConfig, inject: bool = False) -> tuple[dict, dict]:
    """Score the input, every model and every baseline on every exposure of ``survey``;
    with ``inject``, also run the evaluate step's injection-recovery there (its defaults,
    :func:`injection_recovery_of`) and pool it per method into ``meta["injection"]``."""
    sim = results / "simulate" / survey
    checkpoints = {m: io.load_checkpoint(p) for m, p in models.items()}
    per_exposure, contexts, blocks = [], [], []
    for raw in sorted((sim / "raw").glob("*.fits")):
        field = raw.stem.rsplit("_", 1)[0]
        ctx = exposure_context(raw, noise_json(results, survey, raw.stem),
                               sim / "truth" / f"{field}.fits", sim / "catalog" / f"{field}.ecsv")
        denoisers = {"input": lambda d, c: d}
        denoisers |= {m: (lambda d, c, ck=ck: denoise_with_checkpoint(d, c["noise"], ck, config=config))
                      for m, ck in checkpoints.items()}
        denoisers |= {b: (lambda d, c, b=b: DENOISERS[b](d, c["noise"])) for b in baselines}
        row, images = {}, {}
        for name, fn in denoisers.items():
            start = time.perf_counter()
            images[name] = fn(ctx["data"], ctx)
            row[name] = score(images[name], ctx) | {"seconds": time.perf_counter() - start}
            print(f"{raw.stem} {name}: psnr_clean {row[name]['psnr_clean']:.2f}", flush=True)
        if inject:
            blocks.append(injection_recovery_of(raw, ctx, denoisers, images))
        per_exposure.append(row)
        contexts.append(ctx)
    methods = list(per_exposure[0])
    meta = {"survey": survey, "n_exposures": len(per_exposure),
            "models": {m: str(p) for m, p in models.items()},
            "model_steps": {m: ck.get("best_step") for m, ck in checkpoints.items()},
            "normalisation": {m: ck["normalisation"].get("kind", "linear") for m, ck in checkpoints.items()},
            "train_config": {m: ck.get("train_config") for m, ck in checkpoints.items()}}
    if inject:
        meta["injection"] = {m: summarise_recovery(blocks, m) for m in methods}
    return summarise(per_exposure, contexts, methods), meta


def injection_recovery_of(raw: Path, ctx: dict, denoisers: dict, images: dict) -> dict:
    """The evaluate step's injection-recovery on one exposure, with its default settings
    (:class:`astrodenoise.evaluate.EvaluateConfig`): the exposure's own PSF, the
    catalogue's zero point, the same denoisers (``images``: their output without the
    sources)."""
    settings = EvaluateConfig()
    table = Table.read(raw.parents[1] / "catalog" / f"{raw.stem.rsplit('_', 1)[0]}.ecsv", format="ascii.ecsv")
    zeropoint = catalog_zeropoint(table["mag"], table["flux"])
    data, noise = ctx["data"], ctx["noise"]
    bad = ~np.isfinite(data)
    psf = measure_psf(data, ctx["background"], sigma=noise.sigma, bad=bad, fwhm_guess=ctx["fwhm"])
    runners = {name: (lambda image, fn=fn: fn(image, ctx)) for name, fn in denoisers.items()}
    return injection_recovery(
        data, runners, name=raw.stem, background=ctx["background"], mask=ctx["mask"], bad=bad, noise=noise,
        psf=psf, zeropoint=zeropoint, radius=ctx["radius"], fwhm=ctx["fwhm"], count=settings.inject_count,
        region=settings.inject_region, seed=settings.inject_seed, detect_threshold=settings.detect_threshold,
        match_radius=settings.match_radius, known=images)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=REPO / "results", help="workflow results folder")
    parser.add_argument("--survey", default="demo")
    parser.add_argument("--model", nargs="*", default=[], metavar="METHOD=PT",
                        help="checkpoints (default: results/train/<survey>/{n2n,n2v}/model.pt)")
    parser.add_argument("--baselines", nargs="*", default=list(DENOISERS))
    parser.add_argument("--train", action="store_true", help="train the --methods here first")
    parser.add_argument("--methods", nargs="*", default=["n2n", "n2v"], help="with --train: what to train")
    parser.add_argument("--model-dir", type=Path, default=REPO / "benchmarks" / "quality_models",
                        help="with --train: where the checkpoints go (the default is ignored by git)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="with --train: override keys of the train block of config/config.yaml")
    parser.add_argument("--predict-set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override keys of the predict block of config/config.yaml")
    parser.add_argument("--no-unseen", action="store_true",
                        help="do not score the models on unseen fields of the same survey")
    parser.add_argument("--out", type=Path, default=None,
                        help="output path without suffix (.json and .md are written; default "
                             "benchmarks/quality_results for the demo, benchmarks/quality_<survey> else)")
    args = parser.parse_args(argv)
    if args.out is None:
        name = "quality_results" if args.survey == "demo" else f"quality_{args.survey}"
        args.out = REPO / "benchmarks" / name
    models = dict(item.split("=", 1) for item in args.model) or {
        m: args.results / "train" / args.survey / m / "model.pt" for m in ("n2n", "n2v")}
    timing = {}
    if args.train:
        overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
        trained, timing = train_models(args.results, args.survey, overrides, args.model_dir, args.methods)
        models = dict(item.split("=", 1) for item in args.model) | trained
    models = {m: Path(p) for m, p in models.items() if Path(p).exists()}
    predict = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["predict"]
    predict |= {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.predict_set)}
    config = PredictConfig.from_dict(predict | {"precision": "float32"})
    summary, meta = run(args.results, args.survey, models, args.baselines, config=config)
    unseen = None
    if not args.no_unseen:
        fields = write_unseen(args.results, args.survey)
        unseen, unseen_meta = run(args.results, fields, models, args.baselines, config=config, inject=True)
        meta["unseen"] = {k: unseen_meta[k] for k in ("survey", "n_exposures", "injection")}
    meta["predict_config"] = config.__dict__
    meta["load_1min"] = os.getloadavg()[0]
    meta["injection_agreement"] = injection_agreement(args.results, args.survey, summary)
    if unseen:
        meta["unseen"]["injection_agreement"] = agreement(meta["unseen"]["injection"], unseen)
    for method, row in timing.items():
        summary[method] |= row
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(
        json.dumps({"meta": meta, "summary": summary, "unseen": unseen}, indent=2) + "\n")
    table = markdown(summary, meta, unseen)
    args.out.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
