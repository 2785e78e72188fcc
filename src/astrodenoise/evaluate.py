"""Evaluation: metrics that tell an astronomer whether a denoised image can be trusted.

Every image of an exposure (the noisy input, each denoiser's output and a classical
Gaussian-smoothing baseline) is scored the same way:

- ``rms_blank``: noise in blank sky. The robust standard deviation (MAD x 1.4826) of
  ``image - background`` over pixels away from any detected source (the source mask of
  the noise step, measured on the input), in data units. ``rms_ratio`` = input / image.
- ``psnr``, ``ssim``, ``rmse``: against the noise-free truth when one exists (demo),
  with ``data_range = max(truth) - min(truth)``. ``psnr_clean``: the same PSNR without
  the pixels where the input lies 8 sigma above the reference (cosmic rays, grown by 2
  pixels; :func:`astrodenoise.metrics.outlier_pixels`), the same pixels for every image.
- ``photometry``: circular-aperture flux (radius ``aperture_fwhm`` x PSF FWHM) at every
  catalogue source, background-subtracted with the same map for every image, compared
  with the flux of the reference (the truth when known, otherwise the input). Per class
  of reference S/N (bright: S/N > 50; faint: 5 < S/N < 20; only sources whose own flux is
  at least half the light in their 3 x FWHM aperture, :func:`astrodenoise.photometry.own_light`)
  the median fractional flux bias ``(F - F_ref) / F_ref`` and its robust scatter. A
  denoiser that lowers the noise but dims faint sources shows a negative faint bias:
  photometry is the science.
  ``photometry.by_magnitude`` gives the same per magnitude bin (catalogue magnitudes
  when a catalogue exists, else instrumental ``-2.5 log10 F_ref``).
- ``photometry_apertures``: the same bias and scatter measured as an astronomer measures
  it, in every aperture of :data:`astrodenoise.photometry.APERTURES`: circular apertures
  of 1, 2 and 3 x FWHM each minus a local sky (the mean of a 4-6 FWHM annulus, the
  sources of the reference (the truth, the deep stack, else the input) masked and what a
  3-sigma clip of the deep stack where there is one, else of the input, rejects left out
  (chosen on the input, its own one-sided noise tails would be clipped from its sky and
  kept in its apertures): the same pixels in every image,
  :func:`astrodenoise.photometry.local_sky`), and Kron
  apertures (2.5 Kron radii) defined on the reference (segmented above 1 sigma of the
  input's noise for the truth, 3 sigma of the reference's own noise otherwise) and laid
  on every image; the reference measured the same way. The wings a denoiser flattens
  show at 2 and 3 x FWHM and in Kron apertures, the core it keeps at 1 x.
  ``photometry_by_magnitude_apertures``: per aperture, the bias per magnitude bin.
- ``power``: radially averaged power spectrum of blank sky (``image - background`` with
  sources masked), as the ratio to the input's per spatial-frequency bin (cycles per
  pixel, 0 to 0.5). A denoiser that only removes high frequencies leaves the low-k ratio
  near 1; correlated residual structure shows as a ratio above the white-noise floor.
- ``residual``: the input minus the image in units of the measured noise sigma. Over
  blank sky its mean and standard deviation (a denoiser that removes only noise leaves
  about N(0, 1) when its output is close to the truth) and a histogram for the report;
  ``source_mean`` is the median over sources of the mean residual in their aperture: a
  positive value is signal removed at the positions of sources.
- ``detection``: sources detected on the image (photutils segmentation of the image
  smoothed with the PSF, at least 5 connected pixels above ``detect_threshold`` times
  the blank-sky RMS of that smoothed image, deblended),
  matched to the truth catalogue within ``match_radius`` x FWHM. Per magnitude bin,
  completeness (matched catalogue sources / catalogue sources) and purity (detections
  that match a catalogue source / detections, a detection taking its match's catalogue
  magnitude, an unmatched one its measured magnitude); ``depth90`` is the faint edge of
  the last bin, brighter ones included, where both stay at or above 90%, and
  ``n_false`` the detections matching no catalogue source (invented sources). Without a
  catalogue only ``n_detected`` is given.

- ``injection``: injection-recovery, the test that needs no truth (module
  :mod:`astrodenoise.inject`). The PSF is measured from the exposure's own stars
  (a Moffat fitted to each; cosmic rays and galaxies rejected), or from its field's deep
  stack when it has too few (:func:`astrodenoise.reference.exposure_psf`), and its FWHM
  is also the one the photometry and detection above use when there is no catalogue.
  ``inject_count`` sources - point sources with that PSF and Sersic galaxies convolved
  with it - with magnitudes from 4 mag brighter to 1.5 mag fainter than the
  exposure's 5-sigma limit ``m5`` (half of them at a faint S/N) and their photon noise go
  into blank sky of the input; every image kind denoises the injected exposure (the
  networks with their checkpoint and the predict settings recorded in their output), and
  each source's recovered flux is measured on (with sources - without), plus the flux
  the image kind adds to an empty aperture of the same blank sky (``sky_offset`` per
  circular aperture, :func:`astrodenoise.inject.sky_offsets`), against its true flux in
  every aperture of ``photometry_apertures``, and "found" when a detection lies
  within the match radius where the image without them had none. Per source: magnitude,
  true S/N, point or extended, flux ratio - 1 per aperture, found; the report pools them.
- ``repaired_pixels`` (networks): the pixels the predict step took for cosmic rays or hot
  pixels and filled from their neighbours before denoising (its ``repaired`` array);
  ``repair_check``: against the truth or the other exposures of the field, how many of
  its groups were outliers of this exposure alone, and how many repaired pixels lie within
  2 x FWHM of a source, of groups that were not among them
  (:func:`astrodenoise.metrics.repair_check`: a star is in every exposure).

The classical baselines (Gaussian smoothing; scikit-image non-local means and BM3D on
the variance-stabilised image, see :mod:`astrodenoise.baselines`) are scored in the same
run, on the same pixels and sources.

Without a truth (real data: :func:`evaluate_field` with the field's registration), the
reference is the clean leave-one-out stack of the other exposures
(:mod:`astrodenoise.reference`), and the figures are estimates of the truth-based ones
that its noise does not bias: ``psnr`` / ``psnr_clean`` from the products of the
differences to two independent exposures, with ``psnr_se`` and ``psnr_lower`` (the
PSNR of the MSE plus two errors); ``psnr`` and ``psnr_se`` are None where the error is
below what the reference resolves, ``psnr_lower`` then a bound only; flux biases over
the deep stack's flux, S/N classes, Kron apertures and sources (centroids fitted) from
it. ``reference_check`` holds the self-tests on the input (clean PSNR as its noise model
predicts, ``psnr_expected``; flux bias zero within 3 SE, own cosmic rays filled).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from skimage.metrics import structural_similarity

from . import io
from .baselines import denoise, gaussian_smooth
from .cutouts import gallery_path, write_cutouts, write_gallery
from .denoise import load_normalisation
from .detection import detect, detection_scores
from .inject import injection_recovery
from .metrics import (
    blank_sky_rms,
    outlier_pixels,
    power_spectrum,
    psnr,
    reference_range,
    repair_check,
    residual_statistics,
)
from .noise_model import NoiseModel, read_noise_model
from .photometry import (
    aperture_fluxes,
    aperture_radius,
    aperture_suite,
    bias_by_aperture,
    flux_bias,
    photometry_by_magnitude,
)
from .provenance import code_version
from .reference import (
    expected_input_psnr,
    exposure_psf,
    field_exposures,
    leave_one_out_stack,
    reference_check,
    stack_scores,
)
from .scoring_reference import measurement_reference
from .sky import estimate_background, source_mask
from .tiling import Execution, PredictConfig, predict_tiles
from .transform import exposure_normalisation

log = logging.getLogger(__name__)

__all__ = ["EvaluateConfig", "score_image", "evaluate", "evaluate_field"]


@dataclass(frozen=True)
class EvaluateConfig:
    """Settings of the evaluate step.

    ``gaussian_sigma`` is the width (pixels) of the Gaussian-smoothing baseline;
    ``aperture_fwhm`` the aperture radius in units of the PSF FWHM; ``default_fwhm``
    the FWHM in pixels used when neither header nor catalogue give one; ``cutout`` the
    side in pixels of the before/after figure; ``baselines`` the classical denoisers to
    score (``gaussian``, ``nlm``, ``bm3d``); ``detect_threshold`` the detection level in
    units of each image's blank-sky RMS; ``match_radius`` the catalogue match radius in
    units of the FWHM; ``mag_bin`` the width of the magnitude bins; ``inject_count``
    the point sources injected per exposure for injection-recovery (0: none),
    ``inject_region`` the side of the central region they go into (and that is denoised
    again with them), ``inject_seed`` the seed of their positions, magnitudes and noise.
    """

    gaussian_sigma: float = 1.0
    aperture_fwhm: float = 1.0
    default_fwhm: float = 3.5
    cutout: int = 192
    baselines: tuple[str, ...] = ("gaussian", "nlm", "bm3d")
    detect_threshold: float = 5.0
    match_radius: float = 1.0
    mag_bin: float = 0.5
    inject_count: int = 100
    inject_region: int = 1024
    inject_seed: int = 0

    @classmethod
    def from_dict(cls, values: dict) -> EvaluateConfig:
        values = dict(values)
        if "baselines" in values:
            values["baselines"] = tuple(values["baselines"])
        return cls(**values)


def score_image(image: np.ndarray, *, background, mask, truth=None, phot=None) -> dict:
    """Score one image: blank-sky RMS, truth metrics when given, photometry when given.

    ``phot`` is a dict with ``positions``, ``radius``, ``reference`` (fluxes) and ``snr``.
    """
    scores = {"rms_blank": blank_sky_rms(image, background=background, mask=mask)}
    if truth is not None:
        data_range = float(np.nanmax(truth) - np.nanmin(truth))
        filled = np.where(np.isfinite(image), image, truth)
        scores |= {
            "psnr": psnr(image, truth),
            "rmse": float(np.sqrt(np.nanmean((image - truth) ** 2))),
            "ssim": float(structural_similarity(filled, truth, data_range=data_range)),
        }
    if phot is not None:
        fluxes = aperture_fluxes(image - background, phot["positions"], radius=phot["radius"])
        scores["photometry"] = flux_bias(fluxes, phot["reference"], phot["snr"], denominator=phot.get("deep"))
    return scores


def _structure_scores(image, *, data, background, mask, sigma, phot, sources, config,
                      input_power) -> dict:
    """Power-spectrum ratio, normalised residuals, photometry by magnitude, detection."""
    k, power = power_spectrum(image, background=background, mask=mask)
    out = {"power": {"k": [round(float(v), 4) for v in k],
                     "ratio": [float(v) for v in power / np.maximum(input_power, 1e-30)]}}
    radius = phot["radius"] if phot else aperture_radius(sources["fwhm"], factor=config.aperture_fwhm)
    out["residual"] = residual_statistics(data, image, sigma=sigma, mask=mask,
                                          positions=sources["positions"], radius=radius)
    if phot is not None:
        fluxes = aperture_fluxes(image - background, phot["positions"], radius=phot["radius"])
        out["photometry_by_magnitude"] = photometry_by_magnitude(
            fluxes, phot["reference"], phot["mag"], bin_width=config.mag_bin, denominator=phot.get("deep"))
    found, found_flux = detect(image, background=background, mask=mask, threshold=config.detect_threshold,
                               fwhm=sources["fwhm"])
    if sources["catalog"] and len(sources["positions"]):
        out["detection"] = detection_scores(
            found, found_flux, sources["positions"], sources["mag"],
            radius=config.match_radius * sources["fwhm"], zeropoint=sources["zeropoint"],
            bin_width=config.mag_bin)
    else:
        out["detection"] = {"n_detected": int(len(found))}
    return out


def _aperture_scores(images: dict, *, background, phot: dict, mag: np.ndarray, config) -> dict:
    """Per image kind, ``photometry_apertures`` and ``photometry_by_magnitude_apertures``:
    every aperture of :data:`~astrodenoise.photometry.APERTURES` on the image against the
    same aperture on the reference, the sky of every image from the pixels chosen on
    ``phot["sky_select"]`` (the deep stack where there is one, else the input) off the
    sources of ``phot["sky_mask"]``."""
    extra = {"__reference__": phot["image"]} | ({"__deep__": phot["deep_image"]} if "deep" in phot else {})
    extra |= {"__clean_input__": phot["clean_input"]} if "clean_input" in phot else {}
    fluxes = aperture_suite(images | extra, phot["positions"], fwhm=phot["fwhm"],
                            kron_reference=phot["kron_reference"], threshold=phot["threshold"],
                            select=phot["sky_select"], background=background, mask=phot["sky_mask"])
    reference, deep = fluxes.pop("__reference__"), fluxes.pop("__deep__", None)
    clean = fluxes.pop("__clean_input__", None)
    out = {name: {"photometry_apertures": bias_by_aperture(flux, reference, phot["snr"], denominator=deep),
                  "photometry_by_magnitude_apertures": {
                      key: photometry_by_magnitude(flux[key], reference[key], mag, bin_width=config.mag_bin,
                                                   denominator=None if deep is None else deep[key])
                      for key in flux}}
           for name, flux in fluxes.items()}
    if clean is not None:
        out["input"]["photometry_apertures_clean"] = bias_by_aperture(clean, reference, phot["snr"],
                                                                      denominator=deep)
    return out


def _baseline_denoisers(noise: NoiseModel, config: EvaluateConfig) -> dict:
    """{name: function of an image} for the classical baselines of ``config.baselines``."""

    def one(name):
        if name == "gaussian":
            return lambda image: gaussian_smooth(image, sigma=config.gaussian_sigma)
        return lambda image: denoise(name, image, noise)

    return {name: one(name) for name in config.baselines}


def _model_denoisers(models: dict[str, str], norms: dict, denoised: dict[str, str]) -> dict:
    """{method: function of an image} denoising as the predict step did: the checkpoint,
    this exposure's normalisation (``norms``), and the predict settings recorded in the
    method's denoised store (precision, averaging, flux restoration; run here on threads,
    on the GPU when this job has one)."""
    out = {}
    for name, checkpoint in models.items():
        config, execution = _recorded_predict(denoised.get(name))
        out[name] = functools.partial(_denoise_with, checkpoint=str(checkpoint), norm=norms[name],
                                      config=config, execution=execution)
    return out


def _recorded_predict(store: str | None) -> tuple[PredictConfig, Execution]:
    """The predict settings recorded in a denoised store, and its tile size and threads
    (stores written before execution settings were recorded apart keep them in the
    predict config). Where it ran is not what it computed: this job runs on its own
    threads' scheduler, on the GPU when it has one, whatever node or cluster predict used."""
    recorded = {}
    if store and Path(store).exists():
        recorded = dict(io.open_zarr_image(store).attrs.get("provenance_predict", {}))
    config = recorded.get("predict_config", {})
    how = recorded.get("execution", config)
    science = {f.name for f in dataclasses.fields(PredictConfig)}
    return (PredictConfig.from_dict({k: v for k, v in config.items() if k in science}),
            Execution(tile=int(how.get("tile", Execution.tile)), threads=int(how.get("threads", 0))))


