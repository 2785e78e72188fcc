"""Tests of astrodenoise.detection: completeness, purity, depth90 and the completeness magnitude."""

from __future__ import annotations

import numpy as np
import pytest

from astrodenoise.detection import (
    completeness_magnitude,
    depth90,
    detection_scores,
    pool_detection_bins,
    refine_centroids,
)


def test_detection_scores_count_missed_and_invented_sources():
    truth = np.array([[10.0, 10.0], [50.0, 50.0], [90.0, 90.0], [130.0, 130.0]])
    truth_mag = np.array([20.0, 20.2, 23.0, 23.2])
    # Both bright sources found, one faint missed, one detection where there is nothing.
    found = np.array([[10.5, 10.0], [50.0, 49.2], [90.0, 90.4], [200.0, 20.0]])
    found_flux = np.array([1e4, 1e4, 100.0, 100.0])

    scores = detection_scores(found, found_flux, truth, truth_mag, radius=2.0, zeropoint=28.0,
                              bin_width=1.0)

    assert scores["n_detected"] == 4 and scores["n_matched"] == 3 and scores["n_false"] == 1
    bright, faint = scores["bins"][0], scores["bins"][-1]
    assert bright["completeness"] == 1.0 and bright["purity"] == 1.0
    assert faint["completeness"] == 0.5  # 23.0 found, 23.2 missed
    assert faint["purity"] == 0.5  # the invented source has magnitude 28 - 5 = 23
    assert depth90(scores["bins"], min_sources=1) == pytest.approx(21.0)
    assert scores["depth90"] is None  # every bin has fewer than 5 sources: nothing to tell


def test_depth90_pools_exposures_and_skips_sparse_bins():
    bins = [{"lo": 20.0, "hi": 21.0, "n_truth": 10, "n_recovered": 10, "n_found": 10, "n_true": 10},
            {"lo": 21.0, "hi": 22.0, "n_truth": 2, "n_recovered": 0, "n_found": 0, "n_true": 0},
            {"lo": 22.0, "hi": 23.0, "n_truth": 10, "n_recovered": 9, "n_found": 10, "n_true": 10},
            {"lo": 23.0, "hi": 24.0, "n_truth": 10, "n_recovered": 5, "n_found": 5, "n_true": 5}]

    pooled = pool_detection_bins([bins, bins])

    assert [b["n_truth"] for b in pooled] == [20, 4, 20, 20]
    assert pooled[2]["completeness"] == 0.9
    assert depth90(pooled) == 23.0


def test_completeness_magnitude_interpolates_where_the_fraction_falls():
    mags = np.repeat(np.arange(20.125, 24, 0.25), 10)
    found = mags < 22.0  # complete to 22, then nothing
    assert completeness_magnitude(mags, found, 0.5) == pytest.approx(22.0, abs=0.01)
    assert completeness_magnitude(mags, np.ones_like(found), 0.5) is None  # never falls
    assert completeness_magnitude(mags, np.zeros_like(found), 0.5) is None  # nothing to start from


def test_refine_centroids_finds_the_centre_a_segment_misses():
    yy, xx = np.mgrid[:64, :64]
    true = np.array([[20.3, 15.7], [44.8, 40.2]])
    sigma = 3.5 / 2.3548
    image = sum(1000 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2)) for x, y in true)
    image += np.random.default_rng(0).normal(0, 1.0, image.shape)
    start = true + np.array([[0.6, -0.5], [-0.4, 0.6]])

    refined = refine_centroids(image, start, fwhm=3.5)

    assert np.hypot(*(refined - true).T).max() < 0.05
    # Where no source is (a fit that runs away), the position is kept.
    empty = np.array([[5.0, 55.0]])
    moved = np.hypot(*(refine_centroids(image, empty, fwhm=3.5) - empty).T)
    assert moved[0] <= 0.5 * 3.5
