"""Evaluation: metrics that tell an astronomer whether a denoised image can be trusted.

Every image of an exposure (the noisy input, each denoiser's output and a classical
Gaussian-smoothing baseline) is scored the same way:

- ``rms_blank``: noise in blank sky. The robust standard deviation (MAD x 1.4826) of
  ``image - background`` over pixels away from any detected source (the source mask of
  the noise step, measured on the input), in data units. ``rms_ratio`` = input / image.
- ``psnr``, ``ssim``, ``rmse``: against the noise-free truth when one exists (demo),
  with ``data_range = max(truth) - min(truth)``. ``psnr_clean``: the same PSNR without
  the pixels where the input lies 8 sigma above the reference (cosmic rays, grown by 2
  pixels; :func:`outlier_pixels`), the same pixels for every image.
- ``photometry``: circular-aperture flux (radius = PSF FWHM) at every catalogue source,
  background-subtracted with the same map for every image, compared with the flux of the
  reference (the truth when known, otherwise the input). Per class of reference S/N
  (bright: S/N > 50; faint: 5 < S/N < 20) the median fractional flux bias
  ``(F - F_ref) / F_ref`` and its robust scatter. A denoiser that lowers the noise but
  dims faint sources shows a negative faint bias: photometry is the science.
  ``photometry.by_magnitude`` gives the same per magnitude bin (catalogue magnitudes
  when a catalogue exists, else instrumental ``-2.5 log10 F_ref``).
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
  (photutils EPSF; cosmic rays and galaxies rejected), and its FWHM is also the one the
  photometry and detection above use when there is no catalogue. ``inject_count`` point
  sources with that PSF, magnitudes from 4 mag brighter to 1.5 mag fainter than the
  exposure's 5-sigma limit ``m5`` and their photon noise go into blank sky of the input;
  every image kind denoises the injected exposure (the networks with their checkpoint and
  the predict settings recorded in their output), and each source's recovered aperture
  flux is measured on (with sources - without) against its true aperture flux, and
  "found" when a detection lies within the match radius where the image without them had
  none. Per source: magnitude, true S/N, flux ratio - 1, found; the report pools them.
- ``repaired_pixels`` (networks): the pixels the predict step took for cosmic rays or hot
  pixels and filled from their neighbours before denoising (its ``repaired`` array).

The classical baselines (Gaussian smoothing; scikit-image non-local means and BM3D on
the variance-stabilised image, see :mod:`astrodenoise.baselines`) are scored in the same
run, on the same pixels and sources.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.stats import mad_std
from astropy.table import Table
from astropy.visualization import AsinhStretch, ImageNormalize, PercentileInterval
from matplotlib.figure import Figure
from photutils.aperture import CircularAperture, aperture_photometry
from photutils.segmentation import SourceCatalog, SourceFinder, detect_sources
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.metrics import structural_similarity

from . import io
from .inject import exposure_seed, inject, measure_psf, plan_injection, recover
from .noise import estimate_background, exposure_gain, pixel_sigma, source_mask
from .provenance import code_version

log = logging.getLogger(__name__)

__all__ = [
    "EvaluateConfig",
    "blank_sky_rms",
    "psnr",
    "aperture_fluxes",
    "aperture_snr",
    "flux_bias",
    "gaussian_baseline",
    "score_image",
    "outlier_pixels",
    "power_spectrum",
    "residual_statistics",
    "photometry_by_magnitude",
    "detect",
    "detection_scores",
    "pool_detection_bins",
    "depth90",
    "evaluate",
    "gallery_path",
    "leave_one_out_stack",
    "evaluate_field",
]


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
    inject_count: int = 50
    inject_region: int = 1024
    inject_seed: int = 0

    @classmethod
    def from_dict(cls, values: dict) -> EvaluateConfig:
        values = dict(values)
        if "baselines" in values:
            values["baselines"] = tuple(values["baselines"])
        return cls(**values)


def blank_sky_rms(image: np.ndarray, *, background: np.ndarray, mask: np.ndarray) -> float:
    """Robust RMS of ``image - background`` over blank sky (``mask`` True = not blank)."""
    return float(mad_std((image - background)[~mask], ignore_nan=True))


def psnr(image: np.ndarray, truth: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB with ``data_range = max(truth) - min(truth)``."""
    valid = np.isfinite(image) & np.isfinite(truth)
    mse = np.mean((image[valid] - truth[valid]) ** 2)
    data_range = np.nanmax(truth) - np.nanmin(truth)
    return float(10 * np.log10(data_range**2 / mse))


