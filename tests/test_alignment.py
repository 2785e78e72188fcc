"""Tests of astrodenoise.alignment: offsets by cross-correlation and integer shifts onto one grid."""

from __future__ import annotations

import numpy as np
import pytest

from astrodenoise.alignment import align_to_reference, xcorr_offset
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
