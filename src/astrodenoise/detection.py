"""Source detection and what it is scored by: matching, completeness, purity and depth.

:func:`detect` is the one detector of the evaluation and injection-recovery (PSF-matched
filter, threshold from the filtered image's own blank-sky RMS, deblended);
:func:`refine_centroids` fits the centroids photometry needs;
:func:`detection_scores` scores detections against a catalogue per magnitude bin;
:func:`completeness_magnitude` reads off where a completeness curve falls below a level.
"""

from __future__ import annotations

import warnings

import numpy as np
from astropy.stats import mad_std
from astropy.utils.exceptions import AstropyUserWarning
from photutils.centroids import centroid_2dg, centroid_sources
from photutils.segmentation import SourceCatalog, SourceFinder
from scipy import ndimage
from scipy.spatial import cKDTree

from .photometry import magnitude_bins
from .psf import FWHM_PER_SIGMA

__all__ = ["detect", "refine_centroids", "near", "detection_scores", "pool_detection_bins", "depth90",
           "completeness_magnitude"]


def detect(image: np.ndarray, *, background: np.ndarray, mask: np.ndarray, threshold: float,
           fwhm: float) -> tuple[np.ndarray, np.ndarray]:
    """Sources of the PSF-matched-filtered image above ``threshold`` times its blank-sky
    RMS (at least 5 connected pixels), deblended.

    The image minus ``background`` is smoothed with a Gaussian of the PSF ``fwhm``
    (pixels) and the threshold set from the RMS of that filtered map over blank sky
    (``mask`` True = not blank). Measuring the noise after the filter counts the
    correlations a denoiser leaves: a smooth image has a tiny per-pixel RMS, and a
    per-pixel threshold would detect its residual ripples as sources. Deblending keeps a
    faint neighbour from merging with a bright star into one segment whose centroid
    matches neither. Returns centroids (n, 2) as (x, y) and segment fluxes (n,) measured
    on the unfiltered image.
    """
    residual = np.nan_to_num(image - background)
    filtered = ndimage.gaussian_filter(residual, fwhm / FWHM_PER_SIGMA)
    rms = float(mad_std(filtered[~mask & np.isfinite(image)]))
    finder = SourceFinder(n_pixels=5, deblend=True, progress_bar=False)
    segments = finder(filtered, threshold * rms)
    if segments is None:
        return np.empty((0, 2)), np.empty(0)
    cat = SourceCatalog(residual, segments, convolved_data=filtered)
    return np.column_stack([cat.x_centroid, cat.y_centroid]), np.asarray(cat.segment_flux, float)


def refine_centroids(image: np.ndarray, positions: np.ndarray, *, fwhm: float) -> np.ndarray:
    """``positions`` (n, 2) as (x, y) refined by a 2-D Gaussian fit to ``image`` (sky
    subtracted) in a box of about 2 FWHM (photutils ``centroid_2dg``).

    A segment's centroid on the filtered image is pulled by the segment's edge and by
    neighbours (about 0.25 px for bright stars, 0.5 px for faint ones on the demo), and a
    1 x FWHM aperture misplaced by that loses more of a smoothed source than of a sharp
    one. A fit that fails or moves a source by more than half a FWHM keeps its position."""
    if not len(positions):
        return positions
    box = 2 * int(np.ceil(fwhm)) + 1
    with warnings.catch_warnings():  # a fit that did not converge is caught below
        warnings.simplefilter("ignore", AstropyUserWarning)
        x, y = centroid_sources(image, positions[:, 0], positions[:, 1], box_size=box,
                                centroid_func=centroid_2dg)
    fitted = np.column_stack([x, y])
    moved = np.hypot(*(fitted - positions).T)
    keep = np.isfinite(moved) & (moved <= 0.5 * fwhm)
    return np.where(keep[:, None], fitted, positions)


def near(points: np.ndarray, positions: np.ndarray, radius: float) -> np.ndarray:
    """Bool per position: some point lies within ``radius`` of it."""
    if not len(points) or not len(positions):
        return np.zeros(len(positions), bool)
    dist, _ = cKDTree(points).query(positions, k=1)
    return dist <= radius