def aperture_fluxes(image: np.ndarray, positions: np.ndarray, *, radius: float) -> np.ndarray:
    """Sum of ``image`` in circular apertures; ``positions`` (n, 2) as (x, y), 0-based."""
    table = aperture_photometry(np.nan_to_num(image), CircularAperture(positions, r=radius))
    return np.asarray(table["aperture_sum"], dtype=float)


def flux_bias(flux: np.ndarray, reference: np.ndarray, snr: np.ndarray) -> dict:
    """Median fractional flux bias and robust scatter for bright and faint sources."""
    out = {}
    for name, lo, hi in (("bright", 50.0, np.inf), ("faint", 5.0, 20.0)):
        pick = (snr > lo) & (snr < hi) & (reference > 0)
        ratio = (flux[pick] - reference[pick]) / reference[pick]
        out[name] = {
            "n": int(pick.sum()),
            "bias": float(np.median(ratio)) if pick.any() else None,
            "scatter": float(mad_std(ratio)) if pick.sum() > 2 else None,
        }
    return out


def gaussian_baseline(image: np.ndarray, *, sigma: float) -> np.ndarray:
    """Classical baseline: Gaussian smoothing, NaN-aware (normalised convolution)."""
    valid = np.isfinite(image)
    num = ndimage.gaussian_filter(np.where(valid, image, 0.0), sigma)
    den = ndimage.gaussian_filter(valid.astype(float), sigma)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    out[~valid] = np.nan
    return out.astype(np.float32)


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
        scores["photometry"] = flux_bias(fluxes, phot["reference"], phot["snr"])
    return scores


def outlier_pixels(data: np.ndarray, reference: np.ndarray, *, sky: float, sigma: float,
                   gain: float | None) -> np.ndarray:
    """Bool (ny, nx), True where the input lies more than 8 noise sigma above the reference
    (cosmic rays, hot pixels), grown by 2 pixels. The noise is ``sqrt(sigma^2 +
    (reference - sky) / gain)``, in data units."""
    with np.errstate(invalid="ignore"):
        hit = np.nan_to_num((data - reference) / pixel_sigma(reference, sky=sky, sigma=sigma, gain=gain)) > 8
    return ndimage.binary_dilation(hit, iterations=2)


