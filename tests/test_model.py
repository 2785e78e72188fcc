"""Tests of astrodenoise.model: the U-Net, its shapes and its receptive field."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from astrodenoise.model import UNet, UNetConfig


def _gradient_extent(model: UNet, size: int, offset: tuple[int, int], draws: int = 3) -> int:
    """Width in pixels of the input region with a non-zero gradient of one output pixel,
    united over a few random inputs (a max-pool passes gradient to one pixel per window)."""
    cy, cx = size // 2 + offset[0], size // 2 + offset[1]
    support = np.zeros((size, size), bool)
    generator = torch.Generator().manual_seed(1)
    for _ in range(draws):
        x = torch.randn(1, 1, size, size, generator=generator, requires_grad=True)
        model(x)[0, 0, cy, cx].backward()
        support |= x.grad[0, 0].numpy() != 0
    ys, xs = np.nonzero(support)
    return int(max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1))


@pytest.mark.parametrize("depth, size", [(1, 64), (2, 96), (3, 160)])
def test_receptive_field_covers_empirical_gradient_extent(depth, size):
    torch.manual_seed(0)
    model = UNet(UNetConfig(depth=depth, channels=4)).eval()

    # Different offsets put the pixel at different phases of the pooling grid.
    extents = [_gradient_extent(model, size, offset) for offset in [(0, 0), (1, 1), (2, 3), (5, 6)]]

    assert max(extents) > 2 ** (depth + 2)  # the gradient really spreads through the levels
    assert model.receptive_field >= max(extents)
    assert max(extents) < size  # the region did not reach the image border


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("shape", [(32, 32), (48, 80)])
def test_output_shape_equals_input_shape(depth, shape):
    model = UNet(UNetConfig(depth=depth, channels=4))
    x = torch.randn(2, 1, *shape)

    with torch.no_grad():
        y = model(x)

    assert y.shape == x.shape
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_n_pool_is_depth(depth):
    assert UNet(UNetConfig(depth=depth, channels=4)).n_pool == depth


def test_receptive_field_grows_with_depth():
    fields = [UNet(UNetConfig(depth=d, channels=4)).receptive_field for d in (1, 2, 3)]

    assert fields == sorted(fields) and len(set(fields)) == 3


def test_channels_double_per_level():
    model = UNet(UNetConfig(depth=2, channels=4))

    assert [enc[0].out_channels for enc in model.encoders] == [4, 8]
    assert model.bottom[0].out_channels == 16


def test_no_residual_path_from_input_to_output():
    """A zero network gives zero output whatever the input (no input skip connection)."""
    model = UNet(UNetConfig(depth=2, channels=4))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()

    y = model(torch.randn(1, 1, 32, 32))

    assert torch.count_nonzero(y) == 0


def test_config_round_trip():
    config = UNetConfig(depth=3, channels=8)

    assert UNetConfig.from_dict(config.to_dict()) == config
