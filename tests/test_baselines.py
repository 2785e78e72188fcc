"""Tests of astrodenoise.baselines: classical denoisers on synthetic noise of known level."""

from __future__ import annotations

import numpy as np
import pytest

from astrodenoise.baselines import DENOISERS, denoise, gaussian_smooth
from astrodenoise.noise_model import NoiseModel


def _noise_model(image) -> NoiseModel:
    return NoiseModel(sky=image.sky, sigma=image.sigma, gain=image.gain, read_noise=image.read_noise)


@pytest.fixture(params=["star_field", "poisson_field"])
def field(request):
    """A Gaussian-noise and a Poisson-Gaussian-noise star field."""
    return request.getfixturevalue(request.param)


@pytest.mark.parametrize("name", sorted(DENOISERS))
def test_baseline_lowers_sky_noise_and_keeps_sky_level(field, name):
    if name == "bm3d":
        pytest.importorskip("bm3d")
    noise = _noise_model(field)

    out = denoise(name, field.data, noise)

    assert out.shape == field.data.shape and out.dtype == np.float32
    sky = field.truth - field.sky < 0.01 * field.sigma
    assert np.std(out[sky] - field.truth[sky]) < 0.7 * np.std(field.data[sky] - field.truth[sky])
    # The sky level survives to a small fraction of the noise (unbiased inverse transform).
    assert abs(np.median(out[sky] - field.truth[sky])) < 0.1 * field.sigma


@pytest.mark.parametrize("name", sorted(DENOISERS))
def test_baseline_keeps_nan_as_no_data(poisson_field, name):
    if name == "bm3d":
        pytest.importorskip("bm3d")
    data = poisson_field.data.copy()
    data[10:20, 30:40] = np.nan

    out = denoise(name, data, _noise_model(poisson_field))

    assert np.isnan(out[10:20, 30:40]).all()
    assert np.isfinite(np.delete(out.ravel(), np.flatnonzero(np.isnan(data)))).all()
    # Filled with the sky, not zero: the pixels next to the hole stay near the sky.
    assert abs(np.median(out[20:23, 30:40]) - poisson_field.sky) < 3 * poisson_field.sigma


def test_unknown_baseline_raises(star_field):
    with pytest.raises(ValueError, match="unknown"):
        denoise("wavelets", star_field.data, _noise_model(star_field))


def test_gaussian_baseline_lowers_rms_and_keeps_nan():
    rng = np.random.default_rng(3)
    image = 10.0 + rng.normal(0.0, 1.0, (128, 128))
    image[40, 40] = np.nan

    smooth = gaussian_smooth(image, sigma=1.0)

    assert smooth.dtype == np.float32
    assert np.isnan(smooth[40, 40])
    assert np.isfinite(smooth).sum() == image.size - 1  # neighbours of the NaN stay finite
    # White noise smoothed by a unit Gaussian: std falls by 2 * sqrt(pi) = 3.54.
    assert np.nanstd(smooth) == pytest.approx(1.0 / (2 * np.sqrt(np.pi)), rel=0.1)
    assert np.nanmean(smooth) == pytest.approx(10.0, abs=0.05)


def test_gaussian_baseline_next_to_nan_is_a_weighted_mean_of_valid_pixels():
    image = np.full((16, 16), 3.0)
    image[:, :8] = np.nan

    smooth = gaussian_smooth(image, sigma=2.0)

    np.testing.assert_allclose(smooth[:, 8:], 3.0, rtol=1e-6)
    assert np.isnan(smooth[:, :8]).all()
