"""An independent "check survey" drawn with GalSim, to score settings chosen on the demo.

The demo survey (:mod:`astrodenoise.simulate`) is what the project's settings were tuned
on. This survey comes from a different generator with different physics, so that a
setting which only suits the demo shows up as a drop in score. It must never be used to
choose settings: it is only scored.

    .venv/bin/python benchmarks/check_survey.py                  # results/simulate/check
    .venv/bin/python benchmarks/check_survey.py --fields 2 --size 256 --seed 7 --out /tmp/c
    .venv/bin/snakemake --cores 2 --configfile config/check.yaml   # the default workflow on it

What differs from the demo, per field (a patch of sky on one pixel grid):

- PSF: the fields cycle through three families, GalSim ``Moffat`` (beta 2.5-5),
  ``Kolmogorov`` and Kolmogorov convolved with an obscured ``Airy`` (telescope of 2.5-8 m
  at 800 nm, central obscuration 0.2-0.4); seeing FWHM 0.6-1.4 arcsec; pixel scale
  0.20-0.30 arcsec, the WCS rotated by up to 20 degrees.
- Detector and sky: gain 1.2-2.2 e-/ADU, read noise 3-9 e-, sky 20.0-21.8 mag/arcsec^2
  with a weak planar-plus-saddle gradient, 90 s exposures, zeropoint 26.6 (mag of 1 e-/s).
- Sources: stars (the PSF itself, sub-pixel positions) with shallow number counts, and
  galaxies that are sums of a truncated Sersic bulge (n 2-4) and an exponential disc with
  bulge fractions 0-1, half-light radius 0.5" at mag 22 scaling as 10**(-0.15 (m - 22))
  with lognormal scatter, sheared by g up to 0.6 at random angles; magnitudes run about
  2.5 mag past the 5-sigma limit.
- Noise: GalSim ``CCDNoise`` (Poisson in electrons on sources + sky, Gaussian read noise,
  divided by the gain), and cosmic rays as curved "worm" tracks that bleed charge into
  their neighbours.

The on-disk layout is that of :func:`astrodenoise.simulate.write_demo_survey`:
``raw/<field>_e<NN>.fits`` (noisy, float32 ADU, sky included), ``truth/<field>.fits``
(noise-free ADU of one exposure, sky included, FWHM keyword in pixels) and
``catalog/<field>.ecsv`` (the sources; meta: fwhm_pix, gain, sky_adu, sky_mag, psf, ...).
Every draw follows from ``seed``: one numpy SeedSequence per field and per exposure (GalSim
deviates are seeded from them), so the same seed writes the same arrays and adding
exposures or fields never changes the existing ones.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import galsim
import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from tqdm import tqdm

from astrodenoise import io

__all__ = [
    "CheckConfig",
    "FieldConditions",
    "PSF_FAMILIES",
    "draw_conditions",
    "draw_sources",
    "render_sources",
    "sky_model",
    "simulate_check_field",
    "simulate_check_exposure",
    "cosmic_ray_electrons",
    "check_header",
    "exposure_names",
    "write_check_survey",
    "main",
]

REPO_ROOT = Path(__file__).resolve().parents[1]

#: PSF families, cycled over the fields (field i gets ``psf_families[i % len]``).
PSF_FAMILIES = ("moffat", "kolmogorov", "kolmogorov+airy")

_ARCMIN2_PER_ARCSEC2 = 1.0 / 3600.0
_BULGE_N_STEP = 0.25  # bulge indices on a 0.25 grid: GalSim caches each n's tables (~35 ms to build)
# Bulges are truncated at 8 half-light radii (GalSim's flux and radius are those of the
# truncated profile): an untruncated n = 4 profile holds 5% of its light beyond that, and
# its FFT would need gigabytes.
_BULGE_TRUNCATION = 8.0
_LAMBDA_NM = 800.0  # wavelength of the Airy component (i band)


@dataclass(frozen=True)
class CheckConfig:
    """Parameters of the check survey; ``(lo, hi)`` pairs are ranges drawn per field.

    Sizes in pixels, ``pixel_scale`` in arcsec/pixel, FWHM and radii in arcsec, ``exptime``
    in seconds, ``gain`` in e-/ADU, ``read_noise`` in e-, sky in mag/arcsec^2, densities in
    sources per arcmin^2, ``*_slope`` the slope of log10 dN/dm.
    """

    n_fields: int = 3
    n_exposures: int = 3
    size: int = 384
    seed: int = 20260711
    psf_families: tuple[str, ...] = PSF_FAMILIES
    pixel_scale: tuple[float, float] = (0.20, 0.30)
    fwhm: tuple[float, float] = (0.6, 1.4)
    moffat_beta: tuple[float, float] = (2.5, 5.0)
    telescope_diameter: tuple[float, float] = (2.5, 8.0)
    obscuration: tuple[float, float] = (0.2, 0.4)
    rotation_deg: tuple[float, float] = (-20.0, 20.0)
    exptime: float = 90.0
    gain: tuple[float, float] = (1.2, 2.2)
    read_noise: tuple[float, float] = (3.0, 9.0)
    zeropoint: float = 26.6
    sky_mag: tuple[float, float] = (20.0, 21.8)
    sky_gradient: float = 0.03
    star_density: float = 12.0
    star_mags: tuple[float, float] = (16.5, 26.0)
    star_slope: float = 0.12
    galaxy_density: float = 120.0
    galaxy_mags: tuple[float, float] = (18.0, 26.5)
    galaxy_slope: float = 0.30
    hlr_at_22: float = 0.5
    hlr_slope: float = 0.15
    hlr_scatter: float = 0.3
    hlr_range: tuple[float, float] = (0.05, 4.0)
    bulge_n: tuple[float, float] = (2.0, 4.0)
    max_shear: float = 0.6
    cosmic_rays: bool = True
    cosmic_rays_per_mpix: float = 40.0
    filter: str = "i"


@dataclass(frozen=True)
class FieldConditions:
    """What one field drew: PSF, pixel grid, detector and sky (see :func:`draw_conditions`)."""

    index: int
    psf: galsim.GSObject
    psf_params: dict
    fwhm_pix: float
    pixel_scale: float
    rotation_deg: float
    gain: float
    read_noise: float
    sky_mag: float
    sky_adu: float
    sky_gradient: tuple[float, float, float]

    def describe(self) -> dict:
        """The draws as plain numbers (for HISTORY cards and the catalogue meta)."""
        return {"field_index": self.index, "psf": self.psf_params, "fwhm_pix": round(self.fwhm_pix, 4),
                "pixel_scale": self.pixel_scale, "rotation_deg": self.rotation_deg, "gain": self.gain,
                "read_noise": self.read_noise, "sky_mag": self.sky_mag, "sky_adu": self.sky_adu,
                "sky_gradient": list(self.sky_gradient)}


def _uniform(rng: np.random.Generator, bounds: tuple[float, float], digits: int) -> float:
    """A uniform draw on ``bounds``, rounded: headers, catalogue and pixels then use one value."""
    return round(float(rng.uniform(*bounds)), digits)


def _galsim_seed(seq: np.random.SeedSequence) -> int:
    """A GalSim deviate seed from a SeedSequence (GalSim reads seed 0 as "seed from the clock")."""
    return 1 + int(seq.generate_state(1, dtype=np.uint32)[0]) % (2**31 - 2)


def _make_psf(config: CheckConfig, family: str, fwhm: float, rng: np.random.Generator):
    """A GalSim PSF of ``family`` with seeing ``fwhm`` arcsec; returns (profile, params, FWHM arcsec)."""
    if family == "moffat":
        beta = _uniform(rng, config.moffat_beta, 3)
        params = {"family": family, "beta": beta, "fwhm_arcsec": fwhm}
        return galsim.Moffat(beta=beta, fwhm=fwhm), params, fwhm
    if family == "kolmogorov":
        return galsim.Kolmogorov(fwhm=fwhm), {"family": family, "fwhm_arcsec": fwhm}, fwhm
    if family == "kolmogorov+airy":
        diam, obscuration = _uniform(rng, config.telescope_diameter, 2), _uniform(rng, config.obscuration, 3)
        optics = galsim.Airy(lam=_LAMBDA_NM, diam=diam, obscuration=obscuration, scale_unit=galsim.arcsec)
        psf = galsim.Convolve(galsim.Kolmogorov(fwhm=fwhm), optics)
        # The optics widen the seeing core by a few percent: measure the FWHM of the sum.
        total = float(psf.calculateFWHM(size=256, scale=fwhm / 40))
        return psf, {"family": family, "atmosphere_fwhm_arcsec": fwhm, "lambda_nm": _LAMBDA_NM,
                     "diameter_m": diam, "obscuration": obscuration, "fwhm_arcsec": round(total, 4)}, total
    raise ValueError(f"unknown PSF family {family!r}; choose from {PSF_FAMILIES}")


def draw_conditions(config: CheckConfig, field_index: int, rng: np.random.Generator) -> FieldConditions:
    """Draw the PSF, pixel scale, rotation, gain, read noise and sky of one field.

    ``sky_adu`` is the sky of one exposure at the image centre in ADU per pixel; the sky
    varies over the field as :func:`sky_model` with the three ``sky_gradient`` coefficients.
    """
    pixel_scale, seeing = _uniform(rng, config.pixel_scale, 4), _uniform(rng, config.fwhm, 3)
    gain, read_noise = _uniform(rng, config.gain, 3), _uniform(rng, config.read_noise, 2)
    sky_mag, rotation = _uniform(rng, config.sky_mag, 3), _uniform(rng, config.rotation_deg, 2)
    gradient = tuple(_uniform(rng, (-config.sky_gradient, config.sky_gradient), 4) for _ in range(3))
    # The family's own parameters are drawn last, so that the rest does not depend on it.
    family = config.psf_families[field_index % len(config.psf_families)]
    psf, params, fwhm = _make_psf(config, family, seeing, rng)
    sky_e = 10 ** (-0.4 * (sky_mag - config.zeropoint)) * pixel_scale**2 * config.exptime
    # sky_adu stays unrounded: sky_model rebuilds the truth's sky from it exactly.
    return FieldConditions(
        index=field_index, psf=psf, psf_params=params, fwhm_pix=fwhm / pixel_scale,
        pixel_scale=pixel_scale, rotation_deg=rotation, gain=gain, read_noise=read_noise,
        sky_mag=sky_mag, sky_adu=float(sky_e / gain), sky_gradient=gradient,
    )


def _draw_magnitudes(rng: np.random.Generator, count: int, bounds: tuple[float, float],
                     slope: float) -> np.ndarray:
    """Magnitudes with dN/dm proportional to 10**(slope m) on ``bounds`` (inverse CDF)."""
    a, b = 10 ** (slope * bounds[0]), 10 ** (slope * bounds[1])
    return np.log10(a + rng.uniform(size=count) * (b - a)) / slope


def _galaxy_shapes(config: CheckConfig, mags: np.ndarray, rng: np.random.Generator) -> dict:
    """Half-light radius (arcsec), bulge fraction and index, shear and angle of each galaxy."""
    count = len(mags)
    scatter = rng.lognormal(0.0, config.hlr_scatter, size=count)
    hlr = config.hlr_at_22 * 10 ** (-config.hlr_slope * (mags - 22.0)) * scatter
    n_steps = np.rint((np.asarray(config.bulge_n) - config.bulge_n[0]) / _BULGE_N_STEP)
    bulge_n = config.bulge_n[0] + _BULGE_N_STEP * rng.integers(0, int(n_steps[1]) + 1, size=count)
    # Beta(0.7, 0.9) piles bulge fractions up near 0 (discs) and 1 (spheroids), as observed.
    return {"hlr": np.clip(hlr, *config.hlr_range), "bulge_fraction": rng.beta(0.7, 0.9, size=count),
            "bulge_n": bulge_n, "shear_g": config.max_shear * rng.beta(1.5, 2.5, size=count),
            "angle_deg": rng.uniform(0.0, 180.0, size=count)}


def draw_sources(config: CheckConfig, conditions: FieldConditions, rng: np.random.Generator) -> Table:
    """Draw the stars and galaxies of one field (no pixels rendered).

    Returns
    -------
    astropy.table.Table
        x, y (0-based pixels, float), flux (ADU, total, one exposure), mag, type ("star" or
        "galaxy"), r_eff (circularised half-light radius, pixels; 0 for stars), sersic_n
        (bulge-fraction-weighted index, disc n = 1; 0 for stars), bulge_fraction, bulge_n,
        shear_g (reduced shear |g|), angle_deg (position angle of the major axis from +x).
    """
    area = (config.size * conditions.pixel_scale) ** 2 * _ARCMIN2_PER_ARCSEC2
    n_stars, n_gals = rng.poisson(config.star_density * area), rng.poisson(config.galaxy_density * area)
    mags = np.concatenate([_draw_magnitudes(rng, n_stars, config.star_mags, config.star_slope),
                           _draw_magnitudes(rng, n_gals, config.galaxy_mags, config.galaxy_slope)])
    xy = rng.uniform(-0.5, config.size - 0.5, size=(n_stars + n_gals, 2))
    shapes = _galaxy_shapes(config, mags[n_stars:], rng)
    is_gal = np.arange(n_stars + n_gals) >= n_stars

    def per_source(values: np.ndarray) -> np.ndarray:
        out = np.zeros(n_stars + n_gals)
        out[is_gal] = values
        return out

    bulge_fraction, bulge_n = per_source(shapes["bulge_fraction"]), per_source(shapes["bulge_n"])
    flux_e = 10 ** (-0.4 * (mags - config.zeropoint)) * config.exptime
    return Table({
        "x": xy[:, 0], "y": xy[:, 1], "flux": flux_e / conditions.gain, "mag": mags,
        "type": np.where(is_gal, "galaxy", "star"),
        "r_eff": per_source(shapes["hlr"]) / conditions.pixel_scale,
        "sersic_n": np.where(is_gal, bulge_fraction * bulge_n + (1 - bulge_fraction), 0.0),
        "bulge_fraction": bulge_fraction, "bulge_n": bulge_n, "shear_g": per_source(shapes["shear_g"]),
        "angle_deg": per_source(shapes["angle_deg"]),
    })


def _galaxy_profile(source, conditions: FieldConditions) -> galsim.GSObject:
    """The PSF-convolved bulge + disc of one catalogue row, flux in ADU.

    Bulge and disc share the half-light radius ``r_eff`` (GalSim's radius of the truncated
    bulge), so their sum has it too, and one shear (area-preserving) keeps it as the
    circularised radius.
    """
    hlr, fraction = float(source["r_eff"]) * conditions.pixel_scale, float(source["bulge_fraction"])
    parts = []
    if fraction > 0:
        parts.append(galsim.Sersic(n=float(source["bulge_n"]), half_light_radius=hlr,
                                   trunc=_BULGE_TRUNCATION * hlr, flux=fraction))
    if fraction < 1:
        parts.append(galsim.Exponential(half_light_radius=hlr, flux=1.0 - fraction))
    angle = float(source["angle_deg"]) * galsim.degrees
    galaxy = galsim.Add(parts).shear(g=float(source["shear_g"]), beta=angle)
    return galsim.Convolve(galaxy.withFlux(float(source["flux"])), conditions.psf)


def _stamp_half(source, conditions: FieldConditions) -> int:
    """Half side of the drawing stamp: beyond 12 FWHM lie 0.04% of a beta-2.5 Moffat's flux,
    0.15% of a Kolmogorov's and up to 0.5% of a Kolmogorov-Airy's (its rings); a galaxy adds
    its bulge's truncation radius."""
    reach = 12 * conditions.fwhm_pix
    if source["type"] == "galaxy":
        reach += _BULGE_TRUNCATION * float(source["r_eff"])
    return int(np.ceil(max(reach, 8)))