def _denoise_with(image: np.ndarray, *, checkpoint: str, norm, config, execution) -> np.ndarray:
    """``image`` denoised by a checkpoint, tile by tile as predict does, in this process."""
    tiles = predict_tiles(image, checkpoint, norm=norm, config=config, execution=execution)
    return np.asarray(tiles.compute(scheduler="threads"))


def _read_exposure(input_zarr: str) -> dict:
    """The ingested exposure: data, header, flagged pixels (bad), its store's attributes."""
    array = io.open_zarr_image(input_zarr)
    data = array[...]
    flags = io.open_zarr_array(input_zarr, "mask")
    bad = ~np.isfinite(data) | ((flags[...] != 0) if flags is not None else False)
    return {"name": Path(input_zarr).stem, "data": data, "header": io.header_from_attrs(array.attrs),
            "bad": bad, "attrs": dict(array.attrs)}


def _score_all(images: dict, data: np.ndarray, *, sky: dict, ref: dict, config) -> dict:
    """Scores of every image kind on the same pixels and sources, and their gains over the
    input (RMS ratio, PSNR gain); with a truth also PSNR without the cosmic-ray pixels;
    with a leave-one-out stack the PSNR estimated without bias
    (:func:`astrodenoise.reference.stack_scores`)."""
    background, mask, noise, stack = sky["background"], sky["mask"], sky["noise"], ref["stack"]
    truth = ref["truth"] if stack is None else None
    input_power = power_spectrum(data, background=background, mask=mask)[1]
    scores = {}
    for name, img in images.items():
        scores[name] = score_image(img, background=background, mask=mask, truth=truth, phot=ref["phot"])
        scores[name] |= _structure_scores(img, data=data, background=background, mask=mask,
                                          sigma=noise.sigma, phot=ref["phot"], sources=ref["sources"],
                                          config=config, input_power=input_power)
    if ref["phot"] is not None:
        extras = _aperture_scores(images, background=background, phot=ref["phot"], mag=ref["phot"]["mag"],
                                  config=config)
        for name, extra in extras.items():
            scores[name] |= extra
    if truth is not None:
        # Cosmic rays are in the input, not in the reference: they dominate its MSE, and a
        # method that merely removes them would win on PSNR alone. Also scored without them.
        hits = outlier_pixels(data, truth, sky=noise.sky, sigma=noise.sigma, gain=noise.gain)
        for name, img in images.items():
            scores[name]["psnr_clean"] = psnr(np.where(hits, np.nan, img), truth)
        scores["input"]["outlier_fraction"] = float(hits.mean())
    if stack is not None:
        data_range = reference_range(stack["deep"])
        for name, img in images.items():
            scores[name] |= stack_scores(img, stack, data_range=data_range)
        scores["input"] |= expected_input_psnr(stack, noise, data_range)
    for s in scores.values():
        s["rms_ratio"] = scores["input"]["rms_blank"] / s["rms_blank"]
        for key in ("psnr", "psnr_clean"):
            if s.get(key) is not None and scores["input"].get(key) is not None:
                s[f"{key}_gain"] = s[key] - scores["input"][key]
    return scores


