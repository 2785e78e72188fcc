"""Injection-recovery: the astronomers' test of a denoiser where no truth exists.

Artificial sources of known flux - point sources shaped by the PSF measured from the
exposure's own stars, and as many Sersic galaxies (index 0.5-4, a range of sizes and
ellipticities, convolved with that PSF; :func:`astrodenoise.sources.source_stamps`) - are
added to blank sky of the noisy input; the injected exposure goes through each denoiser
exactly as the original did, and the sources are measured and looked for again.

- :func:`plan_injection` draws positions in blank sky (away from every source of the
  input's mask and from each other, so that no two stamps overlap), which stamp each
  source has, and magnitudes uniform from 4 mag brighter to 1.5 mag fainter than the
  exposure's 5-sigma point-source limit, read from its own noise: the sources span
  bright (S/N > 50), faint (5 < S/N < 20) and undetectable.
- :func:`inject` adds them, with their photon noise when the gain is known.
- :func:`recover` measures, for every denoiser, each injected source's flux on
  ``denoised(injected) - denoised(original)`` (the same denoiser on the exposure with and
  without the sources, so that sky, neighbours and the denoiser's own artefacts cancel)
  against its true flux, in every aperture an astronomer uses
  (:data:`astrodenoise.photometry.APERTURES`: 1, 2 and 3 x FWHM with a local sky, and
  Kron apertures defined on the noise-free injected sources), and whether a detection of
  the injected image lies within the match radius where the original had none
  (completeness).

Per source the result keeps magnitude, true S/N, point or extended, the recovered flux
ratio per aperture and the found flag; :func:`summarise_recovery` pools sources over
exposures into flux bias of bright and faint injected sources per aperture (median,
bootstrap standard error, robust scatter), completeness per magnitude bin, and the 50%
and 90% completeness magnitudes.
"""

from __future__ import annotations

import zlib

import numpy as np
from astropy.stats import mad_std
from scipy import ndimage

from .detection import completeness_magnitude, detect, near
from .noise_model import NoiseModel
from .photometry import (
    APERTURES,
    FAINT_SNR,
    aperture_fluxes,
    aperture_fraction,
    aperture_snr,
    aperture_suite,
    magnitude_bins,
    median_se,
    snr_classes,
)
from .psf import PSF
from .sources import source_stamps, with_photon_noise

__all__ = ["GALAXY_SHAPES", "exposure_seed", "injection_stamps", "plan_injection", "inject", "recover",
           "injection_recovery", "summarise_recovery"]

#: Galaxy shapes drawn per exposure; each injected galaxy takes one of them at random.
GALAXY_SHAPES = 16


def exposure_seed(name: str, seed: int) -> int:
    """A per-exposure seed: the same draws for the same exposure and ``seed`` on every run."""
    return zlib.crc32(f"{seed}:{name}".encode())


