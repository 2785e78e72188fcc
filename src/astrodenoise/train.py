"""Self-supervised training on the survey's own exposures: Noise2Void and Noise2Noise.

- **Noise2Void** (Krull et al. 2019): a blind spot. A few pixels of each patch are
  replaced by a random neighbour, and the loss compares the network's output at those
  pixels with their original noisy values. With pixel-independent, zero-mean noise the
  best prediction is the clean value.
- **Noise2Noise** (Lehtinen et al. 2018): the input is one exposure of a field and the
  target another exposure of the same field on the same pixel grid; the noise in the
  target is independent of the input, so the best prediction is the clean value.

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
from tqdm import tqdm

from . import io
from .model import UNet, UNetConfig
from .provenance import code_version

__all__ = [
    "TrainConfig",
    "Exposure",
    "Normalisation",
    "exposure_normalisation",
    "normalise",
    "n2v_mask",
    "train_model",
    "write_curve",
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
    seed: int = 0
    threads: int = 0
    model: UNetConfig = field(default_factory=UNetConfig)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"train method {self.method!r} unknown; use one of {METHODS}")
        if self.loss not in ("mse", "l1"):
            raise ValueError(f"train loss {self.loss!r} unknown; use 'mse' or 'l1'")
        if self.patch_size % 2 ** self.model.depth:
            raise ValueError(f"patch_size {self.patch_size} must be a multiple of "
                             f"2**depth = {2 ** self.model.depth}")

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        values = dict(values)
        values["model"] = UNetConfig.from_dict(values.get("model", {}))
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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


def normalise(data: np.ndarray, *, offset: float, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Return ``((data - offset) / scale`` with NaN set to 0, and the bool no-data mask)."""
    nodata = ~np.isfinite(data)
    out = (np.where(nodata, offset, data) - offset) / scale
    return out.astype(np.float32), nodata


def _anscombe_inverse(d: np.ndarray) -> np.ndarray:
    """Closed-form approximation of the exact unbiased inverse of ``2 sqrt(z + 3/8)``
    (Makitalo & Foi 2011): the ``z`` whose transform has expectation ``d`` under Poisson
    noise. The algebraic inverse ``d**2/4 - 3/8`` is biased low by about 1/4 count."""
    d = np.maximum(d, 1.0)  # the series diverges below ~1 (a few counts), far below any sky
    r = np.sqrt(1.5)
    return np.maximum(d**2 / 4 + r / (4 * d) - 11 / (8 * d**2) + 5 * r / (8 * d**3) - 1 / 8, 0.0)


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
        u = np.asarray(image, dtype=np.float64)
        if self.kind == "linear":
            return (u * self.scale + self.offset).astype(np.float32)
        electrons = _anscombe_inverse(u + 2 * np.sqrt(self._pedestal + 3 / 8))
        return ((electrons - self._pedestal) / self.gain + self.offset).astype(np.float32)


def exposure_normalisation(stats: dict, noise: dict) -> Normalisation:
    """The normalisation of one exposure under a checkpoint's survey-wide settings.

    Parameters
    ----------
    stats : ``checkpoint["normalisation"]``; checkpoints without ``kind`` are linear
    noise : the exposure's noise JSON (``sky_level``, ``sigma``, ``header_gain``)

    Use it at prediction as ``norm.forward(data)``, the model on the result, then
    ``norm.inverse(output)``.
    """
    kind = stats.get("kind", "linear")
    if kind == "linear":
        return Normalisation("linear", offset=float(noise["sky_level"]), scale=float(stats["scale"]))
    gain = noise.get("header_gain") or stats["gain"]
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

    def __init__(self, exposures: list[Exposure], config: TrainConfig, scale: float,
                 rng: np.random.Generator):
        self.config, self.rng = config, rng
        self.images, self.nodata = [], []
        for exp in exposures:
            image, nodata = normalise(exp.data, offset=exp.sky_level, scale=scale)
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

    def batch(self, *, val: bool = False):
        """Return (inputs, targets, nodata) float32/bool arrays of shape (B, P, P)."""
        inputs, targets, masks = [], [], []
        for _ in range(self.config.batch_size):
            if self.config.method == "n2n":
                field_name = list(self.pairs)[self.rng.integers(len(self.pairs))]
                a, b = self.rng.choice(self.pairs[field_name], size=2, replace=False)
            else:
                a = b = int(self.rng.integers(len(self.images)))
            y, x = self._corner(a, val)
            src, bad_a = self._cut(a, y, x)
            dst, bad_b = self._cut(b, y, x)
            k, flip = (0, False) if val else (int(self.rng.integers(4)), bool(self.rng.integers(2)))
            for arr, out in ((src, inputs), (dst, targets), (bad_a | bad_b, masks)):
                arr = np.rot90(arr, k)
                out.append(np.ascontiguousarray(arr[:, ::-1] if flip else arr))
        return np.stack(inputs), np.stack(targets), np.stack(masks)


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


