"""Tests of astrodenoise.noise: sky level and Gaussian sigma measured from the data."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from astrodenoise import io
from astrodenoise.noise import NoiseConfig, estimate_noise, noise
from astrodenoise.noise_model import pixel_sigma
from astrodenoise.sky import estimate_background, source_mask


@pytest.mark.parametrize("sigma", [0.5, 3.0, 20.0])
def test_estimate_noise_recovers_injected_sigma_and_sky(make_image, sigma):
    image = make_image(160, sky=100.0, sigma=sigma, n_stars=15, seed=2)

    result = estimate_noise(image.data)

    assert result["sigma"] == pytest.approx(sigma, rel=0.03)
    assert result["sky_level"] == pytest.approx(100.0, abs=0.1 * sigma)
    assert result["sky_rms"] == pytest.approx(sigma, rel=0.1)


def test_gaussian_noise_has_no_tails_and_heavy_tailed_noise_says_how_much(make_image):
    """tail_variance is the blank sky's variance within 5 sigma over the robust sigma's
    square: 1 for Gaussian noise (sources masked, not counted as tails); a camera's
    heavy tails (here 10% of pixels from a Laplace of 2 sigma) raise it, by what the mean
    square within 5 sigma says, while sigma stays the Gaussian core's."""
    image = make_image(200, sky=100.0, sigma=3.0, n_stars=30, seed=5)
    rng = np.random.default_rng(6)
    tails = np.where(rng.random(image.data.shape) < 0.1, rng.laplace(0, 6.0, image.data.shape), 0.0)
    heavy = (image.data + tails).astype(np.float32)

    gaussian, tailed = estimate_noise(image.data), estimate_noise(heavy)
    residual = heavy - 100.0
    residual = residual[estimate_noise_blank(heavy)]
    inside = residual[np.abs(residual) < 5 * tailed["sigma"]]

    assert gaussian["tail_variance"] == pytest.approx(1.0, abs=0.03)
    assert tailed["sigma"] == pytest.approx(3.0, rel=0.1)  # the core, nearly: the tails move a MAD a little
    assert tailed["tail_variance"] > 1.1
    assert tailed["tail_variance"] == pytest.approx(np.mean(inside**2) / tailed["sigma"] ** 2, rel=0.05)


def estimate_noise_blank(data: np.ndarray) -> np.ndarray:
    """Blank-sky pixels of ``data`` as the noise step finds them (sources masked)."""
    background, rms = estimate_background(data)
    return ~source_mask(data, background, rms)


def test_sources_are_masked_so_sigma_is_not_inflated(make_image):
    crowded = make_image(160, sky=50.0, sigma=2.0, n_stars=60, seed=3)
    naive = float(np.std(crowded.data))

    result = estimate_noise(crowded.data)

    assert naive > 2 * crowded.sigma  # the stars dominate a plain standard deviation
    assert result["sigma"] == pytest.approx(crowded.sigma, rel=0.03)
    assert 0.2 < result["blank_fraction"] < 1.0


def test_estimate_noise_ignores_nan_pixels(make_image):
    image = make_image(160, sky=100.0, sigma=3.0, seed=4)
    data = image.data.copy()
    data[:, :40] = np.nan

    result = estimate_noise(data)

    assert result["nan_fraction"] == pytest.approx(0.25)
    assert result["sigma"] == pytest.approx(3.0, rel=0.03)
    assert np.isfinite(result["sky_level"])


def test_sigma_from_header_uses_gain_and_read_noise(poisson_field):
    header = fits.Header({"GAIN": poisson_field.gain, "RDNOISE": poisson_field.read_noise})

    result = estimate_noise(poisson_field.data, header=header)

    gain, rn = poisson_field.gain, poisson_field.read_noise
    expected = np.sqrt(result["sky_level"] * gain + rn**2) / gain
    assert result["header_gain"] == gain
    assert result["header_read_noise"] == rn
    assert result["sigma_from_header"] == pytest.approx(expected, rel=1e-12)
    # On a bias-free frame, the measured sigma agrees with the noise model.
    assert result["sigma"] == pytest.approx(result["sigma_from_header"], rel=0.03)
    assert result["sigma"] == pytest.approx(poisson_field.sigma, rel=0.03)


