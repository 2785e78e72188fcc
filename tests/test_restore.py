"""Tests of astrodenoise.restore: flux restoration on the sources and the repair of outlier pixels."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy import ndimage

from astrodenoise.denoise import denoise_array
from astrodenoise.restore import outlier_mask, repair_outliers, restore_flux
from astrodenoise.tiling import PredictConfig, denoise_planes
from astrodenoise.transform import Normalisation
from conftest import SIGMA, SKY

NORMS = [Normalisation("linear", offset=SKY, scale=SIGMA),
         Normalisation("gat", offset=SKY, scale=SIGMA, gain=2.0)]


def _source(shape, amplitude, centre=(32, 32), width=1.5):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return amplitude * np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / (2 * width**2))


@pytest.mark.parametrize("norm", NORMS, ids=["linear", "gat"])
def test_restore_flux_leaves_blank_sky_as_denoised(norm):
    rng = np.random.default_rng(0)
    data = (SKY + rng.normal(0, SIGMA, (64, 64))).astype(np.float32)
    denoised = np.full_like(data, SKY)

    restored = restore_flux(data, denoised, norm=norm)

    np.testing.assert_array_equal(restored, denoised)


@pytest.mark.parametrize("norm", NORMS, ids=["linear", "gat"])
def test_restore_flux_gives_a_shrunk_source_the_flux_of_the_data(norm):
    source = _source((64, 64), 4 * SIGMA)
    data = (SKY + source).astype(np.float32)  # noise-free: the flux to give back is known
    denoised = (SKY + 0.7 * source).astype(np.float32)  # a denoiser that dims it by 30%
    aperture = _source(source.shape, 1.0) > np.exp(-4.5)  # radius 3 widths

    restored = restore_flux(data, denoised, norm=norm)

    flux = {name: (image - SKY)[aperture].sum() for name, image in
            (("data", data), ("denoised", denoised), ("restored", restored))}
    assert abs(flux["restored"] / flux["data"] - 1) < 0.05 < abs(flux["denoised"] / flux["data"] - 1)
    far = ~ndimage.binary_dilation(aperture, iterations=8)
    np.testing.assert_array_equal(restored[far], denoised[far])


def test_restore_flux_keeps_a_bright_source_s_aperture_flux_when_sharpened():
    norm = NORMS[1]  # photon noise: the 8% error stays within the 4-sigma clip
    source = _source((64, 64), 100 * SIGMA, width=1.7)  # FWHM 4 px
    data = (SKY + source).astype(np.float32)
    denoised = (SKY + 1.08 * source).astype(np.float32)  # a network 8% too bright
    aperture = _source(source.shape, 1.0) > np.exp(-0.5 * (4 / 1.5) ** 2)  # radius 4 px = FWHM

    def error(sharpen):
        restored = restore_flux(data, denoised, norm=norm, sharpen=sharpen)
        return (restored - SKY)[aperture].sum() / source[aperture].sum() - 1

    # The Gaussian alone spreads part of the correction out of the aperture.
    assert abs(error(0.0)) > 0.004
    assert abs(error(20.0)) < 0.001


def test_restore_flux_does_not_put_back_a_cosmic_ray():
    norm = NORMS[0]
    source = _source((64, 64), 4 * SIGMA)
    data = (SKY + source).astype(np.float32)
    data[33, 33] += 500 * SIGMA
    denoised = (SKY + 0.7 * source).astype(np.float32)

    restored = restore_flux(data, denoised, norm=norm)

    assert np.max(restored - denoised) < 4 * SIGMA


def test_restore_flux_keeps_nan():
    data = (SKY + _source((64, 64), 4 * SIGMA)).astype(np.float32)
    data[10, 12] = np.nan
    denoised = data.copy()

    assert np.isnan(restore_flux(data, denoised, norm=NORMS[1])[10, 12])


class _LeakyBlur(torch.nn.Module):
    """A stand-in denoiser: keeps a fifth of each pixel and replaces the rest by the
    mean of its 5x5 box. It passes a fifth of a cosmic ray and loses most of a sharp
    star's peak, the two cases the outlier mask must tell apart."""

    n_pool = 0

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 5, padding=2, bias=False, padding_mode="reflect")
        weight = torch.full((5, 5), 0.8 / 25)
        weight[2, 2] += 0.2
        self.conv.weight.data[0, 0] = weight

    def forward(self, x):
        return self.conv(x)


def _sky_star_and_cosmic_ray(seed=0):
    rng = np.random.default_rng(seed)
    data = SKY + rng.normal(0, SIGMA, (64, 64)) + _source((64, 64), 200 * SIGMA, width=1.0)
    data[10, 50] += 100 * SIGMA  # a two-pixel cosmic ray
    data[10, 51] += 40 * SIGMA
    return data.astype(np.float32)


@pytest.mark.parametrize("norm", NORMS, ids=["linear", "gat"])
def test_outlier_mask_finds_a_cosmic_ray_but_not_a_sharp_star_core(norm):
    data = _sky_star_and_cosmic_ray()
    first = denoise_array(data, _LeakyBlur().eval(), norm=norm)
    star = np.s_[27:38, 27:38]
    assert (data - first)[star].max() > 50 * SIGMA  # the star's core is far above the blur

    mask = outlier_mask(data, first, norm=norm)

    assert mask[10, 50] and mask[10, 51]
    assert not mask[star].any()
    assert mask.sum() <= 12  # the two pixels grown by one, nothing in the noise


def test_repair_outliers_fills_from_neighbours_and_keeps_nan():
    yy, xx = np.mgrid[0:64, 0:64]
    data = (SKY + 0.5 * xx + 0.2 * yy).astype(np.float32)  # a smooth sky gradient
    data[20, 20] = np.nan
    mask = np.zeros(data.shape, bool)
    mask[30:33, 30:33] = True  # small: filled from the neighbours
    mask[0:30, 40:64] = True  # too wide for the fill: the fallback
    fallback = np.full(data.shape, -1.0, np.float32)
    truth = data.copy()
    data[mask] = 1e4

    repaired = repair_outliers(data, mask, fallback)

    np.testing.assert_allclose(repaired[30:33, 30:33], truth[30:33, 30:33], atol=0.5)
    assert (repaired[5:20, 50:60] == -1.0).all()
    assert np.isnan(repaired[20, 20])
    np.testing.assert_array_equal(repaired[~mask], data[~mask])


def test_denoise_planes_repairs_the_cosmic_ray_and_keeps_the_star():
    data = _sky_star_and_cosmic_ray()
    data[5, 5] = np.nan
    model, norm = _LeakyBlur().eval(), NORMS[0]
    plain = PredictConfig(average=False, restore_flux=False, repair_outliers=False)
    config = dataclasses.replace(plain, repair_outliers=True)

    before = denoise_planes(data, model, norm=norm, config=plain)
    image, repaired = denoise_planes(data, model, norm=norm, config=config)

    assert config.planes == ("image", "repaired") and before.shape == (1, 64, 64)
    assert before[0][10, 50] - SKY > 15 * SIGMA  # the network alone passes the cosmic ray
    assert abs(image[10, 50] - SKY) < 3 * SIGMA
    assert repaired[10, 50] == 1 and repaired[32, 32] == 0 and np.isnan(repaired[5, 5])
    assert np.isnan(image[5, 5])
    star = _source((64, 64), 1.0, width=1.0) > np.exp(-4.5)
    np.testing.assert_allclose((image - SKY)[star].sum(), (before[0] - SKY)[star].sum(), rtol=1e-6)
