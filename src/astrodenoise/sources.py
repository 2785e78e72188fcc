"""Models of the sources that are injected to test a denoiser: stars and small galaxies.

Stamps are odd-sided, sum 1 and centred; a source of flux ``F`` is ``F * stamp``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["source_stamps", "with_photon_noise"]


def source_stamps(psf: np.ndarray, rng: np.random.Generator, *, galaxies: int = 8) -> np.ndarray:
    """(1 + galaxies, s, s) stamps of sum 1: the PSF, and the PSF convolved with
    exponential discs (half-light radius 0.8-3 px, axis ratio 0.4-1, random angle), so
    that injected sources are stars and small galaxies like those a survey holds."""
    half = psf.shape[0] // 2
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1].astype(float)
    stamps = [psf]
    for _ in range(galaxies):
        r_eff, q, angle = rng.uniform(0.8, 3.0), rng.uniform(0.4, 1.0), rng.uniform(0, np.pi)
        u = xx * np.cos(angle) + yy * np.sin(angle)
        v = (-xx * np.sin(angle) + yy * np.cos(angle)) / q
        disc = np.exp(-1.678 * np.hypot(u, v) / r_eff)  # 1.678: half light inside r_eff
        stamp = np.clip(ndimage.convolve(disc / disc.sum(), psf, mode="constant"), 0, None)
        stamps.append(stamp / stamp.sum())
    return np.stack(stamps)


def with_photon_noise(model: np.ndarray, *, gain: float | None, rng: np.random.Generator) -> np.ndarray:
    """``model`` (data units, >= 0) plus its photon noise: Gaussian of variance
    ``model / gain`` (``gain`` in e- per data unit); ``model`` as it is without a gain."""
    if not gain:
        return model
    return model + rng.standard_normal(model.shape) * np.sqrt(np.clip(model, 0, None) / gain)
