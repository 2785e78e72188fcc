"""Self-supervised training on the survey's own exposures: Noise2Void and Noise2Noise.

- **Noise2Void** (Krull et al. 2019): a blind spot. A few pixels of each patch are
  replaced by a random neighbour, and the loss compares the network's output at those
  pixels with their original noisy values. With pixel-independent, zero-mean noise the
  best prediction is the clean value.
- **Noise2Noise** (Lehtinen et al. 2018): the input is one exposure of a field and the
  target the mean of the other exposures of the same field on the same pixel grid (or
  one of them); the noise in the target is independent of the input, so the best
  prediction is the clean value.

Images are normalised globally: the exposure's sky level (from the noise step) is
subtracted and the result divided by one survey-wide scale (the median noise sigma).
Normalisation is never per patch or per tile, which would make seams. Both are stored
in the checkpoint with the full config, so that prediction is reproducible.

The loop is one visible function (:func:`train_model`); determinism comes from the seed.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from tqdm import tqdm

from . import io
from .model import UNet, UNetConfig
from .noise import exposure_gain
from .provenance import code_version

__all__ = [
    "TrainConfig",
    "Exposure",
    "Normalisation",
    "exposure_normalisation",
    "method_settings",
    "normalise",
    "n2v_mask",
    "train_model",
    "write_curve",
    "plot_curve",
    "hide_lines",
    "train",
]

METHODS = ("n2v", "n2n")


@dataclass(frozen=True)
class TrainConfig:
    """Settings of the training step (every field is in config/config.yaml).

    ``steps`` optimiser steps of ``batch_size`` patches of ``patch_size`` pixels;
    ``mask_fraction`` and ``neighbourhood`` are the N2V blind-spot settings (share of
    pixels replaced, size of the window the replacement is drawn from); ``val_fraction``
    the share of image rows held out for validation; ``loss`` ``"mse"`` (Gaussian noise)
    or ``"l1"`` (robust against cosmic rays and other outliers); ``source_fraction`` the
    share of training patches placed on a source (a pixel above 5 sigma): sources cover
    a few percent of a survey image, and uniform patches would rarely teach the net them.

    ``transform`` maps data to the network's domain: ``"gat"`` the generalised Anscombe
    transform (Poisson-Gaussian noise; the loss is then MSE on unit-variance noise),
    ``"linear"`` sky-subtracted and divided by the survey sigma, ``"auto"`` GAT whenever
    every exposure has a gain. ``grad_clip`` caps the gradient norm (0: off).
    ``inject`` validates on sources of known flux injected into the validation rows, and
    with ``select="photometry"`` the kept step is the lowest validation loss among those
    whose median injected-flux bias is within ``bright_tolerance`` / ``faint_tolerance``
    (fractions), else the smallest bias; ``select="loss"`` uses the loss alone.
    ``flux_weight`` weighs a loss term on sources injected into every training patch
    (:func:`_flux_loss`), which counters the dimming of faint sources (0: off).
    ``blind_spot`` (N2V): ``"point"``, ``"x"``/``"y"`` (structN2V: also hide ``struct_half``
    pixels either side along that axis) or ``"auto"``: structured along the axis whose
    lag-1 noise autocorrelation exceeds ``correlation_limit``. ``n2n_target`` (N2N):
    ``"mean"`` of all other exposures of the field (half the target noise with three
    exposures, so steadier gradients) or ``"one"`` other exposure drawn at random.
    """

    method: str = "n2v"
    steps: int = 1200
    batch_size: int = 16
    patch_size: int = 64
    learning_rate: float = 4e-4
    loss: str = "mse"
    mask_fraction: float = 0.02
    neighbourhood: int = 5
    val_fraction: float = 0.1
    val_every: int = 100
    patience: int = 6
    source_fraction: float = 0.5
    transform: str = "auto"
    grad_clip: float = 1.0
    inject: bool = True
    flux_weight: float = 0.0
    select: str = "photometry"
    bright_tolerance: float = 0.005
    faint_tolerance: float = 0.03
    blind_spot: str = "auto"
    correlation_limit: float = 0.1
    struct_half: int = 2
    n2n_target: str = "mean"
    seed: int = 0
    threads: int = 0
    model: UNetConfig = field(default_factory=UNetConfig)

    def __post_init__(self):
        choices = {"method": METHODS, "loss": ("mse", "l1"), "transform": ("auto", "gat", "linear"),
                   "select": ("photometry", "loss"), "blind_spot": ("auto", "point", "x", "y"),
                   "n2n_target": ("mean", "one")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"train {key} {getattr(self, key)!r} unknown; use one of {allowed}")
        if self.patch_size % 2 ** self.model.depth:
            raise ValueError(f"patch_size {self.patch_size} must be a multiple of "
                             f"2**depth = {2 ** self.model.depth}")

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """From the train block of the config: ``method`` picks the method, and its own
        block (``n2n:`` / ``n2v:``), if any, overrides the shared keys
        (:func:`method_settings`)."""
        values = method_settings(values, values.get("method", cls.method))
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"train settings {unknown} unknown (for {values['method']}); "
                             "see the train block of config/config.yaml for the valid ones")
        values["model"] = UNetConfig.from_dict(values.get("model", {}))
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def method_settings(values: dict, method: str) -> dict:
    """The train block as ``method`` sees it: the shared keys, overridden by the keys of
    the method's own block (``{"steps": 1600, "n2n": {"steps": 2400}}`` gives n2n 2400
    steps and n2v 1600); the per-method blocks themselves are dropped."""
    if method not in METHODS:
        raise ValueError(f"train method {method!r} unknown; use one of {METHODS}")
    own = values.get(method) or {}
    if not isinstance(own, dict):
        raise ValueError(f"train.{method} must be a block of train settings, not {own!r}")
    return {k: v for k, v in values.items() if k not in METHODS} | dict(own) | {"method": method}


@dataclass
class Exposure:
    """One training exposure: data (ny, nx) float32 in data units, NaN = no data; pixels
    flagged ``bad`` (saturated, masked) stay in the input but never count in the loss."""

    name: str
    field: str
    data: np.ndarray
    sky_level: float
    sigma: float
    bad: np.ndarray | None = None  # (ny, nx) bool, True = excluded from the loss
    gain: float | None = None  # e-/ADU; None: Poisson-Gaussian model unknown
    correlation: tuple[float, float] = (0.0, 0.0)  # lag-1 noise autocorrelation (x, y)


def normalise(data: np.ndarray, *, offset: float, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Return ``((data - offset) / scale`` with NaN set to 0, and the bool no-data mask)."""
    nodata = ~np.isfinite(data)
    out = (np.where(nodata, offset, data) - offset) / scale
    return out.astype(np.float32), nodata


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


