"""The point-spread function of an exposure: a Moffat fitted to its own stars, or a Gaussian.

:func:`measure_psf` selects bright, isolated, unflagged, point-like sources, fits a circular
Moffat to each (:func:`fit_star`) and takes the median FWHM and beta; with too few stars it
falls back to a Gaussian of the guessed FWHM and says so. The FWHM of the package is the
fitted Moffat's (:func:`moffat_fwhm`), continuous and of the stars as the image samples them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from astropy.modeling import fitting
from astropy.modeling.models import Moffat2D
from astropy.stats import mad_std
from photutils.segmentation import SourceCatalog, SourceFinder
from photutils.utils.exceptions import NoDetectionsWarning
from scipy import ndimage
from scipy.spatial import cKDTree

__all__ = ["PSF", "measure_psf", "fit_star", "moffat_fwhm", "moffat_stamp", "gaussian_psf", "FWHM_PER_SIGMA"]

#: The shallowest Moffat wing a star may have (seeing gives 2.5-5): a fit that ends there
#: has fitted a neighbour's light or the noise, and its star is left out.
BETA_MIN = 1.5

#: The S/N (segment flux over the noise of its pixels) a star needs, tried in turn: the
#: brighter cut while it leaves ``ENOUGH_STARS`` stars, else the fainter, at which a
#: Moffat fit still measures the FWHM to about 10% a star. A rich field is measured on its
#: bright stars only; a shallow or crowded one (a 5 s frame of a globular cluster, its deep
#: stack) on the few isolated faint stars it has, not on the blends in its core.
STAR_SNR = (20.0, 10.0)
ENOUGH_STARS = 5

#: FWHM of a Gaussian in units of its standard deviation, 2 sqrt(2 ln 2).
FWHM_PER_SIGMA = 2.3548


@dataclass(frozen=True)
class PSF:
    """A PSF stamp (odd side, sum 1), its FWHM in pixels and where it came from."""

    stamp: np.ndarray
    fwhm: float
    n_stars: int
    method: str

    def describe(self) -> dict:
        return {"fwhm": round(self.fwhm, 3), "n_stars": self.n_stars, "method": self.method,
                "size": int(self.stamp.shape[0])}


def gaussian_psf(fwhm: float, *, size: int | None = None) -> np.ndarray:
    """A circular Gaussian stamp of ``fwhm`` pixels, odd side (about 6 FWHM), sum 1."""
    half = max(7, int(np.ceil(3 * fwhm))) if size is None else size // 2
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
    psf = np.exp(-(xx**2 + yy**2) / (2 * (fwhm / FWHM_PER_SIGMA) ** 2))
    return psf / psf.sum()


def measure_psf(data: np.ndarray, background: np.ndarray, *, sigma: float, bad: np.ndarray | None = None,
                fwhm_guess: float = 3.5, min_stars: int = 2, max_stars: int = 40) -> PSF:
    """The PSF of an exposure from its own stars: a Moffat of their median FWHM and beta.

    Candidates are sources of the image filtered by a Gaussian of ``fwhm_guess`` above 5
    sigma, away from flagged pixels (``bad``: saturated, no data), from the edge and from
    other sources by half a stamp, with at least 20 times the noise of their segment, or
    10 where fewer than ``ENOUGH_STARS`` reach 20 (:data:`STAR_SNR`: a shallow field's
    few bright "stars" are often blends, which the compactness cut below finds among the
    faint stars' company), unless that leaves fewer than ``min_stars``.
    Cosmic rays are dropped (a peak pixel whose four direct neighbours do not all reach
    a quarter of it: any PSF sampled by 2 pixels or more per FWHM does), then galaxies
    (stars are the most compact of what is left: peak over flux within 35% of that of
    the most compact quarter). Each is fitted with a Moffat (:func:`fit_star`); the stamp,
    about 6 times the FWHM (at least 15 pixels), is the Moffat of the median FWHM and beta
    (a few stars' noise does not become fake wings).
    When the measured FWHM is far (30%) from the guess, the measurement is made again
    with it as the guess, so that the filter and the stamp fit the stars. With fewer
    than ``min_stars`` candidates (or fits), a Gaussian of
    ``fwhm_guess`` pixels, said so in ``method``.
    """
    psf = _measure_psf(data, background, sigma=sigma, bad=bad, fwhm_guess=fwhm_guess,
                       min_stars=min_stars, max_stars=max_stars)
    if psf.n_stars and abs(psf.fwhm / fwhm_guess - 1) > 0.3:
        again = _measure_psf(data, background, sigma=sigma, bad=bad, fwhm_guess=psf.fwhm,
                             min_stars=min_stars, max_stars=max_stars)
        if again.n_stars:
            return again
    return psf


def _point_like(residual: np.ndarray, x: np.ndarray, y: np.ndarray, flux: np.ndarray, ok: np.ndarray, *,
                min_stars: int) -> np.ndarray:
    """Bool per candidate: not a cosmic ray (a peak pixel whose four direct neighbours all
    reach a quarter of it; cosmic rays fail across their width, even as a track) and, once
    there are ``min_stars``, as compact as a star (peak over flux within 35% of that of the
    most compact quarter: galaxies spread their flux)."""
    keep, compactness = ok.copy(), np.zeros(len(x))
    for i in np.flatnonzero(ok):
        yc, xc = int(round(y[i])), int(round(x[i]))
        window = residual[yc - 2:yc + 3, xc - 2:xc + 3]
        py, px = np.unravel_index(np.argmax(window), window.shape)
        py, px = py + yc - 2, px + xc - 2
        peak = residual[py, px]
        cross = min(residual[py - 1, px], residual[py + 1, px], residual[py, px - 1], residual[py, px + 1])
        keep[i] = cross >= 0.25 * peak
        compactness[i] = peak / flux[i]
    if keep.sum() >= min_stars:
        top = np.sort(compactness[keep])[::-1][:max(3, keep.sum() // 4)]
        keep &= compactness >= 0.65 * np.median(top)
    return keep


def _measure_psf(data: np.ndarray, background: np.ndarray, *, sigma: float, bad: np.ndarray | None,
                 fwhm_guess: float, min_stars: int, max_stars: int) -> PSF:
    """One pass of :func:`measure_psf` with a given FWHM guess."""
    residual = np.nan_to_num(data - background)
    filtered = ndimage.gaussian_filter(residual, fwhm_guess / FWHM_PER_SIGMA)
    half = max(7, int(np.ceil(3 * fwhm_guess)))
    gaussian = f"Gaussian of FWHM {fwhm_guess:.2f} px"
    fallback = PSF(gaussian_psf(fwhm_guess), fwhm_guess, 0, f"{gaussian} (too few stars)")
    threshold = 5 * float(mad_std(filtered[np.isfinite(data)]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoDetectionsWarning)  # no stars: the fallback says so
        segments = SourceFinder(n_pixels=5, deblend=False, progress_bar=False)(filtered, threshold)
    if segments is None:
        return fallback
    cat = SourceCatalog(residual, segments, convolved_data=filtered)
    x, y = np.asarray(cat.x_centroid, float), np.asarray(cat.y_centroid, float)
    flux, area = np.asarray(cat.segment_flux, float), np.asarray(cat.area.value, float)
    usable = _isolated(x, y, np.isfinite(np.asarray(cat.fwhm.value, float)), shape=data.shape, half=half,
                       bad=bad)
    snr = flux / (sigma * np.sqrt(area))
    passes = []  # the brighter stars where there are enough of them, else the fainter too ...
    for cut in STAR_SNR:
        passes.append((cut, np.flatnonzero(_point_like(residual, x, y, flux, usable & (snr > cut),
                                                        min_stars=min_stars))))
        if len(passes[-1][1]) >= ENOUGH_STARS:
            break
    least, pick = passes[-1]
    if len(pick) < min_stars:  # ... unless their compactness cut leaves too few: then the most
        least, pick = max(passes, key=lambda p: len(p[1]))
    if len(pick) < min_stars:
        return fallback
    pick = pick[np.argsort(-flux[pick])][:max_stars]
    labels = np.asarray(cat.labels)
    fits = [fit_star(residual, x[i], y[i], half=half, fwhm_guess=fwhm_guess, segments=segments.data,
                     label=int(labels[i])) for i in pick]
    fits = np.array([f for f in fits if f is not None]).reshape(-1, 2)
    if len(fits) < min_stars:
        failed = f"Moffat fits failed on {len(pick) - len(fits)} of {len(pick)} stars"
        return PSF(fallback.stamp, fwhm_guess, 0, f"{gaussian} ({failed})")
    fwhm, beta = np.median(fits, axis=0)
    method = f"Moffat (beta {beta:.2f}) fitted to {len(fits)} stars (median, S/N > {least:g})"
    return PSF(moffat_stamp(fwhm, beta, half=half), float(fwhm), len(fits), method)


def _isolated(x: np.ndarray, y: np.ndarray, ok: np.ndarray, *, shape: tuple[int, int], half: int,
              bad: np.ndarray | None) -> np.ndarray:
    """Bool per source: ``ok``, a stamp of half-side ``half`` inside the image, no other
    source within ``half`` and no flagged pixel within ``half``."""
    ny, nx = shape
    ok = ok & (x > half + 1) & (x < nx - half - 2) & (y > half + 1) & (y < ny - half - 2)
    if len(x) > 1:
        dist, _ = cKDTree(np.column_stack([x, y])).query(np.column_stack([x, y]), k=2)
        ok &= dist[:, 1] > half
    if bad is not None and ok.any():
        grown = ndimage.binary_dilation(bad, iterations=half)
        ok &= ~grown[np.round(y).astype(int).clip(0, ny - 1), np.round(x).astype(int).clip(0, nx - 1)]
    return ok


def moffat_fwhm(gamma: float, beta: float) -> float:
    """FWHM of a Moffat profile (1 + r**2 / gamma**2) ** -beta (its inverse: gamma =
    FWHM / ``moffat_fwhm(1, beta)``)."""
    return float(2 * gamma * np.sqrt(2 ** (1 / beta) - 1))


def moffat_stamp(fwhm: float, beta: float, *, half: int) -> np.ndarray:
    """A circular Moffat of ``fwhm`` pixels and ``beta`` drawn at the pixel centres of a
    stamp of side 2 ``half`` + 1, sum 1."""
    gamma = fwhm / moffat_fwhm(1.0, beta)
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
    stamp = (1 + (xx**2 + yy**2) / gamma**2) ** -beta
    return stamp / stamp.sum()


def fit_star(residual: np.ndarray, x: float, y: float, *, half: int, fwhm_guess: float,
             segments: np.ndarray | None = None, label: int = 0) -> tuple[float, float] | None:
    """(FWHM in pixels, beta) of a circular Moffat fitted by least squares (free centre and
    amplitude) to the star at (``x``, ``y``) of a sky-subtracted image, on a stamp of side
    2 ``half`` + 1; None when the fit fails or runs into its bounds. With a segmentation
    map (``segments``; the star's own segment ``label``), other sources' pixels, grown by
    a FWHM, are left out of the fit.

    Each star is fitted on its own pixels, so the FWHM is that of the stars as the image
    samples them. An effective PSF built first (photutils ``EPSFBuilder`` at oversampling 1)
    bins the stars' pixels at their sub-pixel offsets and smooths them: +10% FWHM at 2.5 px;
    and a stamp's area above half maximum moves in steps of about 4%.
    """
    yc, xc = int(round(y)), int(round(x))
    box = (slice(yc - half, yc + half + 1), slice(xc - half, xc + half + 1))
    stamp = residual[box]
    weights = None
    if segments is not None:
        others = (segments[box] != 0) & (segments[box] != label)
        grown = ndimage.binary_dilation(others, iterations=max(1, int(np.ceil(fwhm_guess))))
        weights = (~grown).astype(float)
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1].astype(float)
    start = Moffat2D(amplitude=float(stamp.max()), x_0=x - xc, y_0=y - yc, alpha=3.0,
                     gamma=fwhm_guess / moffat_fwhm(1.0, 3.0))
    start.alpha.bounds, start.gamma.bounds = (BETA_MIN, 30.0), (0.2, 10 * fwhm_guess)
    start.x_0.bounds = start.y_0.bounds = (-2.0, 2.0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the fitter's convergence chatter
            fit = fitting.TRFLSQFitter()(start, xx, yy, stamp, weights=weights)
    except Exception:  # noqa: BLE001 - a failed fit leaves the star out
        return None
    beta, gamma = float(fit.alpha.value), float(fit.gamma.value)
    if not (np.isfinite(beta) and np.isfinite(gamma) and beta > BETA_MIN * 1.01
            and 0.21 < abs(gamma) < 9.9 * fwhm_guess):
        return None
    return moffat_fwhm(abs(gamma), beta), beta
