"""Models of sources: pixel-integrated Sérsic profiles, and the stars and PSF-convolved
galaxies injected to test a denoiser.

Stamps are odd-sided, sum 1 and centred; a source of flux ``F`` is ``F * stamp``. The
demo simulator draws its galaxies with :func:`sersic_profile` too, and injection-recovery
and the training probe draw theirs with :func:`galaxy_stamps`: Sersic profiles of index
0.5-4 convolved with the measured PSF.
"""

from __future__ import annotations

import numpy as np
from astropy.modeling.models import Sersic2D
from scipy.signal import fftconvolve

__all__ = ["OVERSAMPLE", "subpixel_grid", "pixel_integrate", "sersic_profile", "GALAXY_SIZES",
           "galaxy_stamps", "source_stamps", "with_photon_noise"]

#: Sub-pixel samples per axis when a profile is integrated over pixels.
OVERSAMPLE = 5

#: Half-light radii of injected galaxies, in units of the PSF FWHM (log-uniform between):
#: from barely resolved to the size of the seeing disc, as the galaxies near a survey's limit.
GALAXY_SIZES = (0.2, 1.0)


def subpixel_grid(half: int, dx: float = 0.0, dy: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) sample offsets of a (2 half + 1)^2 stamp, :data:`OVERSAMPLE` per pixel and
    axis, relative to the point (dx, dy) from the stamp's centre."""
    n = 2 * half + 1
    step = 1.0 / OVERSAMPLE
    axis = np.arange(n * OVERSAMPLE) * step - half - 0.5 + step / 2
    yy, xx = np.meshgrid(axis - dy, axis - dx, indexing="ij")
    return yy, xx


def pixel_integrate(samples: np.ndarray) -> np.ndarray:
    """The mean of each pixel's sub-pixel samples (of :func:`subpixel_grid`)."""
    n = samples.shape[0] // OVERSAMPLE
    return samples.reshape(n, OVERSAMPLE, n, OVERSAMPLE).mean(axis=(1, 3))


def sersic_profile(half: int, *, r_eff: float, n: float, ellip: float, theta: float,
                   dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
    """A pixel-integrated Sersic profile (astropy ``Sersic2D``) of half-light radius
    ``r_eff`` pixels, index ``n``, ellipticity ``ellip`` and angle ``theta`` (radians),
    centred (dx, dy) from the stamp's centre: (2 half + 1)^2, sum 1 (the light beyond the
    stamp is left out)."""
    model = Sersic2D(amplitude=1.0, r_eff=r_eff, n=n, x_0=dx, y_0=dy, ellip=ellip, theta=theta)
    yy, xx = subpixel_grid(half)
    stamp = pixel_integrate(model(xx, yy))
    return stamp / stamp.sum()


def _centred(stamp: np.ndarray, half: int) -> np.ndarray:
    """``stamp`` cut or zero-padded to (2 half + 1)^2 about its centre."""
    own = stamp.shape[0] // 2
    if own > half:
        return stamp[own - half:own + half + 1, own - half:own + half + 1]
    return np.pad(stamp, half - own)


def galaxy_stamps(psf: np.ndarray, rng: np.random.Generator, count: int, *, fwhm: float,
                  largest: int | None = None) -> np.ndarray:
    """(count, s, s) galaxies of sum 1: Sersic profiles (index uniform 0.5-4, half-light
    radius log-uniform over :data:`GALAXY_SIZES` x ``fwhm`` and at least 0.5 px,
    ellipticity 0-0.7, random angle) convolved with ``psf``. The stamps are the PSF's size
    plus three half-light radii of the largest galaxy, at most ``largest`` (half-side)."""
    lo, hi = np.log(GALAXY_SIZES[0] * fwhm), np.log(GALAXY_SIZES[1] * fwhm)
    shapes = [(max(0.5, float(np.exp(rng.uniform(lo, hi)))), rng.uniform(0.5, 4.0), rng.uniform(0.0, 0.7),
               rng.uniform(0, np.pi)) for _ in range(count)]
    half = psf.shape[0] // 2 + int(np.ceil(3 * max((s[0] for s in shapes), default=0)))
    half = min(half, largest) if largest else half
    kernel = _centred(psf, half)
    out = []
    for r_eff, n, ellip, theta in shapes:
        profile = sersic_profile(half, r_eff=r_eff, n=n, ellip=ellip, theta=theta)
        stamp = np.clip(fftconvolve(profile, kernel, mode="same"), 0, None)
        out.append(stamp / stamp.sum())
    return np.stack(out).reshape(count, 2 * half + 1, 2 * half + 1)


def source_stamps(psf: np.ndarray, rng: np.random.Generator, *, fwhm: float, galaxies: int = 8,
                  largest: int | None = None) -> np.ndarray:
    """(1 + galaxies, s, s) stamps of sum 1: the point source ``psf`` first, then
    :func:`galaxy_stamps`, all on one stamp size, so that injected sources are stars and
    galaxies like those a survey holds."""
    if not galaxies:
        return (psf / psf.sum())[None]
    extended = galaxy_stamps(psf, rng, galaxies, fwhm=fwhm, largest=largest)
    point = _centred(psf, extended.shape[1] // 2)
    return np.concatenate([(point / point.sum())[None], extended])


def with_photon_noise(model: np.ndarray, *, gain: float | None, rng: np.random.Generator) -> np.ndarray:
    """``model`` (data units, >= 0) plus its photon noise: Gaussian of variance
    ``model / gain`` (``gain`` in e- per data unit); ``model`` as it is without a gain."""
    if not gain:
        return model
    return model + rng.standard_normal(model.shape) * np.sqrt(np.clip(model, 0, None) / gain)
