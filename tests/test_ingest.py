"""Tests of astrodenoise.ingest: FITS to zarr and discovery of the user's exposures."""

from __future__ import annotations

import gzip
import logging

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from astrodenoise import io
from astrodenoise.ingest import (
    IngestConfig,
    check_fits_signature,
    discover_exposures,
    exposure_name,
    ingest,
)


def _fits(path, shape=(8, 8), value=1.0):
    fits.PrimaryHDU(np.full(shape, value, np.float32)).writeto(path)
    return path


# --- ingest ----------------------------------------------------------------------------


def test_ingest_writes_store_with_header_wcs_flag_and_provenance(tmp_path, fits_with_wcs):
    out = tmp_path / "exposure.zarr"
    expected, header = io.read_fits_image(fits_with_wcs)

    attrs = ingest(fits_with_wcs, out, config=IngestConfig(chunk=64))

    array = io.open_zarr_image(out)
    np.testing.assert_array_equal(array[...], expected)
    assert array.chunks == (64, 64)
    assert dict(array.attrs) == attrs
    assert attrs["has_wcs"] is True
    assert attrs["bunit"] == "adu"
    assert attrs["nan_fraction"] == 0.0
    assert attrs["source_file"] == str(fits_with_wcs)
    assert attrs["source_sha256"] == io.file_sha256(fits_with_wcs)
    stored = io.header_from_attrs(array.attrs)
    assert stored["OBJECT"] == "testfield"
    assert stored["GAIN"] == header["GAIN"]
    np.testing.assert_allclose(WCS(stored).wcs_pix2world([[0, 0], [100, 50]], 0),
                               WCS(header).wcs_pix2world([[0, 0], [100, 50]], 0))


def test_ingest_without_wcs_flags_it_and_records_nan_fraction(tmp_path, caplog):
    data = np.ones((64, 80), np.float32)
    data[:16, :] = np.nan
    path = tmp_path / "nowcs.fits"
    fits.PrimaryHDU(data).writeto(path)

    with caplog.at_level(logging.WARNING, logger="astrodenoise.ingest"):
        attrs = ingest(path, tmp_path / "nowcs.zarr")

    assert attrs["has_wcs"] is False
    assert attrs["nan_fraction"] == pytest.approx(0.25)
    assert "no usable celestial WCS" in caplog.text


def test_ingest_selects_hdu_from_config(tmp_path):
    path = tmp_path / "mef.fits"
    fits.HDUList([fits.PrimaryHDU(np.zeros((64, 64), np.float32)),
                  fits.ImageHDU(np.full((64, 64), 5.0, np.float32), name="SCI")]).writeto(path)
    out = tmp_path / "sci.zarr"

    ingest(path, out, config=IngestConfig(hdu="SCI"))

    assert np.all(io.open_zarr_image(out)[...] == 5.0)


def test_too_small_image_raises_and_writes_nothing(tmp_path):
    path = _fits(tmp_path / "small.fits", shape=(63, 200))
    out = tmp_path / "small.zarr"

    with pytest.raises(io.InputError, match="min_size=64") as err:
        ingest(path, out, config=IngestConfig(min_size=64))

    assert err.value.path == str(path)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.fits"]


def test_unreadable_input_writes_nothing(tmp_path):
    path = tmp_path / "text.fits"
    path.write_text("not fits at all\n" * 10)
    out = tmp_path / "text.zarr"

    with pytest.raises(io.InputError):
        ingest(path, out)

    assert not out.exists()


# --- exposure names and signatures -----------------------------------------------------


@pytest.mark.parametrize("filename, name", [
    ("field00_e00.fits", "field00_e00"),
    ("night1/img.fits.fz", "img"),
    ("img.fits.gz", "img"),
    ("img.fit.gz", "img"),
    ("IMG.FITS", "IMG"),
    ("a.fts", "a"),
    ("a.fit", "a"),
    ("tile.fz", "tile"),
    ("M13 blue (1).fits", "M13_blue__1_"),
    ("v1.2.fits", "v1.2"),
])
def test_exposure_name_strips_fits_suffix_and_makes_name_path_safe(filename, name):
    assert exposure_name(filename) == name


