"""Tests of astrodenoise.inject: injection planned in blank sky, injected and recovered."""

from __future__ import annotations

import numpy as np
import pytest

from astrodenoise.inject import inject, plan_injection, recover, summarise_recovery
from astrodenoise.psf import PSF, gaussian_psf
from conftest import SIGMA, SKY


def _gaussian(fwhm=3.0) -> PSF:
    return PSF(gaussian_psf(fwhm), fwhm, 0, "test")


def test_plan_puts_sources_in_blank_sky_apart_with_magnitudes_around_the_limit():
    blocked = np.zeros((200, 200), bool)
    blocked[50:90, 60:120] = True
    psf = _gaussian()
    half = psf.stamp.shape[0] // 2

    plan = plan_injection(blocked.shape, blocked, psf, sigma=SIGMA, zeropoint=25.0, radius=3.0,
                          count=40, rng=np.random.default_rng(0))

    x, y = plan["positions"].T.astype(int)
    assert 10 <= len(x) <= 40
    assert not blocked[y, x].any()
    near_block = (x > 60 - half - 1) & (x < 120 + half) & (y > 50 - half - 1) & (y < 90 + half)
    assert not near_block.any()  # a whole stamp away from the blocked region
    assert ((x > half) & (x < 200 - half - 1) & (y > half) & (y < 200 - half - 1)).all()
    gaps = np.maximum(np.abs(x[:, None] - x[None]), np.abs(y[:, None] - y[None]))
    assert gaps[~np.eye(len(x), dtype=bool)].min() >= 2 * half + 1  # stamps never overlap
    # The 5-sigma limit follows from the noise and the aperture: S/N 5 in the aperture.
    from astrodenoise.photometry import aperture_fraction
    aperture_flux = 10 ** (-0.4 * (plan["m5"] - 25.0)) * aperture_fraction(psf.stamp, 3.0)
    assert aperture_flux / (SIGMA * np.sqrt(np.pi * 9.0)) == pytest.approx(5.0)
    assert (plan["mag"] >= plan["m5"] - 4).all() and (plan["mag"] <= plan["m5"] + 1.5).all()
    again = plan_injection(blocked.shape, blocked, psf, sigma=SIGMA, zeropoint=25.0, radius=3.0,
                           count=40, rng=np.random.default_rng(0))
    assert np.array_equal(again["positions"], plan["positions"]) and np.array_equal(again["mag"], plan["mag"])


def test_a_crowded_field_gets_its_sources_on_top_of_others_but_never_on_missing_data():
    blocked = np.ones((200, 200), bool)  # every pixel is some source's wing
    nodata = np.zeros((200, 200), bool)
    nodata[:, :100] = True  # the left half has no data
    psf = _gaussian()
    half = psf.stamp.shape[0] // 2

    blank_only = plan_injection(blocked.shape, blocked, psf, sigma=SIGMA, zeropoint=25.0, radius=3.0,
                                count=20, rng=np.random.default_rng(0))
    crowded = plan_injection(blocked.shape, blocked, psf, sigma=SIGMA, zeropoint=25.0, radius=3.0,
                             count=20, rng=np.random.default_rng(0), nodata=nodata)

    assert len(blank_only["positions"]) == 0
    assert len(crowded["positions"]) >= 10 and crowded["on_source"].all()
    assert (crowded["positions"][:, 0] >= 100 + half).all()


def _injected(gain=None, seed=3):
    rng = np.random.default_rng(seed)
    data = (SKY + rng.normal(0, SIGMA, (256, 256))).astype(np.float32)
    psf = _gaussian(3.0)
    plan = plan_injection(data.shape, np.zeros(data.shape, bool), psf, sigma=SIGMA, zeropoint=25.0,
                          radius=3.0, count=60, rng=rng)
    injected, model = inject(data, psf, plan, gain=gain, rng=rng)
    return data, injected, model, plan


def test_injected_flux_is_the_planned_flux_and_photon_noise_follows_the_gain():
    data, injected, model, plan = _injected()
    assert model.sum() == pytest.approx(plan["flux"].sum(), rel=1e-4)
    assert np.allclose(injected - data, model, atol=1e-3)  # no gain: noise-free sources

    _, noisy, model2, _ = _injected(gain=0.5)
    extra = noisy - _injected(gain=None)[1]
    bright = model2 > 50
    # Photon noise of variance model / gain, in ADU.
    assert np.std(extra[bright] / np.sqrt(model2[bright] / 0.5)) == pytest.approx(1.0, rel=0.1)


def test_recovery_of_an_identity_is_unbiased_and_of_a_dimming_denoiser_is_not():
    data, injected, model, plan = _injected()
    found = plan["positions"][plan["mag"] < plan["m5"] - 1]  # pretend only these were detected

    same = recover(data, injected, model, plan, radius=3.0, found_original=np.empty((0, 2)),
                   found_injected=found, match_radius=2.0)

    def dim(image):  # keeps the sky, removes 10% of every source
        return SKY + 0.9 * (image - SKY)

    dimmed = recover(dim(data), dim(injected), model, plan, radius=3.0, found_original=np.empty((0, 2)),
                     found_injected=found, match_radius=2.0)
    ratio, dim_ratio = np.array(same["flux_ratio"]), np.array(dimmed["flux_ratio"])
    bright = plan["mag"] < plan["m5"] - 3
    assert np.median(ratio[bright]) == pytest.approx(0.0, abs=0.02)
    assert np.median(dim_ratio[bright]) == pytest.approx(-0.10, abs=0.02)
    assert same["found"] == (plan["mag"] < plan["m5"] - 1).tolist()
    # A detection that the original image already had is not a recovery.
    already = recover(data, injected, model, plan, radius=3.0, found_original=found, found_injected=found,
                      match_radius=2.0)
    assert not any(already["found"])


def test_summary_pools_exposures_of_different_depth_relative_to_their_limit():
    blocks = []
    for m5 in (23.0, 24.0):
        mag = np.linspace(m5 - 4, m5 + 1.5, 60)
        snr = 5 * 10 ** (-0.4 * (mag - m5))
        ratio = np.where(snr < 20, -0.1, 0.0)
        blocks.append({"m5": m5, "mag": mag.tolist(), "snr": snr.tolist(),
                       "methods": {"n2v": {"flux_ratio": ratio.tolist(), "found": (mag < m5).tolist()}}})

    out = summarise_recovery(blocks + [None], "n2v")

    assert out["n"] == 120
    assert out["bright_bias"] == 0.0 and out["faint_bias"] == pytest.approx(-0.1)
    snr = np.concatenate([b["snr"] for b in blocks])
    assert out["faint_n"] == int(((snr > 5) & (snr < 20)).sum())
    assert out["m50"] == pytest.approx(0.0, abs=0.15)  # both exposures complete to their own m5
    assert summarise_recovery(blocks, "bm3d") is None