def power_spectrum(image: np.ndarray, *, background: np.ndarray, mask: np.ndarray,
                   n_bins: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged power spectrum of blank sky.

    ``image - background`` with sources (``mask`` True) and NaN set to 0, Fourier
    transformed; power averaged in ``n_bins`` rings of spatial frequency from 0 to 0.5
    cycles per pixel and divided by the number of blank pixels. Returns (k, power).
    """
    blank = ~mask & np.isfinite(image)
    residual = np.where(blank, image - background, 0.0)
    power = np.abs(np.fft.fft2(residual)) ** 2 / max(1, blank.sum())
    ky, kx = np.meshgrid(np.fft.fftfreq(image.shape[0]), np.fft.fftfreq(image.shape[1]), indexing="ij")
    k = np.hypot(ky, kx)
    edges = np.linspace(0.0, 0.5, n_bins + 1)
    ring = np.digitize(k, edges) - 1
    valid = (ring >= 0) & (ring < n_bins) & (k > 0)
    sums = np.bincount(ring[valid], power[valid], minlength=n_bins)
    counts = np.bincount(ring[valid], minlength=n_bins)
    return 0.5 * (edges[1:] + edges[:-1]), sums / np.maximum(counts, 1)


def residual_statistics(data: np.ndarray, image: np.ndarray, *, sigma: float, mask: np.ndarray,
                        positions: np.ndarray, radius: float) -> dict:
    """``(data - image) / sigma`` over blank sky (mean, std, histogram) and at sources.

    ``mask`` True = not blank sky; ``positions`` (n, 2) as (x, y). The histogram has
    40 bins from -5 to 5 (counts normalised to a density, comparable with N(0, 1)).
    """
    residual = (data - image) / sigma
    sky = residual[~mask & np.isfinite(residual)]
    density, _ = np.histogram(sky, bins=40, range=(-5, 5), density=True)
    out = {"sky_mean": float(np.mean(sky)), "sky_std": float(np.std(sky)),
           "histogram": [round(float(v), 5) for v in density], "source_mean": None}
    if len(positions):
        area = np.pi * radius**2
        out["source_mean"] = float(np.median(aperture_fluxes(residual, positions, radius=radius) / area))
    return out


def photometry_by_magnitude(flux: np.ndarray, reference: np.ndarray, mag: np.ndarray, *,
                            bin_width: float) -> list[dict]:
    """Median fractional flux bias and robust scatter per magnitude bin (brightest first)."""
    good = (reference > 0) & np.isfinite(mag) & np.isfinite(flux)
    if not good.any():
        return []
    ratio = (flux - reference) / np.where(reference > 0, reference, 1.0)
    rows = []
    start = np.floor(mag[good].min() / bin_width) * bin_width
    for lo in np.arange(start, mag[good].max() + bin_width, bin_width):
        pick = good & (mag >= lo) & (mag < lo + bin_width)
        if pick.sum() >= 3:
            rows.append({"mag": round(float(lo + bin_width / 2), 3), "n": int(pick.sum()),
                         "bias": float(np.median(ratio[pick])), "scatter": float(mad_std(ratio[pick]))})
    return rows


def detect(image: np.ndarray, *, background: np.ndarray, mask: np.ndarray, threshold: float,
           fwhm: float) -> tuple[np.ndarray, np.ndarray]:
    """Sources of the PSF-matched-filtered image above ``threshold`` times its blank-sky
    RMS (at least 5 connected pixels), deblended.

    The image minus ``background`` is smoothed with a Gaussian of the PSF ``fwhm``
    (pixels) and the threshold set from the RMS of that filtered map over blank sky
    (``mask`` True = not blank). Measuring the noise after the filter counts the
    correlations a denoiser leaves: a smooth image has a tiny per-pixel RMS, and a
    per-pixel threshold would detect its residual ripples as sources. Deblending keeps a
    faint neighbour from merging with a bright star into one segment whose centroid
    matches neither. Returns centroids (n, 2) as (x, y) and segment fluxes (n,) measured
    on the unfiltered image.
    """
    residual = np.nan_to_num(image - background)
    filtered = ndimage.gaussian_filter(residual, fwhm / 2.3548)
    rms = float(mad_std(filtered[~mask & np.isfinite(image)]))
    finder = SourceFinder(n_pixels=5, deblend=True, progress_bar=False)
    segments = finder(filtered, threshold * rms)
    if segments is None:
        return np.empty((0, 2)), np.empty(0)
    cat = SourceCatalog(residual, segments, convolved_data=filtered)
    return np.column_stack([cat.x_centroid, cat.y_centroid]), np.asarray(cat.segment_flux, float)


def detection_scores(found: np.ndarray, found_flux: np.ndarray, truth: np.ndarray, truth_mag: np.ndarray,
                     *, radius: float, zeropoint: float, bin_width: float) -> dict:
    """Completeness, purity and 90% depth of detections against a truth catalogue.

    ``found`` (n, 2) and ``truth`` (m, 2) are (x, y) pixel positions; a detection is true
    when a catalogue source lies within ``radius`` pixels. Magnitudes are
    ``zeropoint - 2.5 log10(flux)`` for unmatched detections, the catalogue's for matched
    ones. Bins run from the brightest catalogue magnitude in steps of ``bin_width``.
    """
    dist, nearest = cKDTree(truth).query(found, k=1) if len(found) else (np.empty(0), np.empty(0, int))
    matched = dist <= radius
    with np.errstate(divide="ignore", invalid="ignore"):
        own_mag = np.where(found_flux > 0, zeropoint - 2.5 * np.log10(found_flux), np.inf)
    found_mag = np.where(matched, truth_mag[np.minimum(nearest, len(truth) - 1)], own_mag)
    recovered = np.zeros(len(truth), bool)
    recovered[nearest[matched]] = True
    start = np.floor(truth_mag.min() / bin_width) * bin_width
    edges = np.arange(start, truth_mag.max() + bin_width, bin_width)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_truth = (truth_mag >= lo) & (truth_mag < hi)
        in_found = (found_mag >= lo) & (found_mag < hi)
        rows.append(_detection_bin(lo, hi, int(in_truth.sum()), int(recovered[in_truth].sum()),
                                   int(in_found.sum()), int(matched[in_found].sum())))
    return {"bins": rows, "depth90": depth90(rows), "n_detected": int(len(found)),
            "n_matched": int(matched.sum()), "n_false": int((~matched).sum())}


def _detection_bin(lo: float, hi: float, n_truth: int, n_recovered: int, n_found: int, n_true: int) -> dict:
    return {"lo": round(float(lo), 3), "hi": round(float(hi), 3), "n_truth": n_truth,
            "n_recovered": n_recovered, "n_found": n_found, "n_true": n_true,
            "completeness": n_recovered / n_truth if n_truth else None,
            "purity": n_true / n_found if n_found else None}


def pool_detection_bins(per_exposure: list[list[dict]]) -> list[dict]:
    """Sum the counts of detection bins over exposures (bins matched by their edges)."""
    totals: dict[tuple, list[int]] = {}
    for rows in per_exposure:
        for r in rows:
            key = (r["lo"], r["hi"])
            counts = totals.setdefault(key, [0, 0, 0, 0])
            for i, name in enumerate(("n_truth", "n_recovered", "n_found", "n_true")):
                counts[i] += r[name]
    return [_detection_bin(lo, hi, *counts) for (lo, hi), counts in sorted(totals.items())]


def depth90(bins: list[dict], *, min_sources: int = 5, purity: bool = True) -> float | None:
    """Faint edge of the last magnitude bin, brighter bins included, whose completeness
    and purity (only completeness with ``purity=False``) are at least 90%. Bins with
    fewer than ``min_sources`` catalogue sources are too few to tell and neither extend
    nor end the run; None when the first informative bin already fails."""
    depth = None
    for row in bins:
        if row["n_truth"] < min_sources:
            continue
        impure = purity and row["purity"] is not None and row["purity"] < 0.9
        if row["completeness"] < 0.9 or impure:
            break
        depth = row["hi"]
    return depth


def _detected_positions(image, background, rms) -> np.ndarray:
    segments = detect_sources(np.nan_to_num(image - background), 3.0 * rms, n_pixels=5)
    if segments is None:
        return np.empty((0, 2))
    cat = SourceCatalog(np.nan_to_num(image - background), segments)
    return np.column_stack([cat.x_centroid, cat.y_centroid])


def aperture_snr(flux: np.ndarray, *, radius: float, sigma: float, gain: float | None) -> np.ndarray:
    """S/N of aperture sums ``flux``: the variance is the sky noise over the aperture plus
    the source's photon noise (``flux / gain``, data units; none without a gain)."""
    variance = np.pi * radius**2 * sigma**2 + np.clip(flux, 0, None) / (gain or np.inf)
    return flux / np.sqrt(variance)


def _photometry_setup(reference, background, positions, *, fwhm, sigma, gain, config):
    radius = max(1.5, config.aperture_fwhm * fwhm)
    ref_flux = aperture_fluxes(reference - background, positions, radius=radius)
    return {"positions": positions, "radius": radius, "reference": ref_flux,
            "snr": aperture_snr(ref_flux, radius=radius, sigma=sigma, gain=gain)}


def gallery_path(out_png: str | Path) -> Path:
    """Where the faint-source gallery of an exposure's figure goes: ``<name>_faint.png``."""
    out_png = Path(out_png)
    return out_png.with_name(out_png.stem + "_faint.png")


def _gallery(images: dict[str, np.ndarray], phot: dict | None, sigma: float, out_png: Path, *,
             count: int = 8, half: int = 8) -> bool:
    """Stamps of the faintest measured sources (5 < S/N < 20 on the reference), one row
    per image kind, each column on the input stamp's asinh stretch. False when none."""
    if phot is None:
        return False
    data = images["input"]
    ny, nx = data.shape
    x, y = np.round(phot["positions"]).astype(int).T
    inside = (x >= half) & (x < nx - half) & (y >= half) & (y < ny - half)
    pick = np.flatnonzero(inside & (phot["snr"] > 5) & (phot["snr"] < 20))
    pick = pick[np.argsort(phot["snr"][pick])][:count]
    if not len(pick):
        return False
    fig = Figure(figsize=(1.2 * len(pick) + 1.0, 1.2 * len(images)))
    axes = fig.subplots(len(images), len(pick), squeeze=False)
    for col, i in enumerate(pick):
        box = (slice(y[i] - half, y[i] + half + 1), slice(x[i] - half, x[i] + half + 1))
        norm = ImageNormalize(data[box], interval=PercentileInterval(99.5), stretch=AsinhStretch(0.1))
        axes[0, col].set_title(f"S/N {phot['snr'][i]:.0f}", fontsize=7)
        for row, (name, image) in enumerate(images.items()):
            axes[row, col].imshow(image[box], norm=norm, origin="lower", cmap="gray")
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
            if col == 0:
                axes[row, col].set_ylabel(name, fontsize=7)
    fig.tight_layout()
    with io.atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    return True


def _figure(images: dict[str, np.ndarray], sigma: float, size: int, out_png: str | Path) -> None:
    """Before/after/residual cutouts with a shared asinh stretch."""
    data = images["input"]
    ny, nx = data.shape
    h, w = min(size, ny), min(size, nx)
    y0, x0 = (ny - h) // 2, (nx - w) // 2
    cut = {k: v[y0:y0 + h, x0:x0 + w] for k, v in images.items()}
    norm = ImageNormalize(cut["input"], interval=PercentileInterval(99.7), stretch=AsinhStretch(0.05))
    outputs = [k for k in cut if k != "input"]
    fig = Figure(figsize=(3.2 * (len(outputs) + 1), 6.6))
    axes = fig.subplots(2, len(outputs) + 1, squeeze=False)
    axes[0, 0].imshow(cut["input"], norm=norm, origin="lower", cmap="gray")
    axes[0, 0].set_title("input")
    axes[1, 0].axis("off")
    for i, key in enumerate(outputs, start=1):
        axes[0, i].imshow(cut[key], norm=norm, origin="lower", cmap="gray")
        axes[0, i].set_title(key)
        axes[1, i].imshow((cut["input"] - cut[key]) / sigma, vmin=-3, vmax=3, origin="lower", cmap="RdBu_r")
        axes[1, i].set_title(f"(input - {key}) / sigma")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    with io.atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=80, format="png")


