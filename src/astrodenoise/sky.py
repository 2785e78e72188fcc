"""The sky under the sources: background and its RMS maps, and the mask of what is not sky.

Shared by the noise step (which measures the noise on blank sky), evaluation (blank-sky
RMS, photometry, detection) and the PSF measurement.
"""

from __future__ import annotations

import numpy as np
from astropy.stats import SigmaClip, sigma_clipped_stats
from photutils.background import Background2D, MADStdBackgroundRMS, MedianBackground
from photutils.segmentation import detect_sources
from scipy import ndimage

__all__ = ["estimate_background", "source_mask"]


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
    # Crowded fields and nebulae leave few clean meshes: accept more masked pixels per
    # mesh before falling back to one sigma-clipped level for the whole image.
    for exclude in (50.0, 90.0):
        try:
            bkg = Background2D(
                data, box, filter_size=filter_size, mask=nodata,
                sigma_clip=SigmaClip(sigma=3.0, maxiters=10),
                bkg_estimator=MedianBackground(), bkg_rms_estimator=MADStdBackgroundRMS(),
                exclude_percentile=exclude,
            )
        except ValueError:
            continue
        return bkg.background.astype(np.float32), bkg.background_rms.astype(np.float32)
    _, median, std = sigma_clipped_stats(data[~nodata], sigma=3.0, maxiters=10)
    return np.full(data.shape, median, np.float32), np.full(data.shape, std, np.float32)


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