def _repair_scores(denoised: dict[str, str], data: np.ndarray, *, ref: dict, sky: dict) -> dict[str, dict]:
    """Per method, the pixels the predict step took for cosmic rays or hot pixels and filled
    (``repaired_pixels``) and, against the truth or the leave-one-out stack of the other
    exposures, whether they were outliers of this exposure alone
    (``repair_check``: :func:`astrodenoise.metrics.repair_check`, sources within 2 x FWHM)."""
    reference, stack = ref["truth"], ref["stack"]
    sigma = None
    if reference is not None:
        sigma = sky["noise"].pixel_sigma(reference)
        if stack is not None:
            sigma = np.sqrt(sigma**2 + stack["variance"])  # NaN where no other exposure has data
    out = {}
    for name, path in denoised.items():
        repaired = io.open_zarr_array(path, "repaired")
        if repaired is None:
            continue
        plane = repaired[...]
        out[name] = {"repaired_pixels": int(np.nansum(plane))}
        if reference is not None:
            out[name]["repair_check"] = repair_check(
                plane, data, reference, background=sky["background"], sigma=sigma,
                positions=ref["sources"]["positions"], radius=2 * ref["sources"]["fwhm"])
    return out


def _injection(exposure: dict, *, sky: dict, psf, ref: dict, images: dict, baselines: dict, models: dict,
               config: EvaluateConfig) -> dict | None:
    """The injection-recovery block (:func:`astrodenoise.inject.injection_recovery`)."""
    if config.inject_count <= 0:
        return None
    phot, sources = ref["phot"], ref["sources"]
    radius = phot["radius"] if phot else aperture_radius(sources["fwhm"], factor=config.aperture_fwhm)
    runners = {"input": lambda image: image} | baselines | models
    return injection_recovery(
        exposure["data"], runners, name=exposure["name"], background=sky["background"], mask=sky["mask"],
        bad=exposure["bad"], noise=sky["noise"], psf=psf, zeropoint=sources["zeropoint"], radius=radius,
        fwhm=sources["fwhm"], count=config.inject_count, region=config.inject_region,
        seed=config.inject_seed, detect_threshold=config.detect_threshold, match_radius=config.match_radius,
        known={k: images[k] for k in ("input", *baselines)})


