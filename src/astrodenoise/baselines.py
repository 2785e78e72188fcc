"""Classical denoisers, the baselines a self-supervised network has to beat.

- **Gaussian smoothing** in data units: linear, so it keeps total flux, but spreads it
  beyond a PSF-sized aperture and blurs everything by the same kernel.
- **Non-local means** (scikit-image, fast mode) and **BM3D** (the ``bm3d`` package,
  Makitalo & Foi's recommended pipeline for Poisson-Gaussian data): both assume noise
  of one known level, so they run on the generalised-Anscombe-transformed image (unit
  noise everywhere, :class:`astrodenoise.train.Normalisation`) and the result is mapped
  back with the transform's closed-form unbiased inverse. Without a known gain the
  transform is linear: sky subtracted, divided by the blank-sky sigma.

Every denoiser takes ``data`` ((ny, nx) float32, ADU, NaN = no data) and a
:class:`NoiseModel`, and returns (ny, nx) float32 in ADU. No-data pixels are filled
with the sky level before denoising (so they pull neighbours towards the sky, never
towards zero) and are NaN again in the output.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .evaluate import gaussian_baseline
from .noise import exposure_gain
from .train import Normalisation

__all__ = ["NoiseModel", "gaussian_denoise", "nlm_denoise", "bm3d_denoise", "DENOISERS", "denoise"]


@dataclass(frozen=True)
class NoiseModel:
    """Noise of one exposure: Poisson-Gaussian when ``gain`` is known, else Gaussian.

    Attributes
    ----------
    sky : sky level, ADU
    sigma : blank-sky noise standard deviation, ADU
    gain : e-/ADU, or None (noise taken as Gaussian of standard deviation ``sigma``)
    read_noise : e-, or None; informative only, since ``sigma`` at the sky already
        holds the read-noise variance
    """

    sky: float
    sigma: float
    gain: float | None = None
    read_noise: float | None = None

    @classmethod
    def from_noise_json(cls, measured: dict) -> NoiseModel:
        """From a noise-step JSON (``sky_level``, ``sigma``, ``gain``, ...)."""
        return cls(sky=float(measured["sky_level"]), sigma=float(measured["sigma"]),
                   gain=exposure_gain(measured), read_noise=measured.get("header_read_noise"))

    def normalisation(self) -> Normalisation:
        """The variance-stabilising map of this noise (generalised Anscombe or linear)."""
        if self.gain:
            return Normalisation("gat", offset=self.sky, scale=self.sigma, gain=float(self.gain))
        return Normalisation("linear", offset=self.sky, scale=self.sigma)


def gaussian_denoise(data: np.ndarray, noise: NoiseModel, *, width: float = 1.0) -> np.ndarray:
    """Gaussian smoothing of standard deviation ``width`` pixels, NaN-aware.

    ``noise`` is unused (the kernel does not adapt to the noise); it is taken so that
    every baseline has one signature.
    """
    return gaussian_baseline(data, sigma=width)


def _in_stabilised_domain(data: np.ndarray, noise: NoiseModel, denoiser) -> np.ndarray:
    """Apply ``denoiser`` (unit-noise image -> image) between the forward and inverse map."""
    norm = noise.normalisation()
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
    from skimage.restoration import denoise_nl_means

    return _in_stabilised_domain(data, noise, lambda u: denoise_nl_means(
        u, h=strength, sigma=1.0, fast_mode=True, patch_size=patch_size,
        patch_distance=patch_distance))


def bm3d_denoise(data: np.ndarray, noise: NoiseModel) -> np.ndarray:
    """BM3D (both stages, the package's default profile) on the variance-stabilised image,
    with noise sigma 1 there. Needs the ``bm3d`` package (``pip install bm3d``)."""
    import bm3d

    return _in_stabilised_domain(data, noise, lambda u: np.asarray(bm3d.bm3d(u, sigma_psd=1.0)))


#: Name -> denoiser, each ``f(data, noise) -> denoised`` with its default settings.
DENOISERS = {"gaussian": gaussian_denoise, "nlm": nlm_denoise, "bm3d": bm3d_denoise}


def denoise(name: str, data: np.ndarray, noise: NoiseModel) -> np.ndarray:
    """Run the baseline ``name`` (a key of :data:`DENOISERS`) with its default settings."""
    if name not in DENOISERS:
        raise ValueError(f"baseline {name!r} unknown; use one of {sorted(DENOISERS)}")
    return DENOISERS[name](data, noise)
