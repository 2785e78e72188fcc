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
  without the sources, so that sky, neighbours and the denoiser's own artefacts cancel),
  plus what the denoiser adds to an empty aperture of the same blank sky
  (:func:`sky_offsets`: the difference cancels it, the photometry of a real source does
  not), against its true flux, in every aperture an astronomer uses
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
from astropy.stats import mad_std, sigma_clip
from scipy import ndimage

from .detection import completeness_magnitude, detect, near
from .noise_model import NoiseModel
from .photometry import (
    APERTURE_FACTORS,
    APERTURES,
    FAINT_SNR,
    SKY_ANNULUS,
    aperture_fluxes,
    aperture_fraction,
    aperture_radius,
    aperture_snr,
    aperture_suite,
    circular_fluxes,
    kron_areas,
    magnitude_bins,
    median_se,
    sky_mean,
    sky_pixels,
    snr_classes,
)
from .psf import PSF
from .sources import source_stamps, with_photon_noise

__all__ = ["GALAXY_SHAPES", "exposure_seed", "injection_stamps", "plan_injection", "inject",
           "injection_sites", "sky_offsets", "recover",
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


def _free(blocked: np.ndarray, half: int) -> np.ndarray:
    """Pixels a stamp half-width from ``blocked`` and from the edge: where a source may go."""
    free = np.ones(blocked.shape, bool)
    if blocked.any():
        free = ~ndimage.maximum_filter(blocked, size=2 * half + 1)  # the stamp's square, not a diamond
    free[:half + 1, :] = free[-half - 1:, :] = False
    free[:, :half + 1] = free[:, -half - 1:] = False
    return free


def injection_sites(blocked: np.ndarray, half: int) -> np.ndarray:
    """Where :func:`plan_injection` puts sources of stamp half-width ``half`` in blank sky:
    a stamp half-width from every pixel of ``blocked`` and from the edge. Bool."""
    return _free(blocked, half)


def _choose(chosen: list[tuple[int, int]], blocked: np.ndarray, half: int, count: int,
            rng: np.random.Generator) -> None:
    """Add to ``chosen`` random pixels a stamp half-width from ``blocked`` and the edge and
    a stamp from every chosen one, until there are ``count``."""
    ys, xs = np.nonzero(_free(blocked, half))
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


def sky_offsets(changes: dict[str, np.ndarray], where: np.ndarray, *, fwhm: float, select: np.ndarray,
                mask: np.ndarray | None = None, most: int = 3000) -> dict[str, dict[str, float]]:
    """Per denoiser, the flux it adds to an empty circular aperture (data units; negative:
    it takes light away), per aperture of :data:`~astrodenoise.photometry.APERTURE_FACTORS`,
    where injected sources go.

    ``changes``: per denoiser, its output minus its input on the exposure without the
    sources; ``where`` (bool): the blank-sky pixels a source may be injected at
    (:func:`injection_sites`; never on a source, whose own loss is no offset), of which at
    most ``most``, evenly spread, are measured. Each aperture is less its local sky
    (pixels chosen on ``select``, the input; the sources of ``mask`` left out), and the
    mean is 4-sigma-clipped (robust sigma) over the positions: the input's cosmic rays,
    which a denoiser removes and a truth does not have, are clipped. A denoiser that
    brightens the faint wings of neighbours in the sky annulus, or erases sub-threshold
    light, changes the photometry of every source by this much; a difference image
    cancels it, so :func:`recover` adds it back. Zero where fewer than 10 positions exist.
    """
    ys, xs = np.nonzero(where)
    keys = [f"{factor:g}fwhm" for factor in APERTURE_FACTORS]
    if len(xs) < 10:
        return {kind: dict.fromkeys(keys, 0.0) for kind in changes}
    pick = np.linspace(0, len(xs) - 1, min(most, len(xs))).round().astype(int)
    positions = np.column_stack([xs[pick], ys[pick]]).astype(float)
    inner, outer = SKY_ANNULUS
    pixels = sky_pixels(select, positions, inner=inner * fwhm, outer=outer * fwhm, mask=mask)
    out = {}
    for kind, change in changes.items():
        change = np.nan_to_num(change)
        fluxes = circular_fluxes(change, positions, fwhm=fwhm, sky=sky_mean(change, pixels))
        out[kind] = {key: round(_clipped_mean(fluxes[key]), 6) for key in keys}
    return out


def _clipped_mean(values: np.ndarray) -> float:
    """Mean of ``values`` 4-sigma-clipped about their median, sigma the robust (MAD) one."""
    return float(sigma_clip(values, sigma=4.0, maxiters=5, stdfunc="mad_std").mean())


def recover(differences: dict[str, np.ndarray], model: np.ndarray, plan: dict, *, fwhm: float,
            threshold: float, select: np.ndarray, mask: np.ndarray | None = None,
            offsets: dict[str, dict[str, float]] | None = None) -> dict[str, dict[str, list[float]]]:
    """Recovered flux ratio - 1 of each injected source, per denoiser and aperture.

    ``differences``: per denoiser, its output on the exposure with the sources minus its
    output without them; ``model``: the noise-free injected sources. Every aperture of
    :data:`~astrodenoise.photometry.APERTURES` (local sky from the pixels of each annulus
    off the sources of ``mask`` that a clip of ``select``, the injected exposure, keeps:
    as the image itself is measured, so that the difference's flux is the difference of
    the fluxes; Kron apertures defined on ``model`` above ``threshold`` per pixel) on the
    difference, plus the denoiser's empty-sky offset of that aperture (``offsets``,
    :func:`sky_offsets`; for a Kron aperture interpolated in area between the circular
    ones), over the same on ``model``. Returns ``{denoiser: {aperture: [ratio - 1,
    ...]}}`` (None where a Kron aperture could not be defined).
    """
    images = {"true": model.astype(np.float64)} | {k: np.nan_to_num(d) for k, d in differences.items()}
    fluxes = aperture_suite(images, plan["positions"], fwhm=fwhm, kron_reference=images["true"],
                            threshold=threshold, select=select, mask=mask)
    true = fluxes.pop("true")
    kron_area = kron_areas(images["true"], plan["positions"], threshold=threshold)
    out = {}
    for kind, got in fluxes.items():
        offset = _offsets_per_aperture((offsets or {}).get(kind), fwhm=fwhm, kron_area=kron_area)
        out[kind] = {key: [round(float(v), 6) if np.isfinite(v) else None
                           for v in (got[key] + offset[key]) / true[key] - 1]
                     for key in APERTURES}
    return out


def _offsets_per_aperture(offsets: dict[str, float] | None, *, fwhm: float,
                          kron_area: np.ndarray) -> dict[str, np.ndarray | float]:
    """The empty-sky offsets of :func:`sky_offsets` per aperture of
    :data:`~astrodenoise.photometry.APERTURES`: the circular ones as measured, a Kron
    aperture's from its area, linearly between the circular apertures' areas (and zero
    at zero area), continued beyond the largest at its slope. Zero without offsets."""
    if not offsets:
        return dict.fromkeys(APERTURES, 0.0)
    area = np.array([0.0] + [np.pi * aperture_radius(fwhm, factor=f) ** 2 for f in APERTURE_FACTORS])
    value = np.array([0.0] + [offsets[f"{f:g}fwhm"] for f in APERTURE_FACTORS])
    slope = (value[-1] - value[-2]) / (area[-1] - area[-2])
    kron = np.where(kron_area > area[-1], value[-1] + slope * (kron_area - area[-1]),
                    np.interp(kron_area, area, value))
    return {f"{f:g}fwhm": offsets[f"{f:g}fwhm"] for f in APERTURE_FACTORS} | {"kron": kron}


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
    differences, changes = {}, {}
    for kind, run in runners.items():
        original = known[kind] if whole and known and kind in known else run(data[box])
        out = run(injected)
        differences[kind], changes[kind] = out - original, original - data[box]
        found = [detect(img, background=background[box], mask=mask[box], threshold=detect_threshold,
                        fwhm=fwhm)[0] for img in (original, out)]
        hit = near(found[1], plan["positions"], match_radius * fwhm) \
            & ~near(found[0], plan["positions"], match_radius * fwhm)
        block["methods"][kind] = {"found": hit.tolist()}
    where = injection_sites(mask[box] | bad[box], stamps.shape[1] // 2)
    offsets = sky_offsets(changes, where, fwhm=fwhm, select=data[box], mask=mask[box])
    for kind, ratios in recover(differences, model, plan, fwhm=fwhm, threshold=noise.sigma, select=injected,
                                mask=mask[box], offsets=offsets).items():
        block["methods"][kind] |= {"flux_ratio": ratios, "sky_offset": offsets[kind]}
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
