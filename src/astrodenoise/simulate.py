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

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.modeling.models import Sersic2D
from astropy.table import Table
from astropy.wcs import WCS
from scipy.signal import fftconvolve
from tqdm import tqdm

from . import io
from .provenance import code_version

__all__ = [
    "SimulationConfig",
    "moffat_psf",
    "simulate_field",
    "simulate_exposure",
    "exposure_names",
    "write_demo_survey",
]

_OVERSAMPLE = 5  # sub-pixel samples per axis when integrating profiles over pixels


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


def _subpixel_grid(half: int, dx: float, dy: float) -> tuple[np.ndarray, np.ndarray]:
    """Sample offsets of a (2*half+1)^2 stamp, oversampled, relative to (dx, dy)."""
    n = 2 * half + 1
    step = 1.0 / _OVERSAMPLE
    axis = np.arange(n * _OVERSAMPLE) * step - half - 0.5 + step / 2
    yy, xx = np.meshgrid(axis - dy, axis - dx, indexing="ij")
    return yy, xx


def _bin(samples: np.ndarray) -> np.ndarray:
    n = samples.shape[0] // _OVERSAMPLE
    return samples.reshape(n, _OVERSAMPLE, n, _OVERSAMPLE).mean(axis=(1, 3))


def moffat_psf(fwhm_pix: float, beta: float, *, half: int, dx: float = 0.0, dy: float = 0.0):
    """Return a pixel-integrated Moffat PSF stamp of shape (2*half+1, 2*half+1), sum 1.

    ``dx, dy`` shift the centre by a sub-pixel amount (pixels).
    """
    gamma = _moffat_gamma(fwhm_pix, beta)
    yy, xx = _subpixel_grid(half, dx, dy)
    stamp = _bin((1.0 + (xx**2 + yy**2) / gamma**2) ** (-beta))
    return stamp / stamp.sum()


def _sersic_stamp(rng: np.random.Generator, half: int, dx: float, dy: float, r_eff: float):
    n = rng.uniform(0.5, 4.0)
    model = Sersic2D(
        amplitude=1.0, r_eff=r_eff, n=n, x_0=dx, y_0=dy,
        ellip=rng.uniform(0.0, 0.7), theta=rng.uniform(0, np.pi),
    )
    yy, xx = _subpixel_grid(half, 0.0, 0.0)
    stamp = _bin(model(xx, yy))
    return stamp / stamp.sum(), n


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
