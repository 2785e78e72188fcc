"""Tests of benchmarks/check_survey.py: the independent GalSim check survey."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table
from astropy.wcs import WCS, WCSCOMPARE_ANCILLARY

from astrodenoise import io
from astrodenoise.psf import fit_star

pytest.importorskip("galsim", reason="the check survey is drawn with GalSim: pip install -e '.[check]'")

_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "check_survey.py"


def _load_check_survey():
    """benchmarks/ is not a package: load the script as a module (registered, for dataclasses)."""
    spec = importlib.util.spec_from_file_location("check_survey", _SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


cs = _load_check_survey()

#: One field, two exposures, cosmic rays on (the default).
TINY = cs.CheckConfig(n_fields=1, n_exposures=2, size=96, seed=5)

#: A few bright stars and galaxies in 192 pixels; the seed gives a scene with an isolated
#: star (asserted by _isolated_star). No cosmic rays, so that every deviation from the
#: truth is the noise model's.
BRIGHT = cs.CheckConfig(n_fields=1, n_exposures=2, size=192, seed=19, star_density=8.0,
                        star_mags=(17.0, 19.0), galaxy_density=40.0, galaxy_mags=(20.0, 26.5),
                        cosmic_rays=False)

HEADER_KEYS = ("OBJECT", "FILTER", "EXPTIME", "GAIN", "RDNOISE", "BUNIT", "MAGZERO", "ORIGIN",
               "CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2")


def _read(root: Path, kind: str, name: str):
    return io.read_fits_image(root / kind / f"{name}.fits")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    cs.write_check_survey(root, TINY)
    return root


@pytest.fixture(scope="module", params=cs.PSF_FAMILIES)
def bright(request, tmp_path_factory) -> tuple[Path, Table]:
    """A BRIGHT survey whose one field has the PSF family of the parameter."""
    root = tmp_path_factory.mktemp(request.param.replace("+", "_"))
    cs.write_check_survey(root, dataclasses.replace(BRIGHT, psf_families=(request.param,)))
    return root, Table.read(root / "catalog" / "check00.ecsv")


def _sky(catalogue: Table, size: int) -> np.ndarray:
    return cs.sky_model(size, catalogue.meta["sky_adu"], tuple(catalogue.meta["sky_gradient"]))


def _isolated_star(catalogue: Table, size: int, radius: float) -> int:
    """Index of the brightest star whose aperture of ``radius`` pixels fits the image and
    may hold under 1% of its flux from other sources.

    A source at distance d puts at most the share of its flux beyond d - radius (less 8
    half-light radii for a galaxy) into the aperture; beyond r FWHM that is under
    0.3 / r^2 + 0.08 / r for every PSF family (a Kolmogorov-Airy's rings: 1.3% beyond 5 FWHM).
    """
    x, y, flux = (np.asarray(catalogue[c], float) for c in ("x", "y", "flux"))
    fwhm = catalogue.meta["fwhm_pix"]
    for i in np.argsort(-flux):
        gap = np.hypot(x - x[i], y - y[i]) - radius - 8 * np.asarray(catalogue["r_eff"], float)
        r = np.maximum(gap, 1e-9) / fwhm
        spill = flux * np.minimum(1.0, 0.3 / r**2 + 0.08 / r)
        spill[i] = 0.0
        inside = radius < x[i] < size - 1 - radius and radius < y[i] < size - 1 - radius
        if catalogue["type"][i] == "star" and inside and spill.sum() < 0.01 * flux[i]:
            return int(i)
    raise AssertionError("no isolated bright star in the test survey")


def test_layout_and_headers(tiny):
    fields = cs.exposure_names(TINY)

    assert fields == {"check00": ["check00_e00", "check00_e01"]}
    truth, truth_header = _read(tiny, "truth", "check00")
    catalogue = Table.read(tiny / "catalog" / "check00.ecsv")
    dates = set()
    for name in fields["check00"]:
        data, header = _read(tiny, "raw", name)
        assert data.shape == truth.shape == (96, 96) and data.dtype == np.float32
        assert all(key in header for key in HEADER_KEYS + ("DATE-OBS",))
        assert header["OBJECT"] == "check00" and header["BUNIT"] == "adu"
        assert "check_survey" in header["ORIGIN"] and "GalSim" in str(header["HISTORY"])
        # One pixel grid per field (ancillary cards such as DATE-OBS differ).
        assert WCS(header).wcs.compare(WCS(truth_header).wcs, cmp=WCSCOMPARE_ANCILLARY)
        assert header["GAIN"] == pytest.approx(catalogue.meta["gain"], rel=1e-3)
        dates.add(header["DATE-OBS"])
    assert len(dates) == 2
    assert truth_header["FWHM"] == pytest.approx(catalogue.meta["fwhm_pix"], rel=1e-3)
    assert {"x", "y", "flux", "mag", "type", "r_eff", "sersic_n", "bulge_fraction", "ra", "dec"} <= set(
        catalogue.colnames)
    assert {"fwhm_pix", "gain", "sky_adu", "sky_mag", "psf"} <= set(catalogue.meta)
    assert catalogue.meta["psf"]["family"] == "moffat"


def test_catalogue_matches_the_wcs_and_the_sources(tiny):
    _, header = _read(tiny, "truth", "check00")
    catalogue = Table.read(tiny / "catalog" / "check00.ecsv")

    sky = WCS(header).pixel_to_world(catalogue["x"], catalogue["y"])

    np.testing.assert_allclose(sky.ra.deg, catalogue["ra"], atol=1e-9)
    stars = catalogue["type"] == "star"
    assert stars.any() and (~stars).any()
    assert np.all(catalogue["r_eff"][stars] == 0) and np.all(catalogue["r_eff"][~stars] > 0)
    assert np.all((catalogue["bulge_fraction"] >= 0) & (catalogue["bulge_fraction"] <= 1))
    assert np.all((catalogue["sersic_n"][~stars] >= 1) & (catalogue["sersic_n"][~stars] <= 4))
    np.testing.assert_allclose(catalogue["flux"], 10 ** (-0.4 * (catalogue["mag"] - header["MAGZERO"])),
                               rtol=1e-3)


def test_isolated_star_flux_matches_catalogue(bright):
    root, catalogue = bright
    truth, _ = _read(root, "truth", "check00")
    radius = 5 * catalogue.meta["fwhm_pix"]  # holds all but 0.5-1.3% of the flux (Moffat to Airy)
    i = _isolated_star(catalogue, BRIGHT.size, radius)

    yy, xx = np.mgrid[0:BRIGHT.size, 0:BRIGHT.size]
    aperture = np.hypot(xx - catalogue["x"][i], yy - catalogue["y"][i]) < radius
    measured = (truth - _sky(catalogue, BRIGHT.size))[aperture].sum()

    assert measured == pytest.approx(catalogue["flux"][i], rel=0.02)


def test_star_fwhm_matches_catalogue(bright):
    root, catalogue = bright
    truth, _ = _read(root, "truth", "check00")
    fwhm = catalogue.meta["fwhm_pix"]
    i = _isolated_star(catalogue, BRIGHT.size, 3 * fwhm)
    half = int(np.ceil(3 * fwhm))

    measured, _ = fit_star(truth - _sky(catalogue, BRIGHT.size), catalogue["x"][i], catalogue["y"][i],
                           half=half, fwhm_guess=fwhm)

    assert measured == pytest.approx(fwhm, rel=0.10)


def test_noise_follows_gain_and_read_noise(bright):
    root, catalogue = bright
    truth, header = _read(root, "truth", "check00")
    gain, read_noise = header["GAIN"], header["RDNOISE"]
    blank = truth < np.percentile(truth, 40)  # the faintest pixels are blank sky
    predicted = np.sqrt(truth * gain + read_noise**2) / gain

    for name in ("check00_e00", "check00_e01"):
        residual = _read(root, "raw", name)[0] - truth

        assert residual[blank].std() == pytest.approx(predicted[blank].mean(), rel=0.05)
        assert abs(residual[blank].mean()) < 0.05 * predicted[blank].mean()
        assert (residual / predicted).std() == pytest.approx(1.0, rel=0.05)  # on the sources too


@pytest.mark.parametrize("family", cs.PSF_FAMILIES)
@pytest.mark.parametrize("bulge_fraction", [0.0, 0.4, 1.0])
def test_galaxy_flux_and_half_light_radius(family, bulge_fraction):
    config = dataclasses.replace(TINY, psf_families=(family,), fwhm=(0.6, 0.6))
    conditions = cs.draw_conditions(config, 0, np.random.default_rng(0))
    size, r_eff = 192, 12.0
    source = Table({"x": [95.3], "y": [96.6], "flux": [5000.0], "type": ["galaxy"], "r_eff": [r_eff],
                    "bulge_fraction": [bulge_fraction], "bulge_n": [4.0], "shear_g": [0.0],
                    "angle_deg": [0.0]})

    image = cs.render_sources(source, conditions, size=size)

    yy, xx = np.mgrid[0:size, 0:size]
    inside = np.hypot(xx - 95.3, yy - 96.6) < r_eff
    assert image.sum() == pytest.approx(5000.0, rel=0.005)
    assert image[inside].sum() / image.sum() == pytest.approx(0.5, abs=0.02)


def test_same_seed_same_arrays_other_seed_other_arrays(tmp_path, tiny):
    cs.write_check_survey(tmp_path / "again", TINY)
    cs.write_check_survey(tmp_path / "other", dataclasses.replace(TINY, seed=TINY.seed + 1))

    for kind, name in (("truth", "check00"), ("raw", "check00_e00"), ("raw", "check00_e01")):
        first, again = _read(tiny, kind, name)[0], _read(tmp_path / "again", kind, name)[0]
        np.testing.assert_array_equal(first, again)
        assert not np.array_equal(first, _read(tmp_path / "other", kind, name)[0])
    assert Table.read(tiny / "catalog" / "check00.ecsv").pformat() == Table.read(
        tmp_path / "again" / "catalog" / "check00.ecsv").pformat()


def test_more_exposures_leave_existing_ones_unchanged(tmp_path, tiny):
    cs.write_check_survey(tmp_path, dataclasses.replace(TINY, n_exposures=3))

    before, after = (_read(root, "raw", "check00_e01")[0] for root in (tiny, tmp_path))
    np.testing.assert_array_equal(before, after)


def _outliers(root: Path, name: str) -> int:
    truth, header = _read(root, "truth", "check00")
    sigma = np.sqrt(truth * header["GAIN"] + header["RDNOISE"] ** 2) / header["GAIN"]
    return int(((_read(root, "raw", name)[0] - truth) / sigma > 10).sum())


def test_cosmic_rays_on_by_default_and_off_with_the_flag(tmp_path):
    often = dataclasses.replace(TINY, cosmic_rays_per_mpix=3000.0)  # ~28 hits in 96 x 96 pixels
    cs.write_check_survey(tmp_path / "on", often)
    cs.main(["--out", str(tmp_path / "off"), "--size", "96", "--fields", "1", "--exposures", "2",
             "--seed", str(TINY.seed), "--no-cosmic-rays"])

    assert cs.CheckConfig().cosmic_rays and 10 <= cs.CheckConfig().cosmic_rays_per_mpix <= 100
    assert _outliers(tmp_path / "on", "check00_e00") > 20
    assert _outliers(tmp_path / "off", "check00_e00") == 0
    assert _outliers(tmp_path / "off", "check00_e01") == 0
    # The noise has its own stream: the hits are all that tells the two exposures apart.
    hits = _read(tmp_path / "on", "raw", "check00_e00")[0] - _read(tmp_path / "off", "raw", "check00_e00")[0]
    assert np.all(hits >= 0) and (hits > 0).sum() > 20


def test_cli_writes_the_default_layout(tmp_path, capsys):
    cs.main(["--out", str(tmp_path), "--size", "64", "--fields", "2", "--exposures", "2", "--seed", "3"])

    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == [
        "check00_e00.fits", "check00_e01.fits", "check01_e00.fits", "check01_e01.fits"]
    assert sorted(p.name for p in (tmp_path / "truth").iterdir()) == ["check00.fits", "check01.fits"]
    assert sorted(p.name for p in (tmp_path / "catalog").iterdir()) == ["check00.ecsv", "check01.ecsv"]
    assert "wrote 4 exposures of 2 fields" in capsys.readouterr().out
    first, second = (WCS(_read(tmp_path, "truth", f)[1]) for f in ("check00", "check01"))
    corners = first.pixel_to_world([0, 63], [0, 63])
    assert not any(0 <= v <= 63 for v in np.ravel(second.world_to_pixel(corners)))  # fields apart
