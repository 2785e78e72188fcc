"""Evaluation: metrics that tell an astronomer whether a denoised image can be trusted.

Every image of an exposure (the noisy input, each denoiser's output and a classical
Gaussian-smoothing baseline) is scored the same way:

- ``rms_blank``: noise in blank sky. The robust standard deviation (MAD x 1.4826) of
  ``image - background`` over pixels away from any detected source (the source mask of
  the noise step, measured on the input), in data units. ``rms_ratio`` = input / image.
- ``psnr``, ``ssim``, ``rmse``: against the noise-free truth when one exists (demo),
  with ``data_range = max(truth) - min(truth)``.
- ``photometry``: circular-aperture flux (radius = PSF FWHM) at every catalogue source,
  background-subtracted with the same map for every image, compared with the flux of the
  reference (the truth when known, otherwise the input). Per class of reference S/N
  (bright: S/N > 50; faint: 5 < S/N < 20) the median fractional flux bias
  ``(F - F_ref) / F_ref`` and its robust scatter. A denoiser that lowers the noise but
  dims faint sources shows a negative faint bias: photometry is the science.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.stats import mad_std
from astropy.table import Table
from astropy.visualization import AsinhStretch, ImageNormalize, PercentileInterval
from matplotlib.figure import Figure
from photutils.aperture import CircularAperture, aperture_photometry
from photutils.segmentation import SourceCatalog, detect_sources
from scipy import ndimage
from skimage.metrics import structural_similarity

from . import io
from .noise import estimate_background, source_mask
from .provenance import code_version

__all__ = [
    "EvaluateConfig",
    "blank_sky_rms",
    "psnr",
    "aperture_fluxes",
    "flux_bias",
    "gaussian_baseline",
    "score_image",
    "evaluate",
]


@dataclass(frozen=True)
class EvaluateConfig:
    """Settings of the evaluate step.

    ``gaussian_sigma`` is the width (pixels) of the Gaussian-smoothing baseline;
    ``aperture_fwhm`` the aperture radius in units of the PSF FWHM; ``default_fwhm``
    the FWHM in pixels used when neither header nor catalogue give one; ``cutout`` the
    side in pixels of the before/after figure.
    """

    gaussian_sigma: float = 1.0
    aperture_fwhm: float = 1.0
    default_fwhm: float = 3.5
    cutout: int = 192

    @classmethod
    def from_dict(cls, values: dict) -> EvaluateConfig:
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


def _detected_positions(image, background, rms) -> np.ndarray:
    segments = detect_sources(np.nan_to_num(image - background), 3.0 * rms, n_pixels=5)
    if segments is None:
        return np.empty((0, 2))
    cat = SourceCatalog(np.nan_to_num(image - background), segments)
    return np.column_stack([cat.x_centroid, cat.y_centroid])


def _photometry_setup(reference, background, positions, *, fwhm, sigma, gain, config):
    radius = max(1.5, config.aperture_fwhm * fwhm)
    ref_flux = aperture_fluxes(reference - background, positions, radius=radius)
    area = np.pi * radius**2
    # Variance of an aperture sum in ADU^2: sky noise plus source Poisson noise (F / gain).
    variance = area * sigma**2 + np.clip(ref_flux, 0, None) / (gain or np.inf)
    return {"positions": positions, "radius": radius, "reference": ref_flux,
            "snr": ref_flux / np.sqrt(variance)}


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


def evaluate(input_zarr: str, noise_json: str, denoised: dict[str, str], *, out_json: str,
             out_png: str, truth_fits: str | None = None, catalog: str | None = None,
             config: EvaluateConfig = EvaluateConfig()) -> dict:
    """Score the input, a Gaussian baseline and each denoised image of one exposure.

    Parameters
    ----------
    input_zarr, noise_json : the ingested exposure and its noise measurement
    denoised : {method name: zarr store of the denoised exposure}
    truth_fits, catalog : noise-free truth (ADU) and source catalogue, when known (demo)

    Writes ``out_json`` (metrics, see module docstring) and ``out_png`` (cutouts).
    """
    array = io.open_zarr_image(input_zarr)
    data, header = array[...], io.header_from_attrs(array.attrs)
    measured = io.read_json(noise_json)
    background, rms = estimate_background(data)
    mask = source_mask(data, background, rms)
    images = {"input": data, "gaussian": gaussian_baseline(data, sigma=config.gaussian_sigma)}
    images |= {name: io.open_zarr_image(path)[...] for name, path in denoised.items()}
    truth = io.read_fits_image(truth_fits)[0] if truth_fits else None
    fwhm = float(header.get("FWHM", config.default_fwhm))
    if catalog:
        table = Table.read(catalog, format="ascii.ecsv")
        positions = np.column_stack([table["x"], table["y"]])
        fwhm = float(table.meta.get("fwhm_pix", fwhm))
    else:
        positions = _detected_positions(data, background, rms)
    reference = truth if truth is not None else data
    phot = None
    if len(positions):
        phot = _photometry_setup(reference, background, positions, fwhm=fwhm,
                                 sigma=measured["sigma"], gain=measured.get("header_gain"),
                                 config=config)
    scores = {name: score_image(img, background=background, mask=mask, truth=truth, phot=phot)
              for name, img in images.items()}
    for s in scores.values():
        s["rms_ratio"] = scores["input"]["rms_blank"] / s["rms_blank"]
        if truth is not None:
            s["psnr_gain"] = s["psnr"] - scores["input"]["psnr"]
    _figure(images, measured["sigma"], config.cutout, out_png)
    result = {
        "exposure": Path(input_zarr).stem, "has_truth": truth is not None,
        "photometry_reference": "truth" if truth is not None else "input",
        "n_sources": int(len(positions)), "aperture_radius": phot["radius"] if phot else None,
        "scores": scores, "config": dataclasses.asdict(config), "code_version": code_version(),
        "object": str(header.get("OBJECT", "")), "filter": str(header.get("FILTER", "")),
        "has_wcs": bool(array.attrs.get("has_wcs", True)),
    }
    io.write_json(out_json, result)
    return result