def _baseline_denoisers(measured: dict, config: EvaluateConfig) -> dict:
    """{name: function of an image} for the classical baselines of ``config.baselines``."""
    from .baselines import NoiseModel, denoise

    noise = NoiseModel.from_noise_json(measured)

    def one(name):
        if name == "gaussian":
            return lambda image: gaussian_baseline(image, sigma=config.gaussian_sigma)
        return lambda image: denoise(name, image, noise)

    return {name: one(name) for name in config.baselines}


def _model_denoisers(models: dict[str, str], denoised: dict[str, str], measured: dict) -> dict:
    """{method: function of an image} denoising as the predict step did: the checkpoint,
    this exposure's normalisation, and the predict settings recorded in the method's
    denoised store (precision, averaging, flux restoration; run here on threads, on the
    GPU when this job has one)."""
    from .predict import PredictConfig, load_normalisation
    from .train import exposure_normalisation

    known = {f.name for f in dataclasses.fields(PredictConfig)}
    out = {}
    for name, checkpoint in models.items():
        recorded = {}
        if name in denoised and Path(denoised[name]).exists():
            attrs = io.open_zarr_image(denoised[name]).attrs
            recorded = dict(attrs.get("provenance_predict", {}).get("predict_config", {}))
        # Where it ran is not what it computed: this job may be on a node without the GPU or
        # the cluster that predict used.
        settings = {k: v for k, v in recorded.items() if k in known} | {
            "scheduler": "threads", "workers": 1, "device": "auto"}
        norm = exposure_normalisation(load_normalisation(str(checkpoint)), measured)

        out[name] = functools.partial(_denoise_with, checkpoint=str(checkpoint), norm=norm,
                                      config=PredictConfig.from_dict(settings))
    return out


