"""Training data for the self-supervised networks: patches, pairs and blind spots.

- :class:`Exposure`: one training exposure with its noise model;
- :class:`PatchSampler`: random patches of the normalised exposures (half of them on a
  source), their Noise2Noise or Noise2Void target (the other exposures moved onto the
  input's sky to a fraction of a pixel: :func:`target_window`), a random symmetry of the
  grid each, and optionally a source of known flux injected for the flux loss;
- :func:`n2v_mask` and :func:`hide_lines`: the Noise2Void blind spot and the structN2V
  line mask for correlated noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import symmetry
from .alignment import spline_shift
from .noise_model import NoiseModel
from .photometry import aperture_weights
from .sources import with_photon_noise
from .transform import Normalisation

__all__ = ["Exposure", "PatchSampler", "TARGETS", "n2v_mask", "hide_lines", "target_window"]

#: What a patch is compared with: itself (Noise2Void, blind spot), the mean of the other
#: exposures of its field, or one other exposure drawn at random (Noise2Noise).
TARGETS = ("self", "mean", "one")


@dataclass
class Exposure:
    """One training exposure: data (ny, nx) float32 in data units, NaN = no data; pixels
    flagged ``bad`` (saturated, masked) stay in the input but never count in the loss."""

    name: str
    field: str
    data: np.ndarray
    noise: NoiseModel
    bad: np.ndarray | None = None  # (ny, nx) bool, True = excluded from the loss
    #: (dy, dx): the fraction of a pixel its field's integer alignment left; pixel (y, x)
    #: holds the sky of the field's reference pixel (y + dy, x + dx)
    #: (:func:`astrodenoise.alignment.load_aligned`).
    fraction: tuple[float, float] = (0.0, 0.0)


#: Pixels cut around a target patch for the spline that moves it (its reach).
_SHIFT_MARGIN = 3


def target_window(image: np.ndarray, nodata: np.ndarray, y: int, x: int, size: int,
                  shift: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """The ``size`` x ``size`` patch of ``image`` at corner (``y``, ``x``), moved by
    ``shift`` (dy, dx; scipy's sign: output pixel p holds input p - shift) with a cubic
    spline, and its ``nodata`` (grown by the spline's reach). No shift, no resampling.

    Noise2Noise learns the mean of its target given its input: a target whose sky lies a
    fraction of a pixel off the input's (dithered exposures aligned by whole pixels) teaches
    the network to move the light by that fraction, and over pairs of different fractions
    to blur it; the resampled target keeps noise independent of the input's, so the mean
    it teaches is the input's own sky."""
    if max(abs(shift[0]), abs(shift[1])) < 1e-3:
        return image[y:y + size, x:x + size], nodata[y:y + size, x:x + size]
    m = _SHIFT_MARGIN
    ny, nx = image.shape
    y0, x0, y1, x1 = max(0, y - m), max(0, x - m), min(ny, y + size + m), min(nx, x + size + m)
    window = image[y0:y1, x0:x1]
    moved, reach = spline_shift(window, nodata[y0:y1, x0:x1] | ~np.isfinite(window), shift, outside_bad=False)
    crop = np.s_[y - y0:y - y0 + size, x - x0:x - x0 + size]
    return moved[crop].astype(np.float32), reach[crop]


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


class PatchSampler:
    """Draws training and validation patches from normalised exposures.

    Parameters
    ----------
    exposures, norms : the exposures and their maps into the network domain
    rng : the generator every draw comes from (same seed, same patches)
    patch_size, batch_size : patch side in pixels and patches per batch
    val_fraction : share of each exposure's rows, at the bottom, held out for validation
    source_fraction : share of training patches placed on a pixel above 5 sigma
    target : one of :data:`TARGETS`
    keep_axes : draw only symmetries that keep the detector axes (structN2V)
    stamps, radius : with stamps (:func:`astrodenoise.sources.source_stamps`), every
        training batch also holds each patch with a source of known flux injected, and
        the aperture of ``radius`` pixels its flux is measured in (the flux loss)
    """

    def __init__(self, exposures: list[Exposure], norms: list[Normalisation], rng: np.random.Generator, *,
                 patch_size: int, batch_size: int, val_fraction: float, source_fraction: float,
                 target: str = "self", keep_axes: bool = False, stamps: np.ndarray | None = None,
                 radius: float | None = None):
        if target not in TARGETS:
            raise ValueError(f"target {target!r} unknown; use one of {TARGETS}")
        self.rng, self.norms, self.target = rng, norms, target
        self.patch_size, self.batch_size = patch_size, batch_size
        self.val_fraction, self.source_fraction = val_fraction, source_fraction
        self.stamps, self.radius = stamps, radius
        self.data = [exp.data for exp in exposures]
        self.fractions = [np.asarray(exp.fraction, float) for exp in exposures]
        self.sigmas = [exp.noise.sigma for exp in exposures]
        # A structured blind spot runs along the detector axes: rotating a patch by 90
        # degrees would turn it across the correlation, so only flips are drawn then.
        self.rotations = (0, 2) if keep_axes else (0, 1, 2, 3)
        self.images, self.nodata = [], []
        for exp, norm in zip(exposures, norms, strict=True):
            image, nodata = norm.forward(exp.data)
            self.images.append(image)
            self.nodata.append(nodata if exp.bad is None else nodata | exp.bad)
        fields: dict[str, list[int]] = {}
        for i, exp in enumerate(exposures):
            fields.setdefault(exp.field, []).append(i)
        self.pairs = {f: idx for f, idx in fields.items() if len(idx) >= 2}
        self.bright = [self._bright_pixels(i) for i in range(len(self.images))]

    def _bright_pixels(self, i: int) -> np.ndarray:
        """(n, 2) row/column of training-region pixels above 5 sigma (source candidates)."""
        ys, xs = np.nonzero(self.images[i][:self._split_row(i)] > 5.0)
        return np.column_stack([ys, xs])

    def _split_row(self, i: int) -> int:
        return int(self.images[i].shape[0] * (1 - self.val_fraction))

    def _corner(self, i: int, val: bool) -> tuple[int, int]:
        p = self.patch_size
        ny, nx = self.images[i].shape
        split = self._split_row(i)
        # Validation patches start in the held-out bottom rows (overlapping the training
        # rows only when that band is thinner than a patch).
        lo, hi = (max(0, min(split, ny - p)), ny - p) if val else (0, max(0, split - p))
        bright = self.bright[i]
        if not val and len(bright) and self.rng.random() < self.source_fraction:
            cy, cx = bright[self.rng.integers(len(bright))]
            y = np.clip(cy - self.rng.integers(p), lo, hi)
            x = np.clip(cx - self.rng.integers(p), 0, nx - p)
            return int(y), int(x)
        y = self.rng.integers(lo, hi + 1)
        return int(y), int(self.rng.integers(0, nx - p + 1))

    def _shift(self, i: int, onto: int | None) -> tuple[float, float]:
        """What moves exposure ``i``'s pixels onto the sky of exposure ``onto``'s."""
        if onto is None or onto == i:
            return (0.0, 0.0)
        dy, dx = self.fractions[i] - self.fractions[onto]
        return (float(dy), float(dx))

    def _cut(self, i: int, y: int, x: int, onto: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Exposure ``i``'s normalised patch and no-data mask, on the sky of ``onto``."""
        return target_window(self.images[i], self.nodata[i], y, x, self.patch_size, self._shift(i, onto))

    def _pair(self) -> tuple[int, list[int]]:
        """The input exposure and the exposures whose mean is the target (``target``)."""
        if self.target == "self":
            a = int(self.rng.integers(len(self.images)))
            return a, [a]
        field_name = list(self.pairs)[self.rng.integers(len(self.pairs))]
        if self.target == "one":
            a, b = self.rng.choice(self.pairs[field_name], size=2, replace=False)
            return int(a), [int(b)]
        members = self.pairs[field_name]
        a = int(members[self.rng.integers(len(members))])
        return a, [i for i in members if i != a]

    def batch(self, *, val: bool = False) -> dict:
        """Return a batch: ``inputs``, ``targets`` (float32) and ``nodata`` (bool), each
        (B, P, P), and ``flux``. ``flux`` is None, except in training batches with
        ``stamps``: the arrays then hold each patch twice, the second time with a source
        of known flux injected (:meth:`_inject`), and ``flux`` holds ``aperture``
        (2B, P, P) float32 (zero on the first B), ``known`` and ``noise`` (B,)
        (injected aperture flux and the aperture's sky noise, data units) and ``params``
        (2B, 4) for :func:`astrodenoise.transform.to_data`."""
        rows, injected = [], []
        for _ in range(self.batch_size):
            a, others = self._pair()
            y, x = self._corner(a, val)
            src, bad = self._cut(a, y, x)
            cuts = [self._cut(i, y, x, a) for i in others]
            # The mean of independent exposures is a target of the same mean, less noise.
            dst = np.mean([cut for cut, _ in cuts], axis=0, dtype=np.float32)
            bad = np.logical_or.reduce([bad] + [b for _, b in cuts])
            k, flip = (0, False) if val else (int(self.rng.choice(self.rotations)),
                                              bool(self.rng.integers(2)))
            rows.append([np.ascontiguousarray(symmetry.apply(arr, k, flip)) for arr in (src, dst, bad)])
            if self.stamps is not None and not val:
                p = self.patch_size
                windows = [target_window(self.data[i], self.nodata[i], y, x, p, self._shift(i, a))[0]
                           for i in [a, *others]]
                raw = [symmetry.apply(window, k, flip) for window in windows]
                injected.append(self._inject(raw, [a, *others]))
        src, dst, bad = (np.stack(arrays) for arrays in zip(*rows, strict=True))
        if not injected:
            return {"inputs": src, "targets": dst, "nodata": bad, "flux": None}
        inj_src, inj_dst, aperture, known, noise, params = zip(*injected, strict=True)
        flux = {"aperture": np.concatenate([np.zeros_like(aperture), np.stack(aperture)]),
                "known": np.array(known, np.float64), "noise": np.array(noise, np.float64),
                "params": np.array(params + params, np.float64)}
        return {"inputs": np.concatenate([src, np.stack(inj_src)]),
                "targets": np.concatenate([dst, np.stack(inj_dst)]),
                "nodata": np.concatenate([bad, bad]), "flux": flux}

    def _inject(self, raw: list[np.ndarray], exposures: list[int]) -> tuple:
        """Add one source of known flux (a random stamp, aperture S/N log-uniform in 5-500)
        to the input patch (``raw[0]``) and, with its own photon noise each time, to the
        target patches (the rest), whose mean is the target."""
        half = self.stamps.shape[1] // 2
        p = self.patch_size
        stamp = self.stamps[self.rng.integers(len(self.stamps))]
        weights = aperture_weights(half, self.radius)
        noise = self.sigmas[exposures[0]] * np.sqrt(weights.sum())
        snr = np.exp(self.rng.uniform(np.log(5), np.log(500)))
        flux = snr * noise / (stamp * weights).sum()
        cy, cx = self.rng.integers(half, p - half, size=2)
        out = []
        for arr, i in zip(raw, exposures, strict=True):
            norm = self.norms[i]
            source = with_photon_noise(flux * stamp, gain=norm.gain if norm.kind == "gat" else None,
                                       rng=self.rng)
            arr = arr.astype(np.float64)
            arr[cy - half:cy + half + 1, cx - half:cx + half + 1] += source
            out.append(norm.forward(arr)[0])
        aperture = np.zeros((p, p), np.float32)
        aperture[cy - half:cy + half + 1, cx - half:cx + half + 1] = weights
        target = np.mean(out[1:], axis=0, dtype=np.float32)
        known = flux * (stamp * weights).sum()
        return out[0], target, aperture, known, noise, self.norms[exposures[0]].params()