@pytest.mark.parametrize("cards", [{}, {"GAIN": 2.0}, {"RDNOISE": 5.0}, {"GAIN": "unknown",
                                                                         "RDNOISE": 5.0}])
def test_sigma_from_header_none_without_both_keywords(poisson_field, cards):
    result = estimate_noise(poisson_field.data, header=fits.Header(cards))

    assert result["sigma_from_header"] is None


def test_sigma_from_header_none_without_header(poisson_field):
    result = estimate_noise(poisson_field.data)

    assert result["header_gain"] is None
    assert result["header_read_noise"] is None
    assert result["sigma_from_header"] is None


def test_the_noise_model_uses_a_header_gain_that_fits_the_data(poisson_field):
    header = fits.Header({"GAIN": poisson_field.gain, "RDNOISE": poisson_field.read_noise})

    result = estimate_noise(poisson_field.data, header=header)

    assert result["gain"] == poisson_field.gain and result["gain_source"] == "header GAIN"


def test_a_coadd_still_carrying_the_detector_gain_does_not_use_it(poisson_field):
    # The mean of 16 exposures: a quarter of the noise the header's photon noise allows.
    coadd = poisson_field.sky + (poisson_field.data - poisson_field.sky) / 4.0
    header = fits.Header({"GAIN": poisson_field.gain, "RDNOISE": poisson_field.read_noise})

    result = estimate_noise(coadd.astype(np.float32), header=header)

    assert result["header_gain"] == poisson_field.gain
    assert result["gain"] != poisson_field.gain
    assert "exceeds the measured noise" in result["gain_source"]


@pytest.mark.parametrize(("bunit", "expected", "source"), [
    ("MJy/sr", None, "not a count unit"),
    ("electrons/s", 300.0, "EXPTIME"),
    ("ADU", 2.0, "header GAIN"),
])
def test_gain_follows_the_data_units(bunit, expected, source):
    from astrodenoise.noise import effective_gain

    header = fits.Header({"GAIN": 2.0, "BUNIT": bunit, "EXPTIME": 300.0})
    # Sky-subtracted (sky 0): nothing to check the gain against, the units decide.
    gain, why = effective_gain(header, sky_level=0.0, bias=0.0, sigma=1.0, fit={"reliable": False})

    assert gain == expected and source in why


def test_estimate_background_follows_a_gradient(make_image):
    image = make_image(128, sky=0.0, sigma=1.0, n_stars=0, seed=5)
    yy, xx = np.mgrid[0:128, 0:128]
    slope = 100.0 + 0.2 * xx  # 25 sigma across the image, 3 sigma across a mesh
    data = (image.data + slope).astype(np.float32)

    background, rms = estimate_background(data, box_size=16, filter_size=1)

    assert background.shape == rms.shape == data.shape
    assert background.dtype == np.float32
    inner = (slice(16, -16), slice(16, -16))
    assert np.abs(background - slope)[inner].max() < 0.5
    assert np.all(rms > 0)


def test_source_mask_covers_stars_and_nan(make_image):
    image = make_image(128, sky=100.0, sigma=1.0, n_stars=0, seed=6)
    data = image.data.copy()
    yy, xx = np.mgrid[0:128, 0:128]
    data += 50.0 * np.exp(-((xx - 40) ** 2 + (yy - 70) ** 2) / 8.0)
    data[5, 5] = np.nan
    background = np.full(data.shape, 100.0, np.float32)
    rms = np.ones(data.shape, np.float32)

    mask = source_mask(data, background, rms, detect_sigma=2.0, dilate=4)

    assert mask[70, 40] and mask[70, 40 + 6]  # the star and its dilated wing
    assert mask[5, 5]
    assert mask.mean() < 0.2


def test_noise_step_writes_json(tmp_path, poisson_field):
    header = fits.Header({"GAIN": 2.0, "RDNOISE": 5.0})
    store = tmp_path / "exp01.zarr"
    io.write_zarr_image(store, poisson_field.data, chunks=64,
                        attrs={"fits_header": header.tostring()})
    out = tmp_path / "exp01.json"

    result = noise(store, out, config=NoiseConfig(box_size=32))

    assert io.read_json(out) == result
    assert result["exposure"] == "exp01"
    assert result["config"]["box_size"] == 32
    assert result["sigma"] == pytest.approx(poisson_field.sigma, rel=0.03)
    assert result["sigma_from_header"] is not None


