"""Injection-recovery: the astronomers' test of a denoiser where no truth exists.

Artificial point sources of known flux, shaped by the PSF measured from the exposure's
own stars, are added to blank sky of the noisy input; the injected exposure goes
through each denoiser exactly as the original did, and the sources are looked for again.

The PSF is the exposure's own (:func:`astrodenoise.psf.measure_psf`).

- :func:`plan_injection` draws positions in blank sky (away from every source of the
  input's mask and from each other, so that no two stamps overlap) and magnitudes
  uniform from 4 mag brighter to 1.5 mag fainter than the exposure's 5-sigma point-source
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

import zlib

import numpy as np
from scipy import ndimage

from .detection import completeness_magnitude, detect, near
from .noise_model import NoiseModel
from .photometry import (
    aperture_fluxes,
    aperture_fraction,
    aperture_snr,
    magnitude_bins,
    median_se,
    snr_classes,
)
from .psf import PSF
from .sources import with_photon_noise

__all__ = ["exposure_seed", "plan_injection", "inject", "recover", "injection_recovery",
           "summarise_recovery"]


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
    ap_fraction = aperture_fraction(psf.stamp, radius)
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
    return (data + with_photon_noise(model, gain=gain, rng=rng)).astype(np.float32), model.astype(np.float32)


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
    positions = plan["positions"]
    true_flux = aperture_fluxes(model, positions, radius=radius)
    got = aperture_fluxes(np.nan_to_num(injected - original), positions, radius=radius)
    found = near(found_injected, positions, match_radius) & ~near(found_original, positions, match_radius)
    return {"flux_ratio": [round(float(v), 6) for v in got / true_flux - 1], "found": found.tolist()}


def _central_box(shape: tuple[int, int], region: int) -> tuple[slice, slice]:
    """The central ``region`` x ``region`` square of an image (all of a smaller one)."""
    (ny, nx), (hy, hx) = shape, (min(shape[0], region), min(shape[1], region))
    y0, x0 = (ny - hy) // 2, (nx - hx) // 2
    return np.s_[y0:y0 + hy, x0:x0 + hx]


def injection_recovery(data: np.ndarray, runners: dict, *, name: str, background: np.ndarray,
                       mask: np.ndarray, bad: np.ndarray, noise: NoiseModel, psf: PSF, zeropoint: float,
                       radius: float, fwhm: float, count: int, region: int, seed: int,
                       detect_threshold: float, match_radius: float, known: dict | None = None) -> dict:
    """Inject point sources of known flux into the input's blank sky, denoise the injected
    image with every method, and measure each source's recovered flux and detection.

    Works on the central ``region`` square. ``runners`` maps each image kind to a
    function of an image (the denoiser, ``lambda image: image`` for the input); each
    runs on the region with and without the sources, and the difference is measured
    (:func:`recover`); ``known`` may give the "without" of deterministic kinds when the
    region is the whole image. ``mask`` is the input's source mask, ``bad`` its flagged
    pixels; ``radius`` the photometry aperture and ``match_radius`` (in FWHM) the
    detection match radius. Returns the per-source table (positions, magnitudes, true
    S/N) and, per kind, flux ratios and found flags.
    """
    box = _central_box(data.shape, region)
    y0, x0, hy, hx = box[0].start, box[1].start, box[0].stop - box[0].start, box[1].stop - box[1].start
    rng = np.random.default_rng(exposure_seed(name, seed))
    plan = plan_injection((hy, hx), mask[box], psf, sigma=noise.sigma, zeropoint=zeropoint, radius=radius,
                          count=count, rng=rng, nodata=bad[box])
    block = {"region": [int(y0), int(x0), int(hy), int(hx)], "psf": psf.describe(), "m5": plan["m5"],
             "zeropoint": zeropoint, "radius": radius, "gain": noise.gain, "seed": exposure_seed(name, seed),
             "n": int(len(plan["positions"])), "methods": {}}
    if not block["n"]:
        return block | {"note": "no blank sky to inject into"}
    injected, model = inject(data[box], psf, plan, gain=noise.gain, rng=rng)
    true_flux = aperture_fluxes(model, plan["positions"], radius=radius)
    snr = aperture_snr(true_flux, radius=radius, sigma=noise.sigma, gain=noise.gain)
    block |= {"x": (plan["positions"][:, 0] + x0).tolist(), "y": (plan["positions"][:, 1] + y0).tolist(),
              "mag": [round(float(m), 4) for m in plan["mag"]], "snr": [round(float(v), 3) for v in snr],
              "on_source": int(plan["on_source"].sum())}
    whole = (hy, hx) == data.shape
    for kind, run in runners.items():
        original = known[kind] if whole and known and kind in known else run(data[box])
        out = run(injected)
        found = [detect(img, background=background[box], mask=mask[box], threshold=detect_threshold,
                        fwhm=fwhm)[0] for img in (original, out)]
        block["methods"][kind] = recover(original, out, model, plan, radius=radius, found_original=found[0],
                                         found_injected=found[1], match_radius=match_radius * fwhm)
    return block


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
    for cls, pick in snr_classes(snr).items():
        bias, se = median_se(ratio[pick], rng)
        out[f"{cls}_bias"], out[f"{cls}_se"], out[f"{cls}_n"] = bias, se, int(pick.sum())
    out["m50"] = completeness_magnitude(mags, found, 0.5, bin_width=bin_width)
    out["m90"] = completeness_magnitude(mags, found, 0.9, bin_width=bin_width)
    bins = []
    for lo in magnitude_bins(mags, bin_width):
        pick = (mags >= lo) & (mags < lo + bin_width)
        if pick.sum():
            bins.append({"mag": round(float(lo + bin_width / 2), 3), "n": int(pick.sum()),
                         "completeness": float(found[pick].mean()),
                         "bias": float(np.median(ratio[pick]))})
    out["bins"] = bins
    return out