def injection_stamps(psf: PSF, rng: np.random.Generator) -> np.ndarray:
    """The point source (``psf``) and :data:`GALAXY_SHAPES` galaxies convolved with it, on
    square stamps of 4 FWHM half-side (or the PSF's own, if larger): their light ends at
    the inner edge of the local-sky annulus along the axes, its corners reach into it."""
    largest = max(psf.stamp.shape[0] // 2, int(np.ceil(4 * psf.fwhm)))
    return source_stamps(psf.stamp, rng, fwhm=psf.fwhm, galaxies=GALAXY_SHAPES, largest=largest)


def plan_injection(shape: tuple[int, int], blocked: np.ndarray, stamps: np.ndarray, *, sigma: float,
                   zeropoint: float, radius: float, count: int, rng: np.random.Generator,
                   nodata: np.ndarray | None = None, bright: float = 4.0, faint: float = 1.5,
                   extended: float = 0.5, faint_share: float = 0.5) -> dict:
    """Positions, stamps and magnitudes of the sources to inject.

    ``blocked`` (ny, nx) bool: True on sources, their wings and no-data pixels (the
    input's source mask). Positions are whole pixels in blank sky at least one stamp
    half-width from anything blocked and from the edge, and a stamp apart from each
    other. When blank sky holds fewer than ``count`` (a crowded field) and ``nodata``
    (True: flagged or no data) is given, the rest go anywhere a stamp away from
    ``nodata``, on top of sources (``on_source`` True): their flux is still measured on
    the difference image, but a detection the image already had there does not count
    as found. ``stamps`` (k, s, s): the point source first, then galaxies
    (:func:`injection_stamps`); a share ``extended`` of the sources are galaxies, each
    of a random one of them. ``radius`` is the aperture of the S/N. The 5-sigma limit
    ``m5`` is the magnitude whose point-source aperture flux has S/N 5 against the sky
    noise ``sigma`` (data units); magnitudes are uniform in ``[m5 - bright, m5 + faint]``,
    except for a share ``faint_share`` whose (sky-limited) S/N for their own stamp is
    log-uniform over the faint class (:data:`~astrodenoise.photometry.FAINT_SNR`).
    Returns ``{"positions" (n, 2) as (x, y), "stamp" (n,) index into ``stamps``, "mag"
    (n,), "flux" (n,) total flux in data units, "on_source" (n,) bool, "m5"}``.
    """
    half = stamps.shape[1] // 2
    chosen: list[tuple[int, int]] = []
    _choose(chosen, blocked, half, count, rng)
    n_blank = len(chosen)
    if n_blank < count and nodata is not None:
        _choose(chosen, nodata, half, count, rng)
    positions = np.array(chosen, float).reshape(-1, 2)
    n = len(positions)
    galaxy = (rng.random(n) < extended) & (len(stamps) > 1)
    stamp = np.where(galaxy, rng.integers(1, max(len(stamps), 2), size=n), 0)
    # Magnitude of S/N 1 in the aperture, per stamp (sky-limited).
    noise = sigma * np.sqrt(np.pi * radius**2)
    unit = np.array([zeropoint - 2.5 * np.log10(noise / aperture_fraction(k, radius)) for k in stamps])
    m5 = float(unit[0] - 2.5 * np.log10(5))
    mag = rng.uniform(m5 - bright, m5 + faint, size=n)
    # Half of them at a faint S/N (log-uniform in FAINT_SNR for their own shape): the
    # faint class, where denoisers fail, gets enough sources for a tight median.
    focus = rng.random(n) < faint_share
    mag[focus] = unit[stamp[focus]] - 2.5 / np.log(10) * rng.uniform(*np.log(FAINT_SNR), size=focus.sum())
    return {"positions": positions, "stamp": stamp, "mag": mag, "flux": 10 ** (-0.4 * (mag - zeropoint)),
            "on_source": np.arange(len(positions)) >= n_blank, "m5": float(m5)}


def _choose(chosen: list[tuple[int, int]], blocked: np.ndarray, half: int, count: int,
            rng: np.random.Generator) -> None:
    """Add to ``chosen`` random pixels a stamp half-width from ``blocked`` and the edge and
    a stamp from every chosen one, until there are ``count``."""
    free = np.ones(blocked.shape, bool)
    if blocked.any():
        free = ~ndimage.maximum_filter(blocked, size=2 * half + 1)  # the stamp's square, not a diamond
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


def inject(data: np.ndarray, stamps: np.ndarray, plan: dict, *, gain: float | None,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``data`` with the planned sources added; returns (injected, noise-free model).

    Each source is its stamp times its flux, centred on its pixel. With a ``gain``
    (e-/ADU) its photon noise is added too (Gaussian of variance model / gain, in ADU),
    so an injected source is as noisy as a real one; without, it is noise-free.
    NaN pixels stay NaN.
    """
    model = np.zeros(data.shape, np.float64)
    half = stamps.shape[1] // 2
    for (x, y), flux, k in zip(plan["positions"].astype(int), plan["flux"], plan["stamp"], strict=True):
        model[y - half:y + half + 1, x - half:x + half + 1] += flux * stamps[k]
    return (data + with_photon_noise(model, gain=gain, rng=rng)).astype(np.float32), model.astype(np.float32)


def recover(differences: dict[str, np.ndarray], model: np.ndarray, plan: dict, *, fwhm: float,
            threshold: float, mask: np.ndarray | None = None) -> dict[str, dict[str, list[float]]]:
    """Recovered flux ratio - 1 of each injected source, per denoiser and aperture.

    ``differences``: per denoiser, its output on the exposure with the sources minus its
    output without them; ``model``: the noise-free injected sources. Every aperture of
    :data:`~astrodenoise.photometry.APERTURES` (local sky from each image without the
    sources of ``mask``, as on the image itself; Kron apertures defined on ``model`` above
    ``threshold`` per pixel) on the difference over the same
    on ``model``. Returns ``{denoiser: {aperture: [ratio - 1, ...]}}`` (None where a Kron
    aperture could not be defined).
    """
    images = {"true": model.astype(np.float64)} | {k: np.nan_to_num(d) for k, d in differences.items()}
    fluxes = aperture_suite(images, plan["positions"], fwhm=fwhm, kron_reference=images["true"],
                            threshold=threshold, mask=mask)
    true = fluxes.pop("true")
    return {kind: {key: [round(float(v), 6) if np.isfinite(v) else None for v in got[key] / true[key] - 1]
                   for key in APERTURES}
            for kind, got in fluxes.items()}


def _central_box(shape: tuple[int, int], region: int) -> tuple[slice, slice]:
    """The central ``region`` x ``region`` square of an image (all of a smaller one)."""
    (ny, nx), (hy, hx) = shape, (min(shape[0], region), min(shape[1], region))
    y0, x0 = (ny - hy) // 2, (nx - hx) // 2
    return np.s_[y0:y0 + hy, x0:x0 + hx]


def injection_recovery(data: np.ndarray, runners: dict, *, name: str, background: np.ndarray,
                       mask: np.ndarray, bad: np.ndarray, noise: NoiseModel, psf: PSF, zeropoint: float,
                       radius: float, fwhm: float, count: int, region: int, seed: int,
                       detect_threshold: float, match_radius: float, known: dict | None = None) -> dict:
    """Inject point sources and galaxies of known flux into the input's blank sky, denoise
    the injected image with every method, and measure each source's recovered flux in
    every aperture and its detection.

    Works on the central ``region`` square. ``runners`` maps each image kind to a
    function of an image (the denoiser, ``lambda image: image`` for the input); each
    runs on the region with and without the sources, and the difference is measured
    (:func:`recover`); ``known`` may give the "without" of deterministic kinds when the
    region is the whole image. ``mask`` is the input's source mask, ``bad`` its flagged
    pixels; ``radius`` the aperture of the true S/N, ``fwhm`` the PSF FWHM of the
    apertures, ``match_radius`` (in FWHM) the detection match radius. Returns the
    per-source table (positions, magnitudes, true S/N, extended) and, per kind, flux
    ratios per aperture and found flags.
    """
    box = _central_box(data.shape, region)
    y0, x0, hy, hx = box[0].start, box[1].start, box[0].stop - box[0].start, box[1].stop - box[1].start
    rng = np.random.default_rng(exposure_seed(name, seed))
    stamps = injection_stamps(psf, rng)
    plan = plan_injection((hy, hx), mask[box], stamps, sigma=noise.sigma, zeropoint=zeropoint, radius=radius,
                          count=count, rng=rng, nodata=bad[box])
    block = {"region": [int(y0), int(x0), int(hy), int(hx)], "psf": psf.describe(), "m5": plan["m5"],
             "zeropoint": zeropoint, "radius": radius, "fwhm": fwhm, "gain": noise.gain,
             "seed": exposure_seed(name, seed), "n": int(len(plan["positions"])), "methods": {}}
    if not block["n"]:
        return block | {"note": "no blank sky to inject into"}
    injected, model = inject(data[box], stamps, plan, gain=noise.gain, rng=rng)
    true_flux = aperture_fluxes(model, plan["positions"], radius=radius)
    snr = aperture_snr(true_flux, radius=radius, sigma=noise.sigma, gain=noise.gain)
    block |= {"x": (plan["positions"][:, 0] + x0).tolist(), "y": (plan["positions"][:, 1] + y0).tolist(),
              "mag": [round(float(m), 4) for m in plan["mag"]], "snr": [round(float(v), 3) for v in snr],
              "extended": (plan["stamp"] > 0).tolist(), "on_source": int(plan["on_source"].sum())}
    whole = (hy, hx) == data.shape
    differences = {}
    for kind, run in runners.items():
        original = known[kind] if whole and known and kind in known else run(data[box])
        out = run(injected)
        differences[kind] = out - original
        found = [detect(img, background=background[box], mask=mask[box], threshold=detect_threshold,
                        fwhm=fwhm)[0] for img in (original, out)]
        hit = near(found[1], plan["positions"], match_radius * fwhm) \
            & ~near(found[0], plan["positions"], match_radius * fwhm)
        block["methods"][kind] = {"found": hit.tolist()}
    for kind, ratios in recover(differences, model, plan, fwhm=fwhm, threshold=noise.sigma,
                                mask=mask[box]).items():
        block["methods"][kind]["flux_ratio"] = ratios
    return block


def summarise_recovery(per_exposure: list[dict], method: str, *, bin_width: float = 0.5) -> dict | None:
    """Pool the injected sources of ``method`` over exposures.

    ``per_exposure``: the ``injection`` blocks of the evaluate JSONs. Returns, per
    aperture (``apertures``), the flux bias (median of recovered/true - 1, bootstrap
    standard error ``*_se``, robust scatter ``*_scatter``) of bright (true S/N > 50) and
    faint (5 < S/N < 20) injected sources, and the same median for point and extended
    ones apart; ``bright_bias``/``faint_bias`` (and ``_se``) at the aperture where the
    bias is largest in size (named in ``bright_aperture``/``faint_aperture``): the
    headline does not pick the flattering aperture. Also completeness and median flux
    bias per aperture per magnitude bin (magnitudes relative to each exposure's 5-sigma
    limit ``m5``, so exposures of different depth pool), and the 50% and 90% completeness
    magnitudes relative to ``m5``. None when no exposure has ``method``.
    """
    pooled = _pool(per_exposure, method)
    if pooled is None:
        return None
    mags, snr, ratio, found, extended = pooled
    rng = np.random.default_rng(0)
    out = {"n": int(len(mags)), "n_extended": int(extended.sum()), "apertures": {}}
    for key, values in ratio.items():
        row = out["apertures"][key] = {}
        for cls, pick in snr_classes(snr).items():
            pick = pick & np.isfinite(values)
            row[f"{cls}_bias"], row[f"{cls}_se"] = median_se(values[pick], rng)
            row[f"{cls}_scatter"] = float(mad_std(values[pick])) if pick.sum() > 2 else None
            row[f"{cls}_n"] = int(pick.sum())
            for name, part in (("point", ~extended), ("extended", extended)):
                row[f"{cls}_{name}_bias"] = _median(values[pick & part])
    for cls in ("bright", "faint"):
        measured = [k for k, row in out["apertures"].items() if row[f"{cls}_bias"] is not None]
        worst = max(measured, key=lambda k: abs(out["apertures"][k][f"{cls}_bias"]), default=None)
        cell = out["apertures"].get(worst, {})
        out[f"{cls}_aperture"] = worst
        for stat in ("bias", "se", "n"):
            out[f"{cls}_{stat}"] = cell.get(f"{cls}_{stat}", 0 if stat == "n" else None)
    out["m50"] = completeness_magnitude(mags, found, 0.5, bin_width=bin_width)
    out["m90"] = completeness_magnitude(mags, found, 0.9, bin_width=bin_width)
    bins = []
    for lo in magnitude_bins(mags, bin_width):
        pick = (mags >= lo) & (mags < lo + bin_width)
        if pick.sum():
            bins.append({"mag": round(float(lo + bin_width / 2), 3), "n": int(pick.sum()),
                         "completeness": float(found[pick].mean()),
                         "bias": {key: _median(values[pick]) for key, values in ratio.items()}})
    out["bins"] = bins
    return out


def _median(values: np.ndarray) -> float | None:
    values = values[np.isfinite(values)]
    return float(np.median(values)) if len(values) else None


def _pool(per_exposure: list[dict], method: str):
    """(magnitude - m5, true S/N, {aperture: flux ratio - 1}, found, extended) of every
    source injected for ``method``, concatenated over exposures; None without any."""
    blocks = [b for b in per_exposure if b and method in b.get("methods", {})]
    if not blocks:
        return None
    mags = np.concatenate([np.asarray(b["mag"]) - b["m5"] for b in blocks])
    snr = np.concatenate([np.asarray(b["snr"], float) for b in blocks])
    found = np.concatenate([np.asarray(b["methods"][method]["found"], bool) for b in blocks])
    extended = np.concatenate([np.asarray(b.get("extended", [False] * len(b["mag"])), bool) for b in blocks])
    ratio = {key: np.concatenate([np.asarray(b["methods"][method]["flux_ratio"][key], float) for b in blocks])
             for key in APERTURES}
    return mags, snr, ratio, found, extended