def render_sources(catalogue: Table, conditions: FieldConditions, *, size: int) -> np.ndarray:
    """Draw every source of ``catalogue`` with GalSim (``method="auto"``: pixel response included).

    Each source is drawn into the part of the field its stamp covers, centred at its
    sub-pixel position (GalSim pixel ``(x + 1, y + 1)`` is 0-based pixel ``(x, y)``).

    Returns
    -------
    (size, size) float64, ADU of one exposure, no sky.
    """
    field = galsim.ImageD(size, size, scale=conditions.pixel_scale)
    for source in catalogue:
        profile = (conditions.psf.withFlux(float(source["flux"])) if source["type"] == "star"
                   else _galaxy_profile(source, conditions))
        centre = galsim.PositionD(float(source["x"]) + 1, float(source["y"]) + 1)
        half = _stamp_half(source, conditions)
        ix, iy = int(np.rint(centre.x)), int(np.rint(centre.y))
        bounds = galsim.BoundsI(ix - half, ix + half, iy - half, iy + half) & field.bounds
        stamp = field[bounds]
        profile.drawImage(image=stamp, method="auto", add_to_image=True, offset=centre - stamp.true_center)
    return field.array.copy()


def sky_model(size: int, sky_adu: float, gradient: tuple[float, float, float]) -> np.ndarray:
    """Sky of one exposure, (size, size) float64 ADU: ``sky_adu (1 + a u + b v + c u v)``
    with u, v = pixel / size - 0.5 along x and y (a tilt plus a saddle)."""
    v, u = np.mgrid[0:size, 0:size] / size - 0.5
    a, b, c = gradient
    return sky_adu * (1.0 + a * u + b * v + c * u * v)


