"""Tests of astrodenoise.sampling: the blind-spot mask, hidden lines and the Noise2Noise target."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from astrodenoise.sampling import hide_lines, n2v_mask
from astrodenoise.train import TrainConfig, make_sampler
from astrodenoise.transform import Normalisation
from conftest import training_exposure

# --- the blind-spot mask ---------------------------------------------------------------


@pytest.mark.parametrize("shape, neighbourhood", [
    ((64, 8, 8), 5),
    ((16, 16, 24), 3),
    ((32, 5, 7), 5),
    ((8, 32, 32), 7),
])
def test_n2v_mask_sources_in_window_inside_patch_never_the_target(shape, neighbourhood):
    batch, ny, nx = shape
    generator = torch.Generator().manual_seed(0)
    half = neighbourhood // 2

    b, target, source = n2v_mask(shape, fraction=1.0, neighbourhood=neighbourhood,
                                 generator=generator)

    ty, tx = target // nx, target % nx
    sy, sx = source // nx, source % nx
    assert b.shape == target.shape == source.shape == (batch * ny * nx,)
    assert torch.all(source != target)
    assert torch.all((sy >= 0) & (sy < ny) & (sx >= 0) & (sx < nx))
    assert torch.all((ty >= 0) & (ty < ny) & (tx >= 0) & (tx < nx))
    assert torch.all(((sy - ty).abs() <= half) & ((sx - tx).abs() <= half))
    # Many draws land on the patch border, where the window is reflected.
    border = (ty == 0) | (ty == ny - 1) | (tx == 0) | (tx == nx - 1)
    assert border.sum() > 100


def test_n2v_mask_uses_every_offset_of_the_window_but_the_centre():
    generator = torch.Generator().manual_seed(1)
    ny = nx = 32

    _, target, source = n2v_mask((64, ny, nx), fraction=0.5, neighbourhood=5,
                                 generator=generator)

    ty, tx, sy, sx = target // nx, target % nx, source // nx, source % nx
    interior = (ty >= 2) & (ty < ny - 2) & (tx >= 2) & (tx < nx - 2)
    offsets = set(zip((sy - ty)[interior].tolist(), (sx - tx)[interior].tolist(), strict=True))
    assert offsets == {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)} - {(0, 0)}


@pytest.mark.parametrize("fraction, expected", [(0.02, 20), (0.0001, 1), (0.5, 512)])
def test_n2v_mask_count_per_patch(fraction, expected):
    b, _, _ = n2v_mask((3, 32, 32), fraction=fraction, neighbourhood=5,
                       generator=torch.Generator().manual_seed(0))

    assert torch.equal(torch.bincount(b), torch.full((3,), expected))


def test_n2v_mask_same_generator_seed_same_mask():
    first = n2v_mask((4, 16, 16), fraction=0.1, neighbourhood=5,
                     generator=torch.Generator().manual_seed(7))
    second = n2v_mask((4, 16, 16), fraction=0.1, neighbourhood=5,
                      generator=torch.Generator().manual_seed(7))

    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)


# --- the Noise2Noise target ------------------------------------------------------------


def _flat_field(values, sky=100.0):
    """One field of flat exposures, exposure i at sky + values[i] (linear, unit scale)."""
    return [training_exposure(f"e{i}", "f", np.full((64, 64), sky + v, np.float32))
            for i, v in enumerate(values)]


@pytest.mark.parametrize("values", [(1.0, 2.0, 6.0), (1.0, 5.0), (0.0, 3.0, 4.0, 10.0)])
def test_n2n_mean_target_is_the_mean_of_the_other_exposures(values):
    exposures = _flat_field(values)
    config = TrainConfig(method="n2n", patch_size=32, batch_size=12, n2n_target="mean")
    norms = [Normalisation("linear", offset=100.0, scale=1.0) for _ in exposures]
    sampler = make_sampler(exposures, norms, config, np.random.default_rng(0))

    batch = sampler.batch()

    inputs, targets = batch["inputs"][:, 0, 0], batch["targets"][:, 0, 0]
    np.testing.assert_allclose(targets, (sum(values) - inputs) / (len(values) - 1), rtol=1e-6)
    assert set(np.round(inputs, 3)) <= set(values)


def test_n2n_one_target_is_another_exposure():
    exposures = _flat_field((1.0, 2.0, 6.0))
    config = TrainConfig(method="n2n", patch_size=32, batch_size=12, n2n_target="one")
    norms = [Normalisation("linear", offset=100.0, scale=1.0) for _ in exposures]
    sampler = make_sampler(exposures, norms, config, np.random.default_rng(0))

    batch = sampler.batch()

    inputs, targets = batch["inputs"][:, 0, 0], batch["targets"][:, 0, 0]
    assert np.all(inputs != targets) and set(targets) <= {1.0, 2.0, 6.0}


def _star_grid(shape, dy=0.0, dx=0.0, spacing=12, sigma=1.5, peak=100.0):
    """Noise-free sky 100 with Gaussian stars every ``spacing`` pixels, moved by (dy, dx)."""
    yy, xx = np.mgrid[:shape[0], :shape[1]].astype(float)
    image = np.full(shape, 100.0)
    for cy in range(6, shape[0], spacing):
        for cx in range(6, shape[1], spacing):
            image += peak * np.exp(-((yy - cy - dy) ** 2 + (xx - cx - dx) ** 2) / (2 * sigma**2))
    return image.astype(np.float32)


@pytest.mark.parametrize("fraction", [(0.3, -0.4), (-0.5, 0.2)])
def test_n2n_target_lies_on_the_input_sky_to_a_fraction_of_a_pixel(fraction):
    """Dithered exposures aligned by whole pixels leave fractions of a pixel between them
    (pixel (y, x) of exposure b holds the field reference's sky at (y + dy, x + dx)): the
    target is moved onto the input's sky, so that a network is not taught to move (and, over
    pairs of other fractions, blur) the light. Noise-free: the target equals the input."""
    shape = (96, 96)
    exposures = [training_exposure("a", "f", _star_grid(shape)),
                 training_exposure("b", "f", _star_grid(shape, -fraction[0], -fraction[1]))]
    config = TrainConfig(method="n2n", patch_size=32, batch_size=16, n2n_target="one")
    norms = [Normalisation("linear", offset=100.0, scale=1.0) for _ in exposures]
    unaligned = make_sampler(exposures, norms, config, np.random.default_rng(0)).batch()
    exposures[1].fraction = fraction
    aligned = make_sampler(exposures, norms, config, np.random.default_rng(0)).batch()

    inside = ~aligned["nodata"]
    assert inside.mean() > 0.8
    error = np.abs(aligned["targets"] - aligned["inputs"])[inside]
    assert error.max() < 0.03 * 100  # the spline's error: under 3% of a star's peak
    assert np.abs(unaligned["targets"] - unaligned["inputs"]).max() > 0.15 * 100


# --- structured blind spot -------------------------------------------------------------


@pytest.mark.parametrize("axis", ["x", "y"])
def test_hide_lines_hides_the_line_never_the_target_value(axis):
    ny = nx = 16
    generator = torch.Generator().manual_seed(3)
    values = torch.arange(4 * ny * nx, dtype=torch.float32).reshape(4, ny * nx)
    b, target, _ = n2v_mask((4, ny, nx), fraction=1 / 256, neighbourhood=5, generator=generator)
    flat = values.clone()

    hide_lines(flat, b, target, shape=(ny, nx), axis=axis, half=2, generator=generator)

    changed = (flat != values).reshape(4, ny, nx)
    ty, tx = target // nx, target % nx
    for i, y, x in zip(b.tolist(), ty.tolist(), tx.tolist(), strict=True):
        assert not changed[i, y, x]
        line = changed[i, y, max(0, x - 2):x + 3] if axis == "x" else changed[i, max(0, y - 2):y + 3, x]
        assert line.sum() >= min(line.numel() - 1, 2)
        # No hidden pixel took the target's own (original) value.
        assert not (flat[i] == values[i, y * nx + x]).sum() > 1
    ys, xs = np.nonzero(changed.any(0).numpy())
    near = [(abs(y - ty) <= 2) & (abs(x - tx) <= 2) for y, x in zip(ys, xs, strict=True)]
    assert all(bool(n.any()) for n in near)