def evaluate(input_zarr: str, noise_json: str, denoised: dict[str, str], *, out_json: str,
             out_png: str, truth_fits: str | None = None, catalog: str | None = None,
             stack: dict | None = None, models: dict[str, str] | None = None,
             config: EvaluateConfig = EvaluateConfig()) -> dict:
    """Score the input, the classical baselines and each denoised image of one exposure.

    Parameters
    ----------
    input_zarr, noise_json : the ingested exposure and its noise measurement
    denoised : {method name: zarr store of the denoised exposure}
    truth_fits, catalog : noise-free truth (ADU) and source catalogue, when known (demo)
    stack : without a truth, the clean reference on this exposure's grid, as
        :func:`astrodenoise.reference.leave_one_out_stack` returns it (image, variance,
        sigma, layers, deep, target_rejected, target_flagged, n, rejected_fraction).
        PSNR is then estimated from its layers, photometry measured against it, and
        detections against the sources found on it (a deep reference catalogue).
    models : {method name: checkpoint}; with ``config.inject_count`` > 0, each method's
        injected exposure is denoised with it (injection-recovery, module
        :mod:`astrodenoise.inject`). A method without a checkpoint is left out of it.

    Writes ``out_json`` (metrics, see module docstring) and ``out_png`` (cutouts).
    """
    exposure = _read_exposure(input_zarr)
    data, header = exposure["data"], exposure["header"]
    noise = read_noise_model(noise_json)
    background, rms = estimate_background(data)
    sky = {"background": background, "rms": rms, "mask": source_mask(data, background, rms), "noise": noise}
    psf = exposure_psf(data, background, sigma=noise.sigma, bad=exposure["bad"], stack=stack,
                       fwhm_guess=float(header.get("FWHM", config.default_fwhm)))
    baselines = _baseline_denoisers(noise, config)
    images = {"input": data} | {name: run(data) for name, run in baselines.items()}
    images |= {name: io.open_zarr_image(path)[...] for name, path in denoised.items()}
    ref = measurement_reference(exposure, sky=sky, psf=psf, truth_fits=truth_fits, catalog=catalog,
                                stack=stack, config=config)
    scores = _score_all(images, data, sky=sky, ref=ref, config=config)
    for name, repair in _repair_scores(denoised, data, ref=ref, sky=sky).items():
        scores[name] |= repair
    checkpoints = {m: c for m, c in (models or {}).items() if m in denoised}
    norms = {m: exposure_normalisation(load_normalisation(str(c)), noise) for m, c in checkpoints.items()}
    models = _model_denoisers(checkpoints, norms, denoised)
    injection = _injection(exposure, sky=sky, psf=psf, ref=ref, images=images, baselines=baselines,
                           models=models, config=config)
    write_cutouts(images, noise.sigma, config.cutout, out_png)
    write_gallery(images, ref["phot"], gallery_path(out_png))
    result = _result(exposure, ref, scores=scores, injection=injection, psf=psf, denoised=denoised,
                     config=config, noise=noise, domains={m: n.kind for m, n in norms.items()})
    io.write_json(out_json, result)
    return result


