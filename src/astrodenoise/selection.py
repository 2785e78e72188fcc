"""Which training step is kept: the validation loss, optionally weighed by a photometry probe.

A denoiser's loss can keep falling while it dims faint sources, so training can measure,
at each validation, the flux the model returns for sources of known flux injected into
the validation rows (:class:`PhotometryProbe`), and keep the step of lowest loss among
those whose flux bias is within tolerance (:func:`selection_key`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .denoise import network_pass
from .model import UNet
from .photometry import aperture_fluxes, aperture_weights
from .sampling import Exposure
from .sources import with_photon_noise
from .transform import Normalisation

__all__ = ["PhotometryProbe", "selection_key", "SELECT"]

#: Values of ``train.select``.
SELECT = ("photometry", "loss")


class PhotometryProbe:
    """Sources of known flux injected into a copy of each exposure's validation rows.

    At each validation, :meth:`measure` takes the aperture flux (radius = FWHM of the
    survey's PSF) that the model returns for the injected sources: model(strip + sources)
    - model(strip), mapped back to data units, so that the strip's own sources and noise
    cancel. Injected sources get photon noise when the gain is known. Two faint
    (aperture S/N 6-18) sources for every bright one (S/N 60-400).

    Parameters
    ----------
    exposures, norms : the training exposures and their maps into the network domain
    rng : the generator of positions, fluxes and noise
    stamps : (n, s, s) source stamps of sum 1 (:func:`astrodenoise.sources.source_stamps`)
    radius : aperture radius in pixels
    val_fraction : the share of rows held out for validation (the strip)
    step : the pooling step ``2**depth`` of the network (the strip's height is a multiple)
    patch_size : the strip is at least one patch high
    """

    def __init__(self, exposures: list[Exposure], norms: list[Normalisation], rng: np.random.Generator, *,
                 stamps: np.ndarray, radius: float, val_fraction: float, step: int, patch_size: int):
        self.stamps, self.radius = stamps, radius
        self.weights = aperture_weights(stamps.shape[1] // 2, radius)
        self.strips = [self._inject(exp, norm, rng, val_fraction=val_fraction, step=step,
                                    patch_size=patch_size)
                       for exp, norm in zip(exposures, norms, strict=True)]

    def _inject(self, exp: Exposure, norm: Normalisation, rng, *, val_fraction: float, step: int,
                patch_size: int) -> dict:
        half = self.stamps.shape[1] // 2
        ny, nx = exp.data.shape
        split = int(ny * (1 - val_fraction))
        height = min(ny - ny % step, -(-max(ny - split + 2 * half, patch_size) // step) * step)
        strip = exp.data[ny - height:].astype(np.float64)
        clean, nodata = norm.forward(strip)
        busy = ndimage.maximum_filter(ndimage.uniform_filter(clean, 3), 2 * half + 1) > 1.5
        lo = max(split - (ny - height), 0) + half + 1
        injected, rows = strip.copy(), []
        gain = norm.gain if norm.kind == "gat" else None
        for i, x in enumerate(range(half + 1, nx - half - 1, 3 * half)):
            y = int(rng.integers(lo, height - half - 1)) if height - half - 1 > lo else None
            if y is None or busy[y, x] or nodata[y - half:y + half + 1, x - half:x + half + 1].any():
                continue
            bright = i % 3 == 2
            snr = np.exp(rng.uniform(np.log(60), np.log(400))) if bright else rng.uniform(6, 18)
            stamp = self.stamps[rng.integers(len(self.stamps))]
            frac = (stamp * self.weights).sum()
            flux = snr * exp.noise.sigma * np.sqrt(self.weights.sum()) / frac
            injected[y - half:y + half + 1, x - half:x + half + 1] += with_photon_noise(
                flux * stamp, gain=gain, rng=rng)
            rows.append((y, x, flux * frac, bright))
        return {"clean": clean, "injected": norm.forward(injected)[0], "norm": norm,
                "sources": np.array(rows, dtype=float).reshape(-1, 4)}

    def measure(self, model: UNet) -> dict:
        """Median fractional bias of the recovered aperture flux, bright and faint (None
        where the class has no source)."""
        ratios, bright = [], []
        for strip in self.strips:
            norm, sources = strip["norm"], strip["sources"]
            if not len(sources):
                continue
            diff = norm.inverse(network_pass(model, strip["injected"])).astype(np.float64) \
                - norm.inverse(network_pass(model, strip["clean"]))
            got = aperture_fluxes(diff, sources[:, [1, 0]], radius=self.radius)
            ratios += list(got / sources[:, 2] - 1)
            bright += list(sources[:, 3] > 0)
        ratios, bright = np.array(ratios), np.array(bright, bool)
        return {"bias_bright": float(np.median(ratios[bright])) if bright.any() else None,
                "bias_faint": float(np.median(ratios[~bright])) if (~bright).any() else None}


def selection_key(row: dict, *, select: str, bright_tolerance: float,
                  faint_tolerance: float) -> tuple[int, float]:
    """Smaller is better: (0, val_loss) when the injected-source biases are within the
    tolerances (or not measured, or ``select == "loss"``), else (1, worst bias in units of
    its tolerance)."""
    excess = [abs(row[key]) / tol for key, tol in (("bias_bright", bright_tolerance),
                                                   ("bias_faint", faint_tolerance))
              if row.get(key) is not None]
    if select == "loss" or not excess or max(excess) <= 1:
        return (0, row["val_loss"])
    return (1, max(excess))
