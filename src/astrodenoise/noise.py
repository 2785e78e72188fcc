"""Noise estimation per exposure: sky background and a robust Gaussian sigma.

The training loss, the normalisation and the evaluation all depend on the noise level,
so it is measured from the data, never assumed. Header GAIN/RDNOISE, where present,
are recorded next to the measurement as a cross-check, not used in its place.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.stats import SigmaClip, mad_std
from photutils.background import Background2D, MADStdBackgroundRMS, MedianBackground
from photutils.segmentation import detect_sources
from scipy import ndimage

from . import io
from .provenance import code_version

__all__ = ["NoiseConfig", "estimate_background", "source_mask", "estimate_noise", "noise"]


@dataclass(frozen=True)
class NoiseConfig:
    """Settings of the noise step.

    ``box_size`` is the Background2D mesh in pixels (larger than the sources, smaller
    than sky variations); ``detect_sigma`` the threshold in sigma for masking sources;
    ``dilate`` the number of pixels by which the source mask grows (to cover wings).
    """

    box_size: int = 64
    filter_size: int = 3
    detect_sigma: float = 2.0
    dilate: int = 4

    @classmethod
    def from_dict(cls, values: dict) -> NoiseConfig:
        return cls(**values)


def estimate_background(data: np.ndarray, *, box_size: int = 64, filter_size: int = 3, mask=None):
    """Return the sky background and its RMS maps, both (ny, nx) float32 in data units.

    Parameters
    ----------
    data : (ny, nx) float32; NaN = no data
    box_size : mesh size in pixels, clipped to the image size
    mask : (ny, nx) bool, optional; True = pixel excluded (e.g. sources)
    """
    nodata = ~np.isfinite(data)
    if mask is not None:
        nodata = nodata | mask
    box = int(min(box_size, *data.shape))
    bkg = Background2D(
        data, box, filter_size=filter_size, mask=nodata,
        sigma_clip=SigmaClip(sigma=3.0, maxiters=10),
        bkg_estimator=MedianBackground(), bkg_rms_estimator=MADStdBackgroundRMS(),
        exclude_percentile=50.0,
    )
    return bkg.background.astype(np.float32), bkg.background_rms.astype(np.float32)


def source_mask(data: np.ndarray, background: np.ndarray, rms: np.ndarray, *,
                detect_sigma: float = 2.0, dilate: int = 4) -> np.ndarray:
    """Return a bool mask, True on sources (and their dilated wings) and on no-data pixels.

    Sources are connected groups of at least 5 pixels above ``detect_sigma * rms``
    after light 3x3 smoothing, which catches faint extended sources.
    """
    residual = np.nan_to_num(data - background, nan=0.0)
    smoothed = ndimage.uniform_filter(residual, 3)
    # A 3x3 mean lowers the noise by 3; keep the threshold in units of the smoothed noise.
    segments = detect_sources(smoothed, detect_sigma * rms / 3.0, n_pixels=5)
    mask = np.zeros(data.shape, bool) if segments is None else segments.data > 0
    if dilate:
        mask = ndimage.binary_dilation(mask, iterations=dilate)
    return mask | ~np.isfinite(data)


def estimate_noise(data: np.ndarray, *, header: fits.Header | None = None,
                   config: NoiseConfig = NoiseConfig()) -> dict:
    """Measure sky level and Gaussian noise sigma of one exposure.

    Parameters
    ----------
    data : (ny, nx) float32, data units (ADU for raw frames); NaN = no data
    header : the exposure header, for GAIN and RDNOISE cross-checks
    config : NoiseConfig

    Returns
    -------
    dict with ``sky_level`` (median sky, data units), ``sky_rms`` (median of the
    Background2D RMS map), ``sigma`` (robust std of source-free, sky-subtracted
    pixels: the Gaussian noise level), ``blank_fraction`` (share of pixels used),
    ``nan_fraction``, ``header_gain``/``header_read_noise`` (None if absent) and
    ``sigma_from_header`` (sqrt(sky*gain + rn^2)/gain, None without both keywords).
    """
    background, rms = estimate_background(data, box_size=config.box_size,
                                          filter_size=config.filter_size)
    mask = source_mask(data, background, rms, detect_sigma=config.detect_sigma,
                       dilate=config.dilate)
    # A second pass with sources masked gives a background not pulled up by wings.
    background, rms = estimate_background(data, box_size=config.box_size,
                                          filter_size=config.filter_size, mask=mask)
    blank = (data - background)[~mask]
    sigma = float(mad_std(blank, ignore_nan=True))
    sky_level = float(np.nanmedian(background))
    gain, read_noise = _header_float(header, "GAIN"), _header_float(header, "RDNOISE")
    expected = None
    if gain and read_noise is not None and sky_level > 0:
        expected = float(np.sqrt(sky_level * gain + read_noise**2) / gain)
    return {
        "sky_level": sky_level,
        "sky_rms": float(np.nanmedian(rms)),
        "sigma": sigma,
        "blank_fraction": float((~mask).mean()),
        "nan_fraction": float((~np.isfinite(data)).mean()),
        "header_gain": gain,
        "header_read_noise": read_noise,
        "sigma_from_header": expected,
    }


def _header_float(header: fits.Header | None, key: str) -> float | None:
    if header is None or key not in header:
        return None
    try:
        return float(header[key])
    except (TypeError, ValueError):
        return None


def noise(input_zarr: str | Path, out_json: str | Path, *, config: NoiseConfig = NoiseConfig()) -> dict:
    """Measure the noise of one ingested exposure and write it as JSON (atomically)."""
    array = io.open_zarr_image(input_zarr)
    result = estimate_noise(array[...], header=io.header_from_attrs(array.attrs), config=config)
    if not np.isfinite(result["sigma"]) or result["sigma"] <= 0:
        raise io.InputError(input_zarr, f"measured noise sigma is {result['sigma']}: the image "
                            "has no usable blank sky (check its content and mask)")
    result |= {"exposure": Path(input_zarr).stem, "config": dataclasses.asdict(config),
               "code_version": code_version()}
    io.write_json(out_json, result)
    return result