@pytest.mark.real_data
def test_m13_frames_noise_has_heavy_tails_that_the_robust_sigma_does_not_see(real_data_dir):
    """M13's amateur CCD: within 5 sigma its blank sky's mean square is 1.34 times the
    robust sigma's square (single-pixel dips), 1.3 dB of the input's PSNR that a
    noise model of sigma alone would promise and the leave-one-out reference then finds missing."""
    data, header = io.read_fits_image(real_data_dir / "M13_blue_0001.fits")

    result = estimate_noise(data, header=header)

    assert 1.2 < result["tail_variance"] < 1.5


@pytest.mark.filterwarnings("ignore:No sources were found")
def test_noise_step_rejects_image_without_noise(tmp_path):
    store = tmp_path / "flat.zarr"
    io.write_zarr_image(store, np.full((96, 96), 7.0, np.float32), chunks=64,
                        attrs={"fits_header": fits.Header().tostring()})
    out = tmp_path / "flat.json"

    with pytest.raises(io.InputError, match="sigma is 0.0") as err:
        noise(store, out)

    assert err.value.path == str(store)
    assert not out.exists()


@pytest.mark.real_data
@pytest.mark.parametrize("name, gain, read_noise", [("tnx.fits", 2.4, 5.3),
                                                    ("a8280271.fits", 1.9, 5.0)])
def test_real_frames_give_finite_positive_sigma(real_data_dir, name, gain, read_noise):
    data, header = io.read_fits_image(real_data_dir / name)

    result = estimate_noise(data, header=header)

    assert np.isfinite(result["sigma"]) and result["sigma"] > 0
    assert np.isfinite(result["sky_level"])
    # Blank-sky sigma is below the spread of the whole frame, which includes sources.
    assert result["sigma"] < np.nanstd(data)
    assert result["header_gain"] == pytest.approx(gain)
    assert result["header_read_noise"] == pytest.approx(read_noise)
    assert result["sigma_from_header"] is not None


def test_pixel_sigma_matches_simulated_poisson_gaussian_noise():
    rng = np.random.default_rng(3)
    sky, sigma, gain = 200.0, 4.0, 2.5
    mean = np.array([150.0, 200.0, 600.0, 5000.0, np.nan])
    predicted = pixel_sigma(mean, sky=sky, sigma=sigma, gain=gain)
    for level, expected in zip(mean[:4], predicted[:4], strict=True):
        # Read noise plus photon noise of the electrons above the sky, in ADU.
        draws = rng.normal(0, sigma, 20000) + rng.poisson(max(level - sky, 0) * gain, 20000) / gain
        assert abs(draws.std() / expected - 1) < 0.03
    assert predicted[4] == predicted[1] == sigma  # no data, and the sky itself: read noise only
    np.testing.assert_array_equal(pixel_sigma(mean, sky=sky, sigma=sigma, gain=None), sigma)


@pytest.mark.parametrize("pedestal", [None, -500.0])
def test_zero_level_from_the_header_pedestal(pedestal):
    """Calibrated amateur frames (MaxIm DL, SBFITSEXT) carry PEDESTAL: the offset added to
    keep them positive. The sky above the zero level, not above 0, is what GAIN and RDNOISE
    predict the noise from: 40 ADU of sky at gain 1.5 and 10 e- read noise is 8.4 ADU of
    noise; counted from 0 (540 ADU) it would be 20."""
    rng = np.random.default_rng(5)
    gain, read_noise, sky = 1.5, 10.0, 40.0
    offset = -pedestal if pedestal is not None else 0.0
    electrons = rng.poisson(sky * gain, (256, 256)) + rng.normal(0, read_noise, (256, 256))
    data = (offset + electrons / gain).astype(np.float32)
    header = fits.Header({"GAIN": gain, "RDNOISE": read_noise})
    if pedestal is not None:
        header["PEDESTAL"] = pedestal

    result = estimate_noise(data, header=header)

    assert result["bias"] == offset
    assert result["bias_source"] == ("header PEDESTAL" if pedestal is not None else "none")
    assert result["sigma_from_header"] == pytest.approx(result["sigma"], rel=0.05)
    assert result["sigma"] == pytest.approx(np.sqrt(sky * gain + read_noise**2) / gain, rel=0.05)

