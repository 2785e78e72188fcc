"""Tests of astrodenoise.transform: the linear and variance-stabilising maps and their inverses."""

from __future__ import annotations

import numpy as np
import pytest

from astrodenoise.denoise import load_normalisation
from astrodenoise.noise_model import NoiseModel
from astrodenoise.transform import Normalisation, exposure_normalisation
from conftest import SKY, gat_checkpoint


def _poisson_gaussian(level_adu, *, gain=2.0, read_noise=5.0, n=200_000, seed=0):
    rng = np.random.default_rng(seed)
    return ((rng.poisson(level_adu * gain, n) + rng.normal(0.0, read_noise, n)) / gain).astype(np.float32)


@pytest.mark.parametrize("source", [0.0, 10.0, 300.0, 5000.0])
def test_gat_stabilises_variance_and_inverse_is_unbiased(source):
    sky, gain, read_noise = 80.0, 2.0, 5.0
    sigma = np.sqrt(sky * gain + read_noise**2) / gain
    norm = Normalisation("gat", offset=sky, scale=sigma, gain=gain)

    u, _ = norm.forward(_poisson_gaussian(sky + source, gain=gain, read_noise=read_noise))

    assert np.std(u) == pytest.approx(1.0, abs=0.02)
    recovered = norm.inverse(np.array([u.astype(np.float64).mean()]))[0]
    assert recovered - (sky + source) == pytest.approx(0.0, abs=0.05 + 2e-5 * source)


@pytest.mark.parametrize("kind, gain", [("linear", 0.0), ("gat", 1.5)])
def test_normalisation_round_trip_keeps_values_and_marks_nan(kind, gain):
    norm = Normalisation(kind, offset=50.0, scale=4.0, gain=gain)
    data = np.array([[50.0, 60.0], [np.nan, 3000.0]], np.float32)

    image, nodata = norm.forward(data)
    back = norm.inverse(image)

    assert image[0, 0] == pytest.approx(0.0, abs=1e-6) and image[1, 0] == 0.0
    np.testing.assert_array_equal(nodata, [[False, False], [True, False]])
    # The unbiased inverse differs from the algebraic one by a fraction of a count.
    np.testing.assert_allclose(back[~nodata], data[~nodata], atol=0.2)


def test_exposure_normalisation_reads_old_and_new_checkpoints():
    noise = NoiseModel.from_json({"sky_level": 80.0, "sigma": 7.0, "header_gain": 2.0})

    old = exposure_normalisation({"scale": 6.5, "offset": "sky_level"}, noise)
    new = exposure_normalisation({"kind": "gat", "gain": 3.0}, noise)

    assert old == Normalisation("linear", offset=80.0, scale=6.5)
    assert new == Normalisation("gat", offset=80.0, scale=7.0, gain=2.0)


def test_gat_model_maps_each_exposure_with_its_own_noise(tmp_path, tiny_checkpoint):
    stats = load_normalisation(str(gat_checkpoint(tmp_path, tiny_checkpoint)))

    own = exposure_normalisation(stats, NoiseModel(sky=SKY, sigma=4.0, gain=1.5))
    without_gain = exposure_normalisation(stats, NoiseModel(sky=SKY, sigma=4.0))

    # The exposure's sky, sigma and gain; the survey's gain only where the exposure has none.
    assert own == Normalisation("gat", offset=SKY, scale=4.0, gain=1.5)
    assert without_gain == Normalisation("gat", offset=SKY, scale=4.0, gain=2.0)