def detection_scores(found: np.ndarray, found_flux: np.ndarray, truth: np.ndarray, truth_mag: np.ndarray,
                     *, radius: float, zeropoint: float, bin_width: float) -> dict:
    """Completeness, purity and 90% depth of detections against a truth catalogue.

    ``found`` (n, 2) and ``truth`` (m, 2) are (x, y) pixel positions; a detection is true
    when a catalogue source lies within ``radius`` pixels. Magnitudes are
    ``zeropoint - 2.5 log10(flux)`` for unmatched detections, the catalogue's for matched
    ones. Bins run from the brightest catalogue magnitude in steps of ``bin_width``.
    """
    dist, nearest = cKDTree(truth).query(found, k=1) if len(found) else (np.empty(0), np.empty(0, int))
    matched = dist <= radius
    with np.errstate(divide="ignore", invalid="ignore"):
        own_mag = np.where(found_flux > 0, zeropoint - 2.5 * np.log10(found_flux), np.inf)
    found_mag = np.where(matched, truth_mag[np.minimum(nearest, len(truth) - 1)], own_mag)
    recovered = np.zeros(len(truth), bool)
    recovered[nearest[matched]] = True
    rows = []
    for lo in magnitude_bins(truth_mag, bin_width):
        hi = lo + bin_width
        in_truth = (truth_mag >= lo) & (truth_mag < hi)
        in_found = (found_mag >= lo) & (found_mag < hi)
        rows.append(_detection_bin(lo, hi, int(in_truth.sum()), int(recovered[in_truth].sum()),
                                   int(in_found.sum()), int(matched[in_found].sum())))
    return {"bins": rows, "depth90": depth90(rows), "n_detected": int(len(found)),
            "n_matched": int(matched.sum()), "n_false": int((~matched).sum())}


def _detection_bin(lo: float, hi: float, n_truth: int, n_recovered: int, n_found: int, n_true: int) -> dict:
    return {"lo": round(float(lo), 3), "hi": round(float(hi), 3), "n_truth": n_truth,
            "n_recovered": n_recovered, "n_found": n_found, "n_true": n_true,
            "completeness": n_recovered / n_truth if n_truth else None,
            "purity": n_true / n_found if n_found else None}


def pool_detection_bins(per_exposure: list[list[dict]]) -> list[dict]:
    """Sum the counts of detection bins over exposures (bins matched by their edges)."""
    totals: dict[tuple, list[int]] = {}
    for rows in per_exposure:
        for r in rows:
            key = (r["lo"], r["hi"])
            counts = totals.setdefault(key, [0, 0, 0, 0])
            for i, name in enumerate(("n_truth", "n_recovered", "n_found", "n_true")):
                counts[i] += r[name]
    return [_detection_bin(lo, hi, *counts) for (lo, hi), counts in sorted(totals.items())]


def depth90(bins: list[dict], *, min_sources: int = 5, purity: bool = True) -> float | None:
    """Faint edge of the last magnitude bin, brighter bins included, whose completeness
    and purity (only completeness with ``purity=False``) are at least 90%. Bins with
    fewer than ``min_sources`` catalogue sources are too few to tell and neither extend
    nor end the run; None when the first informative bin already fails."""
    depth = None
    for row in bins:
        if row["n_truth"] < min_sources:
            continue
        impure = purity and row["purity"] is not None and row["purity"] < 0.9
        if row["completeness"] < 0.9 or impure:
            break
        depth = row["hi"]
    return depth


def completeness_magnitude(mags: np.ndarray, found: np.ndarray, level: float, *, bin_width: float = 0.5,
                           min_sources: int = 5) -> float | None:
    """Magnitude where the binned completeness first falls below ``level`` (linear
    between bin centres); None when it never does or no bin has ``min_sources``."""
    if not len(mags):
        return None
    centres, frac = [], []
    for lo in magnitude_bins(mags, bin_width):
        pick = (mags >= lo) & (mags < lo + bin_width)
        if pick.sum() >= min_sources:
            centres.append(lo + bin_width / 2)
            frac.append(found[pick].mean())
    for i, f in enumerate(frac):
        if f < level:
            if i == 0:
                return None
            c0, c1, f0 = centres[i - 1], centres[i], frac[i - 1]
            return float(c0 + (c1 - c0) * (f0 - level) / (f0 - f))
    return None