def _denoise_with(image: np.ndarray, *, checkpoint: str, norm, config) -> np.ndarray:
    """``image`` denoised by a checkpoint, tile by tile as predict does, in this process."""
    from .predict import predict_tiles

    return np.asarray(predict_tiles(image, checkpoint, norm=norm, config=config).compute(scheduler="threads"))


def _injection_recovery(data: np.ndarray, *, name: str, background, mask, bad, measured: dict, psf,
                        zeropoint: float, radius: float, fwhm: float, images: dict[str, np.ndarray],
                        baselines: dict, models: dict, config: EvaluateConfig) -> dict:
    """Inject point sources of known flux into the input's blank sky, denoise the injected
    image with every method, and measure each source's recovered flux and detection.

    Works on the central ``config.inject_region`` square; each method runs on that region
    with and without the sources (``images`` supplies the "without" when the region is the
    whole image and the method is deterministic there: input and baselines), and the
    difference is measured (:func:`astrodenoise.inject.recover`). Returns the per-source
    table (positions, magnitudes, true S/N) and, per method, flux ratios and found flags.
    """
    ny, nx = data.shape
    hy, hx = min(ny, config.inject_region), min(nx, config.inject_region)
    y0, x0 = (ny - hy) // 2, (nx - hx) // 2
    box = np.s_[y0:y0 + hy, x0:x0 + hx]
    whole = (hy, hx) == (ny, nx)
    sigma, gain = float(measured["sigma"]), exposure_gain(measured)
    seed = exposure_seed(name, config.inject_seed)
    rng = np.random.default_rng(seed)
    plan = plan_injection((hy, hx), mask[box], psf, sigma=sigma, zeropoint=zeropoint, radius=radius,
                          count=config.inject_count, rng=rng, nodata=bad[box])
    block = {"region": [int(y0), int(x0), int(hy), int(hx)], "psf": psf.describe(), "m5": plan["m5"],
             "zeropoint": zeropoint, "radius": radius, "gain": gain, "seed": seed,
             "n": int(len(plan["positions"])), "methods": {}}
    if not block["n"]:
        block["note"] = "no blank sky to inject into"
        return block
    injected, model = inject(data[box], psf, plan, gain=gain, rng=rng)
    true_flux = aperture_fluxes(model, plan["positions"], radius=radius)
    snr = aperture_snr(true_flux, radius=radius, sigma=sigma, gain=gain)
    block |= {"x": (plan["positions"][:, 0] + x0).tolist(), "y": (plan["positions"][:, 1] + y0).tolist(),
              "mag": [round(float(m), 4) for m in plan["mag"]], "snr": [round(float(v), 3) for v in snr],
              "on_source": int(plan["on_source"].sum())}
    bkg, msk = background[box], mask[box]
    runners = {"input": lambda image: image} | baselines | models
    for kind, run in runners.items():
        original = images[kind][box] if whole and kind not in models else run(data[box])
        out = run(injected)
        found = [detect(img, background=bkg, mask=msk, threshold=config.detect_threshold, fwhm=fwhm)[0]
                 for img in (original, out)]
        block["methods"][kind] = recover(original, out, model, plan, radius=radius,
                                         found_original=found[0], found_injected=found[1],
                                         match_radius=config.match_radius * fwhm)
    return block


