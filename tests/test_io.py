"""Tests of astrodenoise.io: FITS, zarr, JSON and checkpoint input/output."""

from __future__ import annotations

import gzip
import hashlib
import pickle

import numpy as np
import pytest
import torch
from astropy.io import fits
from astropy.wcs import WCS

from astrodenoise import io


def _write_raw_int16(path, raw: np.ndarray, **cards) -> None:
    """Write a 16-bit integer FITS byte for byte, so the stored values and scaling cards
    are exactly the ones given (astropy would rescale on write)."""
    header = fits.Header()
    header["SIMPLE"] = True
    header["BITPIX"] = 16
    header["NAXIS"] = 2
    header["NAXIS1"] = raw.shape[1]
    header["NAXIS2"] = raw.shape[0]
    for key, value in cards.items():
        header[key] = value
    body = raw.astype(">i2").tobytes()
    body += b"\0" * (-len(body) % 2880)
    path.write_bytes(header.tostring().encode("ascii") + body)


def _pixel_grid(shape):
    ny, nx = shape
    return np.meshgrid(np.linspace(0, nx - 1, 7), np.linspace(0, ny - 1, 5))


# --- FITS round trip -------------------------------------------------------------------


def test_write_then_read_keeps_data_wcs_and_adds_history(tmp_path, star_field, make_header):
    header = make_header(star_field.data.shape, OBJECT="m42")
    path = tmp_path / "out.fits"

    io.write_fits_image(path, star_field.data, header, history=["step one", "step two"])
    data, back = io.read_fits_image(path)

    np.testing.assert_array_equal(data, star_field.data)
    xs, ys = _pixel_grid(data.shape)
    expected = WCS(header).pixel_to_world(xs, ys)
    found = WCS(back).pixel_to_world(xs, ys)
    assert np.all(expected.separation(found).arcsec < 1e-6)
    assert list(back["HISTORY"])[-2:] == ["step one", "step two"]
    assert back["OBJECT"] == "m42"


def test_write_fits_image_does_not_modify_the_callers_header(tmp_path, star_field, make_header):
    header = make_header(star_field.data.shape)
    before = header.tostring()

    io.write_fits_image(tmp_path / "out.fits", star_field.data, header, history=["x"])

    assert header.tostring() == before


def test_blank_of_scaled_integer_image_becomes_nan_and_scaling_applies(tmp_path):
    raw = np.arange(-5, 15, dtype=np.int16).reshape(4, 5)
    raw[1, 2] = -32768
    path = tmp_path / "scaled.fits"
    _write_raw_int16(path, raw, BSCALE=2.0, BZERO=100.0, BLANK=-32768)

    data, header = io.read_fits_image(path)

    expected = raw.astype(np.float64) * 2.0 + 100.0
    expected[1, 2] = np.nan
    np.testing.assert_array_equal(data, expected.astype(np.float32))
    for key in ("BSCALE", "BZERO", "BLANK"):
        assert key not in header


def test_blank_of_unscaled_integer_image_becomes_nan(tmp_path):
    raw = np.arange(20, dtype=np.int16).reshape(4, 5)
    raw[3, 4] = -999
    path = tmp_path / "int.fits"
    _write_raw_int16(path, raw, BLANK=-999)

    data, _ = io.read_fits_image(path)

    assert np.isnan(data[3, 4])
    assert np.isfinite(data).sum() == raw.size - 1
    np.testing.assert_array_equal(data[0], [0, 1, 2, 3, 4])


def test_blank_of_unsigned_16bit_image_becomes_nan(tmp_path):
    raw = np.arange(-5, 15, dtype=np.int16).reshape(4, 5)
    raw[1, 2] = -32768  # stored value of BLANK; physical value 0 after BZERO
    path = tmp_path / "uint16.fits"
    _write_raw_int16(path, raw, BSCALE=1, BZERO=32768, BLANK=-32768)

    data, _ = io.read_fits_image(path)

    assert np.isnan(data[1, 2])
    assert data[0, 0] == -5 + 32768


def test_big_endian_float_comes_back_native_float32(tmp_path):
    values = np.linspace(-3.0, 7.0, 48).reshape(6, 8)
    path = tmp_path / "be.fits"
    fits.PrimaryHDU(values.astype(">f8")).writeto(path)

    data, _ = io.read_fits_image(path)

    assert data.dtype == np.dtype(np.float32)
    assert data.dtype.isnative
    np.testing.assert_allclose(data, values, rtol=1e-7)


def test_nan_and_infinite_pixels_become_nan(tmp_path):
    values = np.ones((8, 8), dtype=np.float32)
    values[0, 0], values[1, 1], values[2, 2] = np.nan, np.inf, -np.inf
    path = tmp_path / "nonfinite.fits"
    fits.PrimaryHDU(values).writeto(path)

    data, _ = io.read_fits_image(path)

    assert np.isnan(data[[0, 1, 2], [0, 1, 2]]).all()
    assert np.isfinite(data).sum() == values.size - 3


