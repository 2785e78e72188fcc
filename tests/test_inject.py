"""Tests of astrodenoise.inject: injection planned in blank sky, injected and recovered, and
injection-recovery that reads what the truth reads."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from astrodenoise.inject import (
    inject,
    injection_recovery,
    injection_sites,
    injection_stamps,
    plan_injection,
    recover,
    sky_offsets,
    summarise_recovery,
)
from astrodenoise.noise_model import NoiseModel
from astrodenoise.photometry import (
    APERTURES,
    aperture_fluxes,
    aperture_fraction,
    aperture_snr,
    aperture_suite,
    median_se,
)
from astrodenoise.psf import PSF, gaussian_psf
from conftest import SIGMA, SKY

FWHM = 3.0


def _psf(fwhm=FWHM) -> PSF:
    return PSF(gaussian_psf(fwhm), fwhm, 0, "test")


def _stamps(seed=0):
    return injection_stamps(_psf(), np.random.default_rng(seed))


def test_stamps_are_a_point_source_then_psf_convolved_galaxies_inside_four_fwhm():
    stamps = _stamps()
    half = stamps.shape[1] // 2
    assert half <= np.ceil(4 * FWHM) and len(stamps) == 17
    assert np.allclose(stamps.sum(axis=(1, 2)), 1.0)
    core = [aperture_fraction(s, FWHM) for s in stamps]
    assert core[0] == pytest.approx(aperture_fraction(gaussian_psf(FWHM), FWHM), rel=1e-3)
    assert max(core[1:]) < core[0]  # every galaxy is wider than the PSF
    assert min(core[1:]) < 0.8 * core[0]  # and some are well resolved


def test_plan_puts_sources_in_blank_sky_apart_with_magnitudes_around_the_limit():
    blocked = np.zeros((240, 240), bool)
    blocked[50:90, 60:120] = True
    stamps = _stamps()
    half = stamps.shape[1] // 2

    plan = plan_injection(blocked.shape, blocked, stamps, sigma=SIGMA, zeropoint=25.0, radius=3.0,
                          count=40, rng=np.random.default_rng(0))

    x, y = plan["positions"].T.astype(int)
    assert 10 <= len(x) <= 40
    assert not blocked[y, x].any()
    near_block = (x > 60 - half - 1) & (x < 120 + half) & (y > 50 - half - 1) & (y < 90 + half)
    assert not near_block.any()  # a whole stamp away from the blocked region
    assert ((x > half) & (x < 240 - half - 1) & (y > half) & (y < 240 - half - 1)).all()
    gaps = np.maximum(np.abs(x[:, None] - x[None]), np.abs(y[:, None] - y[None]))
    assert gaps[~np.eye(len(x), dtype=bool)].min() >= 2 * half + 1  # stamps never overlap
    # The 5-sigma limit follows from the noise and the aperture: S/N 5 in the aperture.
    aperture_flux = 10 ** (-0.4 * (plan["m5"] - 25.0)) * aperture_fraction(stamps[0], 3.0)
    assert aperture_flux / (SIGMA * np.sqrt(np.pi * 9.0)) == pytest.approx(5.0)
    assert (plan["mag"] >= plan["m5"] - 4).all() and (plan["mag"] <= plan["m5"] + 1.5).all()
    assert 0.2 < (plan["stamp"] > 0).mean() < 0.8  # point sources and galaxies
    again = plan_injection(blocked.shape, blocked, stamps, sigma=SIGMA, zeropoint=25.0, radius=3.0,
                           count=40, rng=np.random.default_rng(0))
    assert np.array_equal(again["positions"], plan["positions"]) and np.array_equal(again["mag"], plan["mag"])


def test_half_the_sources_are_faint_for_their_own_shape():
    stamps = _stamps()
    plan = plan_injection((600, 600), np.zeros((600, 600), bool), stamps, sigma=SIGMA, zeropoint=25.0,
                          radius=FWHM, count=200, rng=np.random.default_rng(1))
    fraction = np.array([aperture_fraction(stamps[k], FWHM) for k in plan["stamp"]])
    snr = aperture_snr(plan["flux"] * fraction, radius=FWHM, sigma=SIGMA, gain=None)
    faint = (snr > 5) & (snr < 20)
    # Half drawn in the faint class, and part of the uniform half falls in it too.
    assert 0.55 < faint.mean() < 0.8
    assert (snr[plan["stamp"] > 0] < 20).mean() > 0.5  # galaxies as well as stars


def test_a_crowded_field_gets_its_sources_on_top_of_others_but_never_on_missing_data():
    blocked = np.ones((200, 200), bool)  # every pixel is some source's wing
    nodata = np.zeros((200, 200), bool)
    nodata[:, :100] = True  # the left half has no data
    stamps = _stamps()
    half = stamps.shape[1] // 2

    blank_only = plan_injection(blocked.shape, blocked, stamps, sigma=SIGMA, zeropoint=25.0, radius=3.0,
                                count=20, rng=np.random.default_rng(0))
    crowded = plan_injection(blocked.shape, blocked, stamps, sigma=SIGMA, zeropoint=25.0, radius=3.0,
                             count=20, rng=np.random.default_rng(0), nodata=nodata)

    assert len(blank_only["positions"]) == 0
    assert len(crowded["positions"]) >= 5 and crowded["on_source"].all()
    assert (crowded["positions"][:, 0] >= 100 + half).all()


def _injected(gain=None, seed=3):
    rng = np.random.default_rng(seed)
    data = (SKY + rng.normal(0, SIGMA, (320, 320))).astype(np.float32)
    stamps = _stamps()
    plan = plan_injection(data.shape, np.zeros(data.shape, bool), stamps, sigma=SIGMA, zeropoint=25.0,
                          radius=3.0, count=60, rng=rng)
    injected, model = inject(data, stamps, plan, gain=gain, rng=rng)
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


def test_sky_offsets_read_the_light_a_denoiser_adds_to_empty_sky_and_clip_the_cosmic_rays_it_removes():
    """A denoiser that brightens faint light around the sources it sees also brightens the
    local-sky annulus of a source injected nearby: the difference image cancels that, a real
    source's photometry does not. The offset reads it at the injection sites; cosmic rays
    the denoiser removes (not in any truth) must not count."""
    rng = np.random.default_rng(7)
    data = SKY + rng.normal(0, SIGMA, (320, 320))
    blocked = np.zeros(data.shape, bool)
    blocked[100:140, 100:140] = True  # a source's footprint, not a site
    # Light a denoiser adds within 5 pixels of the source: in the sky annulus (12-18 pixels)
    # of sites near it, never in their 1 or 2 x FWHM apertures (sites are 12 pixels away).
    band = ndimage.binary_dilation(blocked, iterations=5) & ~blocked
    halo = np.where(band, 2.0 * SIGMA, 0.0)
    hits = rng.integers(20, 300, size=(40, 2))
    cosmic = data.copy()
    cosmic[hits[:, 1], hits[:, 0]] += 400 * SIGMA
    sites = injection_sites(blocked, 12)
    fwhm = 3.0

    # A perfect denoiser of the exposure with cosmic rays: the sky, the rays and the noise gone.
    offsets = sky_offsets({"same": np.zeros(data.shape), "repairs": SKY - cosmic, "halo": SKY + halo - data},
                          sites,
                          fwhm=fwhm, select=cosmic, mask=blocked)

    assert all(v == 0.0 for v in offsets["same"].values())
    for key, value in offsets["repairs"].items():  # removing noise and cosmic rays changes no source
        radius = float(key[0]) * fwhm
        assert abs(value) < 0.1 * SIGMA * np.sqrt(np.pi) * radius, key  # a tenth of the aperture's noise
    # Sites whose annulus reaches the band read its light as sky: the aperture loses that
    # sky times its area, four times as much at 2 as at 1 x FWHM.
    one, two = offsets["halo"]["1fwhm"], offsets["halo"]["2fwhm"]
    assert two < one < 0
    assert two / one == pytest.approx(4.0, rel=0.3)


def _soft_threshold(image, level=1.5 * SIGMA):
    """A denoiser that keeps cores and flattens faint wings: |image - sky| shrunk by ``level``."""
    residual = image - SKY
    return SKY + np.sign(residual) * np.clip(np.abs(residual) - level, 0, None)


def test_recovery_reads_zero_for_an_identity_a_uniform_dimming_everywhere_and_lost_wings_in_wide_apertures():
    data, injected, model, plan = _injected()

    def dim(image):  # keeps the sky, removes 10% of every source
        return SKY + 0.9 * (image - SKY)

    out = recover({"same": injected - data, "dim": dim(injected) - dim(data),
                   "soft": _soft_threshold(injected) - _soft_threshold(data)}, model, plan, fwhm=FWHM,
                  threshold=SIGMA, select=injected)

    bright = plan["mag"] < plan["m5"] - 3
    for key in APERTURES:
        same, dimmed = np.array(out["same"][key], float), np.array(out["dim"][key], float)
        assert np.nanmedian(same[bright]) == pytest.approx(0.0, abs=0.01), key
        assert np.nanmedian(dimmed[bright]) == pytest.approx(-0.10, abs=0.01), key
    soft = {key: np.nanmedian(np.array(out["soft"][key], float)[bright]) for key in APERTURES}
    assert soft["3fwhm"] < soft["1fwhm"] - 0.02  # the wings go first: wider apertures lose more


def _sparse_field(seed: int, size: int = 560, count: int = 400):
    """A sparse field of point sources and galaxies with the injection's own source models
    and magnitude law (the bias of a class depends on the S/N and sizes within it: the two
    populations must match for the two measurements to), on a flat sky, with
    Poisson-Gaussian noise; returns truth, data, positions and the noise."""
    rng = np.random.default_rng(seed)
    stamps = injection_stamps(_psf(), rng)
    plan = plan_injection((size, size), np.zeros((size, size), bool), stamps, sigma=SIGMA, zeropoint=25.0,
                          radius=FWHM, count=count, rng=rng)
    truth = SKY + inject(np.zeros((size, size), np.float32), stamps, plan, gain=None, rng=rng)[1]
    gain = 4.0
    data = rng.normal(truth, np.sqrt(SIGMA**2 + (truth - SKY) / gain)).astype(np.float32)
    return truth, data, plan["positions"], NoiseModel(sky=SKY, sigma=SIGMA, gain=gain)


def test_injection_recovery_agrees_with_the_truth_in_every_aperture():
    # The check needs no truth: on a field where the truth is known, it must read what the
    # truth reads, for a denoiser that flattens the wings of faint sources (the failure it
    # exists to see) as for the input itself. Within 1 point, or twice the standard error
    # of the difference where the truth's own median is less precise than that (the truth
    # side carries each source's sky noise; the injected side cancels it).
    runners = {"input": lambda image: image, "soft": _soft_threshold}
    truth_ratios = {kind: {key: [] for key in APERTURES} for kind in runners}
    snrs, blocks = [], []
    for seed in (11, 12):
        truth, data, positions, noise = _sparse_field(seed)
        mask = np.abs(truth - SKY) > 0.01 * SIGMA  # the sources and their wings
        images = {kind: run(data) for kind, run in runners.items()} | {"truth": truth}
        fluxes = aperture_suite(images, positions, fwhm=FWHM, kron_reference=truth - SKY, threshold=SIGMA,
                                select=data, background=SKY, mask=mask)
        for kind in runners:
            for key in APERTURES:
                truth_ratios[kind][key].append(fluxes[kind][key] / fluxes["truth"][key] - 1)
        reference = aperture_fluxes(truth - SKY, positions, radius=FWHM)
        snrs.append(aperture_snr(reference, radius=FWHM, sigma=SIGMA, gain=noise.gain))
        blocks.append(injection_recovery(
            data, runners, name=f"field{seed}", background=np.full(data.shape, SKY, np.float32),
            mask=mask, bad=np.zeros(data.shape, bool), noise=noise, psf=_psf(), zeropoint=25.0,
            radius=FWHM, fwhm=FWHM, count=300, region=1024, seed=seed, detect_threshold=5.0,
            match_radius=1.0))
    snr = np.concatenate(snrs)
    rng = np.random.default_rng(0)
    bad = []
    for kind in runners:
        injected = summarise_recovery(blocks, kind)
        for cls, pick in (("bright", snr > 50), ("faint", (snr > 5) & (snr < 20))):
            for key in APERTURES:
                ratio = np.concatenate(truth_ratios[kind][key])
                truth_bias, truth_se = median_se(ratio[pick & np.isfinite(ratio)], rng)
                row = injected["apertures"][key]
                assert row[f"{cls}_n"] > 30, (kind, cls, key)
                assert kind != "input" or row[f"{cls}_se"] < 0.01  # noise cancels in the difference
                tolerance = max(0.01, 2 * np.hypot(truth_se, row[f"{cls}_se"]))
                bad.append((kind, cls, key)) if abs(row[f"{cls}_bias"] - truth_bias) > tolerance else None
    assert not bad
    soft = summarise_recovery(blocks, "soft")
    assert soft["faint_bias"] < -0.05  # the check does see the lost wings


def test_summary_pools_exposures_of_different_depth_relative_to_their_limit():
    blocks = []
    for m5 in (23.0, 24.0):
        mag = np.linspace(m5 - 4, m5 + 1.5, 60)
        snr = 5 * 10 ** (-0.4 * (mag - m5))
        ratios = {"1fwhm": np.where(snr < 20, -0.02, 0.0), "2fwhm": np.where(snr < 20, -0.1, 0.0),
                  "3fwhm": np.where(snr < 20, -0.05, -0.03), "kron": np.full(60, np.nan)}
        blocks.append({"m5": m5, "mag": mag.tolist(), "snr": snr.tolist(), "extended": [True, False] * 30,
                       "methods": {"n2v": {"flux_ratio": {k: v.tolist() for k, v in ratios.items()},
                                           "found": (mag < m5).tolist()}}})

    out = summarise_recovery(blocks + [None], "n2v")

    assert out["n"] == 120 and out["n_extended"] == 60
    # The headline is the aperture with the largest bias, whichever it is.
    assert out["faint_bias"] == pytest.approx(-0.1) and out["faint_aperture"] == "2fwhm"
    assert out["bright_bias"] == pytest.approx(-0.03) and out["bright_aperture"] == "3fwhm"
    assert out["apertures"]["1fwhm"]["faint_bias"] == pytest.approx(-0.02)
    assert out["apertures"]["kron"]["faint_n"] == 0 and out["apertures"]["kron"]["faint_bias"] is None
    snr = np.concatenate([b["snr"] for b in blocks])
    assert out["apertures"]["2fwhm"]["faint_n"] == int(((snr > 5) & (snr < 20)).sum())
    assert out["m50"] == pytest.approx(0.0, abs=0.15)  # both exposures complete to their own m5
    assert summarise_recovery(blocks, "bm3d") is None
