"""Tests of the streaming writers in astrodenoise.io: FITS and sharded zarr written block by block."""

from __future__ import annotations

import filecmp
import pickle

import numpy as np
import pytest
from astropy.io import fits

from astrodenoise import io

SHAPE = (150, 203)


def _blocks(shape, size):
    for y in range(0, shape[0], size):
        for x in range(0, shape[1], size):
            yield slice(y, min(y + size, shape[0])), slice(x, min(x + size, shape[1]))


@pytest.fixture
def header(make_header):
    header = make_header(SHAPE, OBJECT="ngc 253", BUNIT="adu")
    header["BZERO"] = 32768.0  # layout cards of the input must not reach the output
    header["HISTORY"] = "from the input"
    return header


@pytest.mark.parametrize("block", [16, 64, 500])
def test_streamed_fits_has_the_bytes_of_write_fits_image(tmp_path, header, block):
    data = np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)
    io.write_fits_image(tmp_path / "whole.fits", data, header, history=["one", "two"])

    (region,) = io.create_fits_image(tmp_path / "streamed.fits", SHAPE, header, history=["one", "two"])
    for key in reversed(list(_blocks(SHAPE, block))):  # any order
        region[key] = data[key]

    assert filecmp.cmp(tmp_path / "whole.fits", tmp_path / "streamed.fits", shallow=False)


def test_streamed_fits_extensions_match_hdulist_writeto(tmp_path, header):
    rng = np.random.default_rng(1)
    data, err = (rng.normal(size=SHAPE).astype(np.float32) for _ in range(2))
    expected = fits.HDUList([fits.PrimaryHDU(data, io.output_header(header, ["x"])),
                             fits.ImageHDU(err, io.output_header(header), name="ERR")])
    expected.writeto(tmp_path / "expected.fits")

    image, sigma = io.create_fits_image(tmp_path / "streamed.fits", SHAPE, header, history=["x"],
                                        extensions={"ERR": header})
    for key in _blocks(SHAPE, 64):
        image[key], sigma[key] = data[key], err[key]

    assert filecmp.cmp(tmp_path / "expected.fits", tmp_path / "streamed.fits", shallow=False)
    with fits.open(tmp_path / "streamed.fits") as hdul:
        np.testing.assert_array_equal(hdul["ERR"].data, err)
        assert "BZERO" not in hdul[0].header and hdul[0].header["OBJECT"] == "ngc 253"


def test_fits_region_pickles_and_rejects_strided_writes(tmp_path, header):
    (region,) = io.create_fits_image(tmp_path / "a.fits", SHAPE, header)

    clone = pickle.loads(pickle.dumps(region))
    clone[0:2, 0:3] = np.ones((2, 3), np.float32)

    assert clone.shape == SHAPE and clone.dtype == np.float32
    np.testing.assert_array_equal(fits.getdata(tmp_path / "a.fits")[0:2, 0:3], 1.0)
    with pytest.raises(ValueError, match="step 1"):
        region[0:4:2, 0:3] = np.zeros((2, 3), np.float32)


def test_create_zarr_image_is_sharded_and_reads_back(tmp_path):
    data = np.random.default_rng(2).normal(size=SHAPE).astype(np.float32)

    image, err = io.create_zarr_image(tmp_path / "s.zarr", SHAPE, shard=64, attrs={"BUNIT": "adu"},
                                      names=("image", "err"))
    for key in _blocks(SHAPE, 64):
        image[key] = data[key]

    assert image.shards == (64, 64) and image.chunks == (64, 64)
    np.testing.assert_array_equal(io.open_zarr_image(tmp_path / "s.zarr")[...], data)
    assert io.open_zarr_image(tmp_path / "s.zarr").attrs["BUNIT"] == "adu"
    assert np.isnan(io.open_zarr_array(tmp_path / "s.zarr", "err")[...]).all()  # never written


@pytest.mark.parametrize("shard, chunk", [(1024, 512), (2048, 512), (384, 384), (1000, 500)])
def test_large_shards_get_inner_chunks_that_divide_them(tmp_path, shard, chunk):
    (array,) = io.create_zarr_image(tmp_path / "s.zarr", (4096, 4096), shard=shard, attrs={})

    assert array.shards == (shard, shard) and array.chunks == (chunk, chunk)


def test_remove_stale_temporaries_only_touches_this_outputs(tmp_path):
    (tmp_path / ".d.fits.x1.tmp").mkdir()
    (tmp_path / ".d.fits.x2.tmp").mkdir()
    (tmp_path / ".other.fits.x3.tmp").mkdir()
    (tmp_path / "d.fits").write_bytes(b"")

    removed = io.remove_stale_temporaries(tmp_path / "d.fits")

    assert sorted(p.name for p in removed) == [".d.fits.x1.tmp", ".d.fits.x2.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.fits.x3.tmp", "d.fits"]
