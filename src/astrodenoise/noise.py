"""Noise estimation per exposure: sky background and a robust Gaussian sigma.

The training loss, the normalisation and the evaluation all depend on the noise level,
so it is measured from the data, never assumed. Header GAIN/RDNOISE, where present,
are recorded next to the measurement as a cross-check, not used in its place.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.stats import mad_std, sigma_clipped_stats
from scipy import ndimage

from . import io
from .alignment import load_aligned
from .provenance import code_version
from .sky import estimate_background, source_mask

__all__ = ["NoiseConfig", "estimate_noise", "effective_gain", "noise", "overscan_level",
           "mean_variance_curve", "pair_mean_variance_curve", "fit_poisson_gaussian", "survey_noise",
           "mean_variance_figure", "noise_survey", "noise_autocorrelation", "pattern_noise"]


@dataclass(frozen=True)
class NoiseConfig:
    """Settings of the noise step.

    ``box_size`` is the Background2D mesh in pixels (larger than the sources, smaller
    than sky variations); ``detect_sigma`` the threshold in sigma for masking sources;
    ``dilate`` the number of pixels by which the source mask grows (to cover wings);
    ``correlation_limit`` the lag-1 noise autocorrelation above which the noise is flagged
    as correlated (Noise2Void assumes independent pixels).
    """

    box_size: int = 64
    filter_size: int = 3
    detect_sigma: float = 2.0
    dilate: int = 4
    correlation_limit: float = 0.1

    @classmethod
    def from_dict(cls, values: dict) -> NoiseConfig:
        return cls(**values)


def estimate_noise(data: np.ndarray, *, header: fits.Header | None = None, bad: np.ndarray | None = None,
                   ivar: np.ndarray | None = None, config: NoiseConfig = NoiseConfig()) -> dict:
    """Measure sky level and Gaussian noise sigma of one exposure.

    Parameters
    ----------
    data : (ny, nx) float32, data units (ADU for raw frames); NaN = no data
    header : the exposure header, for GAIN and RDNOISE cross-checks
    bad : (ny, nx) bool, optional; True = pixel not to be used (saturated, bad, no weight)
    ivar : (ny, nx) float, optional; inverse variance from a weight map (data units^-2),
        compared with the measured noise (``weight_agreement``)
    config : NoiseConfig

    Returns
    -------
    dict with ``sky_level`` (median sky, data units), ``sky_rms`` (median of the
    Background2D RMS map), ``sigma`` (robust std of source-free, sky-subtracted
    pixels: the Gaussian noise level), ``blank_fraction`` (share of pixels used),
    ``nan_fraction``, ``header_gain``/``header_read_noise`` (None if absent), ``gain``
    (e- per data unit, what the noise model uses: :func:`effective_gain`) and
    ``gain_source`` (where it came from, or why there is none),
    ``sigma_from_header`` (sqrt((sky - bias)*gain + rn^2)/gain, None without both
    keywords), ``overscan`` (bias and read noise from BIASSEC, None without one),
    ``read_noise_overscan`` (e-, with the header gain), ``poisson_gaussian`` (the
    single-image fit of :func:`fit_poisson_gaussian`: on sky-dominated images gain and
    read noise are nearly degenerate, so treat it as a check of the header values),
    ``autocorrelation`` (lag 1 in x and y) with the flag ``correlated``, and
    ``pattern`` (row/column RMS) with the flag ``banding``; with ``ivar``,
    ``sigma_from_weight`` (median 1/sqrt(ivar) over blank sky) and ``weight_agreement``
    (measured sigma over it: 1 when the weight map is right).
    """
    data, ivar, overscan = _light_sensitive(data, header=header, bad=bad, ivar=ivar)
    residual, mask, rms, sky_level, sigma = _blank_sky(data, config)
    bias = overscan["bias"] if overscan else 0.0
    correlation = noise_autocorrelation(residual, mask)
    pattern = pattern_noise(residual, mask, sigma=sigma)
    fit = fit_poisson_gaussian(mean_variance_curve(data), bias=bias)
    used_gain, gain_source = effective_gain(header, sky_level=sky_level, bias=bias, sigma=sigma, fit=fit)
    return {
        "sky_level": sky_level,
        "sky_rms": float(np.nanmedian(rms)),
        "sigma": sigma,
        "blank_fraction": float((~mask).mean()),
        "nan_fraction": float((~np.isfinite(data)).mean()),
        **_header_checks(header, sky_level=sky_level, overscan=overscan),
        "gain": used_gain,
        "gain_source": gain_source,
        "overscan": overscan,
        "poisson_gaussian": fit,
        "autocorrelation": correlation,
        "correlated": bool(max(abs(correlation["x"]), abs(correlation["y"])) > config.correlation_limit),
        "pattern": pattern,
        "banding": _banding(pattern),
        **_weight_check(ivar, mask, sigma),
    }


def _light_sensitive(data: np.ndarray, *, header, bad, ivar):
    """(data, ivar, overscan): flagged pixels NaN, cropped to TRIMSEC/DATASEC when the
    frame carries its overscan (BIASSEC), whose bias and read noise are measured first."""
    overscan = overscan_level(data, header)
    section = _section(header, "TRIMSEC", data.shape) or _section(header, "DATASEC", data.shape)
    if bad is not None:
        data = np.where(bad, np.nan, data).astype(np.float32)
    if section is not None and overscan is not None:
        data = data[section]
        ivar = None if ivar is None else ivar[section]
    return data, ivar, overscan


def _blank_sky(data: np.ndarray, config: NoiseConfig):
    """(residual, source mask, background RMS map, sky level, sigma) of one image.

    The background is measured twice, the second time with the sources masked, so that
    it is not pulled up by their wings; sigma is the robust std of source-free sky."""
    background, rms = estimate_background(data, box_size=config.box_size, filter_size=config.filter_size)
    mask = source_mask(data, background, rms, detect_sigma=config.detect_sigma, dilate=config.dilate)
    background, rms = estimate_background(data, box_size=config.box_size, filter_size=config.filter_size,
                                          mask=mask)
    residual = data - background
    sigma = float(mad_std(residual[~mask], ignore_nan=True))
    if not np.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"measured noise sigma is {sigma}: the image has no usable blank sky "
                         "(a constant or empty image?)")
    return residual, mask, rms, float(np.nanmedian(background)), sigma


def _header_checks(header, *, sky_level: float, overscan: dict | None) -> dict:
    """Header GAIN and RDNOISE, the sigma they predict at the sky, and the overscan read
    noise in electrons: cross-checks of the measurement (None where a keyword is missing)."""
    gain, read_noise = _header_float(header, "GAIN"), _header_float(header, "RDNOISE")
    bias = overscan["bias"] if overscan else 0.0
    expected = None
    if gain and read_noise is not None and sky_level > bias:
        expected = float(np.sqrt((sky_level - bias) * gain + read_noise**2) / gain)
    return {"header_gain": gain, "header_read_noise": read_noise, "sigma_from_header": expected,
            "read_noise_overscan": (overscan["read_noise_adu"] * gain) if overscan and gain else None}


def _weight_check(ivar: np.ndarray | None, mask: np.ndarray, sigma: float) -> dict:
    """The sigma a weight map claims over blank sky and the measured sigma over it."""
    weight_sigma = None
    if ivar is not None:
        usable = ~mask & (ivar > 0)
        weight_sigma = float(np.median(1.0 / np.sqrt(ivar[usable]))) if usable.any() else None
    return {"sigma_from_weight": weight_sigma,
            "weight_agreement": sigma / weight_sigma if weight_sigma else None}


#: BUNIT values of data in detector counts, where the header GAIN (e- per count) applies.
COUNT_UNITS = frozenset({"", "adu", "adus", "dn", "dns", "count", "counts", "ct", "cts", "data number"})
#: BUNIT values of data in electrons (gain 1), and in electrons per second (gain EXPTIME).
ELECTRON_UNITS = frozenset({"electron", "electrons", "e-", "e"})
ELECTRON_RATE_UNITS = frozenset({"electron/s", "electrons/s", "e-/s", "e/s", "electrons/sec", "e-/sec"})


def effective_gain(header: fits.Header | None, *, sky_level: float, bias: float, sigma: float,
                   fit: dict) -> tuple[float | None, str]:
    """The gain (electrons per data unit) the noise model uses, and where it came from.

    From the header where it describes these data: ``GAIN`` when ``BUNIT`` is absent or
    a count unit (ADU, DN, counts), 1 for data in electrons, ``EXPTIME`` for electrons
    per second. A header gain is refused when the sky's own photon noise under it,
    ``sqrt((sky - bias) / gain)``, is over 3 times the measured noise: an image cannot be
    less noisy than its photons (a coadd of 10 or more, a rescaled image whose header
    still carries the detector's GAIN). The margin is wide because an unmeasured bias
    pedestal inflates ``sky - bias`` (a raw frame without overscan), and refusing a right
    gain costs more (the network then works in the linear domain, where bright sources
    lose flux) than keeping a wrong one. Otherwise a reliable single-image
    Poisson-Gaussian fit (``fit``), else None: the data are then treated as Gaussian.
    """
    unit = str(header.get("BUNIT", "")).strip().lower() if header is not None else ""
    header_gain, exptime = _header_float(header, "GAIN"), _header_float(header, "EXPTIME")
    if unit in ELECTRON_UNITS:
        gain, source = 1.0, f"BUNIT {unit}"
    elif unit in ELECTRON_RATE_UNITS and exptime:
        gain, source = exptime, f"BUNIT {unit} x EXPTIME"
    elif header_gain and header_gain > 0 and unit in COUNT_UNITS:
        gain, source = header_gain, "header GAIN"
    else:
        gain = None
        source = (f"header GAIN not used: BUNIT '{unit}' is not a count unit" if header_gain
                  else "no GAIN keyword")
    if gain and sky_level - bias > 0 and np.sqrt((sky_level - bias) / gain) > 3.0 * sigma:
        gain, source = None, f"{source} not used: its sky photon noise exceeds the measured noise"
    if gain:
        return float(gain), source
    if fit.get("reliable") and fit.get("gain"):
        return float(fit["gain"]), f"Poisson-Gaussian fit ({source})"
    return None, f"none ({source})"


def _header_float(header: fits.Header | None, key: str) -> float | None:
    if header is None or key not in header:
        return None
    try:
        return float(header[key])
    except (TypeError, ValueError):
        return None


def noise(input_zarr: str | Path, out_json: str | Path, *, config: NoiseConfig = NoiseConfig()) -> dict:
    """Measure the noise of one ingested exposure and write it as JSON (atomically)."""
    array = io.open_zarr_image(input_zarr)
    try:
        mask, ivar = io.open_zarr_array(input_zarr, "mask"), io.open_zarr_array(input_zarr, "ivar")
        result = estimate_noise(array[...], header=io.header_from_attrs(array.attrs),
                                bad=None if mask is None else mask[...] != 0,
                                ivar=None if ivar is None else ivar[...], config=config)
    except ValueError as err:
        raise io.InputError(input_zarr, str(err)) from err
    result |= {"exposure": Path(input_zarr).stem, "config": dataclasses.asdict(config),
               "code_version": code_version()}
    io.write_json(out_json, result)
    return result


# Variance of x - mean(4 neighbours) for white noise, in units of the pixel variance.
_HIGHPASS_GAIN = 1.25
_HIGHPASS = np.array([[0, -0.25, 0], [-0.25, 1.0, -0.25], [0, -0.25, 0]])


def _section(header: fits.Header | None, key: str, shape: tuple[int, int]):
    """Numpy slices of a FITS section card like ``[17:528,1:520]`` (1-based, inclusive),
    or None when absent, malformed or outside an image of ``shape``."""
    if header is None or key not in header:
        return None
    match = re.fullmatch(r"\[\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*\]", str(header[key]).strip())
    if not match:
        return None
    x1, x2, y1, y2 = map(int, match.groups())
    if not (1 <= x1 <= x2 <= shape[1] and 1 <= y1 <= y2 <= shape[0]):
        return None
    return slice(y1 - 1, y2), slice(x1 - 1, x2)


def overscan_level(data: np.ndarray, header: fits.Header | None) -> dict | None:
    """Bias level and read noise (data units) from the overscan named by BIASSEC.

    Returns None when the header has no BIASSEC inside this image (a cutout, or a frame
    whose overscan was trimmed). The read noise is the robust std of the overscan after
    removing its smoothed row profile, so that bias ramps do not count as noise.
    """
    section = _section(header, "BIASSEC", data.shape)
    if section is None:
        return None
    region = data[section]
    # The row profile is smoothed over 15 rows: a ramp is removed, the pixel noise is not.
    rows = ndimage.median_filter(np.nanmedian(region, axis=1), size=15, mode="nearest")[:, None]
    return {"bias": float(np.nanmedian(region)), "biassec": str(header["BIASSEC"]),
            "read_noise_adu": float(mad_std(region - rows, ignore_nan=True))}


def mean_variance_curve(data: np.ndarray, *, exclude: np.ndarray | None = None, n_bins: int = 24,
                        min_count: int = 100, curvature_limit: float = 0.2) -> dict[str, np.ndarray]:
    """Binned local mean and noise variance of one image, for a Poisson-Gaussian fit.

    After Foi et al. (2008): the noise is isolated by a high-pass filter (pixel minus the
    mean of its 4 neighbours, variance 1.25 sigma^2 for white noise) and its robust
    variance is measured in bins of the local signal level (5x5 mean). Pixels where the
    signal itself curves strongly (star cores) are left out, so that the variance is
    that of the noise, not of the image structure.

    Parameters
    ----------
    data : (ny, nx) float32, data units; NaN = no data
    exclude : (ny, nx) bool, True = pixel not used (overscan, saturated, bad)

    Returns
    -------
    dict of 1-D arrays ``mean``, ``variance``, ``error`` (1-sigma of the variance) and
    ``count`` per bin, bins in increasing ``mean``.
    """
    valid = np.isfinite(data) if exclude is None else np.isfinite(data) & ~exclude
    filled = np.where(np.isfinite(data), data, np.nanmedian(data))
    valid = ndimage.binary_erosion(valid, iterations=2, border_value=0)
    noise = ndimage.convolve(filled, _HIGHPASS, mode="nearest")
    local = ndimage.uniform_filter(filled, 5)
    # Signal curvature, seen through light smoothing; compared below with the noise.
    curvature = np.abs(ndimage.convolve(ndimage.gaussian_filter(filled, 1.5), _HIGHPASS, mode="nearest"))
    sigma0 = mad_std(noise[valid]) / np.sqrt(_HIGHPASS_GAIN)
    # Noise only grows with the signal, so a threshold set by the sky noise is safe: a
    # curvature of 0.2 sigma adds at most 4% to the measured variance.
    valid &= curvature < curvature_limit * sigma0
    levels, noise = local[valid], noise[valid]
    return _binned_variance(levels, noise, n_bins=n_bins, min_count=min_count, gain=_HIGHPASS_GAIN)


def _binned_variance(levels: np.ndarray, noise: np.ndarray, *, n_bins: int, min_count: int,
                     gain: float) -> dict[str, np.ndarray]:
    """Robust variance of ``noise / sqrt(gain)`` in bins of ``levels``.

    Half the bins cover the sky-dominated bulk (quantiles), half are log-spaced over the
    bright tail, where the lever arm for the gain comes from.
    """
    knee, top = np.quantile(levels, [0.98, 1.0])
    candidates = np.unique(np.concatenate([
        np.quantile(levels, np.linspace(0, 0.98, n_bins // 2 + 1)),
        knee + np.geomspace(1.0, max(top - knee, 2.0), n_bins - n_bins // 2 + 1) - 1.0,
    ]))
    # The levels are noisy too. A bin narrower than a few noise sigmas mostly sorts pixels
    # by their noise (Eddington bias: its mean level is not the mean true level of its
    # pixels), which flattens the curve; so bins are at least 2 noise sigmas wide.
    min_width = 2.0 * mad_std(noise) / np.sqrt(gain)
    edges = [candidates[0]]
    for edge in candidates[1:-1]:
        if edge - edges[-1] >= min_width:
            edges.append(edge)
    edges.append(candidates[-1])
    out = {k: [] for k in ("mean", "variance", "error", "count")}
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        pick = (levels >= lo) & (levels < hi)
        n = int(pick.sum())
        if n < min_count:
            continue
        # A 4-sigma clipped std: robust against cosmic rays and star residuals, and for
        # Gaussian noise only 0.1% low and nearly as efficient as the plain std.
        _, _, std = sigma_clipped_stats(noise[pick], sigma=4.0, maxiters=5)
        var = std**2 / gain
        out["mean"].append(float(np.mean(levels[pick])))
        out["variance"].append(float(var))
        out["error"].append(float(var * np.sqrt(2.0 / n)))
        out["count"].append(n)
    return {k: np.asarray(v) for k, v in out.items()}


def fit_poisson_gaussian(curve: dict[str, np.ndarray], *, bias: float = 0.0) -> dict:
    """Fit ``variance = (mean - bias) / gain + read_noise_adu**2`` to a mean-variance curve.

    Parameters
    ----------
    curve : from :func:`mean_variance_curve` (data units, ADU)
    bias : the zero level of the data (ADU): 0 for bias-subtracted frames, the overscan
        level for raw frames

    Returns
    -------
    dict with ``gain`` (e-/ADU) and ``read_noise`` (e-) with 1-sigma errors from the
    weighted least-squares covariance, the raw ``slope``/``intercept``, the number of
    bins, ``level_span`` (max/min signal above bias: near 1, the fit is degenerate) and
    ``reliable`` (reduced chi-square below 5 and a level span above 1.5).
    ``read_noise`` is None when the intercept is negative (an unknown bias, or a
    read noise too small to measure against the sky).
    """
    x, y, err = curve["mean"] - bias, curve["variance"], curve["error"]
    if len(x) < 3:
        return {"gain": None, "read_noise": None, "n_bins": int(len(x)), "note": "fewer than 3 bins"}
    design = np.column_stack([x, np.ones_like(x)]) / err[:, None]
    coef, *_ = np.linalg.lstsq(design, y / err, rcond=None)
    cov = np.linalg.inv(design.T @ design)
    chi2 = float(np.sum(((design @ coef) - y / err) ** 2) / max(1, len(x) - 2))
    cov *= max(chi2, 1.0)  # inflate the errors when the model does not fit within them
    slope, intercept = coef
    gain = 1.0 / slope if slope > 0 else None
    span = float(x.max() / max(x.min(), 1e-6))
    result = {
        # A fit is trusted only when the line describes the bins (chi2) and the levels
        # span enough range to separate gain from read noise.
        "reliable": bool(slope > 0 and chi2 < 5.0 and span > 1.5),
        "slope": float(slope), "intercept": float(intercept), "reduced_chi2": chi2,
        "gain": gain, "gain_err": float(np.sqrt(cov[0, 0]) / slope**2) if gain else None,
        "read_noise": None, "read_noise_err": None, "n_bins": int(len(x)),
        "level_span": span, "bias": float(bias),
    }
    if gain and intercept > 0:
        rn_adu = np.sqrt(intercept)
        result["read_noise"] = float(rn_adu * gain)
        # Error propagation of rn = sqrt(b) / a.
        d_b, d_a = 0.5 / (rn_adu * slope), -rn_adu / slope**2
        var = d_a**2 * cov[0, 0] + d_b**2 * cov[1, 1] + 2 * d_a * d_b * cov[0, 1]
        result["read_noise_err"] = float(np.sqrt(max(var, 0.0)))
    return result


def pair_mean_variance_curve(first: np.ndarray, second: np.ndarray, *, exclude: np.ndarray | None = None,
                             n_bins: int = 24, min_count: int = 100) -> dict[str, np.ndarray]:
    """Mean-variance curve from two exposures of one field on one pixel grid.

    The photon-transfer method: the difference of the exposures cancels the sky and the
    sources exactly (same pointing, same seeing), so every pixel, star cores included,
    measures the noise at its own level: ``var((a - b) / sqrt(2))`` against ``(a + b) / 2``.
    Far more dynamic range than a single image gives, hence a well-constrained gain.

    Parameters
    ----------
    first, second : (ny, nx) float32, data units; NaN = no data
    exclude : (ny, nx) bool, True = pixel not used

    Returns
    -------
    The same dict as :func:`mean_variance_curve`.
    """
    valid = np.isfinite(first) & np.isfinite(second)
    if exclude is not None:
        valid &= ~exclude
    noise = ((first - second) / np.sqrt(2.0))[valid]
    levels = ((first + second) / 2.0)[valid]
    return _binned_variance(levels, noise, n_bins=n_bins, min_count=min_count, gain=1.0)


def noise_autocorrelation(residual: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Lag-1 autocorrelation of the noise along x and y, over blank sky.

    ``residual`` is the image minus its background; ``mask`` True = not blank. White
    noise gives ~0; resampled or drizzled images give 0.2-0.5, which breaks the
    pixel-independence that Noise2Void assumes.
    """
    good = ~mask & np.isfinite(residual)
    r = np.where(good, residual, 0.0)
    out = {}
    for axis, name in ((1, "x"), (0, "y")):
        a = r[:, :-1] if axis == 1 else r[:-1]
        b = r[:, 1:] if axis == 1 else r[1:]
        both = (good[:, :-1] & good[:, 1:]) if axis == 1 else (good[:-1] & good[1:])
        # Clip outliers (cosmic rays, faint wings) so that they do not dominate the sums.
        scale = mad_std(r[good])
        a, b = np.clip(a, -5 * scale, 5 * scale), np.clip(b, -5 * scale, 5 * scale)
        out[name] = float(np.sum((a * b)[both]) / np.sqrt(np.sum((a * a)[both]) * np.sum((b * b)[both])))
    return out


def pattern_noise(residual: np.ndarray, mask: np.ndarray, *, sigma: float) -> dict[str, float]:
    """Row and column pattern noise (banding) over blank sky.

    Returns ``row_rms``/``column_rms``: the RMS (data units) of the line medians in
    excess of what white noise of ``sigma`` gives, ``sqrt(max(0, var(medians) -
    (1.2533 sigma)^2 / n))`` for lines of n blank pixels; ``row_ratio``/``column_ratio``:
    measured over expected variance of the medians (1 for white noise); and the number
    of lines used.
    """
    good = ~mask & np.isfinite(residual)
    out = {}
    for axis, name in ((1, "row"), (0, "column")):
        values = np.where(good, residual, np.nan)
        counts = good.sum(axis=axis)
        keep = counts >= 20
        medians = np.nanmedian(values[keep] if axis == 1 else values[:, keep], axis=axis)
        if keep.sum() < 3:
            out[f"{name}_rms"], out[f"{name}_ratio"], out[f"{name}_lines"] = 0.0, 1.0, int(keep.sum())
            continue
        expected = float(np.mean((1.2533 * sigma) ** 2 / counts[keep]))
        measured = float(np.nanvar(medians))
        out[f"{name}_rms"] = float(np.sqrt(max(measured - expected, 0.0)))
        out[f"{name}_ratio"] = measured / expected
        out[f"{name}_lines"] = int(keep.sum())
    return out


def _banding(pattern: dict[str, float]) -> bool:
    """True when row or column medians vary more than white noise allows: a variance
    ratio above 1.5 and above 5 standard errors of a chi-square over that many lines."""
    return any(
        pattern[f"{n}_ratio"] > max(1.5, 1 + 5 * np.sqrt(2 / max(pattern[f"{n}_lines"], 1)))
        for n in ("row", "column")
    )


def survey_noise(fields: dict[str, list[np.ndarray]], *, bias: float = 0.0, max_pairs: int = 6) -> dict:
    """Poisson-Gaussian fit from exposure pairs of every field, pooled over the survey.

    Parameters
    ----------
    fields : {field: [(ny, nx) float32 exposures on one pixel grid, data units]}
    bias : zero level of the data (ADU), e.g. the median overscan level
    max_pairs : pairs used per field at most (consecutive pairs first)

    Returns
    -------
    dict with the fit of :func:`fit_poisson_gaussian` (``gain``, ``read_noise`` and
    errors), the pooled ``curve`` (lists) and ``n_pairs``; ``gain`` is None when no field
    has two exposures of one shape. The sky difference between the two exposures of a
    pair is removed first (a robust offset), since sky levels drift during a night.
    """
    levels, noise, n_pairs = [], [], 0
    for exposures in fields.values():
        pairs = [(a, b) for a, b in zip(exposures[:-1], exposures[1:], strict=True) if a.shape == b.shape]
        for first, second in pairs[:max_pairs]:
            offset = np.nanmedian(first - second)
            valid = np.isfinite(first) & np.isfinite(second)
            levels.append(((first + second + offset) / 2.0)[valid])
            noise.append(((first - second - offset) / np.sqrt(2.0))[valid])
            n_pairs += 1
    if not n_pairs:
        return {"gain": None, "read_noise": None, "n_pairs": 0,
                "note": "no field has two exposures on one pixel grid"}
    levels, noise = np.concatenate(levels), np.concatenate(noise)
    for _ in range(3):
        curve = _binned_variance(levels, noise, n_bins=32, min_count=50, gain=1.0)
        fit = fit_poisson_gaussian(curve, bias=bias)
        if not fit.get("gain"):
            break
        # A cosmic ray in one exposure of a pair makes both the mean and the difference
        # large: such pixels fill the bright bins with outliers. Drop every pixel beyond
        # 5 sigma of the current model, then bin and fit again.
        model = np.clip(fit["slope"] * (levels - bias) + fit["intercept"], 1e-12, None)
        keep = np.abs(noise) < 5.0 * np.sqrt(model)
        if keep.all():
            break
        levels, noise = levels[keep], noise[keep]
    return fit | {"n_pairs": n_pairs, "curve": {k: v.tolist() for k, v in curve.items()}}


def mean_variance_figure(curve: dict, fit: dict, *, header_gain=None, header_read_noise=None):
    """Matplotlib Figure of the pooled mean-variance curve, the fit and the header model."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    mean, var, err = (np.asarray(curve[k]) for k in ("mean", "variance", "error"))
    ax.errorbar(mean, var, yerr=err, fmt="o", ms=3, label="exposure pairs (binned)")
    grid = np.linspace(min(mean.min(), fit.get("bias", 0.0)), mean.max(), 100)
    if fit.get("gain"):
        ax.plot(grid, fit["slope"] * (grid - fit["bias"]) + fit["intercept"],
                label=f"fit: gain {fit['gain']:.3f} e-/ADU")
    if header_gain and header_read_noise is not None:
        model = (grid - fit.get("bias", 0.0)) / header_gain + (header_read_noise / header_gain) ** 2
        ax.plot(grid, model, ls="--", label=f"header: GAIN {header_gain}, RDNOISE {header_read_noise}")
    ax.set_xlabel("mean level (ADU)")
    ax.set_ylabel("noise variance (ADU$^2$)")
    ax.set_xscale("symlog")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


#: Header keywords naming the detector (chip) an exposure was read from.
DETECTOR_KEYS = ("DETECTOR", "CCDNAME", "CCDNUM", "CHIPID")


def gain_group(store: str, noise: dict) -> str:
    """The photon-transfer group of an exposure: its detector (:data:`DETECTOR_KEYS`) and
    header gain, e.g. ``"CCD3, GAIN 1.52"``; exposures of one group share one
    mean-variance curve."""
    header = io.header_from_attrs(io.open_zarr_image(store).attrs)
    detector = next((str(header[k]) for k in DETECTOR_KEYS if k in header), None)
    gain = noise.get("header_gain")
    label = f"GAIN {gain:.3g}" if gain else "no header GAIN"
    return f"{detector}, {label}" if detector else label


def noise_survey(images: list[str], noise_files: list[str], fields: list[str], *, out_json: str,
                 out_png: str, registrations: list[str] = ()) -> dict:
    """Survey-level noise: the exposure table, the pair fit per detector/gain group
    (:func:`gain_group`; ``groups``, the largest as ``fit``), the mean-variance plot.

    ``images``, ``noise_files`` and ``fields`` are parallel lists (zarr store, noise JSON
    and field of each exposure); ``registrations`` (register step) align each field's
    exposures before they are paired. Writes ``out_json`` and ``out_png`` atomically.
    """
    per_exposure = [io.read_json(p) for p in noise_files]
    group_of = {Path(path).stem: gain_group(path, e) for path, e in zip(images, per_exposure, strict=True)}
    grouped: dict[str, dict[str, list[np.ndarray]]] = {}
    for loaded in load_aligned(images, fields, registrations):
        data = loaded["data"] if loaded["bad"] is None else np.where(loaded["bad"], np.nan, loaded["data"])
        grouped.setdefault(group_of[loaded["name"]], {}).setdefault(loaded["field"], []).append(data)
    biases = [e["overscan"]["bias"] for e in per_exposure if e.get("overscan")]
    bias = float(np.median(biases)) if biases else 0.0
    groups = {g: survey_noise(f, bias=bias) for g, f in grouped.items()}
    # Exposures of other gains are not one photon-transfer curve: one fit per group; the
    # headline fit is the group with the most pairs.
    main = max(groups, key=lambda g: groups[g]["n_pairs"])
    fit = groups[main] | {"group": main}
    gains = [e["header_gain"] for e in per_exposure if e.get("header_gain")]
    noises = [e["header_read_noise"] for e in per_exposure if e.get("header_read_noise") is not None]
    header_gain = float(np.median(gains)) if gains else None
    header_rn = float(np.median(noises)) if noises else None
    result = {
        "fit": fit, "header_gain": header_gain, "header_read_noise": header_rn,
        "groups": [{"group": g, "exposures": sorted(n for n, k in group_of.items() if k == g)}
                   | {k: v for k, v in f.items() if k != "curve"} for g, f in sorted(groups.items())],
        "exposures": per_exposure, "correlated": [e["exposure"] for e in per_exposure if e.get("correlated")],
        "banding": [e["exposure"] for e in per_exposure if e.get("banding")],
        "code_version": code_version(),
    }
    io.write_json(out_json, result)
    if fit.get("curve"):
        figure = mean_variance_figure(fit["curve"], fit, header_gain=header_gain, header_read_noise=header_rn)
    else:
        from matplotlib.figure import Figure

        figure = Figure(figsize=(6, 1.5))
        figure.text(0.5, 0.5, "No exposure pairs: no photon-transfer curve", ha="center")
    with io.atomic_path(out_png) as tmp:
        figure.savefig(tmp, format="png", dpi=80)
    return result