def _fwhm(header, psf, config: EvaluateConfig) -> float:
    """PSF FWHM in pixels: measured from the exposure's stars when it has enough, else the
    header's ``FWHM`` keyword, else ``config.default_fwhm``."""
    if psf is not None and psf.n_stars:
        return psf.fwhm
    return float(header.get("FWHM", config.default_fwhm))


def _sources(catalog: str | None, data, background, mask, header, config, psf=None) -> dict:
    """Positions (x, y), magnitudes and PSF FWHM of the sources to measure.

    From the catalogue when there is one (demo truth), else detected on the input, with
    instrumental magnitudes from their segment fluxes (zero point 0). The FWHM is the
    catalogue's, else :func:`_fwhm`.
    """
    fwhm = _fwhm(header, psf, config)
    if catalog:
        table = Table.read(catalog, format="ascii.ecsv")
        flux, mag = np.asarray(table["flux"], float), np.asarray(table["mag"], float)
        zeropoint = float(np.median(mag + 2.5 * np.log10(flux))) if len(table) else 0.0
        return {"positions": np.column_stack([table["x"], table["y"]]), "mag": mag, "zeropoint": zeropoint,
                "fwhm": float(table.meta.get("fwhm_pix", fwhm)), "catalog": True}
    positions, flux = detect(data, background=background, mask=mask,
                             threshold=config.detect_threshold, fwhm=fwhm)
    keep = flux > 0
    return {"positions": positions[keep], "mag": -2.5 * np.log10(flux[keep]), "zeropoint": 0.0,
            "fwhm": fwhm, "catalog": False}


def _stack_sources(stack: dict, background: np.ndarray, header, config, psf=None) -> dict:
    """Sources detected on a leave-one-out stack: the deep reference catalogue."""
    stack_bkg, stack_rms = estimate_background(stack["image"])
    fwhm = _fwhm(header, psf, config)
    positions, flux = detect(stack["image"], background=stack_bkg,
                             mask=source_mask(stack["image"], stack_bkg, stack_rms),
                             threshold=config.detect_threshold, fwhm=fwhm)
    keep = flux > 0
    return {"positions": positions[keep], "mag": -2.5 * np.log10(flux[keep]), "zeropoint": 0.0,
            "fwhm": fwhm, "catalog": True}


