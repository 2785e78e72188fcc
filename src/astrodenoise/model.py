"""The denoising network: a small 2-D U-Net.

The model exposes ``n_pool`` and ``receptive_field`` so that tiled inference can derive
an overlap that reproduces whole-image prediction exactly (a multiple of ``2**n_pool``,
at least the receptive field).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["UNetConfig", "UNet"]


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of the U-Net.

    ``depth`` is the number of 2x2 poolings (``n_pool``); ``channels`` the feature
    count at full resolution, doubled at each level.
    """

    depth: int = 2
    channels: int = 32

    @classmethod
    def from_dict(cls, values: dict) -> UNetConfig:
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.LeakyReLU(0.1),
        nn.Conv2d(c_out, c_out, 3, padding=1), nn.LeakyReLU(0.1),
    )


class UNet(nn.Module):
    """U-Net mapping a (batch, 1, ny, nx) image to a denoised image of the same shape.

    ``ny`` and ``nx`` must be multiples of ``2**n_pool``. There is no residual path from
    input to output: Noise2Void replaces the centre pixel during training, and a
    residual path would teach the net to pass the noisy pixel through at inference.
    """

    def __init__(self, config: UNetConfig = UNetConfig()):
        super().__init__()
        self.config = config
        widths = [config.channels * 2**level for level in range(config.depth + 1)]
        self.encoders = nn.ModuleList()
        c_in = 1
        for width in widths[:-1]:
            self.encoders.append(_double_conv(c_in, width))
            c_in = width
        self.pool = nn.MaxPool2d(2)
        self.bottom = _double_conv(widths[-2], widths[-1])
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in reversed(range(config.depth)):
            self.ups.append(nn.ConvTranspose2d(widths[level + 1], widths[level], 2, stride=2))
            self.decoders.append(_double_conv(2 * widths[level], widths[level]))
        self.head = nn.Conv2d(widths[0], 1, 1)

    @property
    def n_pool(self) -> int:
        return self.config.depth

    @property
    def receptive_field(self) -> int:
        """Full width in pixels of the region that influences one output pixel."""
        rf, scale = 1, 1
        for _ in range(self.config.depth):  # encoder: two 3x3 convs, then a 2x2 pool
            rf += 4 * scale + scale
            scale *= 2
        rf += 4 * scale  # bottom double conv
        for _ in range(self.config.depth):  # decoder: 2x2 up-conv, two 3x3 convs
            rf += scale
            scale //= 2
            rf += 4 * scale
        return rf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        h = x
        for encoder in self.encoders:
            h = encoder(h)
            skips.append(h)
            h = self.pool(h)
        h = self.bottom(h)
        for up, decoder, skip in zip(self.ups, self.decoders, reversed(skips), strict=True):
            h = decoder(torch.cat([up(h), skip], dim=1))
        return self.head(h)