def _result(exposure: dict, ref: dict, *, scores, injection, psf, denoised, config, noise, domains):
    """The evaluate JSON of one exposure: what was measured against what, the scores, the
    injection block, the noise model and each network's domain (``domains``: "gat" or
    "linear"), and where it all came from."""
    truth, stack, phot, sources = ref["truth"], ref["stack"], ref["phot"], ref["sources"]
    header, attrs = exposure["header"], exposure["attrs"]
    reference = ("truth" if stack is None else f"stack of {stack['n']} other exposures") \
        if truth is not None else "input"
    return {
        "exposure": exposure["name"], "has_truth": truth is not None and stack is None,
        "photometry_reference": reference,
        "reference_sigma": stack["sigma"] if stack else 0.0 if truth is not None else None,
        "n_sources": int(len(sources["positions"])), "aperture_radius": phot["radius"] if phot else None,
        "baselines": list(config.baselines), "methods": list(denoised),
        "magnitudes": sources["system"], "zeropoint": sources["zeropoint"],
        "psf": psf.describe(), "fwhm": sources["fwhm"],
        "domains": domains,
        "noise": {k: getattr(noise, k) for k in ("sigma", "gain", "gain_source", "read_noise")},
        "scores": scores, "injection": injection, "config": dataclasses.asdict(config),
        "reference_check": reference_check(scores) if stack is not None else None,
        "reference_rejected": stack["rejected_fraction"] if stack is not None else None,
        "code_version": code_version(),
        "object": str(header.get("OBJECT", "")), "filter": str(header.get("FILTER", "")),
        "has_wcs": bool(attrs.get("has_wcs", True)),
        "source_file": attrs.get("source_file"), "source_sha256": attrs.get("source_sha256"),
    }


