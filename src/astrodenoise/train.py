"""Self-supervised training on the survey's own exposures: Noise2Void and Noise2Noise.

- **Noise2Void** (Krull et al. 2019): a blind spot. A few pixels of each patch are
  replaced by a random neighbour, and the loss compares the network's output at those
  pixels with their original noisy values. With pixel-independent, zero-mean noise the
  best prediction is the clean value.
- **Noise2Noise** (Lehtinen et al. 2018): the input is one exposure of a field and the
  target the mean of the other exposures of the same field on the same pixel grid (or
  one of them); the noise in the target is independent of the input, so the best
  prediction is the clean value.

Images are mapped globally into the network's domain (:mod:`astrodenoise.transform`:
the generalised Anscombe transform from each exposure's gain and sigma, or linear),
never per patch or per tile, which would make seams; the map's survey-wide settings are
stored in the checkpoint with the full config, so that prediction is reproducible.
Patches come from :mod:`astrodenoise.sampling`, the kept step from
:mod:`astrodenoise.selection`. The loop is one visible function (:func:`train_model`);
determinism comes from the seed.
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
from matplotlib.figure import Figure
from tqdm import tqdm

from . import io
from .alignment import load_aligned, shift_subpixel
from .model import UNet, UNetConfig
from .noise_model import read_noise_model
from .photometry import APERTURE_FACTORS, aperture_radius
from .provenance import code_version
from .psf import PSF, measure_psf
from .reference import stack_sigma, weighted_stack
from .sampling import Exposure, PatchSampler, hide_lines, n2v_mask
from .selection import SELECT, PhotometryProbe, selection_key
from .sky import estimate_background
from .sources import source_stamps
from .transform import Normalisation, to_data

__all__ = ["METHODS", "TrainConfig", "method_settings", "blind_line_axis", "survey_psf", "field_mean",
           "injection_stamp", "probe_stamps", "make_sampler", "flux_loss", "train_model", "write_curve",
           "plot_curve", "read_exposures", "train"]

METHODS = ("n2v", "n2n")


@dataclass(frozen=True)
class TrainConfig:
    """Settings of the training step (every field is in config/config.yaml): what is
    computed, never how it runs (threads are an argument of :func:`train`), so that
    another ``--cores`` keeps a resume point.

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
    (:func:`flux_loss`), which counters the dimming of faint sources (0: off).
    ``blind_spot`` (N2V): ``"point"``, ``"x"``/``"y"`` (structN2V: also hide ``struct_half``
    pixels either side along that axis) or ``"auto"``: structured along the axis of the
    larger lag-1 noise autocorrelation when the noise step flags most exposures as
    correlated (``noise.correlation_limit``). ``n2n_target`` (N2N):
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
    struct_half: int = 2
    n2n_target: str = "mean"
    seed: int = 0
    model: UNetConfig = field(default_factory=UNetConfig)

    def __post_init__(self):
        choices = {"method": METHODS, "loss": ("mse", "l1"), "transform": ("auto", "gat", "linear"),
                   "select": SELECT, "blind_spot": ("auto", "point", "x", "y"),
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


def _normalisations(exposures: list[Exposure], config: TrainConfig) -> tuple[list[Normalisation], dict]:
    """The per-exposure maps to the network domain and the survey-wide settings saved in
    the checkpoint (``kind``, ``scale`` = median sigma, ``gain`` = median gain)."""
    gains = [exp.noise.gain for exp in exposures]
    kind = config.transform
    if kind == "auto":
        kind = "gat" if all(g and g > 0 for g in gains) else "linear"
    if kind == "gat" and not all(g and g > 0 for g in gains):
        raise ValueError("train.transform 'gat' needs the gain of every exposure (GAIN keyword "
                         "or a reliable Poisson-Gaussian fit); use 'auto' or 'linear'")
    scale = float(np.median([exp.noise.sigma for exp in exposures]))
    stats = {"kind": kind, "scale": scale, "offset": "sky_level of each exposure (noise step)"}
    if kind == "linear":
        return [Normalisation("linear", offset=exp.noise.sky, scale=scale) for exp in exposures], stats
    stats["gain"] = float(np.median(gains))
    return [Normalisation("gat", offset=exp.noise.sky, scale=exp.noise.sigma, gain=exp.noise.gain)
            for exp in exposures], stats


def blind_line_axis(exposures: list[Exposure], config: TrainConfig) -> str | None:
    """The structN2V axis: the configured one, or under "auto", when the noise step flags
    most exposures as correlated, the axis of the larger median lag-1 autocorrelation."""
    if config.method != "n2v" or config.blind_spot == "point":
        return None
    if config.blind_spot in ("x", "y"):
        return config.blind_spot
    if 2 * sum(exp.noise.correlated for exp in exposures) <= len(exposures):
        return None
    cx, cy = np.median([exp.noise.correlation for exp in exposures], axis=0)
    return "x" if abs(cx) >= abs(cy) else "y"


def survey_psf(exposures: list[Exposure], *, fwhm_guess: float = 3.0, most: int = 8) -> PSF:
    """The survey's PSF for the injected sources of training: the empirical PSF
    (:func:`astrodenoise.psf.measure_psf`) of the exposure with the most usable stars,
    among at most ``most`` exposures spread over the survey; where none has enough (short
    exposures: M13's 5 s frames), that of the field whose mean of its aligned exposures
    (:func:`field_mean`) has the most; a Gaussian of ``fwhm_guess`` pixels when none has."""
    picked = np.unique(np.linspace(0, len(exposures) - 1, min(most, len(exposures))).astype(int))
    measured = [measure_psf(exp.data, estimate_background(exp.data)[0], sigma=exp.noise.sigma, bad=exp.bad,
                            fwhm_guess=fwhm_guess) for exp in (exposures[i] for i in picked)]
    best = max(measured, key=lambda psf: psf.n_stars)  # the first of the most stars
    if best.n_stars:
        return best
    fields = {}
    for exp in exposures:
        fields.setdefault(exp.field, []).append(exp)
    for name, group in list(fields.items())[:most]:
        if len(group) < 2 or len({exp.data.shape for exp in group}) > 1:
            continue  # one exposure, or a field not on one grid (unregistered)
        mean, sigma, bad = field_mean(group)
        deep = measure_psf(mean, np.zeros_like(mean), sigma=sigma, bad=bad, fwhm_guess=fwhm_guess)
        if deep.n_stars > best.n_stars:
            best = dataclasses.replace(deep, method=f"{deep.method} on the mean of field {name}'s "
                                                    f"{len(group)} exposures (too few in one)")
    return best


def field_mean(group: list[Exposure]) -> tuple[np.ndarray, float, np.ndarray]:
    """(mean, its sky sigma, no-data mask) of one field's exposures, each less its
    background and moved by the fraction of a pixel its alignment left
    (:attr:`~astrodenoise.sampling.Exposure.fraction`), so that stars are not widened;
    weighted by their sky noise (:func:`astrodenoise.reference.weighted_stack`)."""
    layers = []
    for exp in group:
        residual = exp.data - estimate_background(exp.data)[0]
        if exp.bad is not None:
            residual = np.where(exp.bad, np.nan, residual)
        layers.append(shift_subpixel(residual, exp.fraction, residual.shape))
    noises = [exp.noise for exp in group]
    mean, _ = weighted_stack(np.stack(layers), noises)
    return np.nan_to_num(mean), stack_sigma(noises), ~np.isfinite(mean)


def injection_stamp(psf: PSF, *, largest: int = 31) -> np.ndarray:
    """The PSF stamp cut to a half-side of 2 FWHM (at least 7 px, at most ``largest``),
    renormalised: the injected sources must fit training patches (``largest`` below half
    a patch) and the probe's strip several times over."""
    half = min(psf.stamp.shape[0] // 2, largest, max(7, int(np.ceil(2 * psf.fwhm))))
    centre = psf.stamp.shape[0] // 2
    stamp = psf.stamp[centre - half:centre + half + 1, centre - half:centre + half + 1]
    return stamp / stamp.sum()


def probe_stamps(psf: PSF, rng: np.random.Generator, *, patch_size: int) -> np.ndarray:
    """The sources the training probe (and the flux loss) inject: the survey's PSF cut to
    :func:`injection_stamp` and PSF-convolved Sersic galaxies
    (:func:`astrodenoise.sources.source_stamps`), all on the stamp of the PSF (2 FWHM
    half-side, below half a patch), so that several fit across the probe's strip."""
    largest = min(patch_size // 2 - 1, max(7, int(np.ceil(2 * psf.fwhm))))
    return source_stamps(injection_stamp(psf, largest=largest), rng, fwhm=psf.fwhm, largest=largest)


def make_sampler(exposures: list[Exposure], norms: list[Normalisation], config: TrainConfig,
                 rng: np.random.Generator, *, keep_axes: bool = False, stamps: np.ndarray | None = None,
                 radius: float | None = None) -> PatchSampler:
    """The :class:`~astrodenoise.sampling.PatchSampler` of ``config``'s method and settings."""
    target = "self" if config.method == "n2v" else config.n2n_target
    return PatchSampler(exposures, norms, rng, patch_size=config.patch_size, batch_size=config.batch_size,
                        val_fraction=config.val_fraction, source_fraction=config.source_fraction,
                        target=target, keep_axes=keep_axes, stamps=stamps, radius=radius)


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
    if batch["flux"] is not None and config.flux_weight:
        loss = loss + config.flux_weight * flux_loss(pred, batch["flux"])
    return loss


def flux_loss(pred: torch.Tensor, flux: dict) -> torch.Tensor:
    """Pseudo-Huber error, in units of the aperture's sky noise, of the aperture flux the
    model gives an injected source: model(patch + source) - model(patch), in data units.

    Denoisers trained for the MSE shrink faint sources towards the sky (the conditional
    mean of a faint source's flux is below its flux); this term asks the response to a
    source of known flux to be that flux. Pseudo-Huber (quadratic below one noise unit,
    linear above) keeps a bright source's large early error from swamping the denoising
    loss."""
    half = pred.shape[0] // 2
    data = to_data(pred.double(), torch.from_numpy(flux["params"]))
    aperture = torch.from_numpy(flux["aperture"][half:]).double()
    recovered = ((data[half:] - data[:half]) * aperture).sum(dim=(1, 2))
    known, noise = torch.from_numpy(flux["known"]), torch.from_numpy(flux["noise"])
    error = (recovered - known) / noise
    return (torch.sqrt(1 + error**2) - 1).mean().float()


def _validate(model, val_batches, config: TrainConfig, axis: str | None) -> float:
    generator = torch.Generator().manual_seed(config.seed + 1)  # same blind spots each time
    model.eval()
    with torch.no_grad():
        losses = [float(_step_loss(model, batch, config, generator, axis)) for batch in val_batches]
    model.train()
    return float(np.mean(losses))


@dataclass
class _Run:
    """What one training run works with, built once from the exposures and the config."""

    model: UNet
    optimiser: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    rng: np.random.Generator
    generator: torch.Generator
    sampler: PatchSampler
    val_batches: list[dict]
    probe: PhotometryProbe | None
    axis: str | None
    stats: dict


def _prepare(exposures: list[Exposure], config: TrainConfig) -> _Run:
    """Seed everything, then build the sampler, the validation batches, the probe and the
    network with its optimiser, in an order that makes a run reproducible."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    norms, stats = _normalisations(exposures, config)
    axis = blind_line_axis(exposures, config)
    psf = survey_psf(exposures) if config.inject or config.flux_weight else None
    stamps = radius = None
    # The injected sources draw from a stream of their own: probing changes no patch.
    probe_rng = np.random.default_rng([config.seed, 1])
    if psf is not None:
        stamps, radius = probe_stamps(psf, probe_rng, patch_size=config.patch_size), aperture_radius(psf.fwhm)
    sampler = make_sampler(exposures, norms, config, rng, keep_axes=axis is not None,
                           stamps=stamps if config.flux_weight else None, radius=radius)
    val_batches = [sampler.batch(val=True) for _ in range(4)]
    probe = PhotometryProbe(exposures, norms, probe_rng, stamps=stamps, fwhm=psf.fwhm,
                            val_fraction=config.val_fraction, step=2**config.model.depth,
                            patch_size=config.patch_size) if config.inject else None
    model = UNet(config.model)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.steps,
                                                          eta_min=config.learning_rate / 20)
    return _Run(model, optimiser, schedule, rng, generator, sampler, val_batches, probe, axis, stats)


def _start_state(run: _Run, resume: dict | None) -> dict:
    """The loop's bookkeeping, fresh or restored from a resumable checkpoint (which also
    restores the weights, optimiser, schedule and random generators)."""
    state = {"history": [], "best_key": None, "best_step": 0, "stale": 0, "step": 0,
             "best_state": copy.deepcopy(run.model.state_dict())}
    if resume is None or (resume.get("blind_line"), resume.get("normalisation")) != (run.axis, run.stats):
        return state  # made from other noise measurements: start afresh
    run.model.load_state_dict(resume["model_last"])
    run.optimiser.load_state_dict(resume["optimizer"])
    run.schedule.load_state_dict(resume["schedule"])
    _set_rng_state(run.rng, run.generator, resume["rng"])
    state = {k: resume[k] for k in state if k != "best_state"} | {"best_state": resume["model"]}
    state["best_key"] = tuple(state["best_key"]) if state["best_key"] else None
    return state


def _validation_row(run: _Run, config: TrainConfig, step: int, running: list[float], start: float) -> dict:
    """One row of the training history: losses, the probe's injected-flux biases, lr, time."""
    row = {"step": step, "train_loss": float(np.mean(running)),
           "val_loss": _validate(run.model, run.val_batches, config, run.axis),
           "bias_bright": None, "bias_faint": None}
    if run.probe is not None:
        run.model.eval()
        row |= run.probe.measure(run.model)
        run.model.train()
    return row | {"lr": run.schedule.get_last_lr()[0], "seconds": time.monotonic() - start}


def _keep_best(state: dict, row: dict, run: _Run, config: TrainConfig) -> None:
    """Record a validation in ``state``: the step, and the weights when it is the best yet."""
    state["history"].append(row)
    state["step"] = row["step"]
    key = selection_key(row, select=config.select, bright_tolerance=config.bright_tolerance,
                        faint_tolerance=config.faint_tolerance)
    if state["best_key"] is None or key < state["best_key"]:
        state |= {"best_key": key, "best_step": row["step"], "stale": 0,
                  "best_state": copy.deepcopy(run.model.state_dict())}
    else:
        state["stale"] += 1


def _checkpoint(state: dict, run: _Run, config: TrainConfig, *, resumable: bool) -> dict:
    """The checkpoint dict: the kept weights, config, normalisation and history; with
    ``resumable`` also the last weights, schedule and random state to continue from."""
    out = {"model": state["best_state"], "optimizer": run.optimiser.state_dict(),
           "model_config": config.model.to_dict(), "train_config": config.to_dict(),
           "normalisation": run.stats, "step": state["step"], "best_step": state["best_step"],
           "blind_line": run.axis, "history": state["history"]}
    if resumable:
        out |= {"model_last": run.model.state_dict(), "schedule": run.schedule.state_dict(),
                "rng": _rng_state(run.rng, run.generator), "best_key": state["best_key"],
                "stale": state["stale"]}
    return out


def train_model(exposures: list[Exposure], config: TrainConfig, *, resume: dict | None = None,
                on_validation=None) -> dict:
    """Train a U-Net on ``exposures`` and return a checkpoint dict.

    Parameters
    ----------
    exposures : the survey's exposures, with their noise models from the noise step
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
    ``gain``; see :func:`astrodenoise.transform.exposure_normalisation`), ``step``,
    ``best_step``, ``blind_line`` (the structN2V axis or None) and ``history`` (one row
    per validation: step, train_loss, val_loss, bias_bright, bias_faint, lr, seconds).
    """
    _check_inputs(exposures, config)
    run = _prepare(exposures, config)
    state = _start_state(run, resume)
    start, running = time.monotonic(), []
    progress = tqdm(range(state["step"] + 1, config.steps + 1), desc=f"train {config.method}", unit="step")
    for step in progress:
        loss = _step_loss(run.model, run.sampler.batch(), config, run.generator, run.axis)
        run.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            # Rare patches with a cosmic ray or a bright star's core give huge gradients.
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), config.grad_clip)
        run.optimiser.step()
        run.schedule.step()
        running.append(loss.item())
        if step % config.val_every and step != config.steps:
            continue
        row = _validation_row(run, config, step, running, start)
        running = []
        progress.set_postfix(val_loss=f"{row['val_loss']:.4f}", faint=row["bias_faint"])
        _keep_best(state, row, run, config)
        if on_validation is not None:
            on_validation(_checkpoint(state, run, config, resumable=True))
        if state["stale"] >= config.patience:
            break
    return _checkpoint(state, run, config, resumable=False)


