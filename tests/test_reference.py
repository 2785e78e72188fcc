"""The clean leave-one-out reference: cosmic rays rejected through the noise model, the
stack's noise, and the unbiased MSE estimate it allows (metrics.reference_mse)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

import conftest
from astrodenoise.metrics import estimated_psnr, reference_mse, reference_range
from astrodenoise.noise_model import NoiseModel
from astrodenoise.reference import (
    expected_input_psnr,
    exposure_psf,
    layer_variance,
    reject_outliers,
    weighted_stack,
)
from conftest import moffat_field

SKY, SIGMA, GAIN = 100.0, 5.0, 4.0


def _truth(size: int = 96, seed: int = 0) -> np.ndarray:
    """Sky with a few Gaussian stars of 200 to 20,000 ADU peak."""
    rng = np.random.default_rng(seed)
    image = np.zeros((size, size))
    for _ in range(12):
        y, x = rng.integers(8, size - 8, size=2)
        image[y, x] = rng.uniform(200, 20000) * 2 * np.pi * 2.0**2
    return SKY + ndimage.gaussian_filter(image, 2.0)


def _exposure(truth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noise = NoiseModel(sky=SKY, sigma=SIGMA, gain=GAIN)
    return (truth + rng.standard_normal(truth.shape) * noise.pixel_sigma(truth)).astype(np.float32)


def _cosmic_rays(image: np.ndarray, rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``image`` with ``count`` two-pixel hits of 30-300 sigma; and where they are."""
    hit = np.zeros(image.shape, bool)
    ys, xs = rng.integers(2, image.shape[0] - 3, size=(2, count))
    hit[ys, xs] = hit[ys, xs + 1] = True
    out = image.copy()
    out[hit] += rng.uniform(30, 300, size=hit.sum()) * SIGMA
    return out, hit


@pytest.mark.parametrize("n", [2, 3, 5])
def test_cosmic_rays_are_rejected_and_stars_are_kept(n):
    rng = np.random.default_rng(n)
    truth = _truth()
    layers = np.stack([_exposure(truth, rng) for _ in range(n)])
    layers[0], hit = _cosmic_rays(layers[0], rng, 30)
    noises = [NoiseModel(sky=SKY, sigma=SIGMA, gain=GAIN)] * n

    rejected = reject_outliers(layers, noises)

    # Every hit off the bright cores (where a tenth of the signal, for other seeing,
    # hides a hit of a few hundred ADU on 20,000) of the first exposure.
    assert rejected[0][hit & (truth - SKY < 50 * SIGMA)].all()
    grown = ndimage.binary_dilation(hit, iterations=1)
    # Elsewhere almost nothing: no star core, no noise peak of an unhit exposure.
    assert rejected[0][~grown].mean() < 1e-3
    assert rejected[1:].mean() < 1e-3


def test_a_pixel_never_loses_every_exposure():
    layers = np.stack([np.full((8, 8), SKY), np.full((8, 8), SKY + 100 * SIGMA)]).astype(np.float32)
    noises = [NoiseModel(sky=SKY, sigma=SIGMA, gain=GAIN)] * 2

    rejected = reject_outliers(layers, noises, grow=3)

    assert (~rejected).any(axis=0).all()
    assert not rejected[0].any() and rejected[1].all()  # the brighter one goes


def test_without_a_gain_the_photon_noise_is_bounded_from_above():
    noise = NoiseModel(sky=SKY, sigma=SIGMA, gain=None)
    signal = np.array([SKY, SKY + 1000.0])

    variance = layer_variance(signal, noise)

    # All the sky noise taken as photon noise: the gain read as sky / sigma^2 = 4, which
    # bounds the photon noise of any gain with read noise from above.
    assert variance == pytest.approx([SIGMA**2, SIGMA**2 + 1000.0 * SIGMA**2 / SKY])


def test_stack_noise_is_what_the_noise_model_propagates():
    rng = np.random.default_rng(4)
    truth = _truth(size=128)
    sigmas = (4.0, 5.0, 7.0)
    noises = [NoiseModel(sky=SKY, sigma=s, gain=GAIN) for s in sigmas]
    layers = np.stack([truth + rng.standard_normal(truth.shape) * n.pixel_sigma(truth) for n in noises])

    image, variance = weighted_stack(layers, noises)

    residual = (image - truth) / np.sqrt(variance)
    assert residual.mean() == pytest.approx(0.0, abs=0.02)
    assert residual.std() == pytest.approx(1.0, abs=0.02)
    assert np.sqrt(np.median(variance)) < min(sigmas)  # deeper than its best exposure