def test_check_fits_signature_accepts_fits_and_gzip(tmp_path):
    plain = _fits(tmp_path / "a.fits")
    zipped = tmp_path / "b.fits.gz"
    zipped.write_bytes(gzip.compress(plain.read_bytes()))

    check_fits_signature(plain)
    check_fits_signature(zipped)


@pytest.mark.parametrize("content, problem", [
    (None, "does not exist"),
    (b"", "empty"),
    (b"PK\x03\x04 zip archive", "not a FITS file"),
])
def test_check_fits_signature_rejects(tmp_path, content, problem):
    path = tmp_path / "bad.fits"
    if content is not None:
        path.write_bytes(content)

    with pytest.raises(io.InputError, match=problem) as err:
        check_fits_signature(path)

    assert err.value.path == str(path)


# --- discover_exposures ----------------------------------------------------------------


def test_discover_missing_directory_names_it(tmp_path):
    missing = tmp_path / "nowhere"

    with pytest.raises(io.InputError, match="does not exist") as err:
        discover_exposures(str(missing))

    assert err.value.path == str(missing)


def test_discover_empty_directory_names_it(tmp_path):
    with pytest.raises(io.InputError, match="no FITS file") as err:
        discover_exposures(str(tmp_path))

    assert err.value.path == str(tmp_path)


def test_discover_rejects_non_fits_file_named_fits(tmp_path):
    _fits(tmp_path / "good.fits")
    fake = tmp_path / "fake.fits"
    fake.write_text("<html>404 not found</html>")

    with pytest.raises(io.InputError, match="not a FITS file") as err:
        discover_exposures(str(tmp_path))

    assert err.value.path == str(fake)


def test_discover_glob_without_match_names_the_pattern(tmp_path):
    _fits(tmp_path / "a.fits")
    pattern = str(tmp_path / "*.fits.fz")

    with pytest.raises(io.InputError, match="no file matches") as err:
        discover_exposures(pattern)

    assert err.value.path == pattern


def test_discover_glob_matches_files(tmp_path):
    for name in ("a.fits", "b.fits", "c.fit"):
        _fits(tmp_path / name)

    exposures = discover_exposures(str(tmp_path / "*.fits"))

    assert sorted(exposures) == ["a", "b"]


def test_discover_directory_ignores_other_files(tmp_path, caplog):
    _fits(tmp_path / "a.fits")
    _fits(tmp_path / "b.fits.fz")
    (tmp_path / "notes.txt").write_text("observing log")

    with caplog.at_level(logging.WARNING, logger="astrodenoise.ingest"):
        exposures = discover_exposures(str(tmp_path))

    assert exposures == {
        "a": {"path": str(tmp_path / "a.fits"), "field": "a"},
        "b": {"path": str(tmp_path / "b.fits.fz"), "field": "b"},
    }
    assert "notes.txt" in caplog.text


def test_discover_single_file(tmp_path):
    path = _fits(tmp_path / "one.fits")

    assert discover_exposures(str(path)) == {"one": {"path": str(path), "field": "one"}}