def test_image_in_extension_one_found_when_primary_is_empty(tmp_path, star_field, make_header):
    header = make_header(star_field.data.shape)
    header["EXTNAME"] = "SCI"
    path = tmp_path / "mef.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(star_field.data, header=header)]).writeto(path)

    data, back = io.read_fits_image(path)

    np.testing.assert_array_equal(data, star_field.data)
    assert back["EXTNAME"] == "SCI"
    assert io.celestial_wcs(back) is not None


@pytest.mark.parametrize("hdu", [1, "SCI"])
def test_explicit_hdu_by_index_or_extname(tmp_path, hdu):
    first, second = np.zeros((8, 8), np.float32), np.full((8, 8), 2.0, np.float32)
    path = tmp_path / "two.fits"
    fits.HDUList([fits.PrimaryHDU(first), fits.ImageHDU(second, name="SCI")]).writeto(path)

    data, _ = io.read_fits_image(path, hdu=hdu)

    np.testing.assert_array_equal(data, second)


def test_missing_hdu_raises_input_error_naming_file(tmp_path):
    path = tmp_path / "one.fits"
    fits.PrimaryHDU(np.ones((8, 8), np.float32)).writeto(path)

    with pytest.raises(io.InputError, match="HDU 'SCI'") as err:
        io.read_fits_image(path, hdu="SCI")

    assert err.value.path == str(path)


@pytest.mark.parametrize("suffix, compress", [(".fits.fz", "fz"), (".fits.gz", "gz")])
def test_compressed_fits_is_read(tmp_path, suffix, compress):
    values = np.arange(64 * 64, dtype=np.int32).reshape(64, 64) % 1000
    path = tmp_path / f"image{suffix}"
    if compress == "fz":
        fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(values)]).writeto(path)
    else:
        plain = tmp_path / "plain.fits"
        fits.PrimaryHDU(values).writeto(plain)
        path.write_bytes(gzip.compress(plain.read_bytes()))

    data, _ = io.read_fits_image(path)

    np.testing.assert_array_equal(data, values.astype(np.float32))


def _missing(tmp_path):
    return tmp_path / "absent.fits"


def _zero_bytes(tmp_path):
    path = tmp_path / "empty.fits"
    path.touch()
    return path


def _text(tmp_path):
    path = tmp_path / "notes.fits"
    path.write_text("this is a text file, not FITS\n" * 20)
    return path


def _all_nan(tmp_path):
    path = tmp_path / "allnan.fits"
    fits.PrimaryHDU(np.full((16, 16), np.nan, np.float32)).writeto(path)
    return path


def _cube(tmp_path):
    path = tmp_path / "cube.fits"
    fits.PrimaryHDU(np.zeros((3, 16, 16), np.float32)).writeto(path)
    return path


def _header_only(tmp_path):
    path = tmp_path / "header_only.fits"
    fits.PrimaryHDU().writeto(path)
    return path


def _truncated(tmp_path):
    path = tmp_path / "truncated.fits"
    fits.PrimaryHDU(np.ones((64, 64), np.float32)).writeto(path)
    path.write_bytes(path.read_bytes()[: 2880 + 1000])
    return path


@pytest.mark.filterwarnings("ignore:File may have been truncated")
@pytest.mark.parametrize("make_bad, problem", [
    (_missing, "does not exist"),
    (_zero_bytes, "empty"),
    (_text, "not a readable FITS"),
    (_all_nan, "no valid pixel"),
    (_cube, r"shape \(3, 16, 16\)"),
    (_header_only, "no image HDU"),
    (_truncated, "not a readable FITS"),
])
def test_unusable_file_raises_input_error_naming_it(tmp_path, make_bad, problem):
    path = make_bad(tmp_path)

    with pytest.raises(io.InputError, match=problem) as err:
        io.read_fits_image(path)

    assert err.value.path == str(path)
    assert str(path) in str(err.value)


def test_input_error_is_a_value_error():
    err = io.InputError("a/b.fits", "broken")

    assert isinstance(err, ValueError)
    assert str(err) == "a/b.fits: broken"


# --- atomic writes ---------------------------------------------------------------------


def test_atomic_path_leaves_nothing_when_body_raises(tmp_path):
    target = tmp_path / "sub" / "result.txt"

    with pytest.raises(RuntimeError, match="interrupted"), io.atomic_path(target) as tmp:
        tmp.write_text("half written")
        raise RuntimeError("interrupted")

    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_atomic_path_keeps_old_file_when_body_raises(tmp_path):
    target = tmp_path / "result.txt"
    target.write_text("old")

    with pytest.raises(RuntimeError), io.atomic_path(target) as tmp:
        tmp.write_text("new")
        raise RuntimeError("interrupted")

    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_path_replaces_an_existing_directory(tmp_path):
    target = tmp_path / "store.zarr"
    target.mkdir()
    (target / "stale").write_text("old")

    with io.atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "fresh").write_text("new")

    assert sorted(p.name for p in target.iterdir()) == ["fresh"]
    assert list(tmp_path.iterdir()) == [target]