@pytest.mark.parametrize("m", [2, 3])
def test_reference_mse_is_unbiased_against_noisy_copies(m):
    """Many repetitions: the estimate's mean is the true MSE, its SE the spread."""
    rng = np.random.default_rng(m)
    truth = _truth(size=128)
    error = 0.1 * SIGMA * ndimage.gaussian_filter(rng.standard_normal(truth.shape), 1.0) * 3
    image = truth + error
    true_mse = float(np.mean(error**2))
    estimates, errors = [], []
    for _ in range(40):
        layers = np.stack([_exposure(truth, rng) for _ in range(m)]).astype(np.float64)
        mse, se = reference_mse(image, layers)
        estimates.append(mse)
        errors.append(se)

    # The reference's own noise (variance 25 per pixel, 40 times the error's) cancels.
    assert np.mean(estimates) == pytest.approx(true_mse, abs=3 * np.std(estimates) / np.sqrt(40))
    assert np.mean(errors) == pytest.approx(np.std(estimates), rel=0.35)
    # The naive MSE against the mean of the copies is off by the copies' noise.
    naive = float(np.mean((image - layers.mean(axis=0)) ** 2))
    assert naive > 10 * true_mse


def test_estimated_psnr_and_its_bound():
    assert estimated_psnr(1.0, 0.1, 100.0)["psnr"] == pytest.approx(40.0)
    assert estimated_psnr(1.0, 0.1, 100.0)["psnr_se"] == pytest.approx(10 / np.log(10) * 0.1)
    bound = estimated_psnr(0.1, 0.1, 100.0)
    assert bound["psnr"] is None and bound["psnr_lower"] == pytest.approx(10 * np.log10(1e4 / 0.3))


def test_reference_range_ignores_the_references_own_noise_troughs():
    rng = np.random.default_rng(1)
    truth = _truth()
    noisy = truth + rng.standard_normal(truth.shape) * 3.0

    assert reference_range(noisy) == pytest.approx(truth.max() - truth.min(), rel=0.01)


def test_where_two_of_three_have_data_a_cosmic_ray_leaves_the_other_one():
    layers = np.full((3, 8, 8), SKY, dtype=np.float32)
    layers[0, :, :4] = np.nan  # the first exposure does not reach the left half
    layers[1, 2, 2] += 200 * SIGMA  # a cosmic ray where only two have data
    noises = [NoiseModel(sky=SKY, sigma=SIGMA, gain=GAIN)] * 3

    rejected = reject_outliers(layers, noises, grow=0)

    assert rejected[1, 2, 2] and not rejected[2, 2, 2]
    assert (~rejected & np.isfinite(layers)).any(axis=0).all()  # no pixel without data


def test_estimated_psnr_of_no_shared_pixel_is_none():
    layers = np.full((2, 8, 8), np.nan)
    layers[0, :, :4] = layers[1, :, 4:] = 1.0  # the two copies never overlap

    mse, se = reference_mse(np.ones((8, 8)), layers)

    assert estimated_psnr(mse, se, 10.0) == {"psnr": None, "psnr_se": None, "psnr_lower": None}


def test_psf_of_an_exposure_with_too_few_bright_stars_comes_from_its_fields_deep_stack():
    """Stars too faint for a fit in one exposure (S/N under 10) reach it in the stack of
    four: the PSF is measured there and says so, instead of a guessed Gaussian."""
    exposures = moffat_field(4.5, flux_range=(2.1, 2.35), exposures=4, seed=0)
    background = np.full(exposures[0].shape, conftest.SKY)

    alone = exposure_psf(exposures[0], background, sigma=conftest.SIGMA, bad=None, stack=None, fwhm_guess=3.5)
    psf = exposure_psf(exposures[0], background, sigma=conftest.SIGMA, bad=None, fwhm_guess=3.5,
                       stack={"deep": np.mean(exposures, axis=0), "n": 3})

    assert alone.n_stars == 0 and "too few stars" in alone.method
    assert psf.n_stars >= 3 and "deep stack of the field's 4 exposures" in psf.method
    assert psf.fwhm == pytest.approx(4.5, rel=0.05)


def test_expected_input_psnr_counts_the_noises_heavy_tails():
    """A camera whose blank sky has 1.5 times the robust sigma's variance within 5 sigma
    (M13's: 1.34) gives an input 10 log10(1.5) = 1.76 dB below what sigma alone predicts;
    the reference's self-test compares the estimate with that, not with sigma's."""
    shape = (40, 40)
    stack = {"layers": np.full((3, *shape), 100.0), "deep": np.full(shape, 100.0),
             "target_rejected": np.zeros(shape, bool), "target_flagged": np.zeros(shape, bool)}
    gaussian = NoiseModel(sky=100.0, sigma=3.0)
    tailed = dataclasses.replace(gaussian, tail_variance=1.5)

    plain = expected_input_psnr(stack, gaussian, data_range=300.0)["psnr_expected"]
    heavy = expected_input_psnr(stack, tailed, data_range=300.0)["psnr_expected"]

    assert plain == pytest.approx(10 * np.log10(300.0**2 / 9.0))
    assert plain - heavy == pytest.approx(10 * np.log10(1.5))