def _step_loss(model, batch, config: TrainConfig, generator: torch.Generator):
    inputs, targets, nodata = (torch.from_numpy(a) for a in batch)
    valid = (~nodata).float()
    if config.method == "n2n":
        pred = model(inputs[:, None])[:, 0]
        return _loss(pred, targets, valid, config.loss)
    b, target_idx, source_idx = n2v_mask(tuple(inputs.shape), fraction=config.mask_fraction,
                                         neighbourhood=config.neighbourhood, generator=generator)
    flat = inputs.reshape(inputs.shape[0], -1).clone()
    flat[b, target_idx] = flat[b, source_idx]
    pred = model(flat.reshape(inputs.shape)[:, None])[:, 0].reshape(inputs.shape[0], -1)
    weight = valid.reshape(inputs.shape[0], -1)[b, target_idx]
    return _loss(pred[b, target_idx], targets.reshape(inputs.shape[0], -1)[b, target_idx],
                 weight, config.loss)


def _validate(model, val_batches, config: TrainConfig) -> float:
    generator = torch.Generator().manual_seed(config.seed + 1)  # same blind spots each time
    model.eval()
    with torch.no_grad():
        losses = [float(_step_loss(model, batch, config, generator)) for batch in val_batches]
    model.train()
    return float(np.mean(losses))


def train_model(exposures: list[Exposure], config: TrainConfig) -> dict:
    """Train a U-Net on ``exposures`` and return a checkpoint dict.

    Parameters
    ----------
    exposures : the survey's exposures, with sky level and sigma from the noise step
    config : TrainConfig

    Returns
    -------
    dict with ``model`` (state dict of the best validation step), ``optimizer``,
    ``model_config``, ``train_config``, ``normalisation`` (``scale`` in data units and
    the rule ``offset = sky_level``), ``step``, ``best_step`` and ``history`` (one row
    per validation: step, train_loss, val_loss, lr, seconds).
    """
    _check_inputs(exposures, config)
    torch.manual_seed(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    rng = np.random.default_rng(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    scale = float(np.median([exp.sigma for exp in exposures]))
    sampler = _PatchSampler(exposures, config, scale, rng)
    val_batches = [sampler.batch(val=True) for _ in range(4)]
    model = UNet(config.model)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.steps,
                                                          eta_min=config.learning_rate / 20)
    history, best, best_step, bad_evals, running = [], float("inf"), 0, 0, []
    best_state = copy.deepcopy(model.state_dict())
    start = time.monotonic()
    progress = tqdm(range(1, config.steps + 1), desc=f"train {config.method}", unit="step")
    for step in progress:
        loss = _step_loss(model, sampler.batch(), config, generator)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        running.append(loss.item())
        if step % config.val_every and step != config.steps:
            continue
        val_loss = _validate(model, val_batches, config)
        history.append({"step": step, "train_loss": float(np.mean(running)), "val_loss": val_loss,
                        "lr": schedule.get_last_lr()[0], "seconds": time.monotonic() - start})
        running = []
        progress.set_postfix(val_loss=f"{val_loss:.4f}")
        if val_loss < best:
            best, best_step, bad_evals = val_loss, step, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad_evals += 1
            if bad_evals >= config.patience:
                break
    return {
        "model": best_state,
        "optimizer": optimiser.state_dict(),
        "model_config": config.model.to_dict(),
        "train_config": config.to_dict(),
        "normalisation": {"scale": scale, "offset": "sky_level of each exposure (noise step)"},
        "step": step,
        "best_step": best_step,
        "history": history,
    }


def write_curve(path: str | Path, history: list[dict]) -> None:
    """Write the training history as CSV (one row per validation)."""
    with io.atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["step", "train_loss", "val_loss", "lr", "seconds"])
        writer.writeheader()
        writer.writerows(history)


def train(images: list[str], noise_files: list[str], fields: list[str], *, out_checkpoint: str,
          out_curve: str, config: TrainConfig, registrations: list[str] = ()) -> dict:
    """Train on ingested exposures and write the checkpoint and training curve (atomic).

    ``images``, ``noise_files`` and ``fields`` are parallel lists: the zarr store, the
    noise JSON and the field name of each exposure. ``registrations`` (JSON of the
    register step) put the exposures of each field on one pixel grid for Noise2Noise.
    """
    from .register import load_aligned

    if not len(images) == len(noise_files) == len(fields):
        raise ValueError("train needs one noise file and one field name per image")
    exposures = []
    for loaded, noise_file in zip(load_aligned(images, fields, registrations), noise_files, strict=True):
        measured = io.read_json(noise_file)
        exposures.append(Exposure(name=loaded["name"], field=loaded["field"], data=loaded["data"],
                                  sky_level=measured["sky_level"], sigma=measured["sigma"],
                                  bad=loaded["bad"]))
    checkpoint = train_model(exposures, config)
    checkpoint |= {
        "code_version": code_version(),
        "inputs": [{"image": str(i), "sha256": io.open_zarr_image(i).attrs.get("source_sha256"),
                    "field": f} for i, f in zip(images, fields, strict=True)],
        "registrations": [io.read_json(r) for r in registrations],
    }
    io.save_checkpoint(out_checkpoint, checkpoint)
    write_curve(out_curve, checkpoint["history"])
    return checkpoint
