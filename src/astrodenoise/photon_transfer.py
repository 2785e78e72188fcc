"""The photon-transfer curve: noise variance against signal level, and its
Poisson-Gaussian fit (gain and read noise).

- :func:`mean_variance_curve`: one image, its noise isolated by a high-pass filter (Foi et
  al. 2008);
- :func:`pair_mean_variance_curve` and :func:`survey_noise`: pairs of exposures of one
  field, whose difference cancels sky and sources (the photon-transfer method);
- :func:`fit_poisson_gaussian`: ``variance = (mean - bias) / gain + read_noise**2``;
- :func:`mean_variance_figure`: the curve, the fit and the header's model, for the report.

Used by the noise step (:mod:`astrodenoise.noise`) per exposure and per survey.
"""

from __future__ import annotations

import numpy as np
from astropy.stats import mad_std, sigma_clipped_stats
from scipy import ndimage

__all__ = ["mean_variance_curve", "pair_mean_variance_curve", "fit_poisson_gaussian", "survey_noise",
           "mean_variance_figure"]

# Variance of x - mean(4 neighbours) for white noise, in units of the pixel variance.
_HIGHPASS_GAIN = 1.25
_HIGHPASS = np.array([[0, -0.25, 0], [-0.25, 1.0, -0.25], [0, -0.25, 0]])


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
    from matplotlib.figure import Figure  # only the survey's figure needs matplotlib

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
