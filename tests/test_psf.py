"""Tests of astrodenoise.psf: the PSF measured from an exposure's own stars, or a Gaussian guess."""

from __future__ import annotations

import numpy as np
import pytest

from astrodenoise.psf import measure_psf
from conftest import SIGMA, SKY


def _moffat_field(fwhm: float, *, n_stars: int = 30, cosmic_rays: int = 0, size: int = 256, seed: int = 0):
    """Moffat (beta 3.5) stars of FWHM ``fwhm`` on flat sky with Gaussian noise, plus
    one-pixel-wide cosmic-ray hits brighter than most stars."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    beta = 3.5
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    image = np.full((size, size), SKY)
    for _ in range(n_stars):
        x0, y0 = rng.uniform(15, size - 15, 2)
        flux = 10 ** rng.uniform(3.5, 4.5)
        profile = (1 + ((xx - x0) ** 2 + (yy - y0) ** 2) / alpha**2) ** -beta
        image += flux * profile / profile.sum()
    for _ in range(cosmic_rays):
        x0, y0 = rng.integers(15, size - 15, 2)
        image[y0, x0:x0 + rng.integers(1, 4)] += rng.uniform(300, 2000)
    return (image + rng.normal(0, SIGMA, image.shape)).astype(np.float32)


@pytest.mark.parametrize("fwhm", [2.5, 4.0])
def test_psf_from_stars_recovers_their_fwhm_despite_cosmic_rays(fwhm):
    data = _moffat_field(fwhm, cosmic_rays=25)

    psf = measure_psf(data, np.full(data.shape, SKY), sigma=SIGMA, fwhm_guess=3.0)

    assert psf.n_stars >= 5 and "fit to the EPSF" in psf.method
    assert psf.stamp.sum() == pytest.approx(1.0)
    assert psf.stamp.shape[0] % 2 == 1
    assert psf.fwhm == pytest.approx(fwhm, rel=0.15)


def test_psf_without_stars_is_a_gaussian_of_the_guess_and_says_so():
    data = (SKY + np.random.default_rng(1).normal(0, SIGMA, (128, 128))).astype(np.float32)

    psf = measure_psf(data, np.full(data.shape, SKY), sigma=SIGMA, fwhm_guess=3.3)

    assert psf.n_stars == 0 and "too few stars" in psf.method
    assert psf.fwhm == 3.3
    assert psf.stamp.sum() == pytest.approx(1.0)
