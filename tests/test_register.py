"""Tests of astrodenoise.register (and the grouping of astrodenoise.fields): a field on one grid."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from astrodenoise import io
from astrodenoise.alignment import align_to_reference, load_aligned, same_grid
from astrodenoise.fields import group_by_header
from astrodenoise.register import register, register_field
from conftest import REAL_DATA, SIZE, shared_sky, sky_cutout, tan_header


def test_wcs_offset_is_used_when_both_have_a_wcs():
    sky = shared_sky()
    reference, moved = sky_cutout(sky, 30, 30, seed=1), sky_cutout(sky, 25, 34, seed=2)
    header_ref = tan_header((SIZE, SIZE))
    header = tan_header((SIZE, SIZE))
    header["CRPIX1"] -= 4  # the same sky lands 4 pixels further left, 5 pixels lower
    header["CRPIX2"] += 5

    result = register_field([reference, moved], [header_ref, header])

    assert result[1]["method"] == "wcs" and not result[1]["resampled"]
    assert result[1]["offset"] == pytest.approx((-5.0, 4.0), abs=1e-6)


def test_other_grid_is_resampled_with_reproject():
    header_ref = tan_header((SIZE, SIZE))
    header = tan_header((SIZE, SIZE), scale_arcsec=0.4)
    image = sky_cutout(shared_sky(), 30, 30, seed=1)

    result = register_field([image, image], [header_ref, header])
    aligned = align_to_reference(image, header, result[1], ref_header=header_ref, ref_shape=(SIZE, SIZE))

    assert not same_grid(io.celestial_wcs(header_ref), io.celestial_wcs(header))
    assert result[1]["method"] == "reproject" and result[1]["resampled"]
    assert aligned.shape == (SIZE, SIZE) and np.isfinite(aligned).mean() > 0.3


def test_grouping_by_filter_and_footprint():
    shape = (100, 100)
    headers = {
        "a": tan_header(shape, FILTER="r"),
        "b": tan_header(shape, crval=(150.002, 2.2), FILTER="r"),  # 28 px away: overlaps
        "c": tan_header(shape, FILTER="g"),                        # other filter
        "d": tan_header(shape, crval=(151.0, 2.2), FILTER="r"),    # another field
        "e": fits.Header({"INSTRUME": "cam", "FILTER": "r"}),      # no WCS
        "f": fits.Header({"INSTRUME": "cam", "FILTER": "r"}),
    }
    shapes = dict.fromkeys(headers, shape)

    fields = group_by_header(headers, shapes)

    assert fields["a"] == fields["b"] == "a"
    assert fields["c"] == "c" and fields["d"] == "d"
    assert fields["e"] == fields["f"] == "e"


def test_register_and_load_aligned_put_a_field_on_one_grid(tmp_path):
    sky = shared_sky()
    paths = []
    for i, (y, x) in enumerate([(30, 30), (27, 36)]):
        path = tmp_path / f"e{i}.zarr"
        io.write_zarr_image(path, sky_cutout(sky, y, x, seed=i), chunks=128,
                            attrs={"fits_header": fits.Header().tostring()},
                            extra={"mask": np.zeros((SIZE, SIZE), np.uint8)})
        paths.append(str(path))

    entries = register(paths, out_json=tmp_path / "f.json")
    loaded = load_aligned(paths, ["f", "f"], [str(tmp_path / "f.json")])

    assert entries[1]["method"] == "xcorr"
    assert entries[1]["offset"] == pytest.approx((-3.0, 6.0), abs=0.3)
    both = np.isfinite(loaded[1]["data"])
    residual = loaded[0]["data"][both] - loaded[1]["data"][both]
    assert np.std(residual) == pytest.approx(3.0 * np.sqrt(2), rel=0.1)  # only noise is left
    assert loaded[1]["bad"].shape == (SIZE, SIZE)


@pytest.mark.real_data
def test_m13_offsets_are_recovered():
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data folder {REAL_DATA} is absent")
    frames = [io.read_fits_image(REAL_DATA / f"M13_blue_000{i}.fits") for i in range(1, 5)]

    result = register_field([f[0] for f in frames], [f[1] for f in frames])

    # No WCS: cross-correlation on stars. The cluster core drifts about 12 px in x per frame
    # (measured independently from the position of the smoothed core: 673, 660, 648, 636).
    assert [r["method"] for r in result] == ["reference", "xcorr", "xcorr", "xcorr"]
    expected_dx = [12.0, 25.0, 35.0]
    for entry, dx in zip(result[1:], expected_dx, strict=True):
        assert entry["offset"][1] == pytest.approx(dx, abs=1.5)
        assert abs(entry["offset"][0]) < 5