def _structure_scores(image, *, data, background, mask, sigma, phot, sources, config,
                      input_power) -> dict:
    """Power-spectrum ratio, normalised residuals, photometry by magnitude, detection."""
    k, power = power_spectrum(image, background=background, mask=mask)
    out = {"power": {"k": [round(float(v), 4) for v in k],
                     "ratio": [float(v) for v in power / np.maximum(input_power, 1e-30)]}}
    radius = phot["radius"] if phot else max(1.5, config.aperture_fwhm * sources["fwhm"])
    out["residual"] = residual_statistics(data, image, sigma=sigma, mask=mask,
                                          positions=sources["positions"], radius=radius)
    if phot is not None:
        fluxes = aperture_fluxes(image - background, phot["positions"], radius=phot["radius"])
        out["photometry_by_magnitude"] = photometry_by_magnitude(
            fluxes, phot["reference"], sources["mag"], bin_width=config.mag_bin)
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
    stack : without a truth, a deeper reference on this exposure's grid:
        ``{"image": (ny, nx) float32 ADU, "sigma": its noise, "n": exposures stacked}``
        (:func:`leave_one_out_stack`). PSNR/SSIM and photometry are then measured against
        it, and detections against the sources found on it (a deep reference catalogue).
    models : {method name: checkpoint}; with ``config.inject_count`` > 0, each method's
        injected exposure is denoised with it (injection-recovery, module
        :mod:`astrodenoise.inject`). A method without a checkpoint is left out of it.

    Writes ``out_json`` (metrics, see module docstring) and ``out_png`` (cutouts).
    """
    array = io.open_zarr_image(input_zarr)
    data, header = array[...], io.header_from_attrs(array.attrs)
    flags = io.open_zarr_array(input_zarr, "mask")
    bad = ~np.isfinite(data) | ((flags[...] != 0) if flags is not None else False)
    measured = io.read_json(noise_json)
    background, rms = estimate_background(data)
    mask = source_mask(data, background, rms)
    psf = measure_psf(data, background, sigma=float(measured["sigma"]), bad=bad,
                      fwhm_guess=float(header.get("FWHM", config.default_fwhm)))
    baselines = _baseline_denoisers(measured, config)
    images = {"input": data} | {name: run(data) for name, run in baselines.items()}
    images |= {name: io.open_zarr_image(path)[...] for name, path in denoised.items()}
    truth = io.read_fits_image(truth_fits)[0] if truth_fits else None
    if truth is None and stack is not None:
        truth = stack["image"]
        sources = _stack_sources(stack, background, header, config, psf)
    else:
        stack = None
        sources = _sources(catalog, data, background, mask, header, config, psf)
    reference = truth if truth is not None else data
    phot = None
    if len(sources["positions"]):
        phot = _photometry_setup(reference, background, sources["positions"], fwhm=sources["fwhm"],
                                 sigma=measured["sigma"], gain=exposure_gain(measured),
                                 config=config)
    input_power = power_spectrum(data, background=background, mask=mask)[1]
    scores = {}
    for name, img in images.items():
        scores[name] = score_image(img, background=background, mask=mask, truth=truth, phot=phot)
        scores[name] |= _structure_scores(img, data=data, background=background, mask=mask,
                                          sigma=measured["sigma"], phot=phot, sources=sources,
                                          config=config, input_power=input_power)
    if truth is not None:
        # Cosmic rays are in the input, not in the reference: they dominate its MSE, and a
        # method that merely removes them would win on PSNR alone. Also scored without them.
        hits = outlier_pixels(data, truth, sky=measured["sky_level"], sigma=measured["sigma"],
                              gain=exposure_gain(measured))
        for name, img in images.items():
            scores[name]["psnr_clean"] = psnr(np.where(hits, np.nan, img), truth)
        scores["input"]["outlier_fraction"] = float(hits.mean())
    for name, path in denoised.items():
        # Pixels the predict step took for cosmic rays or hot pixels and filled.
        repaired = io.open_zarr_array(path, "repaired")
        if repaired is not None:
            scores[name]["repaired_pixels"] = int(np.nansum(repaired[...]))
    for s in scores.values():
        s["rms_ratio"] = scores["input"]["rms_blank"] / s["rms_blank"]
        if truth is not None:
            s["psnr_gain"] = s["psnr"] - scores["input"]["psnr"]
            s["psnr_clean_gain"] = s["psnr_clean"] - scores["input"]["psnr_clean"]
    injection = None
    if config.inject_count > 0:
        injection = _injection_recovery(
            data, name=Path(input_zarr).stem, background=background, mask=mask, bad=bad, measured=measured,
            psf=psf, zeropoint=sources["zeropoint"],
            radius=phot["radius"] if phot else max(1.5, config.aperture_fwhm * sources["fwhm"]),
            fwhm=sources["fwhm"], images=images, baselines=baselines,
            models=_model_denoisers({m: c for m, c in (models or {}).items() if m in denoised},
                                    denoised, measured),
            config=config)
    _figure(images, measured["sigma"], config.cutout, out_png)
    _gallery(images, phot, measured["sigma"], gallery_path(out_png))
    result = {
        "exposure": Path(input_zarr).stem, "has_truth": truth is not None and stack is None,
        "photometry_reference": ("truth" if stack is None else f"stack of {stack['n']} other exposures")
        if truth is not None else "input",
        "reference_sigma": stack["sigma"] if stack else 0.0 if truth is not None else None,
        "n_sources": int(len(sources["positions"])), "aperture_radius": phot["radius"] if phot else None,
        "baselines": list(config.baselines), "methods": list(denoised),
        "magnitudes": "catalogue" if sources["catalog"] else "instrumental",
        "psf": psf.describe(), "fwhm": sources["fwhm"],
        "scores": scores, "injection": injection, "config": dataclasses.asdict(config),
        "code_version": code_version(),
        "object": str(header.get("OBJECT", "")), "filter": str(header.get("FILTER", "")),
        "has_wcs": bool(array.attrs.get("has_wcs", True)),
        "source_file": array.attrs.get("source_file"), "source_sha256": array.attrs.get("source_sha256"),
    }
    io.write_json(out_json, result)
    return result


def _onto_grid(image: np.ndarray, header, entry: dict, target_header, target_entry: dict,
               shape: tuple[int, int]) -> np.ndarray | None:
    """``image`` (exposure j) on the pixel grid of exposure i, from their registrations.

    Both registered by an offset to the field's reference: j moves by the difference of
    the rounded offsets (pixels moved, no interpolation). Otherwise j is resampled onto
    i's WCS. None when either is unregistered.
    """
    from .register import _shift_integer

    methods = {entry["method"], target_entry["method"]}
    if "unregistered" in methods:
        return None
    if "reproject" not in methods:
        offset = [round(a) - round(b) for a, b in zip(entry["offset"], target_entry["offset"], strict=True)]
        return _shift_integer(image, offset, shape)
    from reproject import reproject_interp

    resampled, _ = reproject_interp((image, io.celestial_wcs(header)), io.celestial_wcs(target_header),
                                    shape_out=shape)
    return resampled.astype(np.float32)


def _field_exposures(images: list[str], noise_files: list[str]) -> list[dict]:
    """Each exposure of a field read once: masked data (flagged pixels NaN), header, sigma."""
    out = []
    for path, noise_json in zip(images, noise_files, strict=True):
        array, mask = io.open_zarr_image(path), io.open_zarr_array(path, "mask")
        data = array[...]
        if mask is not None:
            data = np.where(mask[...] != 0, np.nan, data)
        out.append({"name": Path(path).stem, "data": data, "header": io.header_from_attrs(array.attrs),
                    "sigma": io.read_json(noise_json)["sigma"]})
    return out


def leave_one_out_stack(images: list[str], noise_files: list[str], registration: dict, *,
                        target: int, exposures: list[dict] | None = None) -> dict | None:
    """Mean of the field's other exposures on the grid of exposure ``target``.

    ``images``/``noise_files`` are the field's stores and noise JSONs; ``registration``
    the register step's JSON for the field; ``exposures``, when given, the same already
    read (:func:`evaluate_field` reads a field once for all its targets). Pixels flagged
    in a mask, or with no data, do not enter the mean. Returns ``{"image", "sigma", "n"}``
    (sigma: the stack's nominal noise, ``sqrt(sum sigma_j^2) / n``), or None with fewer
    than two others.
    """
    exposures = exposures or _field_exposures(images, noise_files)
    entries = {e["exposure"]: e for e in registration["exposures"]}
    goal = exposures[target]
    if goal["name"] not in entries:
        return None
    layers, sigmas = [], []
    for j, other in enumerate(exposures):
        if j == target or other["name"] not in entries:
            continue
        moved = _onto_grid(other["data"], other["header"], entries[other["name"]], goal["header"],
                           entries[goal["name"]], goal["data"].shape)
        if moved is not None:
            layers.append(moved)
            sigmas.append(other["sigma"])
    if len(layers) < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels stay NaN
        image = np.nanmean(np.stack(layers), axis=0).astype(np.float32)
    return {"image": image, "sigma": float(np.sqrt(np.sum(np.square(sigmas))) / len(sigmas)),
            "n": len(layers)}


def evaluate_field(images: list[str], noise_files: list[str], denoised: dict[str, str], *,
                   out_dir: str, truth_fits: str | None = None, catalog: str | None = None,
                   registration: str | None = None, models: dict[str, str] | None = None,
                   config: EvaluateConfig = EvaluateConfig()) -> list[dict]:
    """Evaluate every exposure of one field; write ``out_dir/<exposure>.json`` and ``.png``.

    ``denoised`` maps a method to the directory of its ``<exposure>.zarr`` stores. With a
    truth (demo) every exposure is scored against it. Without one, and with the field's
    ``registration`` and at least three exposures, each exposure is scored against the
    mean of the others (leave-one-out), whose own noise is recorded as
    ``reference_sigma``: real data's best stand-in for the truth. ``models`` (method:
    checkpoint) lets injection-recovery denoise the injected exposures.
    """
    layout = io.read_json(registration) if registration and not truth_fits else None
    exposures = _field_exposures(images, noise_files) if layout else None
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
