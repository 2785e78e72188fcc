"""Tests of astrodenoise.metrics: PSNR, blank-sky RMS, power spectrum, residuals and outlier pixels."""

from __future__ import annotations

import numpy as np
import pytest

from astrodenoise.baselines import gaussian_smooth
from astrodenoise.metrics import (
    blank_sky_rms,
    outlier_pixels,
    power_spectrum,
    psnr,
    repair_check,
    residual_statistics,
)
from conftest import ramp


@pytest.mark.parametrize("offset", [0.1, 0.5, 2.0])
def test_psnr_of_constant_offset_is_analytic(offset):
    truth = ramp()  # data range exactly 10

    value = psnr(truth + offset, truth)

    assert value == pytest.approx(10 * np.log10(10.0**2 / offset**2), rel=1e-9)


def test_psnr_of_gaussian_noise_is_close_to_analytic():
    truth = ramp((200, 200))
    noisy = truth + np.random.default_rng(0).normal(0.0, 0.5, truth.shape)

    assert psnr(noisy, truth) == pytest.approx(20 * np.log10(10.0 / 0.5), abs=0.05)


def test_psnr_ignores_nan_pixels():
    truth = ramp()
    image = truth + 0.5
    image[0, :] = np.nan
    image[5, 5] = np.nan

    assert psnr(image, truth) == pytest.approx(10 * np.log10(100 / 0.25), rel=1e-9)


@pytest.mark.parametrize("sigma", [0.2, 4.0])
def test_blank_sky_rms_recovers_sigma_of_pure_noise(sigma):
    rng = np.random.default_rng(1)
    image = 50.0 + rng.normal(0.0, sigma, (128, 128))
    background = np.full(image.shape, 50.0)
    mask = np.zeros(image.shape, bool)

    assert blank_sky_rms(image, background=background, mask=mask) == pytest.approx(sigma, rel=0.03)


def test_blank_sky_rms_ignores_masked_pixels_and_nan():
    rng = np.random.default_rng(2)
    image = rng.normal(0.0, 1.0, (128, 128))
    image[:20, :] += 500.0  # a bright source...
    mask = np.zeros(image.shape, bool)
    mask[:20, :] = True  # ...masked
    image[100, 100] = np.nan

    value = blank_sky_rms(image, background=np.zeros(image.shape), mask=mask)

    assert value == pytest.approx(1.0, rel=0.03)


def test_power_spectrum_of_white_noise_is_flat_and_smoothing_cuts_high_frequencies():
    rng = np.random.default_rng(5)
    noise = rng.normal(0.0, 2.0, (128, 128))
    zeros, blank = np.zeros(noise.shape), np.zeros(noise.shape, bool)

    k, white = power_spectrum(noise, background=zeros, mask=blank)
    _, smooth = power_spectrum(gaussian_smooth(noise, sigma=1.5), background=zeros, mask=blank)

    assert k[0] < k[-1] <= 0.5
    # sigma^2 at every k (the lowest ring holds few Fourier modes, so it scatters most)
    assert white[1:] == pytest.approx(np.full(len(k) - 1, 4.0), rel=0.15)
    assert white[0] == pytest.approx(4.0, rel=0.4)
    assert smooth[-1] / white[-1] < 0.05 and smooth[0] / white[0] > 0.3


def test_residual_of_a_perfect_denoiser_is_unit_noise_and_zero_at_sources():
    rng = np.random.default_rng(6)
    truth = np.zeros((96, 96))
    truth[40:44, 40:44] = 50.0
    data = truth + rng.normal(0.0, 1.0, truth.shape)
    mask = truth > 0

    stats = residual_statistics(data, truth, sigma=1.0, mask=mask, positions=np.array([[41.5, 41.5]]),
                                radius=2.0)
    dimmed = residual_statistics(data, truth * 0.5, sigma=1.0, mask=mask,
                                 positions=np.array([[41.5, 41.5]]), radius=2.0)

    assert stats["sky_mean"] == pytest.approx(0.0, abs=0.05)
    assert stats["sky_std"] == pytest.approx(1.0, rel=0.05)
    assert abs(stats["source_mean"]) < 1.0 and dimmed["source_mean"] > 10  # removed signal shows
    assert sum(stats["histogram"]) * 0.25 == pytest.approx(1.0, rel=0.02)


