"""Exposure grouping and registration, for Noise2Noise pairs and photon-transfer curves.

Noise2Noise needs two exposures of the same sky on the same pixel grid. Three cases:

- same grid up to a shift (the usual dithered or drifting sequence): the offset comes
  from the WCS, or, without one, from the cross-correlation of the images; pairs are
  aligned by the *integer* part of the offset, which moves pixels without resampling
  them, so their noise stays independent;
- different grids (rotation, scale, another detector): the exposure is resampled onto
  the reference grid with the ``reproject`` package. Resampling correlates the noise,
  so it is recorded (``method: "reproject"``) for the later steps;
- no overlap: the exposure is left out of the pairs.

Offsets follow numpy order, ``(dy, dx)``: pixel ``(y, x)`` of the reference holds the
same sky as pixel ``(y - dy, x - dx)`` of the exposure.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from scipy import ndimage
from skimage.registration import phase_cross_correlation

from . import io
from .provenance import code_version

__all__ = [
    "same_grid",
    "wcs_offset",
    "xcorr_offset",
    "register_field",
    "align_to_reference",
    "group_by_header",
    "register",
    "load_aligned",
]

log = logging.getLogger(__name__)

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
    aligned = _shift_integer(moving, offset, ref.shape)
    valid = np.isfinite(aligned)
    match = 0.0
    if valid.sum() > 100 and ref[valid].std() > 0 and aligned[valid].std() > 0:
        match = float(np.corrcoef(ref[valid], aligned[valid])[0, 1])
    return {"offset": offset, "match": match}


def _shift_integer(image: np.ndarray, offset, shape) -> np.ndarray:
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


def register_field(images: list[np.ndarray], headers: list[fits.Header], *,
                   min_match: float = 0.35) -> list[dict]:
    """Register each exposure of a field to its first exposure.

    Returns one dict per exposure: ``method`` (``reference``, ``wcs``, ``xcorr``,
    ``reproject`` or ``unregistered``), ``offset`` (dy, dx) in pixels (None for
    ``reproject``/``unregistered``) and ``resampled`` (True when aligning it means
    interpolation, which correlates the noise).
    """
    ref_wcs = io.celestial_wcs(headers[0])
    out = [{"method": "reference", "offset": (0.0, 0.0), "resampled": False}]
    for image, header in zip(images[1:], headers[1:], strict=True):
        wcs = io.celestial_wcs(header)
        if ref_wcs is not None and wcs is not None:
            if same_grid(ref_wcs, wcs):
                out.append({"method": "wcs", "offset": wcs_offset(ref_wcs, wcs, image.shape),
                            "resampled": False})
            else:
                out.append({"method": "reproject", "offset": None, "resampled": True})
            continue
        if image.shape != images[0].shape:
            out.append({"method": "unregistered", "offset": None, "resampled": False,
                        "note": "no WCS and another shape"})
            continue
        match = xcorr_offset(images[0], image)
        ok = match["match"] >= min_match
        out.append({"method": "xcorr" if ok else "unregistered",
                    "offset": match["offset"] if ok else None, "resampled": False,
                    "xcorr_match": match["match"]})
    return out


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
        from reproject import reproject_interp

        aligned, _ = reproject_interp((image, io.celestial_wcs(header)), io.celestial_wcs(ref_header),
                                      shape_out=ref_shape)
        return aligned.astype(np.float32)
    return _shift_integer(image, registration["offset"], ref_shape)


def _footprint_overlap(wcs_a: WCS, shape_a, wcs_b: WCS, shape_b) -> float:
    """Share of exposure b's corners and centre that fall inside exposure a."""
    ny, nx = shape_b
    points = [(0, 0), (nx - 1, 0), (0, ny - 1), (nx - 1, ny - 1), ((nx - 1) / 2, (ny - 1) / 2)]
    inside = 0
    for x, y in points:
        ax, ay = wcs_a.world_to_pixel(wcs_b.pixel_to_world(x, y))
        inside += bool(-0.5 <= ax < shape_a[1] - 0.5 and -0.5 <= ay < shape_a[0] - 0.5)
    return inside / len(points)


def group_by_header(headers: dict[str, fits.Header], shapes: dict[str, tuple[int, int]]) -> dict[str, str]:
    """Group exposures into fields from their headers: ``{exposure: field}``.

    With a celestial WCS: same FILTER and footprints that overlap (at least 3 of the 5
    test points of one inside the other). Without one: same INSTRUME, FILTER, OBJECT
    and image shape (the registration step then checks the overlap on the pixels).
    A field is named after its first exposure.
    """
    fields: dict[str, str] = {}
    anchors: list[tuple[str, tuple, WCS | None, tuple[int, int]]] = []
    for name in sorted(headers):
        header, shape = headers[name], shapes[name]
        wcs = io.celestial_wcs(header)
        key = tuple(str(header.get(k, "")).strip() for k in ("FILTER", "INSTRUME"))
        if wcs is None:
            key += (str(header.get("OBJECT", "")).strip(), tuple(shape))
        for anchor, anchor_key, anchor_wcs, anchor_shape in anchors:
            if anchor_key != key or (anchor_wcs is None) != (wcs is None):
                continue
            if wcs is None or _footprint_overlap(anchor_wcs, anchor_shape, wcs, shape) >= 0.6:
                fields[name] = anchor
                break
        else:
            anchors.append((name, key, wcs, shape))
            fields[name] = name
    return fields


def register(images: list[str], *, out_json: str | Path) -> list[dict]:
    """Register the ingested exposures of one field (the first is the reference); JSON out."""
    arrays = [io.open_zarr_image(p) for p in images]
    data = [a[...] for a in arrays]
    headers = [io.header_from_attrs(a.attrs) for a in arrays]
    result = register_field(data, headers)
    for path, entry in zip(images, result, strict=True):
        entry["exposure"] = Path(path).stem
        if entry["method"] == "unregistered":
            log.warning("%s: not registered to %s; left out of Noise2Noise pairs",
                        path, Path(images[0]).stem)
    io.write_json(out_json, {"reference": Path(images[0]).stem, "exposures": result,
                             "code_version": code_version()})
    return result


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
    data on the reference grid) and ``bad`` (bool, True = flagged in its mask, or None).
    An exposure that could not be registered gets a field of its own, so that it is
    never paired with the others.
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
        out.append({"name": name, "field": field, "data": data,
                    "bad": None if bad is None else ~(np.nan_to_num(bad, nan=1.0) < 0.5)})
    return out