def _field_wcs(conditions: FieldConditions, size: int) -> WCS:
    """TAN WCS, north rotated by ``rotation_deg`` from +y; fields 1 degree apart, so that
    grouping by footprint never merges two of them."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [35.0 + 1.0 * conditions.index, -4.8]
    wcs.wcs.crpix = [(size + 1) / 2.0] * 2
    scale, theta = conditions.pixel_scale / 3600.0, np.deg2rad(conditions.rotation_deg)
    wcs.wcs.cd = scale * np.array([[-np.cos(theta), np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    wcs.wcs.cunit = ["deg", "deg"]
    return wcs


def simulate_check_field(config: CheckConfig, field_index: int, seq: np.random.SeedSequence):
    """Draw and render the noise-free truth of one field.

    The conditions and the sources come from two children of ``seq``, so that the sources
    of a field do not depend on its PSF family (whose parameters take different draws).

    Returns
    -------
    truth : (size, size) float64, expected ADU of one exposure, sky included
    catalogue : astropy.table.Table, see :func:`draw_sources`, plus ra, dec (deg); meta holds
        fwhm_pix, gain, read_noise, sky_adu, sky_mag, sky_gradient, pixel_scale, psf, ...
    wcs : astropy.wcs.WCS
    conditions : FieldConditions
    """
    conditions_seq, sources_seq = seq.spawn(2)
    conditions = draw_conditions(config, field_index, np.random.default_rng(conditions_seq))
    catalogue = draw_sources(config, conditions, np.random.default_rng(sources_seq))
    truth = render_sources(catalogue, conditions, size=config.size)
    truth += sky_model(config.size, conditions.sky_adu, conditions.sky_gradient)
    wcs = _field_wcs(conditions, config.size)
    sky = wcs.pixel_to_world(catalogue["x"], catalogue["y"])
    catalogue["ra"], catalogue["dec"] = sky.ra.deg, sky.dec.deg
    catalogue.meta.update(conditions.describe())
    catalogue.meta.update(generator=f"GalSim {galsim.__version__}", exptime=config.exptime,
                          zeropoint=config.zeropoint, filter=config.filter)
    return truth, catalogue, wcs, conditions


def _worm(rng: np.random.Generator, hits: np.ndarray) -> None:
    """Add one cosmic ray to ``hits`` (e-): a curved track of 1-12 pixels, a quarter of
    them single pixels, whose charge per pixel is lognormal and bleeds 5-25% into the four
    neighbours (the demo's are straight, sharp-edged lines)."""
    ny, nx = hits.shape
    length = 1 if rng.uniform() < 0.25 else min(12, 2 + rng.geometric(0.25))
    y, x, angle = rng.uniform(0, ny), rng.uniform(0, nx), rng.uniform(0, 2 * np.pi)
    bleed = rng.uniform(0.05, 0.25)
    for _ in range(length):
        iy, ix = int(y), int(x)
        charge = rng.lognormal(np.log(1500.0), 0.6)
        if 0 <= iy < ny and 0 <= ix < nx:
            hits[iy, ix] += charge * (1 - bleed)
            for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
                if 0 <= iy + dy < ny and 0 <= ix + dx < nx:
                    hits[iy + dy, ix + dx] += charge * bleed / 4
        angle += rng.normal(0.0, 0.35)
        y, x = y + np.sin(angle), x + np.cos(angle)


def cosmic_ray_electrons(rng: np.random.Generator, shape: tuple[int, int], per_mpix: float) -> np.ndarray:
    """Electrons deposited by a Poisson number (``per_mpix`` per megapixel) of cosmic rays.

    Returns
    -------
    shape float64, e- (0 where no cosmic ray hit).
    """
    hits = np.zeros(shape)
    for _ in range(rng.poisson(per_mpix * shape[0] * shape[1] / 1e6)):
        _worm(rng, hits)
    return hits


def simulate_check_exposure(truth_adu: np.ndarray, config: CheckConfig, conditions: FieldConditions,
                            seq: np.random.SeedSequence) -> np.ndarray:
    """One noisy exposure, (ny, nx) float32 ADU, from a truth image in ADU.

    GalSim ``CCDNoise`` (Poisson in e- on truth * gain, Gaussian read noise in e-, back to
    ADU) from a deviate seeded by one child of ``seq``; cosmic rays from the other child.
    """
    noise_seq, ray_seq = seq.spawn(2)
    image = galsim.ImageD(np.array(truth_adu, dtype=np.float64))
    image.addNoise(galsim.CCDNoise(galsim.BaseDeviate(_galsim_seed(noise_seq)), sky_level=0.0,
                                   gain=conditions.gain, read_noise=conditions.read_noise))
    exposure = image.array
    if config.cosmic_rays:
        rng = np.random.default_rng(ray_seq)
        rays = cosmic_ray_electrons(rng, exposure.shape, config.cosmic_rays_per_mpix)
        exposure = exposure + rays / conditions.gain
    return exposure.astype(np.float32)


def check_header(config: CheckConfig, conditions: FieldConditions, wcs: WCS, field: str) -> fits.Header:
    """The header shared by a field's exposures and truth (no DATE-OBS, FWHM or HISTORY)."""
    header = wcs.to_header()
    header["OBJECT"] = (field, "check-survey field")
    header["FILTER"] = (config.filter, "filter name")
    header["EXPTIME"] = (config.exptime, "[s] exposure time")
    header["GAIN"] = (conditions.gain, "[e-/ADU] detector gain")
    header["RDNOISE"] = (conditions.read_noise, "[e-] read noise")
    header["BUNIT"] = ("adu", "pixel unit")
    zp_adu = config.zeropoint + 2.5 * np.log10(config.exptime / conditions.gain)
    header["MAGZERO"] = (round(float(zp_adu), 4), "magnitude of 1 ADU in this exposure")
    header["ORIGIN"] = ("astrodenoise check_survey", f"GalSim {galsim.__version__}, not the demo")
    return header


def _history(config: CheckConfig, conditions: FieldConditions) -> list[str]:
    return [f"astrodenoise check_survey (GalSim {galsim.__version__}): {dataclasses.asdict(config)}",
            f"check_survey field draws: {conditions.describe()}"]


def exposure_names(config: CheckConfig) -> dict[str, list[str]]:
    """``{field: [exposure, ...]}``, e.g. ``check00: [check00_e00, ...]``."""
    return {f"check{f:02d}": [f"check{f:02d}_e{e:02d}" for e in range(config.n_exposures)]
            for f in range(config.n_fields)}


def write_check_survey(outdir: str | Path, config: CheckConfig) -> dict[str, list[str]]:
    """Write the check survey under ``outdir`` (layout of the demo survey); return
    ``{field: [exposure, ...]}``. Every file is written atomically."""
    outdir = Path(outdir)
    fields = exposure_names(config)
    seeds = np.random.SeedSequence(config.seed).spawn(len(fields))
    start = datetime(2025, 11, 12, 5, 0, 0)
    for f, (field, exposures) in enumerate(tqdm(fields.items(), desc="check survey", unit="field")):
        field_seq, *exposure_seqs = seeds[f].spawn(1 + len(exposures))
        truth, catalogue, wcs, conditions = simulate_check_field(config, f, field_seq)
        header = check_header(config, conditions, wcs, field)
        history = _history(config, conditions)
        truth_header = header.copy()
        truth_header["COMMENT"] = "Noise-free truth: expected ADU of one exposure, sky included."
        truth_header["FWHM"] = (round(conditions.fwhm_pix, 4), "[pix] PSF FWHM of this field")
        io.write_fits_image(outdir / "truth" / f"{field}.fits", truth, truth_header, history=history)
        with io.atomic_path(outdir / "catalog" / f"{field}.ecsv") as tmp:
            catalogue.write(tmp, format="ascii.ecsv")
        for e, name in enumerate(exposures):
            exp_header = header.copy()
            when = start + timedelta(days=f, seconds=e * (config.exptime + 45))
            exp_header["DATE-OBS"] = (when.isoformat(), "UTC start of exposure")
            exposure = simulate_check_exposure(truth, config, conditions, exposure_seqs[e])
            io.write_fits_image(outdir / "raw" / f"{name}.fits", exposure, exp_header, history=history)
    return fields


def _parse(argv: list[str] | None) -> argparse.Namespace:
    defaults = CheckConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "simulate" / "check",
                        help="output directory (default: results/simulate/check of the repository)")
    parser.add_argument("--fields", type=int, default=defaults.n_fields, help="number of fields")
    parser.add_argument("--exposures", type=int, default=defaults.n_exposures,
                        help="exposures per field (>= 2 for Noise2Noise)")
    parser.add_argument("--size", type=int, default=defaults.size, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of every random draw")
    parser.add_argument("--no-cosmic-rays", action="store_true", help="leave cosmic rays out")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Command line: write the check survey; prints one line per field."""
    args = _parse(argv)
    config = CheckConfig(n_fields=args.fields, n_exposures=args.exposures, size=args.size, seed=args.seed,
                         cosmic_rays=not args.no_cosmic_rays)
    fields = write_check_survey(args.out, config)
    for field in fields:
        meta = Table.read(args.out / "catalog" / f"{field}.ecsv").meta
        print(f"{field}: {meta['psf']['family']} PSF, FWHM {meta['fwhm_pix']:.2f} px, "
              f"{meta['pixel_scale']:.3f} arcsec/px, gain {meta['gain']:.2f} e-/ADU, "
              f"read noise {meta['read_noise']:.1f} e-, sky {meta['sky_adu']:.1f} ADU")
    print(f"wrote {sum(map(len, fields.values()))} exposures of {len(fields)} fields to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
