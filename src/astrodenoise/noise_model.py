"""The noise of one exposure as the later steps use it: one typed object, read in one place.

The noise step measures sky, sigma, gain and correlation and writes them as JSON; every
step after it (train, predict, evaluate, the baselines) reads that JSON through
:meth:`NoiseModel.from_json` and asks the object, never the raw dict.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from . import io

__all__ = ["NoiseModel", "pixel_sigma", "read_noise_model", "TAIL_SIGMA", "tail_variance"]

#: Where the noise's tails end and outliers begin, in sigmas: the leave-one-out reference
#: rejects a pixel this far from the others (:data:`astrodenoise.reference.REJECT_SIGMA`),
#: and its clean PSNR leaves those pixels out.
TAIL_SIGMA = 5.0


def tail_variance(residual: np.ndarray, sigma: float) -> float:
    """Variance of blank-sky ``residual`` (sky-subtracted, sources left out) within
    :data:`TAIL_SIGMA` ``sigma`` of zero, over ``sigma**2`` (the robust, Gaussian core's):
    1 for Gaussian noise; above it for noise with heavy tails (a camera's single-pixel
    dips or warm pixels: M13's amateur CCD 1.34), whose mean square, and so the input's
    PSNR, the robust sigma alone understates. ``sigma`` stays the noise level the rest of
    the package uses (thresholds, normalisation)."""
    values = residual[np.isfinite(residual)]
    inside = values[np.abs(values) < TAIL_SIGMA * sigma]
    return float(np.mean(inside**2) / sigma**2) if inside.size else 1.0


def pixel_sigma(mean: np.ndarray, *, sky: float, sigma: float, gain: float | None) -> np.ndarray:
    """Per-pixel noise sigma (data units) of an exposure whose expected value is ``mean``:
    ``sqrt(sigma^2 + (mean - sky) / gain)``, the blank-sky noise plus the photon noise of
    the signal above the sky (none below it, nor without a gain). NaN in ``mean`` counts
    as sky."""
    signal = np.clip(np.nan_to_num(np.asarray(mean, dtype=np.float64) - sky), 0, None)
    return np.sqrt(sigma**2 + signal / gain) if gain else np.full(signal.shape, float(sigma))


@dataclass(frozen=True)
class NoiseModel:
    """Noise of one exposure: Poisson-Gaussian when ``gain`` is known, else Gaussian.

    Attributes
    ----------
    sky : sky level, data units (median of the Background2D map of the noise step)
    sigma : blank-sky noise standard deviation, data units (robust std of source-free
        sky); at the sky it holds the read-noise and the sky's photon variance
    gain : electrons per data unit, or None (noise then taken as Gaussian of ``sigma``)
    gain_source : where ``gain`` came from, or why there is none
    read_noise : electrons, from the header (``RDNOISE``) or the overscan, or None;
        informative only, since ``sigma`` already holds it
    read_noise_source : ``"header RDNOISE"``, ``"overscan"`` or ``"none"``
    correlation : lag-1 noise autocorrelation (x, y) of blank sky
    correlated : whether the noise step found it above its ``correlation_limit``
        (Noise2Void assumes independent pixels)
    tail_variance : blank-sky variance within 5 sigma over ``sigma**2`` (:func:`tail_variance`;
        1 for Gaussian noise)
    exposure : the exposure's name
    """

    sky: float
    sigma: float
    gain: float | None = None
    gain_source: str = "none"
    read_noise: float | None = None
    read_noise_source: str = "none"
    correlation: tuple[float, float] = (0.0, 0.0)
    correlated: bool = False
    tail_variance: float = 1.0
    exposure: str = ""

    @classmethod
    def from_json(cls, measured: dict) -> NoiseModel:
        """From the noise step's JSON (``sky_level``, ``sigma``, ``gain``, ...).

        Files written before the noise step recorded ``gain`` take the header gain,
        else a reliable Poisson-Gaussian fit."""
        gain, source = measured.get("gain"), measured.get("gain_source", "noise step")
        if "gain" not in measured:
            fit = measured.get("poisson_gaussian") or {}
            gain = measured.get("header_gain") or (fit.get("gain") if fit.get("reliable") else None)
            source = "header GAIN or fit (older noise file)"
        read_noise, rn_source = measured.get("header_read_noise"), "header RDNOISE"
        if read_noise is None and measured.get("read_noise_overscan") is not None:
            read_noise, rn_source = measured["read_noise_overscan"], "overscan"
        correlation = measured.get("autocorrelation") or {}
        return cls(sky=float(measured["sky_level"]), sigma=float(measured["sigma"]),
                   gain=float(gain) if gain else None, gain_source=str(source),
                   read_noise=None if read_noise is None else float(read_noise),
                   read_noise_source=rn_source if read_noise is not None else "none",
                   correlation=(float(correlation.get("x", 0.0)), float(correlation.get("y", 0.0))),
                   correlated=bool(measured.get("correlated", False)),
                   tail_variance=float(measured.get("tail_variance", 1.0)),
                   exposure=str(measured.get("exposure", "")))

    def pixel_sigma(self, mean: np.ndarray) -> np.ndarray:
        """Per-pixel noise sigma of pixels whose expected value is ``mean`` (:func:`pixel_sigma`)."""
        return pixel_sigma(mean, sky=self.sky, sigma=self.sigma, gain=self.gain)


def read_noise_model(path: str | os.PathLike) -> NoiseModel:
    """The :class:`NoiseModel` of a noise-step JSON file."""
    return NoiseModel.from_json(io.read_json(path))