def test_discover_sheet_groups_exposures_into_fields(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("e1", "e2", "e3"):
        _fits(raw / f"{name}.fits")
    absolute = _fits(tmp_path / "e4.fits")
    sheet = tmp_path / "sheet.csv"
    sheet.write_text("path,field\nraw/e1.fits,M 13\nraw/e2.fits, M 13\n"
                     f"raw/e3.fits,M92\n{absolute},M92\n")

    exposures = discover_exposures(sheet=str(sheet))

    assert {name: e["field"] for name, e in exposures.items()} == {
        "e1": "M_13", "e2": "M_13", "e3": "M92", "e4": "M92"}
    assert exposures["e1"]["path"] == str(raw / "e1.fits")
    assert exposures["e4"]["path"] == str(absolute)


def test_discover_sheet_takes_precedence_over_path(tmp_path):
    _fits(tmp_path / "listed.fits")
    _fits(tmp_path / "unlisted.fits")
    sheet = tmp_path / "sheet.csv"
    sheet.write_text("path,field\nlisted.fits,f\n")

    assert list(discover_exposures(str(tmp_path), sheet=str(sheet))) == ["listed"]


@pytest.mark.parametrize("text", ["", "file,name\na.fits,f\n"])
def test_discover_sheet_without_columns_raises(tmp_path, text):
    sheet = tmp_path / "sheet.csv"
    sheet.write_text(text)

    with pytest.raises(io.InputError, match="'path' and 'field'") as err:
        discover_exposures(sheet=str(sheet))

    assert err.value.path == str(sheet)


def test_discover_missing_sheet_raises(tmp_path):
    with pytest.raises(io.InputError, match="exposure sheet does not exist"):
        discover_exposures(sheet=str(tmp_path / "none.csv"))


def test_discover_sheet_with_non_fits_entry_raises(tmp_path):
    (tmp_path / "x.fits").write_text("plain text")
    sheet = tmp_path / "sheet.csv"
    sheet.write_text("path,field\nx.fits,f\n")

    with pytest.raises(io.InputError, match="not a FITS file") as err:
        discover_exposures(sheet=str(sheet))

    assert err.value.path == str(tmp_path / "x.fits")


@pytest.mark.parametrize("first, second", [
    ("a.fits", "a.fits.fz"),
    ("a b.fits", "a_b.fits"),
])
def test_discover_rejects_duplicate_exposure_names(tmp_path, first, second):
    _fits(tmp_path / first)
    _fits(tmp_path / second)

    with pytest.raises(io.InputError, match="same exposure name"):
        discover_exposures(str(tmp_path))


def test_discover_rejects_duplicate_names_across_directories_in_sheet(tmp_path):
    for night in ("n1", "n2"):
        (tmp_path / night).mkdir()
        _fits(tmp_path / night / "img.fits")
    sheet = tmp_path / "sheet.csv"
    sheet.write_text("path,field\nn1/img.fits,f\nn2/img.fits,f\n")

    with pytest.raises(io.InputError, match="rename one of them") as err:
        discover_exposures(sheet=str(sheet))

    assert err.value.path == str(tmp_path / "n2" / "img.fits")


def test_discover_without_any_input_raises():
    with pytest.raises(io.InputError, match="inputs.path"):
        discover_exposures()


# --- real data -------------------------------------------------------------------------


@pytest.mark.real_data
def test_ingest_real_image_keeps_its_wcs(real_data_dir, tmp_path):
    path = real_data_dir / "tnx.fits"

    attrs = ingest(path, tmp_path / "tnx.zarr", config=IngestConfig(chunk=128))

    assert attrs["has_wcs"] is True
    array = io.open_zarr_image(tmp_path / "tnx.zarr")
    assert array.shape == (400, 400)
    assert io.header_from_attrs(array.attrs)["GAIN"] == pytest.approx(2.4)


def test_batch_size_is_one_for_small_surveys_and_bounds_jobs_for_large():
    from astrodenoise.ingest import batch_size

    assert batch_size(1000) == 1
    assert batch_size(10_000) == 20
    assert batch_size(10_000, 3) == 3


def test_batches_cover_every_exposure_once_and_adding_one_changes_one_batch():
    from astrodenoise.ingest import batch_exposures

    names = [f"exp{i:04d}" for i in range(1000)]
    batches = batch_exposures(names, 20)
    grown = batch_exposures(names + ["exp9999"], 20)

    assert sorted(n for members in batches.values() for n in members) == names
    assert len(batches) <= 64 and max(map(len, batches.values())) < 60
    changed = [b for b in grown if grown[b] != batches.get(b)]
    assert len(changed) == 1 and "exp9999" in grown[changed[0]]


def test_batches_of_one_are_named_after_the_exposure():
    from astrodenoise.ingest import batch_exposures

    assert batch_exposures(["b", "a"], 1) == {"a": ["a"], "b": ["b"]}
    with pytest.raises(ValueError, match="at least 1"):
        batch_exposures(["a"], 0)