# --- zarr ------------------------------------------------------------------------------


def test_zarr_round_trip_keeps_data_attrs_and_header(tmp_path, star_field, make_header):
    data = star_field.data.copy()
    data[3, 5] = np.nan
    header = make_header(data.shape, OBJECT="ngc1", EXPTIME=30.0)
    attrs = {"fits_header": header.tostring(), "bunit": "adu", "has_wcs": True}
    path = tmp_path / "image.zarr"

    io.write_zarr_image(path, data, chunks=48, attrs=attrs)
    array = io.open_zarr_image(path)

    np.testing.assert_array_equal(array[...], data)
    assert array.dtype == np.float32
    assert array.chunks == (48, 48)
    assert dict(array.attrs) == attrs
    back = io.header_from_attrs(array.attrs)
    assert back["OBJECT"] == "ngc1"
    assert back["EXPTIME"] == 30.0
    xs, ys = _pixel_grid(data.shape)
    np.testing.assert_allclose(WCS(back).wcs_pix2world(xs, ys, 0),
                               WCS(header).wcs_pix2world(xs, ys, 0))


def test_zarr_chunks_clipped_to_image(tmp_path):
    path = tmp_path / "small.zarr"

    io.write_zarr_image(path, np.zeros((20, 30), np.float32), chunks=512, attrs={})

    assert io.open_zarr_image(path).chunks == (20, 30)


def test_open_missing_zarr_raises_input_error(tmp_path):
    path = tmp_path / "nothing.zarr"

    with pytest.raises(io.InputError, match="ingest") as err:
        io.open_zarr_image(path)

    assert err.value.path == str(path)


# --- JSON and checkpoints --------------------------------------------------------------


def test_json_round_trip_converts_numpy_and_paths(tmp_path):
    payload = {"a": np.float32(1.5), "b": np.arange(3), "c": tmp_path, "d": {"e": [1, 2]}}
    path = tmp_path / "out.json"

    io.write_json(path, payload)

    assert io.read_json(path) == {"a": 1.5, "b": [0, 1, 2], "c": str(tmp_path), "d": {"e": [1, 2]}}


def test_checkpoint_round_trip(tmp_path):
    model = torch.nn.Conv2d(1, 2, 3)
    checkpoint = {"model": model.state_dict(), "model_config": {"depth": 2, "channels": 4},
                  "normalisation": {"scale": 2.5}, "history": [{"step": 1, "val_loss": 0.5}]}
    path = tmp_path / "model.pt"

    io.save_checkpoint(path, checkpoint)
    back = io.load_checkpoint(path)

    assert back.keys() == checkpoint.keys()
    for key, tensor in checkpoint["model"].items():
        assert torch.equal(back["model"][key], tensor)
    assert back["normalisation"] == {"scale": 2.5}
    assert back["history"] == [{"step": 1, "val_loss": 0.5}]


class _Payload:
    """A class that weights_only loading must refuse to rebuild."""


def test_load_checkpoint_refuses_arbitrary_objects(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"thing": _Payload()}, path)

    with pytest.raises(pickle.UnpicklingError):
        io.load_checkpoint(path)


def test_load_missing_checkpoint_raises_input_error(tmp_path):
    with pytest.raises(io.InputError, match="train step"):
        io.load_checkpoint(tmp_path / "none.pt")


def test_file_sha256_matches_hashlib(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(bytes(range(256)) * 1000)

    assert io.file_sha256(path, block=1000) == hashlib.sha256(path.read_bytes()).hexdigest()


# --- real data -------------------------------------------------------------------------


@pytest.mark.real_data
@pytest.mark.parametrize("name", ["tnx.fits", "a8280271.fits", "spitzer_example_image.fits"])
def test_real_images_read_as_native_float32(real_data_dir, name):
    path = real_data_dir / name

    data, header = io.read_fits_image(path)

    assert data.ndim == 2
    assert data.dtype == np.dtype(np.float32) and data.dtype.isnative
    assert np.isfinite(data).any()
    assert (header["NAXIS2"], header["NAXIS1"]) == data.shape


@pytest.mark.real_data
def test_real_unsigned_16bit_image_is_scaled_to_physical_values(real_data_dir):
    path = real_data_dir / "tnx.fits"
    with fits.open(path, do_not_scale_image_data=True) as hdul:
        raw = hdul[0].data.astype(np.float64)
        bzero = hdul[0].header["BZERO"]

    data, _ = io.read_fits_image(path)

    np.testing.assert_array_equal(data, (raw + bzero).astype(np.float32))
    assert data.min() >= 0
