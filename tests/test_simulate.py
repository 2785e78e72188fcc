"""Tests of astrodenoise.simulate: the demo survey with a known truth."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from astropy.table import Table
from astropy.wcs.utils import proj_plane_pixel_scales

from astrodenoise import io, simulate
from astrodenoise.cli import main
from astrodenoise.simulate import (
    SimulationConfig,
    exposure_names,
    moffat_psf,
    simulate_exposure,
    write_demo_survey,
    write_mosaic,
)

SMALL = SimulationConfig(n_fields=2, n_exposures=2, size=64, seed=3, cosmic_rays_per_mpix=0.0)


def _read(root, kind, name):
    return io.read_fits_image(root / kind / f"{name}.fits")


def test_exposure_names_layout():
    config = SimulationConfig(n_fields=2, n_exposures=3)

    names = exposure_names(config)

    assert names == {
        "field00": ["field00_e00", "field00_e01", "field00_e02"],
        "field01": ["field01_e00", "field01_e01", "field01_e02"],
    }


def test_demo_survey_writes_raw_truth_and_catalog(tmp_path):
    fields = write_demo_survey(tmp_path, SMALL)

    assert fields == exposure_names(SMALL)
    for field, exposures in fields.items():
        assert (tmp_path / "truth" / f"{field}.fits").is_file()
        assert (tmp_path / "catalog" / f"{field}.ecsv").is_file()
        for name in exposures:
            assert (tmp_path / "raw" / f"{name}.fits").is_file()


def test_same_seed_gives_identical_survey(tmp_path):
    write_demo_survey(tmp_path / "a", SMALL)
    write_demo_survey(tmp_path / "b", SMALL)

    for field, exposures in exposure_names(SMALL).items():
        for name in exposures:
            np.testing.assert_array_equal(_read(tmp_path / "a", "raw", name)[0],
                                          _read(tmp_path / "b", "raw", name)[0])
        cat_a = Table.read(tmp_path / "a" / "catalog" / f"{field}.ecsv")
        cat_b = Table.read(tmp_path / "b" / "catalog" / f"{field}.ecsv")
        assert len(cat_a) > 0
        for column in cat_a.colnames:
            assert np.array_equal(cat_a[column], cat_b[column])


def test_different_seed_gives_different_survey(tmp_path):
    write_demo_survey(tmp_path / "a", SMALL)
    write_demo_survey(tmp_path / "b", dataclasses.replace(SMALL, seed=SMALL.seed + 1))

    assert not np.array_equal(_read(tmp_path / "a", "raw", "field00_e00")[0],
                              _read(tmp_path / "b", "raw", "field00_e00")[0])


def test_adding_exposures_keeps_existing_ones(tmp_path):
    write_demo_survey(tmp_path / "two", SMALL)
    write_demo_survey(tmp_path / "three", dataclasses.replace(SMALL, n_exposures=3))

    for name in ("field00_e00", "field00_e01", "field01_e01"):
        np.testing.assert_array_equal(_read(tmp_path / "two", "raw", name)[0],
                                      _read(tmp_path / "three", "raw", name)[0])


def test_exposures_of_one_field_share_truth_but_differ(demo_survey):
    names = demo_survey.fields["field00"]
    first, second = (_read(demo_survey.root, "raw", n)[0] for n in names[:2])
    truth = _read(demo_survey.root, "truth", "field00")[0]

    assert first.shape == second.shape == truth.shape
    assert not np.array_equal(first, second)
    # Both are noisy draws around the same truth: their mean difference is ~0 and the
    # difference has sqrt(2) times the noise of one exposure.
    diff = first - second
    assert abs(diff.mean()) < 0.05 * diff.std()
    ratio = diff.std() / (first - truth).std()
    assert ratio == pytest.approx(np.sqrt(2), rel=0.05)


def test_blank_sky_noise_matches_gain_and_read_noise(demo_survey):
    config = demo_survey.config
    truth = _read(demo_survey.root, "truth", "field00")[0].astype(np.float64)
    exposure = _read(demo_survey.root, "raw", "field00_e00")[0].astype(np.float64)
    sky = float(np.median(truth))
    blank = truth < sky * 1.005  # sky only: no source light above 0.5% of the sky

    residual = (exposure - truth)[blank]
    expected = np.sqrt(truth[blank] * config.gain + config.read_noise**2) / config.gain

    assert blank.sum() > 2000
    assert abs(residual.mean()) < 0.05 * residual.std()
    assert residual.std() == pytest.approx(np.sqrt(np.mean(expected**2)), rel=0.03)


def _sky_adu(config, sky_mag):
    return 10 ** (-0.4 * (sky_mag - config.zeropoint)) * config.pixel_scale**2 * config.exptime / config.gain


def test_sky_level_follows_the_field_sky_magnitude(demo_survey):
    config = demo_survey.config
    truth = _read(demo_survey.root, "truth", "field00")[0]
    catalogue = Table.read(demo_survey.root / "catalog" / "field00.ecsv")
    sky_mag = catalogue.meta["sky_mag"]

    assert config.sky_mag <= sky_mag <= config.sky_mag + config.sky_mag_spread
    assert float(np.median(truth)) == pytest.approx(_sky_adu(config, sky_mag), rel=0.02)
    assert catalogue.meta["sky_adu"] == pytest.approx(_sky_adu(config, sky_mag))


def test_fields_get_different_skies_only_with_a_spread(tmp_path):
    spread = write_demo_survey(tmp_path / "a", dataclasses.replace(SMALL, n_fields=2, n_exposures=1))
    flat = write_demo_survey(tmp_path / "b", dataclasses.replace(SMALL, n_fields=2, n_exposures=1,
                                                                 sky_mag_spread=0.0))
    skies = [Table.read(tmp_path / "a" / "catalog" / f"{f}.ecsv").meta["sky_mag"] for f in spread]
    flat_skies = [Table.read(tmp_path / "b" / "catalog" / f"{f}.ecsv").meta["sky_mag"] for f in flat]

    assert skies[0] != skies[1]
    assert flat_skies == [SMALL.sky_mag, SMALL.sky_mag]


def test_simulate_exposure_adds_cosmic_rays_only_when_asked():
    truth = np.full((256, 256), 100.0)
    clean = dataclasses.replace(SMALL, cosmic_rays_per_mpix=0.0)
    hit = dataclasses.replace(SMALL, cosmic_rays_per_mpix=2000.0)

    quiet = simulate_exposure(truth, clean, np.random.default_rng(0))
    noisy = simulate_exposure(truth, hit, np.random.default_rng(0))

    sigma = np.sqrt(100.0 * SMALL.gain + SMALL.read_noise**2) / SMALL.gain
    assert quiet.dtype == np.float32
    assert (quiet - 100.0).max() < 6 * sigma
    assert (noisy - 100.0).max() > 20 * sigma


@pytest.mark.parametrize("key", ["EXPTIME", "GAIN", "RDNOISE", "FILTER", "BUNIT", "DATE-OBS",
                                 "OBJECT", "MAGZERO"])
def test_exposure_header_has_keyword(demo_survey, key):
    _, header = _read(demo_survey.root, "raw", "field00_e00")

    assert key in header


def test_exposure_header_values_and_wcs(demo_survey):
    config = demo_survey.config
    _, header = _read(demo_survey.root, "raw", "field00_e01")

    assert header["EXPTIME"] == config.exptime
    assert header["GAIN"] == config.gain
    assert header["RDNOISE"] == config.read_noise
    assert header["FILTER"] == config.filter
    assert header["OBJECT"] == "field00"
    wcs = io.celestial_wcs(header)
    assert wcs is not None
    scales = proj_plane_pixel_scales(wcs) * 3600
    np.testing.assert_allclose(scales, [config.pixel_scale] * 2, rtol=1e-9)


def test_exposures_have_distinct_dates(demo_survey):
    dates = [_read(demo_survey.root, "raw", n)[1]["DATE-OBS"]
             for n in demo_survey.fields["field00"]]

    assert len(set(dates)) == len(dates)
    assert dates == sorted(dates)


def test_catalogue_columns_and_values(demo_survey):
    catalogue = Table.read(demo_survey.root / "catalog" / "field00.ecsv")
    size = demo_survey.config.size

    assert {"x", "y", "ra", "dec", "flux", "mag", "type"} <= set(catalogue.colnames)
    assert len(catalogue) > 10
    assert np.all(catalogue["flux"] > 0)
    assert set(catalogue["type"]) <= {"star", "galaxy"}
    assert np.all((catalogue["x"] >= -0.5) & (catalogue["x"] < size - 0.5))
    assert np.all((catalogue["y"] >= -0.5) & (catalogue["y"] < size - 0.5))
    lo, hi = demo_survey.config.mag_range
    assert np.all((catalogue["mag"] >= lo) & (catalogue["mag"] <= hi))
    # Brighter magnitude, more flux.
    order = np.argsort(catalogue["mag"])
    assert np.all(np.diff(np.asarray(catalogue["flux"])[order]) <= 0)


def test_catalogue_sky_positions_follow_the_image_wcs(demo_survey):
    catalogue = Table.read(demo_survey.root / "catalog" / "field00.ecsv")
    wcs = io.celestial_wcs(_read(demo_survey.root, "raw", "field00_e00")[1])

    sky = wcs.pixel_to_world(catalogue["x"], catalogue["y"])

    np.testing.assert_allclose(sky.ra.deg, catalogue["ra"], atol=1e-9)
    np.testing.assert_allclose(sky.dec.deg, catalogue["dec"], atol=1e-9)


def test_bright_star_is_in_the_truth_at_its_catalogue_position(demo_survey):
    catalogue = Table.read(demo_survey.root / "catalog" / "field00.ecsv")
    truth = _read(demo_survey.root, "truth", "field00")[0]
    stars = catalogue[catalogue["type"] == "star"]
    star = stars[np.argmin(stars["mag"])]

    ix, iy = int(round(star["x"])), int(round(star["y"]))
    window = truth[max(iy - 2, 0):iy + 3, max(ix - 2, 0):ix + 3]

    assert window.max() == truth[max(iy - 6, 0):iy + 7, max(ix - 6, 0):ix + 7].max()
    assert window.max() - np.median(truth) > 0.02 * star["flux"]


@pytest.mark.parametrize("dx, dy", [(0.0, 0.0), (0.3, -0.2)])
def test_moffat_psf_is_normalised_and_centred(dx, dy):
    stamp = moffat_psf(4.0, 3.5, half=15, dx=dx, dy=dy)

    yy, xx = np.mgrid[-15:16, -15:16]
    assert stamp.shape == (31, 31)
    assert stamp.sum() == pytest.approx(1.0)
    assert (stamp * xx).sum() == pytest.approx(dx, abs=0.02)
    assert (stamp * yy).sum() == pytest.approx(dy, abs=0.02)


def test_moffat_psf_has_requested_fwhm():
    stamp = moffat_psf(6.0, 3.5, half=20)

    profile = stamp[20, :] / stamp[20, 20]
    above = np.nonzero(profile >= 0.5)[0]

    assert len(above) in (5, 6, 7)  # pixel-integrated FWHM of 6 px, +- one pixel


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(TypeError):
        SimulationConfig.from_dict({"sizee": 10})


def test_from_dict_turns_mag_range_into_tuple():
    assert SimulationConfig.from_dict({"mag_range": [18, 22]}).mag_range == (18, 22)


MOSAIC = SimulationConfig(size=300, seed=5, star_density=200.0, galaxy_density=100.0)


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory):
    """A 300^2 mosaic written in 128-row bands, with FITS copies."""
    root = tmp_path_factory.mktemp("mosaic")
    catalogue = write_mosaic(root, MOSAIC, name="m", chunk=128, fits_too=True)
    return root, catalogue


def _mosaic_arrays(root, name="m"):
    return (io.open_zarr_image(root / "raw" / f"{name}.zarr")[...],
            io.open_zarr_image(root / "truth" / f"{name}.zarr")[...])


def test_mosaic_zarr_is_sharded_by_chunk_and_equals_fits(mosaic):
    root, _ = mosaic
    raw, truth = _mosaic_arrays(root)

    assert io.open_zarr_image(root / "raw" / "m.zarr").shards == (128, 128)
    assert raw.shape == truth.shape == (300, 300) and raw.dtype == np.float32
    assert np.isfinite(raw).all() and np.isfinite(truth).all()
    np.testing.assert_array_equal(io.read_fits_image(root / "raw" / "m.fits")[0], raw)
    np.testing.assert_array_equal(io.read_fits_image(root / "truth" / "m.fits")[0], truth)
    assert sorted(p.name for p in root.rglob(".*")) == []  # no temporaries left


def test_mosaic_header_is_ingest_like_with_wcs(mosaic):
    root, _ = mosaic
    header = io.header_from_attrs(io.open_zarr_image(root / "raw" / "m.zarr").attrs)

    assert header["GAIN"] == MOSAIC.gain and header["OBJECT"] == "m"
    np.testing.assert_allclose(proj_plane_pixel_scales(io.celestial_wcs(header)) * 3600,
                               [MOSAIC.pixel_scale] * 2, rtol=1e-9)


def test_mosaic_blank_sky_noise_matches_gain_and_read_noise(mosaic):
    root, catalogue = mosaic
    raw, truth = _mosaic_arrays(root)
    blank = truth < catalogue.meta["sky_adu"] * 1.02

    residual = (raw - truth)[blank].astype(np.float64)
    expected = np.sqrt(np.mean(truth[blank] * MOSAIC.gain + MOSAIC.read_noise**2)) / MOSAIC.gain

    robust = 1.4826 * np.median(np.abs(residual - np.median(residual)))  # cosmic rays clipped
    assert robust == pytest.approx(expected, rel=0.05)


def test_mosaic_truth_peaks_at_the_brightest_star(mosaic):
    root, catalogue = mosaic
    _, truth = _mosaic_arrays(root)
    inside = (catalogue["x"] > 30) & (catalogue["x"] < 270) & (catalogue["y"] > 30) & (catalogue["y"] < 270)
    stars = catalogue[(catalogue["type"] == "star") & inside]
    star = stars[np.argmin(stars["mag"])]
    ix, iy = int(round(star["x"])), int(round(star["y"]))

    box = truth[iy - 5:iy + 6, ix - 5:ix + 6]
    assert box.argmax() == np.ravel_multi_index((5, 5), box.shape)
    assert np.allclose(np.asarray(catalogue["x"]) * 5, np.round(np.asarray(catalogue["x"]) * 5))


@pytest.mark.parametrize("kind", ["star", "galaxy"])
def test_mosaic_band_renders_each_source_with_its_flux(mosaic, kind):
    _, catalogue = mosaic
    banks = simulate.stamp_banks(MOSAIC, np.random.default_rng(0))
    source = catalogue[catalogue["type"] == kind][:1]
    source["x"], source["y"] = source["x"] % 1 + 150, source["y"] % 1 + 150

    band = simulate.render_mosaic_band(source, banks, MOSAIC, rows=(40, 260), sky_adu=0.0,
                                       gradient=(0.0, 0.0))

    assert band.sum() == pytest.approx(source["flux"][0], rel=0.01)
    peak = np.unravel_index(band.argmax(), band.shape)
    assert abs(peak[0] + 40 - 150) <= 1 and abs(peak[1] - 150) <= 1


def test_mosaic_truth_does_not_depend_on_the_chunk(tmp_path, mosaic):
    root, catalogue = mosaic

    other = write_mosaic(tmp_path, MOSAIC, name="m", chunk=64)

    np.testing.assert_array_equal(_mosaic_arrays(tmp_path)[1], _mosaic_arrays(root)[1])
    assert len(other) == len(catalogue) and np.array_equal(other["flux"], catalogue["flux"])


def test_mosaic_same_seed_same_pixels(tmp_path, mosaic):
    root, _ = mosaic

    write_mosaic(tmp_path, MOSAIC, name="m", chunk=128)

    np.testing.assert_array_equal(_mosaic_arrays(tmp_path)[0], _mosaic_arrays(root)[0])


def test_cli_simulate_writes_a_mosaic(tmp_path, capsys):
    status = main(["simulate", "--out", str(tmp_path), "--mosaic", "big", "--chunk", "64",
                   "--config", '{"size": 160, "seed": 1}'])

    assert status == 0 and "mosaic big" in capsys.readouterr().out
    assert io.open_zarr_image(tmp_path / "raw" / "big.zarr").shape == (160, 160)
    assert (tmp_path / "catalog" / "big.ecsv").is_file() and not (tmp_path / "raw" / "big.fits").exists()
