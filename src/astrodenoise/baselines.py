"""Classical denoisers, the baselines a self-supervised network has to beat.

- **Gaussian smoothing** in data units: linear, so it keeps total flux, but spreads it
  beyond a PSF-sized aperture and blurs everything by the same kernel.
- **Non-local means** (scikit-image, fast mode) and **BM3D** (the ``bm3d`` package,
  Makitalo & Foi's recommended pipeline for Poisson-Gaussian data): both assume noise
  of one known level, so they run on the generalised-Anscombe-transformed image (unit
  noise everywhere, :func:`astrodenoise.transform.stabilising`) and the result is mapped
  back with the transform's closed-form unbiased inverse. Without a known gain the
  transform is linear: sky subtracted, divided by the blank-sky sigma.

Every denoiser takes ``data`` ((ny, nx) float32, ADU, NaN = no data) and a
:class:`~astrodenoise.noise_model.NoiseModel`, and returns (ny, nx) float32 in ADU.
No-data pixels are filled with the sky level before denoising (so they pull neighbours
towards the sky, never towards zero) and are NaN again in the output.
"""

from __future__ import annotations

import bm3d
import numpy as np
from scipy import ndimage
from skimage.restoration import denoise_nl_means

from .noise_model import NoiseModel
from .transform import stabilising

__all__ = ["gaussian_smooth", "gaussian_denoise", "nlm_denoise", "bm3d_denoise", "DENOISERS", "denoise"]


def gaussian_smooth(image: np.ndarray, *, sigma: float) -> np.ndarray:
    """Gaussian smoothing of standard deviation ``sigma`` pixels, NaN-aware (normalised
    convolution: no-data pixels neither count nor pull their neighbours down)."""
    valid = np.isfinite(image)
    num = ndimage.gaussian_filter(np.where(valid, image, 0.0), sigma)
    den = ndimage.gaussian_filter(valid.astype(float), sigma)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / den
    out[~valid] = np.nan
    return out.astype(np.float32)


def gaussian_denoise(data: np.ndarray, noise: NoiseModel, *, width: float = 1.0) -> np.ndarray:
    """Gaussian smoothing of standard deviation ``width`` pixels, NaN-aware.

    ``noise`` is unused (the kernel does not adapt to the noise); it is taken so that
    every baseline has one signature.
    """
    return gaussian_smooth(data, sigma=width)


def _in_stabilised_domain(data: np.ndarray, noise: NoiseModel, denoiser) -> np.ndarray:
    """Apply ``denoiser`` (unit-noise image -> image) between the forward and inverse map."""
    norm = stabilising(noise)
    image, nodata = norm.forward(data)
    out = norm.inverse(denoiser(image.astype(np.float64)))
    out[nodata] = np.nan
    return out


def nlm_denoise(data: np.ndarray, noise: NoiseModel, *, strength: float = 0.8, patch_size: int = 5,
                patch_distance: int = 6) -> np.ndarray:
    """Non-local means (scikit-image, fast mode) on the variance-stabilised image.

    ``strength`` is the filter parameter ``h`` in units of the (unit) noise sigma;
    ``patch_size`` and ``patch_distance`` are in pixels.
    """
    return _in_stabilised_domain(data, noise, lambda u: denoise_nl_means(
        u, h=strength, sigma=1.0, fast_mode=True, patch_size=patch_size,
        patch_distance=patch_distance))


def bm3d_denoise(data: np.ndarray, noise: NoiseModel) -> np.ndarray:
    """BM3D (both stages, the package's default profile) on the variance-stabilised image,
    with noise sigma 1 there."""
    return _in_stabilised_domain(data, noise, lambda u: np.asarray(bm3d.bm3d(u, sigma_psd=1.0)))


#: Name -> denoiser, each ``f(data, noise) -> denoised`` with its default settings.
DENOISERS = {"gaussian": gaussian_denoise, "nlm": nlm_denoise, "bm3d": bm3d_denoise}


def denoise(name: str, data: np.ndarray, noise: NoiseModel) -> np.ndarray:
    """Run the baseline ``name`` (a key of :data:`DENOISERS`) with its default settings."""
    if name not in DENOISERS:
        raise ValueError(f"baseline {name!r} unknown; use one of {sorted(DENOISERS)}")
    return DENOISERS[name](data, noise)
