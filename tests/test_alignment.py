"""Tests of astrodenoise.alignment: offsets by cross-correlation and integer shifts onto one grid."""

from __future__ import annotations

import numpy as np
import pytest

from astrodenoise.alignment import align_to_reference, onto_grid, shift_subpixel, xcorr_offset
from conftest import shared_sky, sky_cutout


@pytest.mark.parametrize("banding", [0.0, 4.0])
def test_xcorr_recovers_the_offset_despite_banding(banding):
    sky = shared_sky()
    reference = sky_cutout(sky, 30, 30, seed=1, banding=banding)
    # Reference pixel (y, x) shows the sky of moved pixel (y + 7, x - 11): dy = -7, dx = +11.
    moved = sky_cutout(sky, 23, 41, seed=2, banding=banding)

    match = xcorr_offset(reference, moved)

    assert match["offset"] == pytest.approx((-7.0, 11.0), abs=0.3)
    assert match["match"] > 0.5


def test_xcorr_says_when_images_do_not_match():
    reference = sky_cutout(shared_sky(0), 30, 30, seed=1)
    unrelated = sky_cutout(shared_sky(5), 30, 30, seed=2)

    assert xcorr_offset(reference, unrelated)["match"] < 0.35


def test_integer_alignment_moves_pixels_without_interpolation():
    image = np.arange(20, dtype=np.float32).reshape(4, 5)

    aligned = align_to_reference(image, None, {"method": "xcorr", "offset": (1.2, -2.4)},
                                 ref_header=None, ref_shape=(4, 5))

    np.testing.assert_array_equal(aligned[1:, :3], image[:3, 2:])
    assert np.isnan(aligned[0]).all() and np.isnan(aligned[:, 3:]).all()


def _star(shape, y, x, sigma=1.5):
    yy, xx = np.mgrid[:shape[0], :shape[1]].astype(float)
    return (100.0 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma**2))).astype(np.float32)


@pytest.mark.parametrize("offset", [(0.5, -0.3), (3.45, 12.2), (-2.5, 0.0)])
def test_subpixel_shift_puts_a_star_where_the_reference_has_it(offset):
    """Pixel (y, x) of the reference holds the sky of the exposure's (y - dy, x - dx): a
    star at (20, 24) of the reference lies at (20 - dy, 24 - dx) in the exposure."""
    shape = (48, 56)
    exposure = _star(shape, 20 - offset[0], 24 - offset[1])

    moved = shift_subpixel(exposure, offset, shape)
    whole = align_to_reference(exposure, None, {"method": "xcorr", "offset": offset}, ref_header=None,
                               ref_shape=shape)

    truth = _star(shape, 20, 24)
    assert np.nanmax(np.abs(moved - truth)) < 2.0  # 2% of the peak
    fractional = any(abs(v - round(v)) > 0.2 for v in offset)
    assert (np.nanmax(np.abs(whole - truth)) > 10.0) == fractional
    # Where the exposure has no data, nor has the moved one (the edge it came from).
    assert np.isnan(moved).any() == any(abs(v) > 0 for v in offset)


def test_onto_grid_subpixel_moves_by_the_exact_difference_of_offsets():
    shape = (40, 40)
    entry, target = {"method": "xcorr", "offset": (1.3, -0.6)}, {"method": "xcorr", "offset": (0.9, 0.2)}
    # Exposure j sees the field's star (reference pixel (20, 20)) at (20 - 1.3, 20 + 0.6);
    # exposure i at (20 - 0.9, 20 - 0.2).
    exposure = _star(shape, 20 - 1.3, 20 + 0.6)

    moved = onto_grid(exposure, None, entry, None, target, shape, subpixel=True)

    assert np.nanmax(np.abs(moved - _star(shape, 20 - 0.9, 20 - 0.2))) < 2.0

