"""Tests of the measured noise model: Poisson-Gaussian fit, overscan, correlation, banding."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from scipy import ndimage

from astrodenoise import io
from astrodenoise.ingest import ingest
from astrodenoise.noise import (
    estimate_noise,
    noise,
    noise_autocorrelation,
    noise_survey,
    overscan_level,
    pattern_noise,
)
from astrodenoise.noise_model import NoiseModel, read_noise_model
from astrodenoise.photon_transfer import fit_poisson_gaussian, pair_mean_variance_curve, survey_noise
from astrodenoise.transform import stabilising
from conftest import REAL_DATA, make_star_field

GAIN, READ_NOISE = 2.5, 8.0


def _poisson_gaussian(truth_adu: np.ndarray, rng: np.random.Generator, gain: float = GAIN) -> np.ndarray:
    electrons = rng.poisson(truth_adu * gain) + rng.normal(0, READ_NOISE, truth_adu.shape)
    return (electrons / gain).astype(np.float32)


@pytest.fixture(scope="module")
def ramp_pair():
    """Two exposures of one wide-dynamic-range scene (a ramp from 0 to 4000 ADU)."""
    rng = np.random.default_rng(11)
    truth = np.tile(np.linspace(0.0, 4000.0, 256), (256, 1))
    return _poisson_gaussian(truth, rng), _poisson_gaussian(truth, rng)


def test_pair_curve_recovers_gain_and_read_noise(ramp_pair):
    curve = pair_mean_variance_curve(*ramp_pair)

    fit = fit_poisson_gaussian(curve)

    assert fit["gain"] == pytest.approx(GAIN, rel=0.03)
    assert fit["read_noise"] == pytest.approx(READ_NOISE, rel=0.10)
    assert abs(fit["gain"] - GAIN) < 3 * fit["gain_err"] + 0.02 * GAIN  # the error bar is honest
    assert fit["reliable"]


def test_fit_with_bias_offset_recovers_read_noise(ramp_pair):
    bias = 1000.0
    curve = pair_mean_variance_curve(ramp_pair[0] + bias, ramp_pair[1] + bias)

    with_bias = fit_poisson_gaussian(curve, bias=bias)
    without = fit_poisson_gaussian(curve)

    assert with_bias["read_noise"] == pytest.approx(READ_NOISE, rel=0.10)
    assert without["read_noise"] is None  # an unknown bias makes the intercept negative


def test_fit_needs_three_bins():
    curve = {k: np.array([1.0, 2.0]) for k in ("mean", "variance", "error", "count")}

    assert fit_poisson_gaussian(curve)["gain"] is None


def test_overscan_gives_bias_and_read_noise():
    rng = np.random.default_rng(2)
    data = rng.normal(500.0, 4.0, (100, 120)).astype(np.float32)
    data[:, :10] = rng.normal(300.0, 2.5, (100, 10))
    header = fits.Header({"BIASSEC": "[1:10,1:100]"})

    level = overscan_level(data, header)

    assert level["bias"] == pytest.approx(300.0, abs=0.5)
    assert level["read_noise_adu"] == pytest.approx(2.5, rel=0.05)


@pytest.mark.parametrize("biassec", [None, "[200:210,1:100]", "junk"])
def test_overscan_absent_or_outside_image(biassec):
    header = fits.Header() if biassec is None else fits.Header({"BIASSEC": biassec})

    assert overscan_level(np.zeros((100, 120), np.float32), header) is None


def test_autocorrelation_tells_white_from_resampled_noise():
    rng = np.random.default_rng(3)
    white = rng.normal(0, 1, (200, 200))
    smoothed = ndimage.uniform_filter(white, 2)  # like a resampled (drizzled) image
    mask = np.zeros(white.shape, bool)

    white_ac = noise_autocorrelation(white, mask)
    smooth_ac = noise_autocorrelation(smoothed, mask)

    assert abs(white_ac["x"]) < 0.03 and abs(white_ac["y"]) < 0.03
    assert smooth_ac["x"] > 0.3 and smooth_ac["y"] > 0.3


def test_pattern_noise_measures_row_banding():
    rng = np.random.default_rng(4)
    image = rng.normal(0, 5.0, (300, 400))
    rows = rng.normal(0, 1.5, (300, 1))
    mask = np.zeros(image.shape, bool)

    banded = pattern_noise(image + rows, mask, sigma=5.0)
    clean = pattern_noise(image, mask, sigma=5.0)

    assert banded["row_rms"] == pytest.approx(1.5, rel=0.2)
    assert banded["row_ratio"] > 3 and clean["row_ratio"] < 1.3
    assert banded["column_ratio"] < 1.3


def test_estimate_noise_flags_correlation_and_banding():
    field = make_star_field(200, sky=100.0, sigma=4.0, seed=5)
    rng = np.random.default_rng(6)
    banded = field.data + rng.normal(0, 1.5, (200, 1)).astype(np.float32)
    correlated = ndimage.uniform_filter(field.data, 2)

    clean = estimate_noise(field.data)

    assert not clean["banding"] and not clean["correlated"]
    assert estimate_noise(banded)["banding"]
    assert estimate_noise(correlated)["correlated"]


def test_constant_image_is_a_clear_error():
    with pytest.raises(ValueError, match="sigma is 0.0"):
        estimate_noise(np.full((100, 100), 7.0, np.float32))


@pytest.mark.real_data
class TestRealNoise:
    """Noise models of real frames against what their headers and READMEs say."""

    @pytest.fixture(autouse=True)
    def _need_data(self):
        if not REAL_DATA.is_dir():
            pytest.skip(f"real data folder {REAL_DATA} is absent")

    def _noise(self, name):
        data, header = io.read_fits_image(REAL_DATA / name)
        return estimate_noise(data, header=header)

    def test_a8280271_overscan_read_noise_matches_header(self):
        result = self._noise("a8280271.fits")

        # Header RDNOISE 5.0 e-; the overscan also holds bias structure: 15% tolerance.
        assert result["read_noise_overscan"] == pytest.approx(5.0, rel=0.15)
        assert result["sigma"] == pytest.approx(result["sigma_from_header"], rel=0.15)

    def test_m13_row_banding_detected(self):
        assert self._noise("M13_blue_0001.fits")["banding"]

    def test_spitzer_mosaic_noise_is_correlated(self):
        assert self._noise("spitzer_example_image.fits")["correlated"]

    def test_plate_scan_background_does_not_crash(self):
        result = self._noise("HorseHead.fits")

        assert np.isfinite(result["sigma"]) and result["sigma"] > 0


def test_survey_fit_ignores_cosmic_rays_and_sky_drift(ramp_pair):
    first, second = (a.copy() for a in ramp_pair)
    rng = np.random.default_rng(8)
    hits = rng.integers(0, first.size, 300)
    first.flat[hits] += rng.uniform(500, 5000, hits.size)  # cosmic rays in one exposure
    second += 12.0  # the sky rose between the exposures

    fit = survey_noise({"f": [first, second]})

    assert fit["n_pairs"] == 1
    assert fit["gain"] == pytest.approx(GAIN, rel=0.05)
    assert fit["reduced_chi2"] < 3


def test_survey_fit_without_pairs_says_why():
    fit = survey_noise({"a": [np.zeros((10, 10))], "b": [np.zeros((10, 10)), np.zeros((12, 10))]})

    assert fit["gain"] is None and "no field" in fit["note"]


def test_noise_survey_writes_table_and_plot(tmp_path, ramp_pair):
    images, noise_files = [], []
    for i, data in enumerate(ramp_pair):
        store = tmp_path / f"e{i}.zarr"
        io.write_zarr_image(store, data, chunks=128, attrs={"fits_header": fits.Header().tostring()})
        images.append(str(store))
        noise_files.append(str(tmp_path / f"e{i}.json"))
        io.write_json(noise_files[-1], {"exposure": f"e{i}", "header_gain": GAIN,
                                        "header_read_noise": READ_NOISE, "overscan": None})

    result = noise_survey(images, noise_files, ["f", "f"], out_json=tmp_path / "s.json",
                          out_png=tmp_path / "s.png")

    assert io.read_json(tmp_path / "s.json")["fit"]["gain"] == pytest.approx(GAIN, rel=0.05)
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["header_gain"] == GAIN


def test_noise_survey_fits_each_gain_apart(tmp_path, ramp_pair):
    rng = np.random.default_rng(12)
    truth = np.tile(np.linspace(0.0, 4000.0, 256), (256, 1))
    other = [_poisson_gaussian(truth, rng, gain=1.2) for _ in range(2)]  # another detector's gain
    images, noise_files, fields = [], [], []
    for i, (data, gain) in enumerate([(a, GAIN) for a in ramp_pair] + [(a, 1.2) for a in other]):
        images.append(str(tmp_path / f"e{i}.zarr"))
        io.write_zarr_image(images[-1], data, chunks=128, attrs={"fits_header": fits.Header().tostring()})
        noise_files.append(str(tmp_path / f"e{i}.json"))
        io.write_json(noise_files[-1], {"exposure": f"e{i}", "header_gain": gain,
                                        "header_read_noise": READ_NOISE, "overscan": None})
        fields.append("f" if i < 2 else "g")

    result = noise_survey(images, noise_files, fields, out_json=tmp_path / "s.json",
                          out_png=tmp_path / "s.png")

    groups = {g["group"]: g for g in result["groups"]}
    assert set(groups) == {"GAIN 2.5", "GAIN 1.2"}
    assert groups["GAIN 2.5"]["gain"] == pytest.approx(GAIN, rel=0.05)
    assert groups["GAIN 1.2"]["gain"] == pytest.approx(1.2, rel=0.05)
    assert groups["GAIN 1.2"]["exposures"] == ["e2", "e3"]
    assert groups["GAIN 1.2"]["reliable"] and groups["GAIN 2.5"]["reliable"]


def test_demo_survey_gain_and_read_noise_within_ten_percent(tmp_path):
    from astrodenoise.simulate import SimulationConfig, write_demo_survey

    config = SimulationConfig(size=256)  # the demo defaults otherwise: 2 fields x 3 exposures
    fields = write_demo_survey(tmp_path, config)
    grouped = {f: [io.read_fits_image(tmp_path / "raw" / f"{e}.fits")[0] for e in names]
               for f, names in fields.items()}

    fit = survey_noise(grouped)

    assert fit["gain"] == pytest.approx(config.gain, rel=0.10)
    assert fit["read_noise"] == pytest.approx(config.read_noise, rel=0.10)


def test_fit_is_flagged_unreliable_when_levels_span_too_little():
    rng = np.random.default_rng(9)
    flat = np.full((200, 200), 300.0)
    pair = [_poisson_gaussian(flat, rng), _poisson_gaussian(flat, rng)]

    fit = fit_poisson_gaussian(pair_mean_variance_curve(*pair))

    assert not fit["reliable"]


# --- the NoiseModel the later steps read ------------------------------------------------


@pytest.mark.parametrize("gain, kind", [(2.0, "gat"), (None, "linear")])
def test_noise_model_picks_the_variance_stabilising_map(gain, kind):
    noise = NoiseModel(sky=100.0, sigma=5.0, gain=gain)

    assert stabilising(noise).kind == kind


def test_noise_model_from_a_noise_json_of_today_and_of_before_the_gain_key():
    today = {"sky_level": 84.0, "sigma": 6.9, "gain": 1.5, "gain_source": "header GAIN",
             "header_read_noise": 5.0, "autocorrelation": {"x": 0.2, "y": 0.01}, "correlated": True}
    before = {"sky_level": 84.0, "sigma": 6.9, "header_gain": 2.0, "header_read_noise": 5.0}

    new, old = NoiseModel.from_json(today), NoiseModel.from_json(before)

    assert (new.sky, new.sigma, new.gain, new.gain_source) == (84.0, 6.9, 1.5, "header GAIN")
    assert new.read_noise == 5.0 and new.read_noise_source == "header RDNOISE"
    assert new.correlation == (0.2, 0.01) and new.correlated
    assert old.gain == 2.0 and not old.correlated


def test_noise_model_reads_the_noise_steps_own_json(tmp_path, make_image):
    image = make_image(128, sky=200.0, gain=2.0, read_noise=5.0, seed=4)
    io.write_fits_image(tmp_path / "e.fits", image.data, fits.Header({"GAIN": 2.0, "RDNOISE": 5.0}))
    ingest(tmp_path / "e.fits", tmp_path / "e.zarr")
    noise(tmp_path / "e.zarr", tmp_path / "e.json")

    model = read_noise_model(tmp_path / "e.json")

    assert model.gain == 2.0 and model.gain_source == "header GAIN"
    assert model.sigma == pytest.approx(image.sigma, rel=0.05)
    assert model.exposure == "e"
