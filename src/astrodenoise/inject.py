"""Injection-recovery: the astronomers' test of a denoiser where no truth exists.

Artificial point sources of known flux, shaped by the PSF measured from the exposure's
own stars, are added to blank sky of the noisy input; the injected exposure goes
through each denoiser exactly as the original did, and the sources are looked for again.

- :func:`measure_psf` builds an effective PSF (photutils ``EPSFBuilder``) from bright,
  isolated, unflagged, point-like sources; with too few stars, a Gaussian of the header
  (or configured) FWHM, said so in the result.
- :func:`plan_injection` draws positions in blank sky (away from every source of the
  input's mask and from each other, so that no two stamps overlap) and magnitudes
  uniform from 4 mag brighter to 1 mag fainter than the exposure's 5-sigma point-source
  limit, read from its own noise: the sources span bright (S/N > 50), faint
  (5 < S/N < 20) and undetectable.
- :func:`inject` adds them, with their photon noise when the gain is known.
- :func:`recover` measures, for one denoiser, each injected source's recovered aperture
  flux on ``denoised(injected) - denoised(original)`` (the same denoiser on the exposure
  with and without the sources, so sky, neighbours and the denoiser's own artefacts
  cancel) against its true aperture flux, and whether a detection of the injected image
  lies within the match radius where the original had none (completeness).

Per source the result keeps magnitude, true S/N, recovered flux ratio and found flag;
:func:`summarise_recovery` pools sources over exposures into flux bias of bright and
faint injected sources (median, bootstrap standard error), completeness per magnitude
bin, and the 50% and 90% completeness magnitudes.
"""

from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass

import numpy as np
from astropy.nddata import NDData
from astropy.stats import mad_std
from astropy.table import Table
from photutils.psf import EPSFBuilder, extract_stars
from photutils.segmentation import SourceCatalog, SourceFinder
from photutils.utils.exceptions import NoDetectionsWarning
from scipy import ndimage
from scipy.spatial import cKDTree

__all__ = ["PSF", "measure_psf", "gaussian_psf", "plan_injection", "inject", "recover",
           "summarise_recovery", "completeness_magnitude"]

#: S/N classes of injected sources, as in the catalogue photometry of the evaluate step.
BRIGHT_SNR, FAINT_SNR = 50.0, (5.0, 20.0)


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


def _stamp_fwhm(stamp: np.ndarray) -> float:
    """FWHM (pixels) of a PSF stamp from the area above half its maximum (a Gaussian fit
    reads a Moffat's wings as width: +11% on the demo's stars)."""
    return float(2 * np.sqrt((stamp >= stamp.max() / 2).sum() / np.pi))


def gaussian_psf(fwhm: float, *, size: int | None = None) -> np.ndarray:
    """A circular Gaussian stamp of ``fwhm`` pixels, odd side (about 6 FWHM), sum 1."""
    half = max(7, int(np.ceil(3 * fwhm))) if size is None else size // 2
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
    psf = np.exp(-(xx**2 + yy**2) / (2 * (fwhm / 2.3548) ** 2))
    return psf / psf.sum()