CURVE_COLUMNS = ["step", "train_loss", "val_loss", "bias_bright", "bias_faint",
                 *(f"bias_{cls}_{f:g}fwhm" for cls in ("bright", "faint") for f in APERTURE_FACTORS),
                 "lr", "seconds"]


def write_curve(path: str | Path, history: list[dict]) -> None:
    """Write the training history as CSV (one row per validation; blank = not measured)."""
    with io.atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CURVE_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)


def plot_curve(path: str | Path, history: list[dict], *, best_step: int | None = None) -> None:
    """PNG of the training curve: losses (left) and injected-source flux bias (right)."""
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


def read_exposures(images: list[str], noise_files: list[str], fields: list[str],
                   registrations: list[str] = ()) -> list[Exposure]:
    """The training exposures of ingested stores: each field on its reference grid
    (:func:`astrodenoise.alignment.load_aligned`), with the noise model of its noise file."""
    if not len(images) == len(noise_files) == len(fields):
        raise ValueError("train needs one noise file and one field name per image")
    return [Exposure(name=loaded["name"], field=loaded["field"], data=loaded["data"],
                     noise=read_noise_model(noise_file), bad=loaded["bad"], fraction=loaded["fraction"])
            for loaded, noise_file in zip(load_aligned(images, fields, registrations), noise_files,
                                          strict=True)]


def train(images: list[str], noise_files: list[str], fields: list[str], *, out_checkpoint: str,
          out_curve: str, config: TrainConfig, registrations: list[str] = (),
          out_plot: str | None = None, threads: int = 0) -> dict:
    """Train on ingested exposures and write the checkpoint and training curve (atomic).

    ``images``, ``noise_files`` and ``fields`` are parallel lists: the zarr store, the
    noise JSON and the field name of each exposure. ``registrations`` (JSON of the
    register step) put the exposures of each field on one pixel grid for Noise2Noise.
    At each validation a resumable checkpoint ``<out_checkpoint>.partial`` is written;
    a rerun with the same config continues from it (whatever ``threads``), and it is
    removed at the end. ``out_plot``: optional PNG of the curve. ``threads``: torch CPU
    threads (0: torch's default).
    """
    if threads:
        torch.set_num_threads(threads)
    exposures = read_exposures(images, noise_files, fields, registrations)
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
