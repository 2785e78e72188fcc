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
from .photometry import APERTURE_FACTORS, aperture_fluxes, aperture_radius, aperture_weights
from .sampling import Exposure
from .sources import with_photon_noise
from .transform import Normalisation

__all__ = ["PhotometryProbe", "selection_key", "SELECT"]

#: Values of ``train.select``.
SELECT = ("photometry", "loss")


class PhotometryProbe:
    """Sources of known flux injected into a copy of each exposure's validation rows.

    At each validation, :meth:`measure` takes the flux that the model returns for the
    injected sources in apertures of 1, 2 and 3 x the FWHM of the survey's PSF
    (:data:`~astrodenoise.photometry.APERTURE_FACTORS`, the radii injection-recovery and
    the evaluation use; plain sums, without their local sky, which the narrow strip has
    no room for): model(strip + sources) - model(strip), mapped back to data units, so
    that the strip's own sources and noise cancel. Injected sources are stars and
    Sersic galaxies (the stamps of :func:`astrodenoise.sources.source_stamps`), with photon
    noise when the gain is known. Two faint (S/N 6-18 in an aperture of radius FWHM)
    sources for every bright one (S/N 60-400).

    Parameters
    ----------
    exposures, norms : the training exposures and their maps into the network domain
    rng : the generator of positions, fluxes and noise
    stamps : (n, s, s) source stamps of sum 1 (:func:`astrodenoise.sources.source_stamps`)
    fwhm : the PSF FWHM in pixels (apertures of 1, 2 and 3 x FWHM)
    val_fraction : the share of rows held out for validation (the strip)
    step : the pooling step ``2**depth`` of the network (the strip's height is a multiple)
    patch_size : the strip is at least one patch high
    """

    def __init__(self, exposures: list[Exposure], norms: list[Normalisation], rng: np.random.Generator, *,
                 stamps: np.ndarray, fwhm: float, val_fraction: float, step: int, patch_size: int):
        self.stamps = stamps
        self.radii = {f"{f:g}fwhm": aperture_radius(fwhm, factor=f) for f in APERTURE_FACTORS}
        half = stamps.shape[1] // 2
        self.fractions = {key: (stamps * aperture_weights(half, r)).sum(axis=(1, 2))
                          for key, r in self.radii.items()}
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
            k = int(rng.integers(len(self.stamps)))
            core = self.fractions["1fwhm"][k]
            flux = snr * exp.noise.sigma * np.sqrt(np.pi) * self.radii["1fwhm"] / core
            injected[y - half:y + half + 1, x - half:x + half + 1] += with_photon_noise(
                flux * self.stamps[k], gain=gain, rng=rng)
            rows.append([y, x, bright] + [flux * self.fractions[key][k] for key in self.radii])
        return {"clean": clean, "injected": norm.forward(injected)[0], "norm": norm,
                "sources": np.array(rows, dtype=float).reshape(-1, 3 + len(self.radii))}

    def measure(self, model: UNet) -> dict:
        """Median fractional bias of the recovered flux, bright and faint, per aperture
        (``bias_faint_2fwhm``, ...) and, as ``bias_bright``/``bias_faint``, in the aperture
        where it is largest in size (None where the class has no source)."""
        ratios, bright = {key: [] for key in self.radii}, []
        for strip in self.strips:
            norm, sources = strip["norm"], strip["sources"]
            if not len(sources):
                continue
            diff = norm.inverse(network_pass(model, strip["injected"])).astype(np.float64) \
                - norm.inverse(network_pass(model, strip["clean"]))
            for j, (key, radius) in enumerate(self.radii.items()):
                got = aperture_fluxes(diff, sources[:, [1, 0]], radius=radius)
                ratios[key] += list(got / sources[:, 3 + j] - 1)
            bright += list(sources[:, 2] > 0)
        bright = np.array(bright, bool)
        out = {}
        for cls, pick in (("bright", bright), ("faint", ~bright)):
            medians = {key: float(np.median(np.array(v)[pick])) for key, v in ratios.items() if pick.any()}
            out |= {f"bias_{cls}_{key}": value for key, value in medians.items()}
            out[f"bias_{cls}"] = max(medians.values(), key=abs) if medians else None
        return out


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