def exposure_normalisation(stats: dict, noise: dict) -> Normalisation:
    """The normalisation of one exposure under a checkpoint's survey-wide settings.

    Parameters
    ----------
    stats : ``checkpoint["normalisation"]``; checkpoints without ``kind`` are linear
    noise : the exposure's noise JSON (``sky_level``, ``sigma``, ``gain``)

    Use it at prediction as ``norm.forward(data)``, the model on the result, then
    ``norm.inverse(output)``.
    """
    kind = stats.get("kind", "linear")
    if kind == "linear":
        return Normalisation("linear", offset=float(noise["sky_level"]), scale=float(stats["scale"]))
    gain = exposure_gain(noise) or stats["gain"]
    return Normalisation("gat", offset=float(noise["sky_level"]), scale=float(noise["sigma"]),
                         gain=float(gain))


def n2v_mask(shape: tuple[int, int, int], *, fraction: float, neighbourhood: int,
             generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Choose blind-spot pixels and the neighbours that replace them.

    Parameters
    ----------
    shape : (batch, ny, nx)
    fraction : share of pixels masked per patch
    neighbourhood : odd window size; replacements come from this window, never the centre

    Returns
    -------
    batch_idx, flat_target, flat_source : 1-D int64 tensors
        Flat indices (``y * nx + x``) into each patch of the masked pixels and of the
        pixels whose values replace them; ``flat_source != flat_target`` always.
    """
    batch, ny, nx = shape
    per_patch = max(1, int(round(fraction * ny * nx)))
    half = neighbourhood // 2
    b = torch.arange(batch).repeat_interleave(per_patch)
    y = torch.randint(0, ny, (b.numel(),), generator=generator)
    x = torch.randint(0, nx, (b.numel(),), generator=generator)
    # Offsets drawn from the window without (0, 0): draw from the n*n - 1 others.
    k = torch.randint(0, neighbourhood**2 - 1, (b.numel(),), generator=generator)
    k = k + (k >= (neighbourhood**2) // 2).long()
    dy, dx = k // neighbourhood - half, k % neighbourhood - half
    # Reflect at the patch border so the source stays inside and never equals the target.
    sy = torch.where((y + dy < 0) | (y + dy >= ny), y - dy, y + dy)
    sx = torch.where((x + dx < 0) | (x + dx >= nx), x - dx, x + dx)
    return b, y * nx + x, sy * nx + sx


class _PatchSampler:
    """Draws training and validation patches from normalised exposures."""

    def __init__(self, exposures: list[Exposure], config: TrainConfig, norms: list[Normalisation],
                 rng: np.random.Generator, *, keep_axes: bool = False, stamps: np.ndarray | None = None,
                 radius: float = 3.0):
        self.config, self.rng, self.norms = config, rng, norms
        self.stamps, self.radius = stamps, radius  # sources to inject, aperture radius (px)
        self.data = [exp.data for exp in exposures]
        self.sigmas = [exp.sigma for exp in exposures]
        # A structured blind spot runs along the detector axes: rotating a patch by 90
        # degrees would turn it across the correlation, so only flips are drawn then.
        self.rotations = (0, 2) if keep_axes else (0, 1, 2, 3)
        self.images, self.nodata = [], []
        for exp, norm in zip(exposures, norms, strict=True):
            image, nodata = norm.forward(exp.data)
            self.images.append(image)
            self.nodata.append(nodata if exp.bad is None else nodata | exp.bad)
        self.fields: dict[str, list[int]] = {}
        for i, exp in enumerate(exposures):
            self.fields.setdefault(exp.field, []).append(i)
        self.pairs = {f: idx for f, idx in self.fields.items() if len(idx) >= 2}
        self.bright = [self._bright_pixels(i) for i in range(len(self.images))]

    def _bright_pixels(self, i: int) -> np.ndarray:
        """(n, 2) row/column of training-region pixels above 5 sigma (source candidates)."""
        split = self._split_row(i)
        ys, xs = np.nonzero(self.images[i][:split] > 5.0)
        return np.column_stack([ys, xs])

    def _split_row(self, i: int) -> int:
        ny = self.images[i].shape[0]
        return int(ny * (1 - self.config.val_fraction))

    def _corner(self, i: int, val: bool) -> tuple[int, int]:
        p = self.config.patch_size
        ny, nx = self.images[i].shape
        split = self._split_row(i)
        # Validation patches start in the held-out bottom rows (overlapping the training
        # rows only when that band is thinner than a patch).
        lo, hi = (max(0, min(split, ny - p)), ny - p) if val else (0, max(0, split - p))
        bright = self.bright[i]
        if not val and len(bright) and self.rng.random() < self.config.source_fraction:
            cy, cx = bright[self.rng.integers(len(bright))]
            y = np.clip(cy - self.rng.integers(p), lo, hi)
            x = np.clip(cx - self.rng.integers(p), 0, nx - p)
            return int(y), int(x)
        y = self.rng.integers(lo, hi + 1)
        return int(y), int(self.rng.integers(0, nx - p + 1))

    def _cut(self, i: int, y: int, x: int) -> tuple[np.ndarray, np.ndarray]:
        p = self.config.patch_size
        return self.images[i][y:y + p, x:x + p], self.nodata[i][y:y + p, x:x + p]

    def _pair(self) -> tuple[int, list[int]]:
        """The input exposure and the exposures whose mean is the target: itself (n2v),
        one other exposure of its field or all others (n2n, ``n2n_target``)."""
        if self.config.method == "n2v":
            a = int(self.rng.integers(len(self.images)))
            return a, [a]
        field_name = list(self.pairs)[self.rng.integers(len(self.pairs))]
        if self.config.n2n_target == "one":
            a, b = self.rng.choice(self.pairs[field_name], size=2, replace=False)
            return int(a), [int(b)]
        members = self.pairs[field_name]
        a = int(members[self.rng.integers(len(members))])
        return a, [i for i in members if i != a]

    def batch(self, *, val: bool = False) -> dict:
        """Return a batch: ``inputs``, ``targets`` (float32) and ``nodata`` (bool), each
        (B, P, P). Training batches with ``stamps`` hold each patch twice, the second
        time with a source of known flux injected (see :meth:`_inject`), and add
        ``aperture`` (B, P, P) float32, ``known`` and ``noise`` (B,) (injected aperture
        flux and the aperture's sky noise, data units) and ``params`` (B, 4) for
        :func:`to_data`; the first B/2 items are the clean copies."""
        rows = []
        for _ in range(self.config.batch_size):
            a, others = self._pair()
            y, x = self._corner(a, val)
            src, bad = self._cut(a, y, x)
            cuts = [self._cut(i, y, x) for i in others]
            # The mean of independent exposures is a target of the same mean, less noise.
            dst = np.mean([cut for cut, _ in cuts], axis=0, dtype=np.float32)
            bad = np.logical_or.reduce([bad] + [b for _, b in cuts])
            k, flip = (0, False) if val else (int(self.rng.choice(self.rotations)),
                                              bool(self.rng.integers(2)))
            rows.append([_dihedral(arr, k, flip) for arr in (src, dst, bad)])
            if self.stamps is not None and not val:
                p = self.config.patch_size
                raw = [_dihedral(self.data[i][y:y + p, x:x + p], k, flip) for i in [a, *others]]
                rows[-1] += self._inject(raw, [a, *others])
        if len(rows[0]) == 3:
            src, dst, bad = zip(*rows, strict=True)
            return {"inputs": np.stack(src), "targets": np.stack(dst), "nodata": np.stack(bad)}
        src, dst, bad, inj_src, inj_dst, aperture, known, noise, params = zip(*rows, strict=True)
        zeros = tuple(np.zeros_like(ap) for ap in aperture)
        return {"inputs": np.stack(src + inj_src), "targets": np.stack(dst + inj_dst),
                "nodata": np.stack(bad + bad), "aperture": np.stack(zeros + aperture),
                "known": np.array(known, np.float64), "noise": np.array(noise, np.float64),
                "params": np.array(params + params, np.float64)}

    def _inject(self, raw: list[np.ndarray], exposures: list[int]) -> list:
        """Add one source of known flux (a random stamp, aperture S/N log-uniform in 5-500)
        to the input patch (``raw[0]``) and, with its own Poisson noise each time, to the
        target patches (the rest), whose mean is the target."""
        half = self.stamps.shape[1] // 2
        p = self.config.patch_size
        stamp = self.stamps[self.rng.integers(len(self.stamps))]
        disk = _disk(half, self.radius)
        noise = self.sigmas[exposures[0]] * np.sqrt(disk.sum())
        snr = np.exp(self.rng.uniform(np.log(5), np.log(500)))
        flux = snr * noise / (stamp * disk).sum()
        cy, cx = self.rng.integers(half, p - half, size=2)
        out = []
        for arr, i in zip(raw, exposures, strict=True):
            norm = self.norms[i]
            source = flux * stamp
            if norm.kind == "gat":
                source = source + self.rng.normal(0.0, 1.0, source.shape) * np.sqrt(source / norm.gain)
            arr = arr.astype(np.float64)
            arr[cy - half:cy + half + 1, cx - half:cx + half + 1] += source
            out.append(norm.forward(arr)[0])
        aperture = np.zeros((p, p), np.float32)
        aperture[cy - half:cy + half + 1, cx - half:cx + half + 1] = disk
        target = np.mean(out[1:], axis=0, dtype=np.float32)
        return [out[0], target, aperture, flux * (stamp * disk).sum(), noise,
                self.norms[exposures[0]].params()]


def _dihedral(arr: np.ndarray, k: int, flip: bool) -> np.ndarray:
    arr = np.rot90(arr, k)
    return np.ascontiguousarray(arr[:, ::-1] if flip else arr)


def _check_inputs(exposures: list[Exposure], config: TrainConfig) -> None:
    p = config.patch_size
    for exp in exposures:
        if min(exp.data.shape) < p:
            raise ValueError(f"exposure {exp.name}: shape {exp.data.shape} is smaller than one "
                             f"training patch ({p} px); lower train.patch_size")
    if config.method == "n2n":
        fields: dict[str, list[Exposure]] = {}
        for exp in exposures:
            fields.setdefault(exp.field, []).append(exp)
        usable = [f for f, exps in fields.items() if len(exps) >= 2]
        if not usable:
            raise ValueError("Noise2Noise needs a field with two or more exposures on one pixel "
                             "grid; group exposures into fields (inputs.exposure_sheet) or use n2v")
        for f in usable:
            shapes = {exp.data.shape for exp in fields[f]}
            if len(shapes) > 1:
                raise ValueError(f"field {f}: exposures have different shapes {sorted(shapes)}; "
                                 "Noise2Noise needs them on one pixel grid")


def _loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, kind: str):
    err = pred - target
    per_pixel = err.abs() if kind == "l1" else err**2
    return (per_pixel * weight).sum() / weight.sum().clamp(min=1.0)


def hide_lines(flat: torch.Tensor, b: torch.Tensor, target: torch.Tensor, *, shape: tuple[int, int],
               axis: str, half: int, generator: torch.Generator) -> None:
    """structN2V (Broaden et al. 2020): hide, in place, the pixels within ``half`` of each
    blind-spot target along ``axis`` ("x" or "y"), where the noise is correlated.

    Each hidden pixel takes the value of a random pixel of its patch other than the
    target, so correlated noise next to the target cannot reveal the target's noise.
    ``flat`` is (batch, ny * nx); ``b`` and ``target`` are from :func:`n2v_mask`.
    """
    ny, nx = shape
    y, x = target // nx, target % nx
    for k in [*range(-half, 0), *range(1, half + 1)]:
        yy, xx = (y, x + k) if axis == "x" else (y + k, x)
        inside = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
        draw = torch.randint(1, ny * nx, (int(inside.sum()),), generator=generator)
        flat[b[inside], (yy * nx + xx)[inside]] = flat[b[inside], (target[inside] + draw) % (ny * nx)]


def _step_loss(model, batch: dict, config: TrainConfig, generator: torch.Generator,
               axis: str | None = None):
    inputs, targets, nodata = (torch.from_numpy(batch[k]) for k in ("inputs", "targets", "nodata"))
    valid = (~nodata).float()
    if config.method == "n2n":
        pred = model(inputs[:, None])[:, 0]
        loss = _loss(pred, targets, valid, config.loss)
    else:
        b, target_idx, source_idx = n2v_mask(tuple(inputs.shape), fraction=config.mask_fraction,
                                             neighbourhood=config.neighbourhood, generator=generator)
        flat = inputs.reshape(inputs.shape[0], -1).clone()
        if axis:
            hide_lines(flat, b, target_idx, shape=tuple(inputs.shape[1:]), axis=axis,
                       half=config.struct_half, generator=generator)
        flat[b, target_idx] = flat[b, source_idx]
        pred = model(flat.reshape(inputs.shape)[:, None])[:, 0]
        weight = valid.reshape(inputs.shape[0], -1)[b, target_idx]
        loss = _loss(pred.reshape(inputs.shape[0], -1)[b, target_idx],
                     targets.reshape(inputs.shape[0], -1)[b, target_idx], weight, config.loss)
    if "known" in batch and config.flux_weight:
        loss = loss + config.flux_weight * _flux_loss(pred, batch)
    return loss


def _flux_loss(pred: torch.Tensor, batch: dict) -> torch.Tensor:
    """Pseudo-Huber error, in units of the aperture's sky noise, of the aperture flux the
    model gives an injected source: model(patch + source) - model(patch), in data units.

    Denoisers trained for the MSE shrink faint sources towards the sky (the conditional
    mean of a faint source's flux is below its flux); this term asks the response to a
    source of known flux to be that flux. Pseudo-Huber (quadratic below one noise unit,
    linear above) keeps a bright source's large early error from swamping the denoising
    loss."""
    half = pred.shape[0] // 2
    data = to_data(pred.double(), torch.from_numpy(batch["params"]))
    aperture = torch.from_numpy(batch["aperture"][half:]).double()
    recovered = ((data[half:] - data[:half]) * aperture).sum(dim=(1, 2))
    known, noise = torch.from_numpy(batch["known"]), torch.from_numpy(batch["noise"])
    error = (recovered - known) / noise
    return (torch.sqrt(1 + error**2) - 1).mean().float()


def _validate(model, val_batches, config: TrainConfig, axis: str | None) -> float:
    generator = torch.Generator().manual_seed(config.seed + 1)  # same blind spots each time
    model.eval()
    with torch.no_grad():
        losses = [float(_step_loss(model, batch, config, generator, axis)) for batch in val_batches]
    model.train()
    return float(np.mean(losses))


def _run_model(model, image: np.ndarray) -> np.ndarray:
    """Whole-image forward pass in the network domain, reflect-padded to the pooling grid."""
    step = 2**model.config.depth
    ny, nx = image.shape
    padded = np.pad(image, ((0, -ny % step), (0, -nx % step)), mode="reflect")
    with torch.no_grad():
        return model(torch.from_numpy(padded)[None, None])[0, 0, :ny, :nx].numpy()


def _normalisations(exposures: list[Exposure], config: TrainConfig) -> tuple[list[Normalisation], dict]:
    """The per-exposure maps to the network domain and the survey-wide settings saved in
    the checkpoint (``kind``, ``scale`` = median sigma, ``gain`` = median gain)."""
    gains = [exp.gain for exp in exposures]
    kind = config.transform
    if kind == "auto":
        kind = "gat" if all(g and g > 0 for g in gains) else "linear"
    if kind == "gat" and not all(g and g > 0 for g in gains):
        raise ValueError("train.transform 'gat' needs the gain of every exposure (GAIN keyword "
                         "or a reliable Poisson-Gaussian fit); use 'auto' or 'linear'")
    scale = float(np.median([exp.sigma for exp in exposures]))
    stats = {"kind": kind, "scale": scale, "offset": "sky_level of each exposure (noise step)"}
    if kind == "linear":
        return [Normalisation("linear", offset=exp.sky_level, scale=scale) for exp in exposures], stats
    stats["gain"] = float(np.median(gains))
    return [Normalisation("gat", offset=exp.sky_level, scale=exp.sigma, gain=exp.gain)
            for exp in exposures], stats


def _blind_line_axis(exposures: list[Exposure], config: TrainConfig) -> str | None:
    """The structN2V axis: the configured one, or under "auto" the axis whose median lag-1
    noise autocorrelation exceeds ``correlation_limit`` (the larger one if both do)."""
    if config.method != "n2v" or config.blind_spot == "point":
        return None
    if config.blind_spot in ("x", "y"):
        return config.blind_spot
    cx, cy = np.median([exp.correlation for exp in exposures], axis=0)
    if max(abs(cx), abs(cy)) <= config.correlation_limit:
        return None
    return "x" if abs(cx) >= abs(cy) else "y"


def _empirical_psf(exposures: list[Exposure], norms: list[Normalisation], *, half: int = 7,
                   count: int = 25) -> np.ndarray:
    """Median of the most point-like bright, unflagged sources: a (2 half + 1)^2 stamp, sum 1.

    Cosmic rays (a peak without bright neighbours) are skipped; galaxies fall out by
    ranking on concentration. Without any star, a Gaussian of FWHM 3 pixels.
    """
    stamps = []
    for exp, norm in zip(exposures, norms, strict=True):
        u, nodata = norm.forward(exp.data)
        bad = nodata if exp.bad is None else nodata | exp.bad
        peaks = (u == ndimage.maximum_filter(u, 2 * half + 1)) & (u > 30) & ~bad
        for y, x in zip(*np.nonzero(peaks[half:-half, half:-half]), strict=True):
            y, x = y + half, x + half
            cut = np.s_[y - half:y + half + 1, x - half:x + half + 1]
            stamp = exp.data[cut].astype(np.float64) - exp.sky_level
            cross = stamp[half - 1:half + 2, half - 1:half + 2]
            if bad[cut].any() or min(cross[0, 1], cross[2, 1], cross[1, 0], cross[1, 2]) < 0.2 * cross[1, 1]:
                continue
            stamps.append(stamp / stamp.sum())
    if len(stamps) < 3:
        yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
        psf = np.exp(-(xx**2 + yy**2) / (2 * (3.0 / 2.3548) ** 2))
        return psf / psf.sum()
    stamps.sort(key=lambda st: -st[half, half])
    psf = np.clip(np.median(stamps[:count], axis=0), 0, None)
    return psf / psf.sum()


def _disk(half: int, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
    return xx**2 + yy**2 <= radius**2


def _source_stamps(psf: np.ndarray, rng: np.random.Generator, *, galaxies: int = 8) -> np.ndarray:
    """(1 + galaxies, s, s) stamps of sum 1: the PSF, and the PSF convolved with
    exponential discs (half-light radius 0.8-3 px, axis ratio 0.4-1, random angle), so
    that injected sources are stars and small galaxies like those a survey holds."""
    half = psf.shape[0] // 2
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1].astype(float)
    stamps = [psf]
    for _ in range(galaxies):
        r_eff, q, angle = rng.uniform(0.8, 3.0), rng.uniform(0.4, 1.0), rng.uniform(0, np.pi)
        u = xx * np.cos(angle) + yy * np.sin(angle)
        v = (-xx * np.sin(angle) + yy * np.cos(angle)) / q
        disc = np.exp(-1.678 * np.hypot(u, v) / r_eff)  # 1.678: half light inside r_eff
        stamp = np.clip(ndimage.convolve(disc / disc.sum(), psf, mode="constant"), 0, None)
        stamps.append(stamp / stamp.sum())
    return np.stack(stamps)


def _aperture_radius(psf: np.ndarray) -> float:
    """Aperture radius = FWHM of the PSF (from the area above half maximum), at least 1.5 px."""
    return max(1.5, float(2 * np.sqrt((psf >= psf.max() / 2).sum() / np.pi)))


class _PhotometryProbe:
    """Sources of known flux injected into a copy of each exposure's validation rows.

    Selecting the model on its loss alone is not enough: a denoiser's loss can keep
    falling while it dims faint sources. The probe measures, at each validation, the
    aperture flux (radius = FWHM of the empirical PSF) that the model returns for the
    injected sources: model(strip + sources) - model(strip), mapped back to data units,
    so that the strip's own sources and noise cancel. Injected sources get Poisson noise
    (Gaussian with variance = flux / gain) when the gain is known. Half a dozen faint
    (aperture S/N 6-18) sources for every three bright ones (S/N 60-400).
    """

    def __init__(self, exposures: list[Exposure], norms: list[Normalisation], config: TrainConfig,
                 rng: np.random.Generator, *, stamps: np.ndarray, radius: float):
        self.stamps = stamps
        self.disk = _disk(stamps.shape[1] // 2, radius)
        self.strips = [self._inject(exp, norm, config, rng)
                       for exp, norm in zip(exposures, norms, strict=True)]

    def _inject(self, exp: Exposure, norm: Normalisation, config: TrainConfig, rng) -> dict:
        half = self.stamps.shape[1] // 2
        ny, nx = exp.data.shape
        split = int(ny * (1 - config.val_fraction))
        step = 2**config.model.depth
        height = min(ny - ny % step, -(-max(ny - split + 2 * half, config.patch_size) // step) * step)
        strip = exp.data[ny - height:].astype(np.float64)
        clean, nodata = norm.forward(strip)
        busy = ndimage.maximum_filter(ndimage.uniform_filter(clean, 3), 2 * half + 1) > 1.5
        lo = max(split - (ny - height), 0) + half + 1
        injected, rows = strip.copy(), []
        for i, x in enumerate(range(half + 1, nx - half - 1, 3 * half)):
            y = int(rng.integers(lo, height - half - 1)) if height - half - 1 > lo else None
            if y is None or busy[y, x] or nodata[y - half:y + half + 1, x - half:x + half + 1].any():
                continue
            bright = i % 3 == 2
            snr = np.exp(rng.uniform(np.log(60), np.log(400))) if bright else rng.uniform(6, 18)
            stamp = self.stamps[rng.integers(len(self.stamps))]
            frac = (stamp * self.disk).sum()
            flux = snr * exp.sigma * np.sqrt(self.disk.sum()) / frac
            source = flux * stamp
            if norm.kind == "gat":
                source = source + rng.normal(0, 1, source.shape) * np.sqrt(source / norm.gain)
            injected[y - half:y + half + 1, x - half:x + half + 1] += source
            rows.append((y, x, flux * frac, bright))
        return {"clean": clean, "injected": norm.forward(injected)[0], "norm": norm,
                "sources": np.array(rows, dtype=float).reshape(-1, 4)}

    def measure(self, model) -> dict:
        """Median fractional bias of the recovered aperture flux, bright and faint."""
        half = self.stamps.shape[1] // 2
        ratios, bright = [], []
        for strip in self.strips:
            norm = strip["norm"]
            diff = norm.inverse(_run_model(model, strip["injected"])).astype(np.float64) \
                - norm.inverse(_run_model(model, strip["clean"]))
            for y, x, known, is_bright in strip["sources"]:
                y, x = int(y), int(x)
                ratios.append(diff[y - half:y + half + 1, x - half:x + half + 1][self.disk].sum() / known - 1)
                bright.append(bool(is_bright))
        ratios, bright = np.array(ratios), np.array(bright, bool)
        return {"bias_bright": float(np.median(ratios[bright])) if bright.any() else None,
                "bias_faint": float(np.median(ratios[~bright])) if (~bright).any() else None}


def _selection_key(row: dict, config: TrainConfig) -> tuple[int, float]:
    """Smaller is better: (0, val_loss) when the injected-source biases are within the
    tolerances (or not measured), else (1, worst bias in units of its tolerance)."""
    excess = [abs(row[key]) / tol for key, tol in (("bias_bright", config.bright_tolerance),
                                                   ("bias_faint", config.faint_tolerance))
              if row.get(key) is not None]
    if config.select == "loss" or not excess or max(excess) <= 1:
        return (0, row["val_loss"])
    return (1, max(excess))


def _rng_state(rng: np.random.Generator, generator: torch.Generator) -> dict:
    # Big integers as strings: a weights_only checkpoint load accepts plain types only.
    state = rng.bit_generator.state
    return {"numpy": {"state": str(state["state"]["state"]), "inc": str(state["state"]["inc"]),
                      "has_uint32": state["has_uint32"], "uinteger": state["uinteger"]},
            "torch": generator.get_state(), "torch_global": torch.get_rng_state()}


def _set_rng_state(rng: np.random.Generator, generator: torch.Generator, saved: dict) -> None:
    numpy = saved["numpy"]
    rng.bit_generator.state = {"bit_generator": "PCG64", "has_uint32": numpy["has_uint32"],
                               "uinteger": numpy["uinteger"],
                               "state": {"state": int(numpy["state"]), "inc": int(numpy["inc"])}}
    generator.set_state(saved["torch"])
    torch.set_rng_state(saved["torch_global"])


def train_model(exposures: list[Exposure], config: TrainConfig, *, resume: dict | None = None,
                on_validation=None) -> dict:
    """Train a U-Net on ``exposures`` and return a checkpoint dict.

    Parameters
    ----------
    exposures : the survey's exposures, with sky level, sigma and gain from the noise step
    config : TrainConfig
    resume : a checkpoint written at a validation of an interrupted run of the same
        config (``on_validation``); training continues from it and ends with the same
        weights as an uninterrupted run
    on_validation : callable(checkpoint dict), called after each validation (to save a
        resumable checkpoint)

    Returns
    -------
    dict with ``model`` (state dict of the selected step), ``optimizer``, ``model_config``,
    ``train_config``, ``normalisation`` (``kind``: "gat" or "linear", ``scale`` and
    ``gain``; see :func:`exposure_normalisation`), ``step``, ``best_step``, ``blind_line``
    (the structN2V axis or None) and ``history`` (one row per validation: step,
    train_loss, val_loss, bias_bright, bias_faint, lr, seconds).
    """
    _check_inputs(exposures, config)
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    rng = np.random.default_rng(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    norms, stats = _normalisations(exposures, config)
    axis = _blind_line_axis(exposures, config)
    psf = _empirical_psf(exposures, norms)
    stamps, radius = _source_stamps(psf, rng), _aperture_radius(psf)
    sampler = _PatchSampler(exposures, config, norms, rng, keep_axes=axis is not None,
                            stamps=stamps if config.flux_weight else None, radius=radius)
    val_batches = [sampler.batch(val=True) for _ in range(4)]
    probe = _PhotometryProbe(exposures, norms, config, rng, stamps=stamps, radius=radius) \
        if config.inject else None
    model = UNet(config.model)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.steps,
                                                          eta_min=config.learning_rate / 20)
    state = {"history": [], "best_key": None, "best_step": 0, "stale": 0, "step": 0,
             "best_state": copy.deepcopy(model.state_dict())}
    if resume is not None:
        model.load_state_dict(resume["model_last"])
        optimiser.load_state_dict(resume["optimizer"])
        schedule.load_state_dict(resume["schedule"])
        _set_rng_state(rng, generator, resume["rng"])
        state = {k: resume[k] for k in state} | {"best_state": resume["model"]}
        state["best_key"] = tuple(state["best_key"]) if state["best_key"] else None
    start, running = time.monotonic(), []
    progress = tqdm(range(state["step"] + 1, config.steps + 1), desc=f"train {config.method}", unit="step")
    for step in progress:
        loss = _step_loss(model, sampler.batch(), config, generator, axis)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            # Rare patches with a cosmic ray or a bright star's core give huge gradients.
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimiser.step()
        schedule.step()
        running.append(loss.item())
        if step % config.val_every and step != config.steps:
            continue
        row = {"step": step, "train_loss": float(np.mean(running)),
               "val_loss": _validate(model, val_batches, config, axis),
               "bias_bright": None, "bias_faint": None}
        if probe is not None:
            model.eval()
            row |= probe.measure(model)
            model.train()
        row |= {"lr": schedule.get_last_lr()[0], "seconds": time.monotonic() - start}
        state["history"].append(row)
        running = []
        progress.set_postfix(val_loss=f"{row['val_loss']:.4f}", faint=row["bias_faint"])
        key = _selection_key(row, config)
        state["step"] = step
        if state["best_key"] is None or key < state["best_key"]:
            state |= {"best_key": key, "best_step": step, "stale": 0,
                      "best_state": copy.deepcopy(model.state_dict())}
        else:
            state["stale"] += 1
        if on_validation is not None:
            on_validation(state | {"model": state["best_state"], "model_last": model.state_dict(),
                                   "optimizer": optimiser.state_dict(), "schedule": schedule.state_dict(),
                                   "rng": _rng_state(rng, generator), "train_config": config.to_dict()})
        if state["stale"] >= config.patience:
            break
    return {
        "model": state["best_state"],
        "optimizer": optimiser.state_dict(),
        "model_config": config.model.to_dict(),
        "train_config": config.to_dict(),
        "normalisation": stats,
        "step": state["step"],
        "best_step": state["best_step"],
        "blind_line": axis,
        "history": state["history"],
    }


CURVE_COLUMNS = ["step", "train_loss", "val_loss", "bias_bright", "bias_faint", "lr", "seconds"]


def write_curve(path: str | Path, history: list[dict]) -> None:
    """Write the training history as CSV (one row per validation; blank = not measured)."""
    with io.atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CURVE_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)


def plot_curve(path: str | Path, history: list[dict], *, best_step: int | None = None) -> None:
    """PNG of the training curve: losses (left) and injected-source flux bias (right)."""
    from matplotlib.figure import Figure

    steps = [row["step"] for row in history]
    fig = Figure(figsize=(9, 3.4))
    left, right = fig.subplots(1, 2)
    left.plot(steps, [row["train_loss"] for row in history], label="train")
    left.plot(steps, [row["val_loss"] for row in history], label="validation")
    left.set(xlabel="step", ylabel="loss", yscale="log")
    for key in ("bias_bright", "bias_faint"):
        values = [np.nan if row.get(key) is None else 100 * row[key] for row in history]
        right.plot(steps, values, marker="o", label=key.split("_")[1])
    right.axhline(0, color="grey", lw=0.8)
    right.set(xlabel="step", ylabel="injected-flux bias (%)")
    for ax in (left, right):
        if best_step:
            ax.axvline(best_step, color="k", ls=":", lw=0.8)
        ax.legend()
    fig.tight_layout()
    with io.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")


def _resume_point(path: Path, config: TrainConfig) -> dict | None:
    if not path.exists():
        return None
    saved = io.load_checkpoint(path)
    return saved if saved.get("train_config") == config.to_dict() else None


def train(images: list[str], noise_files: list[str], fields: list[str], *, out_checkpoint: str,
          out_curve: str, config: TrainConfig, registrations: list[str] = (),
          out_plot: str | None = None) -> dict:
    """Train on ingested exposures and write the checkpoint and training curve (atomic).

    ``images``, ``noise_files`` and ``fields`` are parallel lists: the zarr store, the
    noise JSON and the field name of each exposure. ``registrations`` (JSON of the
    register step) put the exposures of each field on one pixel grid for Noise2Noise.
    At each validation a resumable checkpoint ``<out_checkpoint>.partial`` is written;
    a rerun with the same config continues from it, and it is removed at the end.
    ``out_plot``: optional PNG of the curve.
    """
    from .register import load_aligned

    if not len(images) == len(noise_files) == len(fields):
        raise ValueError("train needs one noise file and one field name per image")
    exposures = []
    for loaded, noise_file in zip(load_aligned(images, fields, registrations), noise_files, strict=True):
        measured = io.read_json(noise_file)
        correlation = measured.get("autocorrelation") or {}
        exposures.append(Exposure(name=loaded["name"], field=loaded["field"], data=loaded["data"],
                                  sky_level=measured["sky_level"], sigma=measured["sigma"],
                                  bad=loaded["bad"], gain=exposure_gain(measured),
                                  correlation=(correlation.get("x", 0.0), correlation.get("y", 0.0))))
    partial = Path(f"{out_checkpoint}.partial")
    checkpoint = train_model(exposures, config, resume=_resume_point(partial, config),
                             on_validation=lambda state: io.save_checkpoint(partial, state))
    checkpoint |= {
        "code_version": code_version(),
        "inputs": [{"image": str(i), "sha256": io.open_zarr_image(i).attrs.get("source_sha256"),
                    "field": f} for i, f in zip(images, fields, strict=True)],
        "registrations": [io.read_json(r) for r in registrations],
    }
    io.save_checkpoint(out_checkpoint, checkpoint)
    write_curve(out_curve, checkpoint["history"])
    if out_plot:
        plot_curve(out_plot, checkpoint["history"], best_step=checkpoint["best_step"])
    partial.unlink(missing_ok=True)
    return checkpoint
