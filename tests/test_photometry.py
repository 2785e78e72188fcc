"""Tests of astrodenoise.photometry: aperture fluxes and flux bias per S/N class and per magnitude."""

from __future__ import annotations

import numpy as np
import pytest

from astrodenoise.photometry import aperture_fluxes, flux_bias, photometry_by_magnitude


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