def test_outlier_pixels_find_a_cosmic_ray_but_not_a_star():
    rng = np.random.default_rng(8)
    truth = np.full((64, 64), 100.0)
    truth[20:23, 20:23] += 5000.0  # a bright star: its Poisson noise is large, not an outlier
    data = truth + rng.normal(0.0, np.sqrt(25.0 + (truth - 100.0) / 2.0))
    data[40, 40] += 3000.0  # a cosmic ray

    hits = outlier_pixels(data, truth, sky=100.0, sigma=5.0, gain=2.0)

    assert hits[40, 40] and hits[38, 40] and hits[41, 41]  # grown by 2 pixels
    assert not hits[20:23, 20:23].any()
    assert hits.sum() == 13  # the 2-pixel diamond around the hit


def _star(shape, x, y, peak, sigma=1.5):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return peak * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))


@pytest.mark.parametrize("noisy_reference", [False, True])
def test_repair_check_tells_a_cosmic_ray_from_a_star(noisy_reference):
    """A filled group where only this exposure has light (a cosmic ray) is confirmed; one
    on a star that the reference has too is not, and is counted on a source; a bright
    star's core that differs from the reference by a fraction of itself (a stack
    misregistered by a fraction of a pixel) is not confirmed either."""
    rng = np.random.default_rng(3)
    shape, sky, sigma = (96, 96), 100.0, 5.0
    truth = sky + _star(shape, 30, 30, 400.0) + _star(shape, 70, 60, 5000.0)
    data = truth + rng.normal(0, sigma, shape)
    data[80, 15] += 300.0  # a cosmic ray on the sky
    reference, noise = truth, sigma
    if noisy_reference:  # a stack of the other exposures, its bright star 0.3 px off
        shifted = sky + _star(shape, 30, 30, 400.0) + _star(shape, 70.3, 60, 5000.0)
        reference, noise = shifted + rng.normal(0, sigma / 2, shape), np.hypot(sigma, sigma / 2)
    repaired = np.zeros(shape, bool)
    repaired[79:82, 14:17] = True  # the cosmic ray, grown by one pixel
    repaired[29:32, 29:32] = True  # the faint star's core
    repaired[59:62, 69:72] = True  # the bright star's core
    positions = np.array([[30.0, 30.0], [70.0, 60.0]])

    check = repair_check(repaired, data, reference, background=np.full(shape, sky),
                         sigma=np.full(shape, noise), positions=positions, radius=2 * 3.5)

    assert check == {"groups": 3, "confirmed": 1, "pixels": 27, "unconfirmed_pixels": 18,
                     "near_sources": 18, "unconfirmed_near_sources": 18, "unchecked": 0}
    # Where the reference has no data (an edge no other exposure covers), a group is
    # neither confirmed nor unconfirmed: it is left out and counted apart.
    reference[70:90, 5:25] = np.nan
    check = repair_check(repaired, data, reference, background=np.full(shape, sky),
                         sigma=np.full(shape, noise), positions=positions, radius=2 * 3.5)
    assert (check["groups"], check["confirmed"], check["pixels"], check["unchecked"]) == (2, 0, 18, 1)


def test_repair_check_without_repairs_or_sources():
    data = np.random.default_rng(0).normal(0, 1, (32, 32))

    check = repair_check(np.zeros((32, 32)), data, data * 0, background=np.zeros((32, 32)),
                         sigma=np.ones((32, 32)), positions=np.empty((0, 2)), radius=5.0)

    assert check == {"groups": 0, "confirmed": 0, "pixels": 0, "unconfirmed_pixels": 0,
                     "near_sources": 0, "unconfirmed_near_sources": 0, "unchecked": 0}

