"""The built-in demo survey: simulated exposures with a known truth.

A field is a patch of sky on one pixel grid: Moffat stars and PSF-convolved Sersic
galaxies whose magnitudes follow rising number counts (many sources near the detection
limit), on a sky with a weak gradient. Each exposure of a field is the same truth with
fresh noise: Poisson noise on (sources + sky) in electrons plus Gaussian read noise,
divided by GAIN to give ADU, and optional cosmic-ray hits. Everything is drawn from one
seed, with an independent stream per field and per exposure, so adding exposures never
changes the existing ones.

Units: images in ADU; ``flux`` in the catalogue is the total source flux in ADU for one
exposure; magnitudes are AB-like with ``zeropoint`` = magnitude of 1 e-/s.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from scipy.signal import fftconvolve
from tqdm import tqdm

from . import io
from .provenance import code_version
from .sources import pixel_integrate, sersic_profile, subpixel_grid

__all__ = [
    "SimulationConfig",
    "moffat_psf",
    "simulate_field",
    "simulate_exposure",
    "exposure_names",
    "write_demo_survey",
    "simulate_mosaic_catalogue",
    "StampBanks",
    "stamp_banks",
    "render_mosaic_band",
    "write_mosaic",
]

@dataclass(frozen=True)
class SimulationConfig:
    """Parameters of the demo survey (all also in config/config.yaml, commented there).

    Sizes in pixels, ``pixel_scale`` in arcsec/pixel, ``fwhm`` in arcsec, ``exptime``
    in seconds, ``gain`` in e-/ADU, ``read_noise`` in e-, surface brightness in
    mag/arcsec^2, densities in sources per arcmin^2.
    """

    n_fields: int = 2
    n_exposures: int = 3
    size: int = 384
    seed: int = 42
    pixel_scale: float = 0.26
    fwhm: float = 0.9
    moffat_beta: float = 3.5
    exptime: float = 60.0
    gain: float = 2.0
    read_noise: float = 5.0
    zeropoint: float = 26.0
    sky_mag: float = 21.0
    sky_mag_spread: float = 1.5
    star_density: float = 20.0
    galaxy_density: float = 40.0
    mag_range: tuple[float, float] = (17.0, 25.5)
    cosmic_rays_per_mpix: float = 50.0
    filter: str = "r"

    @classmethod
    def from_dict(cls, values: dict) -> SimulationConfig:
        """Build from a config mapping, ignoring nothing: unknown keys raise TypeError."""
        values = dict(values)
        if "mag_range" in values:
            values["mag_range"] = tuple(values["mag_range"])
        return cls(**values)


def exposure_names(config: SimulationConfig) -> dict[str, list[str]]:
    """Return ``{field: [exposure, ...]}`` for the demo survey, e.g. ``field00_e00``."""
    return {
        f"field{f:02d}": [f"field{f:02d}_e{e:02d}" for e in range(config.n_exposures)]
        for f in range(config.n_fields)
    }


def _moffat_gamma(fwhm_pix: float, beta: float) -> float:
    return fwhm_pix / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))


def moffat_psf(fwhm_pix: float, beta: float, *, half: int, dx: float = 0.0, dy: float = 0.0):
    """Return a pixel-integrated Moffat PSF stamp of shape (2*half+1, 2*half+1), sum 1.

    ``dx, dy`` shift the centre by a sub-pixel amount (pixels).
    """
    gamma = _moffat_gamma(fwhm_pix, beta)
    yy, xx = subpixel_grid(half, dx, dy)
    stamp = pixel_integrate((1.0 + (xx**2 + yy**2) / gamma**2) ** (-beta))
    return stamp / stamp.sum()


def _sersic_stamp(rng: np.random.Generator, half: int, dx: float, dy: float, r_eff: float):
    n = rng.uniform(0.5, 4.0)
    ellip, theta = rng.uniform(0.0, 0.7), rng.uniform(0, np.pi)
    return sersic_profile(half, r_eff=r_eff, n=n, ellip=ellip, theta=theta, dx=dx, dy=dy), n


def _draw_magnitudes(rng, count: int, lo: float, hi: float, slope: float) -> np.ndarray:
    """Magnitudes with number counts dN/dm proportional to 10**(slope*m) on [lo, hi]."""
    a, b = 10 ** (slope * lo), 10 ** (slope * hi)
    return np.log10(a + rng.uniform(size=count) * (b - a)) / slope


def _add_stamp(image: np.ndarray, stamp: np.ndarray, x: int, y: int) -> None:
    half = stamp.shape[0] // 2
    ny, nx = image.shape
    y0, y1, x0, x1 = y - half, y + half + 1, x - half, x + half + 1
    sy0, sx0 = max(0, -y0), max(0, -x0)
    sy1 = stamp.shape[0] - max(0, y1 - ny)
    sx1 = stamp.shape[1] - max(0, x1 - nx)
    image[max(y0, 0):min(y1, ny), max(x0, 0):min(x1, nx)] += stamp[sy0:sy1, sx0:sx1]


def _field_wcs(config: SimulationConfig, field_index: int) -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0 + 0.2 * field_index, 2.2]
    wcs.wcs.crpix = [(config.size + 1) / 2.0] * 2
    scale = config.pixel_scale / 3600.0
    wcs.wcs.cd = [[-scale, 0.0], [0.0, scale]]
    wcs.wcs.cunit = ["deg", "deg"]
    return wcs


def simulate_field(config: SimulationConfig, field_index: int, rng: np.random.Generator):
    """Render the noise-free truth of one field.

    Returns
    -------
    truth : (size, size) float64, ADU per exposure, sky included
    catalogue : astropy.table.Table
        x, y (0-based pixels), ra, dec (deg), flux (ADU, total), mag, type, r_eff
        (pixels, 0 for stars), sersic_n.
    wcs : astropy.wcs.WCS
    fwhm_pix : float, the PSF FWHM of this field in pixels
    """
    size, scale = config.size, config.pixel_scale
    fwhm_pix = config.fwhm / scale * rng.uniform(0.9, 1.2)
    area_arcmin2 = (size * scale / 60.0) ** 2
    to_e = config.exptime
    electrons = np.zeros((size, size))
    rows = []
    n_stars = rng.poisson(config.star_density * area_arcmin2)
    n_gals = rng.poisson(config.galaxy_density * area_arcmin2)
    lo, hi = config.mag_range
    kinds = ["star"] * n_stars + ["galaxy"] * n_gals
    mags = np.concatenate([
        _draw_magnitudes(rng, n_stars, lo, hi, 0.2),
        _draw_magnitudes(rng, n_gals, lo + 1.0, hi, 0.35),
    ])
    psf_half = int(np.ceil(6 * fwhm_pix))
    for kind, mag in zip(kinds, mags, strict=True):
        x, y = rng.uniform(-0.5, size - 0.5, size=2)
        ix, iy = int(np.rint(x)), int(np.rint(y))
        flux_e = 10 ** (-0.4 * (mag - config.zeropoint)) * to_e
        if kind == "star":
            stamp = moffat_psf(fwhm_pix, config.moffat_beta, half=psf_half, dx=x - ix, dy=y - iy)
            r_eff, n = 0.0, 0.0
        else:
            # Fainter galaxies are smaller: median r_eff 0.8" at mag 21, shrinking 21% per mag.
            size_draw = rng.lognormal(np.log(0.8 / scale), 0.5) * 10 ** (-0.1 * (mag - 21))
            r_eff = float(np.clip(size_draw, 0.8, 25))
            half = int(np.ceil(max(4 * r_eff, 10)))
            stamp, n = _sersic_stamp(rng, half, x - ix, y - iy, r_eff)
            psf = moffat_psf(fwhm_pix, config.moffat_beta, half=psf_half)
            stamp = fftconvolve(np.pad(stamp, psf_half), psf, mode="same")
        _add_stamp(electrons, stamp * flux_e, ix, iy)
        rows.append((x, y, flux_e / config.gain, mag, kind, r_eff, n))
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    gradient = 1.0 + 0.02 * (rng.uniform(-1, 1) * xx + rng.uniform(-1, 1) * yy)
    # Fields are observed under different skies (moon, airmass): up to sky_mag_spread
    # magnitudes darker than sky_mag.
    sky_mag = config.sky_mag + rng.uniform(0.0, config.sky_mag_spread)
    sky_e = 10 ** (-0.4 * (sky_mag - config.zeropoint)) * scale**2 * to_e
    truth = (electrons + sky_e * gradient) / config.gain
    wcs = _field_wcs(config, field_index)
    catalogue = Table(rows=rows, names=("x", "y", "flux", "mag", "type", "r_eff", "sersic_n"))
    sky = wcs.pixel_to_world(catalogue["x"], catalogue["y"])
    catalogue["ra"], catalogue["dec"] = sky.ra.deg, sky.dec.deg
    catalogue.meta.update(fwhm_pix=fwhm_pix, gain=config.gain, sky_adu=sky_e / config.gain,
                          sky_mag=sky_mag)
    return truth, catalogue, wcs, fwhm_pix


def _cosmic_rays(rng: np.random.Generator, shape: tuple[int, int], per_mpix: float) -> np.ndarray:
    """Electrons deposited by cosmic rays: short straight tracks, 1-6 pixels long."""
    hits = np.zeros(shape)
    count = rng.poisson(per_mpix * shape[0] * shape[1] / 1e6)
    for _ in range(count):
        y, x = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        length, angle = rng.uniform(1, 6), rng.uniform(0, np.pi)
        charge = rng.uniform(500, 8000)
        for t in np.linspace(0, length, int(np.ceil(length)) + 1):
            iy, ix = int(y + t * np.sin(angle)), int(x + t * np.cos(angle))
            if 0 <= iy < shape[0] and 0 <= ix < shape[1]:
                hits[iy, ix] += charge
    return hits


def simulate_exposure(truth_adu: np.ndarray, config: SimulationConfig, rng: np.random.Generator):
    """Draw one noisy exposure (float32 ADU) from a truth image in ADU."""
    electrons = rng.poisson(np.clip(truth_adu * config.gain, 0, None)).astype(np.float64)
    electrons += rng.normal(0.0, config.read_noise, size=truth_adu.shape)
    electrons += _cosmic_rays(rng, truth_adu.shape, config.cosmic_rays_per_mpix)
    return (electrons / config.gain).astype(np.float32)


def _base_header(config: SimulationConfig, wcs: WCS, field: str) -> fits.Header:
    header = wcs.to_header()
    header["OBJECT"] = (field, "demo field")
    header["FILTER"] = (config.filter, "filter name")
    header["EXPTIME"] = (config.exptime, "[s] exposure time")
    header["GAIN"] = (config.gain, "[e-/ADU] detector gain")
    header["RDNOISE"] = (config.read_noise, "[e-] read noise")
    header["BUNIT"] = ("adu", "pixel unit")
    zp_adu = config.zeropoint + 2.5 * np.log10(config.exptime / config.gain)
    header["MAGZERO"] = (round(zp_adu, 4), "magnitude of 1 ADU in this exposure")
    header["ORIGIN"] = ("astrodenoise simulate", f"version {code_version()}")
    return header


def write_demo_survey(outdir: str | Path, config: SimulationConfig) -> dict[str, list[str]]:
    """Write the demo survey under ``outdir``; return ``{field: [exposure, ...]}``.

    Layout: ``raw/<exposure>.fits`` (noisy, ADU), ``truth/<field>.fits`` (noise-free,
    ADU, sky included) and ``catalog/<field>.ecsv`` (the sources).
    """
    outdir = Path(outdir)
    fields = exposure_names(config)
    seeds = np.random.SeedSequence(config.seed).spawn(len(fields))
    start = datetime(2026, 3, 1, 3, 0, 0)
    for f, (field, exposures) in enumerate(tqdm(fields.items(), desc="simulate", unit="field")):
        field_seq, *exposure_seqs = seeds[f].spawn(1 + len(exposures))
        truth, catalogue, wcs, fwhm = simulate_field(config, f, np.random.default_rng(field_seq))
        header = _base_header(config, wcs, field)
        truth_header = header.copy()
        truth_header["COMMENT"] = "Noise-free truth: expected ADU of one exposure, sky included."
        truth_header["FWHM"] = (round(fwhm, 4), "[pix] PSF FWHM of this field")
        io.write_fits_image(outdir / "truth" / f"{field}.fits", truth, truth_header)
        with io.atomic_path(outdir / "catalog" / f"{field}.ecsv") as tmp:
            catalogue.write(tmp, format="ascii.ecsv")
        for e, name in enumerate(exposures):
            rng = np.random.default_rng(exposure_seqs[e])
            exp_header = header.copy()
            when = start + timedelta(days=f, seconds=e * (config.exptime + 30))
            exp_header["DATE-OBS"] = (when.isoformat(), "UTC start of exposure")
            exp_header["HISTORY"] = f"astrodenoise simulate: {dataclasses.asdict(config)}"
            exposure = simulate_exposure(truth, config, rng)
            io.write_fits_image(outdir / "raw" / f"{name}.fits", exposure, exp_header)
    return fields


# --- Large mosaics, written band by band -------------------------------------------------
#
# A 16384^2 mosaic holds about 300,000 sources: rendering each profile as simulate_field
# does would take hours, so sources are drawn from banks of pre-rendered stamps (stars at
# a 1/5-pixel grid of centres, galaxies on a grid of sizes and random shapes), and
# catalogue positions are snapped to the stamps' centres so that truth and catalogue
# agree exactly. Rows of ``chunk`` pixels are rendered, noised and written one at a time.

_PHASES = 5  # star centres on a 1/5-pixel grid
_GALAXY_SIZES = np.geomspace(0.8, 25.0, 12)  # r_eff grid of the galaxy bank, pixels
_GALAXY_SHAPES = 8  # random (n, ellipticity, angle) per size


@dataclass(frozen=True)
class StampBanks:
    stars: np.ndarray  # (phase_y, phase_x, 2h+1, 2h+1), each sums to 1
    galaxies: list  # per size: list of (stamp summing to 1, sersic_n)
    fwhm_pix: float


def stamp_banks(config: SimulationConfig, rng: np.random.Generator) -> StampBanks:
    fwhm_pix = config.fwhm / config.pixel_scale * rng.uniform(0.9, 1.2)
    half = int(np.ceil(6 * fwhm_pix))
    offsets = (np.arange(_PHASES) - _PHASES // 2) / _PHASES
    stars = np.array([[moffat_psf(fwhm_pix, config.moffat_beta, half=half, dx=dx, dy=dy)
                       for dx in offsets] for dy in offsets])
    psf = moffat_psf(fwhm_pix, config.moffat_beta, half=half)
    galaxies = []
    for r_eff in _GALAXY_SIZES:
        g_half = int(np.ceil(max(4 * r_eff, 10)))
        bank = []
        for _ in range(_GALAXY_SHAPES):
            stamp, n = _sersic_stamp(rng, g_half, 0.0, 0.0, r_eff)
            bank.append((fftconvolve(np.pad(stamp, half), psf, mode="same"), n))
        galaxies.append(bank)
    return StampBanks(stars, galaxies, fwhm_pix)


def simulate_mosaic_catalogue(config: SimulationConfig, rng: np.random.Generator,
                              banks: StampBanks) -> Table:
    """Draw the sources of a ``config.size``^2 mosaic (no pixels rendered).

    Returns
    -------
    astropy.table.Table
        x, y (0-based pixels, on the stamps' centre grid), flux (ADU), mag, type, r_eff
        (pixels, 0 for stars), sersic_n and ``stamp`` (index into the stamp banks), sorted
        by y.
    """
    size, scale = config.size, config.pixel_scale
    area = (size * scale / 60.0) ** 2
    n_stars = rng.poisson(config.star_density * area)
    n_gals = rng.poisson(config.galaxy_density * area)
    lo, hi = config.mag_range
    mags = np.concatenate([_draw_magnitudes(rng, n_stars, lo, hi, 0.2),
                           _draw_magnitudes(rng, n_gals, lo + 1.0, hi, 0.35)])
    is_star = np.arange(n_stars + n_gals) < n_stars
    xy = rng.uniform(-0.5, size - 0.5, size=(len(mags), 2))
    # Stars sit on the 1/5-pixel grid of their stamps, galaxies on whole pixels.
    xy = np.where(is_star[:, None], np.round(xy * _PHASES) / _PHASES, np.round(xy))
    xy = np.clip(xy, 0, size - 1)
    draw = rng.lognormal(np.log(0.8 / scale), 0.5, size=len(mags)) * 10 ** (-0.1 * (mags - 21))
    size_bin = np.abs(np.log(np.clip(draw, 0.8, 25))[:, None] - np.log(_GALAXY_SIZES)).argmin(axis=1)
    shape = rng.integers(0, _GALAXY_SHAPES, size=len(mags))
    stamp = np.where(is_star, 0, size_bin * _GALAXY_SHAPES + shape)
    r_eff = np.where(is_star, 0.0, _GALAXY_SIZES[size_bin])
    sersic = np.array([0.0 if star else banks.galaxies[b][k][1]
                       for star, b, k in zip(is_star, size_bin, shape, strict=True)])
    flux = 10 ** (-0.4 * (mags - config.zeropoint)) * config.exptime / config.gain
    catalogue = Table({"x": xy[:, 0], "y": xy[:, 1], "flux": flux, "mag": mags,
                       "type": np.where(is_star, "star", "galaxy"), "r_eff": r_eff,
                       "sersic_n": sersic, "stamp": stamp})
    catalogue.sort("y")
    return catalogue


def _stamps_of(banks: StampBanks, sources: Table) -> list[np.ndarray]:
    """The bank stamp (sum 1) of each source."""
    x, y = np.asarray(sources["x"]), np.asarray(sources["y"])
    # Stars: the sub-pixel offset -0.4..0.4 pixels picks phase 0..4.
    phase_y = np.rint((y - np.rint(y)) * _PHASES).astype(int) + _PHASES // 2
    phase_x = np.rint((x - np.rint(x)) * _PHASES).astype(int) + _PHASES // 2
    size_bin, shape = np.divmod(np.asarray(sources["stamp"]), _GALAXY_SHAPES)
    return [banks.stars[py, px] if kind == "star" else banks.galaxies[b][k][0]
            for kind, py, px, b, k in zip(sources["type"], phase_y, phase_x, size_bin, shape, strict=True)]


def render_mosaic_band(catalogue: Table, banks: StampBanks, config: SimulationConfig, *,
                       rows: tuple[int, int], sky_adu: float, gradient: tuple[float, float]
                       ) -> np.ndarray:
    """Noise-free truth of image rows ``rows[0]:rows[1]`` of the mosaic.

    ``catalogue`` must be sorted by y (as :func:`simulate_mosaic_catalogue` returns it).

    Returns
    -------
    (rows[1] - rows[0], config.size) float64, ADU per exposure, sky included.
    """
    y0, y1 = rows
    reach = max(banks.galaxies[-1][0][0].shape[0], banks.stars.shape[-1]) // 2 + 1
    start, stop = np.searchsorted(np.asarray(catalogue["y"]), [y0 - reach, y1 + reach])
    sources = catalogue[start:stop]
    band = np.zeros((y1 - y0, config.size))
    xs, ys = np.rint(sources["x"]).astype(int), np.rint(sources["y"]).astype(int) - y0
    for stamp, flux, x, y in zip(_stamps_of(banks, sources), sources["flux"], xs, ys, strict=True):
        if -(stamp.shape[0] // 2) <= y < band.shape[0] + stamp.shape[0] // 2:  # reaches the band
            _add_stamp(band, stamp * flux, x, y)
    yy = (np.arange(y0, y1) / config.size - 0.5)[:, None]
    xx = np.arange(config.size) / config.size - 0.5
    band += sky_adu * (1.0 + 0.02 * (gradient[0] * xx + gradient[1] * yy))
    return band


def _mosaic_header(config: SimulationConfig, name: str) -> fits.Header:
    header = _base_header(config, _field_wcs(config, 0), name)
    header["DATE-OBS"] = (datetime(2026, 3, 1, 3, 0, 0).isoformat(), "UTC start of exposure")
    header["HISTORY"] = f"astrodenoise simulate mosaic: {dataclasses.asdict(config)}"
    return header


def write_mosaic(outdir: str | Path, config: SimulationConfig, *, name: str = "mosaic",
                 chunk: int = 1024, fits_too: bool = False) -> Table:
    """Write one ``config.size``^2 exposure, its truth and catalogue, ``chunk`` rows at a time.

    Memory stays at a few bands of ``chunk`` x ``config.size`` pixels however large the
    mosaic. Layout: ``raw/<name>.zarr`` (noisy, ADU; an ``image`` array in ``chunk``^2
    shards with the FITS header in its attributes, as ingest writes it),
    ``truth/<name>.zarr`` (noise-free, ADU, sky included), ``catalog/<name>.ecsv``, and
    with ``fits_too`` also ``raw/<name>.fits`` and ``truth/<name>.fits``. Every output
    is atomic. The same config and chunk give the same pixels.

    Returns
    -------
    astropy.table.Table, the catalogue (see :func:`simulate_mosaic_catalogue`); its meta
    holds fwhm_pix, gain, sky_adu and sky_mag.
    """
    outdir = Path(outdir)
    bank_seq, source_seq, sky_seq, noise_seq = np.random.SeedSequence(config.seed).spawn(4)
    banks = stamp_banks(config, np.random.default_rng(bank_seq))
    catalogue = simulate_mosaic_catalogue(config, np.random.default_rng(source_seq), banks)
    sky_rng = np.random.default_rng(sky_seq)
    gradient = tuple(sky_rng.uniform(-1, 1, size=2))
    sky_mag = config.sky_mag + sky_rng.uniform(0.0, config.sky_mag_spread)
    sky_e = 10 ** (-0.4 * (sky_mag - config.zeropoint)) * config.pixel_scale**2 * config.exptime
    sky_adu = sky_e / config.gain
    header = _mosaic_header(config, name)
    truth_header = header.copy()
    truth_header["COMMENT"] = "Noise-free truth: expected ADU of one exposure, sky included."
    truth_header["FWHM"] = (round(banks.fwhm_pix, 4), "[pix] PSF FWHM of this field")
    bands = range(0, config.size, chunk)
    band_seqs = noise_seq.spawn(len(bands))
    with contextlib.ExitStack() as stack:
        raw = _mosaic_targets(stack, outdir / "raw", name, config.size, chunk, header, fits_too)
        truth = _mosaic_targets(stack, outdir / "truth", name, config.size, chunk, truth_header, fits_too)
        for y0, seq in tqdm(zip(bands, band_seqs, strict=True), total=len(bands), desc="simulate",
                            unit="band"):
            rows = (y0, min(y0 + chunk, config.size))
            model = render_mosaic_band(catalogue, banks, config, rows=rows, sky_adu=sky_adu,
                                       gradient=gradient)
            exposure = _noisy_band(model, config, np.random.default_rng(seq))
            for target in raw:
                target[rows[0]:rows[1], :] = exposure
            for target in truth:
                target[rows[0]:rows[1], :] = model.astype(np.float32)
        catalogue.meta.update(fwhm_pix=banks.fwhm_pix, gain=config.gain, sky_adu=sky_adu, sky_mag=sky_mag)
        sky = _field_wcs(config, 0).pixel_to_world(catalogue["x"], catalogue["y"])
        catalogue["ra"], catalogue["dec"] = sky.ra.deg, sky.dec.deg
        with io.atomic_path(outdir / "catalog" / f"{name}.ecsv") as tmp:
            catalogue.write(tmp, format="ascii.ecsv")
    return catalogue


def _noisy_band(model: np.ndarray, config: SimulationConfig, rng: np.random.Generator, *,
                rows: int = 128) -> np.ndarray:
    """:func:`simulate_exposure` of a band, ``rows`` at a time: its float64 temporaries
    would otherwise be several times the band."""
    exposure = np.empty(model.shape, dtype=np.float32)
    for y0 in range(0, model.shape[0], rows):
        exposure[y0:y0 + rows] = simulate_exposure(model[y0:y0 + rows], config, rng)
    return exposure


def _mosaic_targets(stack: contextlib.ExitStack, folder: Path, name: str, size: int, chunk: int,
                    header: fits.Header, fits_too: bool) -> list:
    """Temporary zarr (and FITS) outputs of one mosaic, renamed into place when ``stack`` closes."""
    attrs = {"fits_header": header.tostring(), "bunit": str(header.get("BUNIT", "")), "has_wcs": True,
             "source_file": "astrodenoise simulate", "code_version": code_version()}
    store = stack.enter_context(io.atomic_path(folder / f"{name}.zarr"))
    targets = io.create_zarr_image(store, (size, size), shard=chunk, attrs=attrs)
    if fits_too:
        path = stack.enter_context(io.atomic_path(folder / f"{name}.fits"))
        targets += io.create_fits_image(path, (size, size), header)
    return targets