def evaluate_field(images: list[str], noise_files: list[str], denoised: dict[str, str], *,
                   out_dir: str, truth_fits: str | None = None, catalog: str | None = None,
                   registration: str | None = None, models: dict[str, str] | None = None,
                   config: EvaluateConfig = EvaluateConfig()) -> list[dict]:
    """Evaluate every exposure of one field; write ``out_dir/<exposure>.json`` and ``.png``.

    ``denoised`` maps a method to the directory of its ``<exposure>.zarr`` stores. With a
    truth (demo) every exposure is scored against it. Without one, and with the field's
    ``registration`` and at least three exposures, each exposure is scored against the
    others (leave-one-out, their cosmic rays rejected:
    :func:`astrodenoise.reference.leave_one_out_stack`), whose own noise is recorded as
    ``reference_sigma``: real data's best stand-in for the truth, with the estimates
    that its noise does not bias (:func:`astrodenoise.reference.stack_scores`) and their self-tests on the
    input (:func:`astrodenoise.reference.reference_check`). ``models`` (method:
    checkpoint) lets injection-recovery denoise the injected exposures.
    """
    layout = io.read_json(registration) if registration and not truth_fits else None
    exposures = field_exposures(images, noise_files) if layout else None
    results = []
    for i, (image, noise_json) in enumerate(zip(images, noise_files, strict=True)):
        name = Path(image).stem
        stack = (leave_one_out_stack(images, noise_files, layout, target=i, exposures=exposures)
                 if layout else None)
        results.append(evaluate(
            image, noise_json, {m: f"{d}/{name}.zarr" for m, d in denoised.items()},
            out_json=f"{out_dir}/{name}.json", out_png=f"{out_dir}/{name}.png", truth_fits=truth_fits,
            catalog=catalog, stack=stack, models=models, config=config))
        log.info("[%d/%d] %s evaluated", i + 1, len(images), name)
    return results
