"""Which exposures form a field: grouped by their headers and overlapping footprints.

Used by input discovery (``inputs.grouping: auto``) before anything is ingested; the
register step then aligns the exposures of each field (:mod:`astrodenoise.alignment`).
"""

from __future__ import annotations

from astropy.io import fits
from astropy.wcs import WCS

from . import io

__all__ = ["group_by_header"]


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
