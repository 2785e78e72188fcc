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
from astropy.stats import mad_std
from scipy import ndimage

from . import io
from .alignment import load_aligned
from .noise_model import tail_variance
from .photon_transfer import fit_poisson_gaussian, mean_variance_curve, mean_variance_figure, survey_noise
from .provenance import code_version
from .sky import estimate_background, source_mask

__all__ = ["NoiseConfig", "estimate_noise", "effective_gain", "zero_level", "noise", "overscan_level",
           "noise_survey", "noise_autocorrelation", "pattern_noise"]


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
    Background2D RMS map), ``sigma`` (robust std of source-free, sky-subtracted pixels:
    the Gaussian noise level), ``tail_variance`` (:func:`~.noise_model.tail_variance`),
    ``blank_fraction`` (share of pixels used),
    ``nan_fraction``, ``header_gain``/``header_read_noise`` (None if absent), ``gain``
    (e- per data unit, what the noise model uses: :func:`effective_gain`) and
    ``gain_source`` (where it came from, or why there is none),
    ``sigma_from_header`` (sqrt((sky - bias)*gain + rn^2)/gain, None without both
    keywords), ``bias`` and ``bias_source`` (the zero level: :func:`zero_level`),
    ``overscan`` (bias and read noise from BIASSEC, None without one),
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
    bias, bias_source = zero_level(header, overscan)
    correlation = noise_autocorrelation(residual, mask)
    pattern = pattern_noise(residual, mask, sigma=sigma)
    fit = fit_poisson_gaussian(mean_variance_curve(data), bias=bias)
    used_gain, gain_source = effective_gain(header, sky_level=sky_level, bias=bias, sigma=sigma, fit=fit)
    return {
        "sky_level": sky_level,
        "sky_rms": float(np.nanmedian(rms)),
        "sigma": sigma,
        "tail_variance": tail_variance(residual[~mask], sigma),
        "blank_fraction": float((~mask).mean()),
        "nan_fraction": float((~np.isfinite(data)).mean()),
        "bias": bias,
        "bias_source": bias_source,
        **_header_checks(header, sky_level=sky_level, bias=bias, overscan=overscan),
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


def zero_level(header: fits.Header | None, overscan: dict | None) -> tuple[float, str]:
    """The data's zero level (data units) and where it came from: the overscan's bias; else
    minus the header's ``PEDESTAL`` (SBFITSEXT, written by MaxIm DL and other amateur
    software: the offset added to calibrated frames to keep them positive; M13's frames
    carry -500, their sky lies only ~10 ADU above it); else 0 ("none": bias-subtracted
    data, or an unknown bias)."""
    if overscan:
        return float(overscan["bias"]), "overscan"
    pedestal = _header_float(header, "PEDESTAL")
    if pedestal is not None:
        return -pedestal, "header PEDESTAL"
    return 0.0, "none"


def _header_checks(header, *, sky_level: float, bias: float, overscan: dict | None) -> dict:
    """Header GAIN and RDNOISE, the sigma they predict at the sky (above the zero level
    ``bias``), and the overscan read noise in electrons: cross-checks of the measurement
    (None where a keyword is missing)."""
    gain, read_noise = _header_float(header, "GAIN"), _header_float(header, "RDNOISE")
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
    biases = [e["bias"] for e in per_exposure if e.get("bias_source") not in (None, "none")]
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
