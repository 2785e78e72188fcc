"""Tests of astrodenoise.photometry: apertures at 1-3 FWHM with local sky, flux bias per class."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from photutils.utils.exceptions import NoDetectionsWarning

from astrodenoise.photometry import (
    APERTURES,
    aperture_fluxes,
    aperture_snr,
    aperture_suite,
    catalog_zeropoint,
    flux_bias,
    header_zeropoint,
    kron_fluxes,
    local_sky,
    median_se,
    multi_aperture_fluxes,
    own_light,
    photometry_by_magnitude,
    snr_classes,
)
from astrodenoise.psf import FWHM_PER_SIGMA
from astrodenoise.simulate import SimulationConfig, simulate_exposure, simulate_field
from astrodenoise.sky import estimate_background, source_mask


def test_flux_bias_per_class_counts_and_bias():
    reference = np.array([100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 700.0, 800.0])
    snr = np.array([10.0, 12.0, 15.0, 30.0, 60.0, 80.0, 100.0, 3.0])
    flux = reference.copy()
    faint = (snr > 5) & (snr < 20)
    bright = snr > 50
    flux[faint] *= 0.9
    flux[bright] *= 1.05
    flux[~faint & ~bright] *= 2.0  # outside both classes: must not count

    result = flux_bias(flux, reference, snr)

    assert result["faint"]["n"] == 3
    assert result["faint"]["bias"] == pytest.approx(-0.1)
    assert result["faint"]["scatter"] == pytest.approx(0.0, abs=1e-12)
    assert result["bright"]["n"] == 3
    assert result["bright"]["bias"] == pytest.approx(0.05)


def test_flux_bias_skips_non_positive_reference_and_empty_classes():
    reference = np.array([-5.0, 0.0, 100.0])
    snr = np.array([10.0, 10.0, 10.0])
    flux = np.array([1.0, 1.0, 80.0])

    result = flux_bias(flux, reference, snr)

    assert result["faint"] == {"n": 1, "bias": pytest.approx(-0.2), "scatter": None}
    assert result["bright"] == {"n": 0, "bias": None, "scatter": None}


def test_aperture_fluxes_sum_a_point_source():
    image = np.zeros((40, 40))
    image[20, 10] = 7.0
    image[5, 30] = 3.0

    fluxes = aperture_fluxes(image, np.array([[10.0, 20.0], [30.0, 5.0]]), radius=3.0)

    np.testing.assert_allclose(fluxes, [7.0, 3.0])


def test_photometry_by_magnitude_finds_the_bin_that_loses_flux():
    mag = np.repeat([20.0, 22.0, 24.0], 10)
    reference = 10 ** (-0.4 * (mag - 30))
    flux = reference * np.where(mag > 23, 0.8, 1.0)  # the faintest bin loses 20%

    rows = photometry_by_magnitude(flux, reference, mag, bin_width=1.0)

    assert [r["n"] for r in rows] == [10, 10, 10]
    assert [round(r["bias"], 3) for r in rows] == [0.0, 0.0, -0.2]


# --- 1, 2 and 3 x FWHM with a local-sky annulus -----------------------------------------

FWHM = 4.0


def _gaussian(shape, x, y, flux, fwhm=FWHM):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    sigma = fwhm / FWHM_PER_SIGMA
    return flux * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2)) / (2 * np.pi * sigma**2)


def _sky_with_gradient(shape=(96, 96)):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return 100.0 + 0.05 * xx - 0.03 * yy  # a plane averages out over a centred annulus


def test_apertures_recover_a_gaussians_enclosed_flux_on_a_sloping_sky():
    image = _sky_with_gradient() + _gaussian((96, 96), 48.0, 47.0, 5000.0)

    fluxes = multi_aperture_fluxes(image, np.array([[48.0, 47.0]]), fwhm=FWHM)

    # A Gaussian holds 1 - 2**-(2r/FWHM)**2 of its flux within r: 93.75% at 1 FWHM, all at 2 and 3.
    assert fluxes["1fwhm"][0] == pytest.approx(0.9375 * 5000.0, rel=0.01)
    assert fluxes["2fwhm"][0] == pytest.approx(5000.0, rel=0.005)
    assert fluxes["3fwhm"][0] == pytest.approx(5000.0, rel=0.005)


def test_local_sky_clips_a_neighbour_in_the_annulus_and_ignores_nan():
    image = _sky_with_gradient() + _gaussian((96, 96), 48.0 + 5.0 * FWHM, 47.0, 2e5)
    image[10:20, 10:20] = np.nan

    sky = local_sky(image, np.array([[48.0, 47.0], [15.0, 15.0]]), inner=4 * FWHM, outer=6 * FWHM)

    assert sky[0] == pytest.approx(100.0 + 0.05 * 48.0 - 0.03 * 47.0, abs=0.3)
    assert np.isfinite(sky[1])


def test_a_flattened_wing_shows_at_large_apertures_only():
    """A 'denoiser' that keeps the core but removes the wings beyond 1.5 FWHM: the loss is
    small at 1 FWHM and large at 3 FWHM, which is why biases are quoted at all three."""
    truth = _gaussian((96, 96), 48.0, 48.0, 5000.0, fwhm=8.0)  # a small galaxy
    yy, xx = np.mgrid[:96, :96]
    flattened = np.where(np.hypot(xx - 48.0, yy - 48.0) > 1.5 * FWHM, 0.0, truth)
    positions = np.array([[48.0, 48.0]])

    ref = multi_aperture_fluxes(100.0 + truth, positions, fwhm=FWHM)
    got = multi_aperture_fluxes(100.0 + flattened, positions, fwhm=FWHM)
    bias = {k: got[k][0] / ref[k][0] - 1 for k in ref}

    assert abs(bias["1fwhm"]) < 0.01
    assert bias["3fwhm"] < -0.2


# --- Kron apertures, defined on the reference, laid on every image -------------------------


def test_kron_fluxes_recover_a_gaussian_and_see_its_flattened_wings():
    galaxy, star = _gaussian((96, 96), 48.0, 48.0, 5000.0, fwhm=8.0), _gaussian((96, 96), 20.0, 70.0, 800.0)
    yy, xx = np.mgrid[:96, :96]
    truth = galaxy + star
    flattened = np.where(np.hypot(xx - 48.0, yy - 48.0) > 1.5 * FWHM, 0.0, galaxy) + star
    positions = np.array([[48.0, 48.0], [20.0, 70.0], [80.0, 10.0]])  # the last one on blank sky

    fluxes = kron_fluxes({"truth": truth, "flattened": flattened}, truth, positions, threshold=0.5, fwhm=FWHM)

    # MAG_AUTO holds ~94% of a Gaussian's flux or more; a flattened wing loses far more.
    assert 0.9 < fluxes["truth"][0] / 5000.0 <= 1.0 and 0.9 < fluxes["truth"][1] / 800.0 <= 1.0
    assert fluxes["flattened"][0] / fluxes["truth"][0] - 1 < -0.15
    assert fluxes["flattened"][1] == pytest.approx(fluxes["truth"][1])
    assert np.isnan(fluxes["truth"][2])


def test_a_noisy_exposure_reads_its_truth_in_every_aperture_of_a_crowded_field():
    """A perfect denoiser (the noisy exposure itself) must read no bias against the truth,
    in every aperture. In a demo-survey field, faint sources have neighbours whose wings
    reach the sky annulus: a clipped median of each image reads the noisy image's sky
    differently from the noise-free truth's, and the input read -2.9% in Kron apertures
    on the demo. The mean of the same annulus pixels in both reads the same sky."""
    config = SimulationConfig(size=384, cosmic_rays_per_mpix=0.0)
    ratios, snr = {key: [] for key in APERTURES}, []
    for field in range(2):
        truth, catalogue, _, fwhm = simulate_field(config, field, np.random.default_rng(5 + field))
        positions = np.column_stack([catalogue["x"], catalogue["y"]])
        reference = aperture_fluxes(truth - np.median(truth), positions, radius=fwhm)
        for seed in range(6):
            noisy = simulate_exposure(truth, config, np.random.default_rng(seed)).astype(np.float64)
            background, rms = estimate_background(noisy)
            mask, sigma = source_mask(truth, background, rms), float(np.median(rms))  # as evaluate does
            fluxes = aperture_suite({"truth": truth, "noisy": noisy}, positions, fwhm=fwhm,
                                    kron_reference=truth - background, threshold=sigma,
                                    select=noisy, background=background, mask=mask)
            for key in APERTURES:
                ratios[key].append(fluxes["noisy"][key] / fluxes["truth"][key] - 1)
            snr.append(aperture_snr(reference, radius=fwhm, sigma=sigma, gain=config.gain))
    faint = snr_classes(np.concatenate(snr))["faint"]
    for key in APERTURES:
        ratio = np.concatenate(ratios[key])
        pick = faint & np.isfinite(ratio)
        median, se = median_se(ratio[pick], np.random.default_rng(0))
        assert pick.sum() > 200, key
        assert abs(median) < max(3 * se, 0.01), (key, median, se)


def test_a_source_mask_found_on_the_noisy_image_reads_its_sky_low_one_found_on_the_truth_does_not():
    """On blank sky, the source mask found on the noisy image (2 sigma, 5 pixels, grown by
    4) covers the noise's highs: about 7% of the pixels. The annulus pixels left read the
    sky 0.009 sigma low, which a 3 x FWHM aperture of a faint source turns into +3-5% of
    its flux. The mask of the noise-free truth (what evaluate uses) leaves the sky unbiased."""
    truth = np.full((512, 512), 100.0)
    grid = np.arange(30, 490, 36.0)
    positions = np.array([(x, y) for x in grid for y in grid])
    offsets = {"noisy": [], "truth": []}
    for seed in range(4):
        noisy = truth + np.random.default_rng(seed).normal(0.0, 3.0, truth.shape)
        background, rms = estimate_background(noisy)
        with pytest.warns(NoDetectionsWarning):
            masks = {name: source_mask(image, background, rms)
                     for name, image in (("noisy", noisy), ("truth", truth))}
        for name, mask in masks.items():
            sky = local_sky(noisy, positions, inner=12, outer=18, mask=mask, select=noisy)
            offsets[name].append(sky - 100)
    noisy_mask, truth_mask = np.concatenate(offsets["noisy"]), np.concatenate(offsets["truth"])
    se = truth_mask.std() / np.sqrt(len(truth_mask))

    assert noisy_mask.mean() < -0.012  # -0.026 expected; its SE is 0.005
    assert abs(truth_mask.mean()) < 3 * se


def test_own_light_leaves_out_a_faint_source_beside_a_bright_one():
    """A faint source 2.5 FWHM from a star 100 times brighter has most of its 3 x FWHM
    aperture's light from the star: no class scores it. The same source alone, and the
    star, keep theirs."""
    image = _gaussian((96, 96), 40.0, 48.0, 20000.0) + _gaussian((96, 96), 40.0 + 2.5 * FWHM, 48.0, 200.0) \
        + _gaussian((96, 96), 75.0, 20.0, 200.0)
    positions = np.array([[40.0, 48.0], [40.0 + 2.5 * FWHM, 48.0], [75.0, 20.0]])

    own = own_light(np.array([20000.0, 200.0, 200.0]), image, positions, fwhm=FWHM)

    assert own.tolist() == [True, False, True]


def test_the_local_sky_is_linear_the_same_pixels_in_every_image_and_blind_to_a_cosmic_ray():
    """The sky pixels are chosen once, on the noisy input: a cosmic ray in the annulus is
    clipped there and so left out of the truth's sky as well, and the flux of a difference
    of two images is the difference of their fluxes (a clipped median of each image is
    neither)."""
    rng = np.random.default_rng(3)
    positions = np.array([[48.0, 47.0], [20.0, 70.0]])
    truth = _sky_with_gradient() + _gaussian((96, 96), 48.0, 47.0, 3000.0) \
        + _gaussian((96, 96), 20.0, 70.0, 800.0) + _gaussian((96, 96), 48.0 + 4.6 * FWHM, 47.0, 150.0)
    noisy = truth + rng.normal(0.0, 3.0, truth.shape)
    noisy[47, int(48 + 5 * FWHM)] += 5000.0  # a cosmic ray in the first source's annulus
    other = 0.5 * noisy + 0.5 * truth + 4.0 * rng.random(truth.shape)

    def fluxes(image):
        return multi_aperture_fluxes(image, positions, fwhm=FWHM, select=noisy)

    inner, outer = 4 * FWHM, 6 * FWHM
    sky = local_sky(truth, positions, inner=inner, outer=outer, select=noisy)
    assert local_sky(noisy, positions, inner=inner, outer=outer) == pytest.approx(sky, abs=0.3)
    assert sky[0] == pytest.approx(100.0 + 0.05 * 48.0 - 0.03 * 47.0, abs=0.3)
    for key, value in fluxes(noisy - other).items():
        assert value == pytest.approx(fluxes(noisy)[key] - fluxes(other)[key], rel=1e-9, abs=1e-6), key


def test_catalog_zeropoint_is_the_median_offset_of_magnitude_and_flux():
    flux = np.array([100.0, 1000.0, 10.0])
    mag = 25.0 - 2.5 * np.log10(flux) + np.array([0.0, 0.0, 0.3])  # one outlier

    assert catalog_zeropoint(mag, flux) == pytest.approx(25.0)
    assert catalog_zeropoint(np.empty(0), np.empty(0)) == 0.0


def test_header_zeropoint_reads_the_surveys_keywords_and_no_text():
    assert header_zeropoint(fits.Header({"MAGZERO": 30.1, "PHOTZP": 28.0})) == (30.1, "MAGZERO")
    assert header_zeropoint(fits.Header({"PHOTZP": 28.0})) == (28.0, "PHOTZP")
    zp, key = header_zeropoint(fits.Header({"MAGZPT": 25.0, "EXPTIME": 100.0}))
    assert zp == pytest.approx(30.0) and key.startswith("MAGZPT")
    assert header_zeropoint(fits.Header({"MAGZPT": 25.0})) is None  # per second, no exposure time
    assert header_zeropoint(fits.Header({"MAGZERO": "unknown", "OBJECT": "x"})) is None
    assert header_zeropoint(fits.Header()) is None