def measure_psf(data: np.ndarray, background: np.ndarray, *, sigma: float, bad: np.ndarray | None = None,
                fwhm_guess: float = 3.5, min_stars: int = 4, max_stars: int = 40) -> PSF:
    """Effective PSF of an exposure from its own stars (photutils ``EPSFBuilder``).

    Candidates are sources of the image filtered by a Gaussian of ``fwhm_guess`` above 5
    sigma, with at least 20 times the noise of their segment, away from flagged pixels
    (``bad``: saturated, no data), from the edge and from other sources by half a stamp.
    Cosmic rays are dropped (a peak pixel whose four direct neighbours do not all reach
    a quarter of it: any PSF sampled by 2 pixels or more per FWHM does), then galaxies
    (stars are the most compact of what is left: peak over flux within 35% of that of
    the most compact quarter). The stamp is about 6 times the FWHM (at least 15 pixels).
    When the measured FWHM is far (30%) from the guess, the measurement is made again
    with it as the guess, so that the filter and the stamp fit the stars. With fewer
    than ``min_stars`` candidates (or if the builder fails), a Gaussian of
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


def _measure_psf(data: np.ndarray, background: np.ndarray, *, sigma: float, bad: np.ndarray | None,
                 fwhm_guess: float, min_stars: int, max_stars: int) -> PSF:
    """One pass of :func:`measure_psf` with a given FWHM guess."""
    residual = np.nan_to_num(data - background)
    filtered = ndimage.gaussian_filter(residual, fwhm_guess / 2.3548)
    half = max(7, int(np.ceil(3 * fwhm_guess)))
    size = 2 * half + 1
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
    fwhm = np.asarray(cat.fwhm.value, float)
    ny, nx = data.shape
    ok = (flux > 20 * sigma * np.sqrt(area)) & np.isfinite(fwhm)
    ok &= (x > half + 1) & (x < nx - half - 2) & (y > half + 1) & (y < ny - half - 2)
    if len(x) > 1:
        dist, _ = cKDTree(np.column_stack([x, y])).query(np.column_stack([x, y]), k=2)
        ok &= dist[:, 1] > half
    if bad is not None and ok.any():
        grown = ndimage.binary_dilation(bad, iterations=half)
        ok &= ~grown[np.round(y).astype(int).clip(0, ny - 1), np.round(x).astype(int).clip(0, nx - 1)]
    # Cosmic rays fail the neighbour test across their width, even as a track.
    compactness = np.zeros(len(x))
    for i in np.flatnonzero(ok):
        yc, xc = int(round(y[i])), int(round(x[i]))
        window = residual[yc - 2:yc + 3, xc - 2:xc + 3]
        py, px = np.unravel_index(np.argmax(window), window.shape)
        py, px = py + yc - 2, px + xc - 2
        peak = residual[py, px]
        cross = min(residual[py - 1, px], residual[py + 1, px], residual[py, px - 1], residual[py, px + 1])
        if cross < 0.25 * peak:
            ok[i] = False
        compactness[i] = peak / flux[i]
    # Galaxies spread their flux: stars are the most compact of what is left.
    if ok.sum() >= min_stars:
        top = np.sort(compactness[ok])[::-1][:max(3, ok.sum() // 4)]
        ok &= compactness >= 0.65 * np.median(top)
    pick = np.flatnonzero(ok)
    if len(pick) < min_stars:
        return fallback
    pick = pick[np.argsort(-flux[pick])][:max_stars]
    stars = extract_stars(NDData(residual), Table({"x": x[pick], "y": y[pick]}), size=size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence chatter of the builder
            epsf, _ = EPSFBuilder(oversampling=1, maxiters=5, progress_bar=False)(stars)
    except Exception as error:  # noqa: BLE001 - any builder failure falls back, and says why
        return PSF(fallback.stamp, fwhm_guess, 0, f"{gaussian} (EPSF failed: {error})")
    stamp = np.clip(np.asarray(epsf.data, float), 0, None)
    if stamp.shape[0] % 2 == 0 or stamp.sum() <= 0:
        return fallback
    stamp /= stamp.sum()
    return PSF(stamp, _stamp_fwhm(stamp), len(pick), f"EPSF of {len(pick)} stars")


def exposure_seed(name: str, seed: int) -> int:
    """A per-exposure seed: the same draws for the same exposure and ``seed`` on every run."""
    return zlib.crc32(f"{seed}:{name}".encode())


def plan_injection(shape: tuple[int, int], blocked: np.ndarray, psf: PSF, *, sigma: float,
                   zeropoint: float, radius: float, count: int, rng: np.random.Generator,
                   nodata: np.ndarray | None = None, bright: float = 4.0, faint: float = 1.5) -> dict:
    """Positions and magnitudes of the sources to inject.

    ``blocked`` (ny, nx) bool: True on sources, their wings and no-data pixels (the
    input's source mask). Positions are whole pixels in blank sky at least one stamp
    half-width from anything blocked and from the edge, and a stamp apart from each
    other. When blank sky holds fewer than ``count`` (a crowded field) and ``nodata``
    (True: flagged or no data) is given, the rest go anywhere a stamp away from
    ``nodata``, on top of sources (``on_source`` True): their flux is still measured on
    the difference image, but a detection the image already had there does not count
    as found. ``radius`` is the photometry aperture. The 5-sigma limit ``m5`` is the
    magnitude whose aperture flux has S/N 5 against the sky noise ``sigma`` (data
    units); magnitudes are uniform in ``[m5 - bright, m5 + faint]``. Returns
    ``{"positions" (n, 2) as (x, y), "mag" (n,), "flux" (n,) total flux in data units,
    "on_source" (n,) bool, "m5"}``.
    """
    half = psf.stamp.shape[0] // 2
    chosen: list[tuple[int, int]] = []
    _choose(chosen, blocked, half, count, rng)
    n_blank = len(chosen)
    if n_blank < count and nodata is not None:
        _choose(chosen, nodata, half, count, rng)
    positions = np.array(chosen, float).reshape(-1, 2)
    ap_fraction = _aperture_fraction(psf, radius)
    m5 = zeropoint - 2.5 * np.log10(5 * sigma * np.sqrt(np.pi * radius**2) / ap_fraction)
    mag = rng.uniform(m5 - bright, m5 + faint, size=len(positions))
    return {"positions": positions, "mag": mag, "flux": 10 ** (-0.4 * (mag - zeropoint)),
            "on_source": np.arange(len(positions)) >= n_blank, "m5": float(m5)}


def _choose(chosen: list[tuple[int, int]], blocked: np.ndarray, half: int, count: int,
            rng: np.random.Generator) -> None:
    """Add to ``chosen`` random pixels a stamp half-width from ``blocked`` and the edge and
    a stamp from every chosen one, until there are ``count``."""
    free = np.ones(blocked.shape, bool)
    if blocked.any():
        free = ~ndimage.binary_dilation(blocked, iterations=half)
    free[:half + 1, :] = free[-half - 1:, :] = False
    free[:, :half + 1] = free[:, -half - 1:] = False
    ys, xs = np.nonzero(free)
    spacing = 2 * half + 1
    for i in rng.permutation(len(xs)):
        if len(chosen) >= count:
            break
        x, y = int(xs[i]), int(ys[i])
        if all(abs(x - cx) >= spacing or abs(y - cy) >= spacing for cx, cy in chosen):
            chosen.append((x, y))


def _aperture_fraction(psf: PSF, radius: float) -> float:
    """Share of the PSF's flux inside a circular aperture of ``radius`` at its centre."""
    from photutils.aperture import CircularAperture, aperture_photometry

    half = psf.stamp.shape[0] // 2
    table = aperture_photometry(psf.stamp, CircularAperture([(half, half)], r=radius))
    return float(table["aperture_sum"][0])


def inject(data: np.ndarray, psf: PSF, plan: dict, *, gain: float | None,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``data`` with the planned sources added; returns (injected, noise-free model).

    Each source is the PSF stamp times its flux, centred on its pixel. With a ``gain``
    (e-/ADU) its photon noise is added too (Gaussian of variance model / gain, in ADU),
    so an injected source is as noisy as a real one; without, it is noise-free.
    NaN pixels stay NaN.
    """
    model = np.zeros(data.shape, np.float64)
    half = psf.stamp.shape[0] // 2
    for (x, y), flux in zip(plan["positions"].astype(int), plan["flux"], strict=True):
        model[y - half:y + half + 1, x - half:x + half + 1] += flux * psf.stamp
    noise = rng.standard_normal(data.shape) * np.sqrt(model / gain) if gain else 0.0
    return (data + model + noise).astype(np.float32), model.astype(np.float32)


def recover(original: np.ndarray, injected: np.ndarray, model: np.ndarray, plan: dict, *,
            radius: float, found_original: np.ndarray, found_injected: np.ndarray,
            match_radius: float) -> dict:
    """Recovered flux ratio and found flag of each injected source, for one denoiser.

    ``original``/``injected``: the denoiser's output on the exposure without and with the
    sources; ``model``: the noise-free injected sources. Flux: aperture sum of
    ``injected - original`` over the true aperture sum of ``model``, minus 1. Found: a
    detection of the injected image within ``match_radius`` pixels where the original
    image had none (an artefact already there does not count as a recovery).
    """
    from .evaluate import aperture_fluxes

    positions = plan["positions"]
    true_flux = aperture_fluxes(model, positions, radius=radius)
    got = aperture_fluxes(np.nan_to_num(injected - original), positions, radius=radius)
    found = _near(found_injected, positions, match_radius) & ~_near(found_original, positions, match_radius)
    return {"flux_ratio": [round(float(v), 6) for v in got / true_flux - 1], "found": found.tolist()}


def _near(points: np.ndarray, positions: np.ndarray, radius: float) -> np.ndarray:
    """Bool per position: some point lies within ``radius`` of it."""
    if not len(points) or not len(positions):
        return np.zeros(len(positions), bool)
    dist, _ = cKDTree(points).query(positions, k=1)
    return dist <= radius


def completeness_magnitude(mags: np.ndarray, found: np.ndarray, level: float, *, bin_width: float = 0.5,
                           min_sources: int = 5) -> float | None:
    """Magnitude where the binned completeness first falls below ``level`` (linear
    between bin centres); None when it never does or no bin has ``min_sources``."""
    if not len(mags):
        return None
    edges = np.arange(np.floor(mags.min() / bin_width) * bin_width, mags.max() + bin_width, bin_width)
    centres, frac = [], []
    for lo in edges[:-1]:
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


def _median_se(values: np.ndarray, rng: np.random.Generator,
               n_boot: int = 400) -> tuple[float | None, float | None]:
    """Median and its bootstrap standard error (None below three values)."""
    if not len(values):
        return None, None
    if len(values) < 3:
        return float(np.median(values)), None
    boot = np.median(rng.choice(values, size=(n_boot, len(values))), axis=1)
    return float(np.median(values)), float(np.std(boot))


def summarise_recovery(per_exposure: list[dict], method: str, *, bin_width: float = 0.5) -> dict | None:
    """Pool the injected sources of ``method`` over exposures.

    ``per_exposure``: the ``injection`` blocks of the evaluate JSONs. Returns flux bias
    (median of recovered/true - 1, bootstrap standard error) of bright (true S/N > 50)
    and faint (5 < S/N < 20) injected sources, completeness and median flux bias per
    magnitude bin (magnitudes relative to each exposure's 5-sigma limit ``m5``, so
    exposures of different depth pool), and the 50% and 90% completeness magnitudes
    relative to ``m5``. None when no exposure has ``method``.
    """
    mags, snr, ratio, found = [], [], [], []
    for block in per_exposure:
        if not block or method not in block.get("methods", {}):
            continue
        mags.append(np.asarray(block["mag"]) - block["m5"])
        snr.append(np.asarray(block["snr"]))
        ratio.append(np.asarray(block["methods"][method]["flux_ratio"]))
        found.append(np.asarray(block["methods"][method]["found"], bool))
    if not mags:
        return None
    mags, snr, ratio, found = (np.concatenate(v) for v in (mags, snr, ratio, found))
    rng = np.random.default_rng(0)
    out = {"n": int(len(mags))}
    for cls, pick in (("bright", snr > BRIGHT_SNR), ("faint", (snr > FAINT_SNR[0]) & (snr < FAINT_SNR[1]))):
        bias, se = _median_se(ratio[pick], rng)
        out[f"{cls}_bias"], out[f"{cls}_se"], out[f"{cls}_n"] = bias, se, int(pick.sum())
    out["m50"] = completeness_magnitude(mags, found, 0.5, bin_width=bin_width)
    out["m90"] = completeness_magnitude(mags, found, 0.9, bin_width=bin_width)
    bins = []
    start = np.floor(mags.min() / bin_width) * bin_width
    for lo in np.arange(start, mags.max() + bin_width, bin_width):
        pick = (mags >= lo) & (mags < lo + bin_width)
        if pick.sum():
            bins.append({"mag": round(float(lo + bin_width / 2), 3), "n": int(pick.sum()),
                         "completeness": float(found[pick].mean()),
                         "bias": float(np.median(ratio[pick]))})
    out["bins"] = bins
    return out
