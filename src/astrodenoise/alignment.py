"""Putting the exposures of a field on one pixel grid: offsets, shifts and resampling.

Offsets follow numpy order, ``(dy, dx)``: pixel ``(y, x)`` of the reference holds the
same sky as pixel ``(y - dy, x - dx)`` of the exposure. Integer offsets move pixels
without resampling them, so their noise stays independent (:func:`shift_integer`); the
fraction of a pixel they leave is made up by a cubic spline where a reference of sources
needs it (:func:`shift_subpixel`); other grids are resampled with ``reproject`` (which
correlates the noise, so the register step records it).
Used by the register step (which finds the offsets), training (Noise2Noise pairs) and
evaluation (the leave-one-out stack).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from reproject import reproject_interp
from scipy import ndimage
from skimage.registration import phase_cross_correlation

from . import io

__all__ = ["GRID_TOLERANCE", "same_grid", "wcs_offset", "xcorr_offset", "shift_integer", "shift_subpixel",
           "spline_shift", "align_to_reference", "onto_grid", "load_aligned"]

#: Relative tolerance on the CD matrix for two WCS to count as one grid up to a shift.
GRID_TOLERANCE = 1e-4


def same_grid(wcs_a: WCS, wcs_b: WCS) -> bool:
    """True when two celestial WCS share pixel scale and orientation (a shift apart)."""
    cd_a, cd_b = wcs_a.pixel_scale_matrix, wcs_b.pixel_scale_matrix
    return bool(np.allclose(cd_a, cd_b, rtol=GRID_TOLERANCE, atol=GRID_TOLERANCE * np.abs(cd_a).max())
                and wcs_a.wcs.ctype[0] == wcs_b.wcs.ctype[0])


def wcs_offset(ref_wcs: WCS, wcs: WCS, shape: tuple[int, int]) -> tuple[float, float]:
    """Offset ``(dy, dx)`` of an exposure relative to the reference, from the two WCS."""
    cy, cx = (shape[0] - 1) / 2.0, (shape[1] - 1) / 2.0
    world = wcs.pixel_to_world(cx, cy)
    rx, ry = ref_wcs.world_to_pixel(world)
    return float(ry - cy), float(rx - cx)


def _flatten(image: np.ndarray) -> np.ndarray:
    """Prepare for cross-correlation: keep the stars, drop what is fixed to the detector.

    Raw frames share hot pixels, bias structure and banding, which all correlate at zero
    shift and would hide the real offset. A 3x3 median removes hot pixels and cosmic
    rays (stars are wider) and light smoothing lifts faint stars, a coarse median
    removes gradients and glow, row and column medians remove banding, and only pixels
    4 sigma above the smoothed sky (stars) are kept.
    """
    data = np.where(np.isfinite(image), image, np.nanmedian(image)).astype(np.float32)
    data = ndimage.gaussian_filter(ndimage.median_filter(data, size=3), 1.5)
    coarse = ndimage.zoom(ndimage.median_filter(data[::8, ::8], size=5), 8, order=1)
    data = data - coarse[: data.shape[0], : data.shape[1]]
    data -= np.median(data, axis=1, keepdims=True)
    data -= np.median(data, axis=0, keepdims=True)
    sigma = 1.4826 * np.median(np.abs(data)) or 1.0
    stars = np.clip(data / sigma - 4.0, 0.0, None)
    # The arcsinh stops a few saturated stars from dominating the correlation.
    return np.arcsinh(stars / 5.0)


def xcorr_offset(reference: np.ndarray, image: np.ndarray, *, upsample: int = 20) -> dict:
    """Offset ``(dy, dx)`` of ``image`` relative to ``reference`` by cross-correlation.

    Returns a dict with ``offset`` (sub-pixel, from skimage's upsampled phase
    correlation of the star maps) and ``match``: the correlation coefficient of the two
    star maps once aligned by the integer offset (0 for unrelated images, near 1 for
    the same stars; the noise of a star map keeps it well below 1 on faint frames).
    """
    ref, moving = _flatten(reference), _flatten(image)
    shift, _, _ = phase_cross_correlation(ref, moving, upsample_factor=upsample, normalization=None)
    offset = (float(shift[0]), float(shift[1]))
    aligned = shift_integer(moving, offset, ref.shape)
    valid = np.isfinite(aligned)
    match = 0.0
    if valid.sum() > 100 and ref[valid].std() > 0 and aligned[valid].std() > 0:
        match = float(np.corrcoef(ref[valid], aligned[valid])[0, 1])
    return {"offset": offset, "match": match}


def shift_integer(image: np.ndarray, offset, shape) -> np.ndarray:
    """``image`` moved by the rounded ``offset`` onto a grid of ``shape`` (NaN outside)."""
    dy, dx = (int(round(v)) for v in offset)
    out = np.full(shape, np.nan, np.float32)
    ny, nx = image.shape
    # Reference pixel (y, x) takes exposure pixel (y - dy, x - dx).
    y0, y1 = max(0, dy), min(shape[0], ny + dy)
    x0, x1 = max(0, dx), min(shape[1], nx + dx)
    if y1 > y0 and x1 > x0:
        out[y0:y1, x0:x1] = image[y0 - dy:y1 - dy, x0 - dx:x1 - dx]
    return out


def shift_subpixel(image: np.ndarray, offset, shape) -> np.ndarray:
    """``image`` moved by the exact ``offset`` onto a grid of ``shape`` (NaN outside): the
    rounded offset by moving pixels (:func:`shift_integer`), the fraction left by a cubic
    spline. The spline resamples: the noise of the result is correlated and a little lower
    (by up to about a fifth in variance at half a pixel), the signal is not blurred. Pixels
    within two of no data (the spline's reach) become NaN."""
    moved = shift_integer(image, offset, shape)
    fraction = [float(v) - round(float(v)) for v in offset]
    if not any(abs(f) > 1e-3 for f in fraction) or not np.isfinite(moved).any():
        return moved
    out, reach = spline_shift(moved, ~np.isfinite(moved), fraction, outside_bad=True)
    return np.where(reach, np.nan, out).astype(np.float32)


def spline_shift(image: np.ndarray, bad: np.ndarray, shift, *,
                 outside_bad: bool) -> tuple[np.ndarray, np.ndarray]:
    """``image`` moved by ``shift`` (dy, dx; scipy's sign: output pixel p holds input
    p - shift) with a cubic spline, ``bad`` pixels (no data) filled with the median of the
    others first; and where the result is bad: within the spline's reach (two pixels) of a
    bad pixel, and with ``outside_bad`` of the edge (beyond it there is no data; without,
    the edge pixels are repeated, as for a window cut out of a larger image). Float64."""
    filled = np.where(bad, np.median(image[~bad]) if (~bad).any() else 0.0, image).astype(np.float64)
    out = ndimage.shift(filled, shift, order=3, mode="nearest")
    edge = {"mode": "constant", "cval": 1.0} if outside_bad else {"mode": "nearest"}
    reach = ndimage.shift(ndimage.binary_dilation(bad, iterations=2).astype(np.float64), shift, order=1,
                          **edge) > 1e-3
    return out, reach


def align_to_reference(image: np.ndarray, header: fits.Header, registration: dict | None = None, *,
                       ref_header: fits.Header, ref_shape: tuple[int, int]) -> np.ndarray | None:
    """Return ``image`` on the reference pixel grid (NaN where it has no data), or None.

    Integer offsets are applied by moving pixels (no interpolation); other grids are
    resampled with ``reproject.reproject_interp``.
    """
    method = registration["method"]
    if method == "unregistered":
        return None
    if method == "reproject":
        aligned, _ = reproject_interp((image, io.celestial_wcs(header)), io.celestial_wcs(ref_header),
                                      shape_out=ref_shape)
        return aligned.astype(np.float32)
    return shift_integer(image, registration["offset"], ref_shape)


def onto_grid(image: np.ndarray, header, entry: dict, target_header, target_entry: dict,
              shape: tuple[int, int], *, subpixel: bool = False) -> np.ndarray | None:
    """``image`` (exposure j) on the pixel grid of exposure i, from their registrations.

    Both registered by an offset to the field's reference: j moves by the difference of
    the rounded offsets (pixels moved, no interpolation), or with ``subpixel`` by the
    exact difference (:func:`shift_subpixel`: what a reference of sources needs; dithered
    exposures differ by fractions of a pixel, and half a pixel moves a star's core by a
    sixth of a 3-pixel FWHM). Otherwise j is resampled onto i's WCS. None when either is
    unregistered.
    """
    methods = {entry["method"], target_entry["method"]}
    if "unregistered" in methods:
        return None
    if "reproject" not in methods:
        if subpixel:
            exact = [a - b for a, b in zip(entry["offset"], target_entry["offset"], strict=True)]
            return shift_subpixel(image, exact, shape)
        offset = [round(a) - round(b) for a, b in zip(entry["offset"], target_entry["offset"], strict=True)]
        return shift_integer(image, offset, shape)
    resampled, _ = reproject_interp((image, io.celestial_wcs(header)), io.celestial_wcs(target_header),
                                    shape_out=shape)
    return resampled.astype(np.float32)


def load_aligned(images: list[str], fields: list[str], registrations: list[str] = ()) -> list[dict]:
    """Read ingested exposures, each field's exposures moved onto its reference grid.

    Parameters
    ----------
    images, fields : parallel lists of zarr stores and field names
    registrations : JSON files of the register step (one per field, any order); an
        exposure they do not name is used as it is

    Returns
    -------
    One dict per exposure: ``name``, ``field``, ``data`` (float32, NaN where it has no
    data on the reference grid), ``bad`` (bool, True = flagged in its mask, or None) and
    ``fraction`` (dy, dx): what moving by whole pixels left of its offset, so that its
    pixel (y, x) holds the reference's sky at (y + dy, x + dx) (zero for the reference and
    for resampled exposures). An exposure that could not be registered gets a field of its
    own, so that it is never paired with the others.
    """
    by_exposure = {}
    for path in registrations:
        info = io.read_json(path)
        for entry in info["exposures"]:
            by_exposure[entry["exposure"]] = (info["reference"], entry)
    stores = {Path(p).stem: p for p in images}
    out = []
    for path, field in zip(images, fields, strict=True):
        name = Path(path).stem
        array = io.open_zarr_image(path)
        mask = io.open_zarr_array(path, "mask")
        data = array[...]
        bad = None if mask is None else (mask[...] != 0).astype(np.float32)
        fraction = (0.0, 0.0)
        if name in by_exposure:
            reference, entry = by_exposure[name]
            ref = io.open_zarr_image(stores[reference])
            align = dict(registration=entry, ref_header=io.header_from_attrs(ref.attrs), ref_shape=ref.shape)
            header = io.header_from_attrs(array.attrs)
            aligned = align_to_reference(data, header, **align)
            if aligned is None:
                field = f"{field}:{name}"
            else:
                data = aligned
                bad = None if bad is None else align_to_reference(bad, header, **align)
                if entry["method"] not in ("reproject", "reference") and entry.get("offset") is not None:
                    fraction = tuple(float(v) - round(float(v)) for v in entry["offset"])
        out.append({"name": name, "field": field, "data": data, "fraction": fraction,
                    "bad": None if bad is None else ~(np.nan_to_num(bad, nan=1.0) < 0.5)})
    return out
