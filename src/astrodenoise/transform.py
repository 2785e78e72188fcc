"""Invertible maps between an exposure's data and a network's (unit-noise) domain.

- ``linear``: sky-subtracted and divided by a noise scale;
- ``gat``: the generalised Anscombe transform for Poisson-Gaussian noise, with the
  closed-form unbiased inverse (Makitalo & Foi 2011).

Maps are global per exposure, never per patch or tile (which would make seams). Used by
training, prediction, the classical baselines and injection-recovery alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .noise_model import NoiseModel

__all__ = ["Normalisation", "to_data", "exposure_normalisation", "stabilising"]


def _anscombe_inverse(d: torch.Tensor) -> torch.Tensor:
    """Closed-form approximation of the exact unbiased inverse of ``2 sqrt(z + 3/8)``
    (Makitalo & Foi 2011): the ``z`` whose transform has expectation ``d`` under Poisson
    noise. The algebraic inverse ``d**2/4 - 3/8`` is biased low by about 1/4 count."""
    d = d.clamp(min=1.0)  # the series diverges below ~1 (a few counts), far below any sky
    r = 1.5**0.5
    return (d**2 / 4 + r / (4 * d) - 11 / (8 * d**2) + 5 * r / (8 * d**3) - 1 / 8).clamp(min=0.0)


def to_data(u: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Differentiable inverse of :class:`Normalisation` for a batch.

    ``u`` is (batch, ...) in the network domain; ``params`` (batch, 4) holds each item's
    ``Normalisation.params()``: (1 for "gat" else 0, offset, scale, gain).
    """
    shape = (-1,) + (1,) * (u.dim() - 1)
    is_gat, offset, scale, gain = (params[:, i].reshape(shape) for i in range(4))
    linear = u * scale + offset
    pedestal = (gain * scale) ** 2
    electrons = _anscombe_inverse(u + 2 * torch.sqrt(pedestal + 3 / 8))
    gat = (electrons - pedestal) / gain.clamp(min=1e-12) + offset
    return torch.where(is_gat > 0, gat, linear)


@dataclass(frozen=True)
class Normalisation:
    """Global, invertible map between one exposure's data and the network's domain.

    ``kind="linear"``: ``u = (x - offset) / scale``, the survey sigma as ``scale``.

    ``kind="gat"``: the generalised Anscombe transform for Poisson-Gaussian noise,
    ``f(x) = 2 sqrt(gain (x - offset) + (gain sigma)**2 + 3/8)`` and ``u = f(x) - f(offset)``.
    ``gain (x - offset) + (gain sigma)**2`` is the signal in electrons plus the read-noise
    variance, built from the sky level and the blank-sky ``sigma`` of the exposure, so it
    holds for sky-subtracted or bias-free data alike and needs no read noise. The noise of
    ``u`` is about 1 at every brightness, so an MSE loss weighs sky and stars alike, and a
    star thousands of sigma bright spans only about sqrt(thousands) units. The inverse is
    the unbiased one (:func:`_anscombe_inverse`), which keeps the sky level, hence the
    aperture flux of faint sources, unbiased.

    Attributes
    ----------
    kind : "linear" or "gat"
    offset : sky level, data units (ADU)
    scale : "linear": data units per network unit; "gat": blank-sky sigma, data units
    gain : e-/ADU ("gat" only)
    """

    kind: str
    offset: float
    scale: float
    gain: float = 0.0

    def __post_init__(self):
        if self.kind not in ("linear", "gat"):
            raise ValueError(f"normalisation kind {self.kind!r} unknown; use 'linear' or 'gat'")
        if self.kind == "gat" and not self.gain > 0:
            raise ValueError("the generalised Anscombe transform needs a positive gain")

    @property
    def _pedestal(self) -> float:
        """Electrons plus read-noise variance at the sky level."""
        return (self.gain * self.scale) ** 2

    @property
    def noise(self) -> NoiseModel:
        """The noise model this map stabilises: sky ``offset``, sigma ``scale``, and the
        gain for "gat" (a linear map knows no gain)."""
        return NoiseModel(sky=self.offset, sigma=self.scale, gain=self.gain if self.kind == "gat" else None)

    def forward(self, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map (ny, nx) data in ADU (NaN = no data) to the network domain.

        Returns the float32 image, with no-data pixels set to the sky (0), and the bool
        no-data mask (True = no data).
        """
        nodata = ~np.isfinite(data)
        x = np.where(nodata, self.offset, data).astype(np.float64)
        if self.kind == "linear":
            return ((x - self.offset) / self.scale).astype(np.float32), nodata
        z = self.gain * (x - self.offset) + self._pedestal + 3 / 8
        out = 2 * np.sqrt(np.maximum(z, 0.0)) - 2 * np.sqrt(self._pedestal + 3 / 8)
        return out.astype(np.float32), nodata

    def inverse(self, image: np.ndarray) -> np.ndarray:
        """Map network-domain values back to data units (float32, ADU)."""
        u = torch.from_numpy(np.asarray(image, dtype=np.float64))[None]
        params = torch.tensor([self.params()], dtype=torch.float64)
        return to_data(u, params)[0].numpy().astype(np.float32)

    def params(self) -> tuple[float, float, float, float]:
        """(1 for "gat" else 0, offset, scale, gain): the row :func:`to_data` takes."""
        return (float(self.kind == "gat"), self.offset, self.scale, self.gain)


def stabilising(noise: NoiseModel) -> Normalisation:
    """The variance-stabilising map of one exposure's noise: the generalised Anscombe
    transform with its gain, else linear with its own sigma."""
    if noise.gain:
        return Normalisation("gat", offset=noise.sky, scale=noise.sigma, gain=float(noise.gain))
    return Normalisation("linear", offset=noise.sky, scale=noise.sigma)


def exposure_normalisation(stats: dict, noise: NoiseModel) -> Normalisation:
    """The normalisation of one exposure under a checkpoint's survey-wide settings.

    Parameters
    ----------
    stats : ``checkpoint["normalisation"]``; checkpoints without ``kind`` are linear
    noise : the exposure's noise model

    Use it at prediction as ``norm.forward(data)``, the model on the result, then
    ``norm.inverse(output)``.
    """
    kind = stats.get("kind", "linear")
    if kind == "linear":
        return Normalisation("linear", offset=noise.sky, scale=float(stats["scale"]))
    return Normalisation("gat", offset=noise.sky, scale=noise.sigma, gain=float(noise.gain or stats["gain"]))
