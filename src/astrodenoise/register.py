"""The register step: align the exposures of each field to its first exposure.

Noise2Noise needs two exposures of the same sky on the same pixel grid. Three cases:

- same grid up to a shift (the usual dithered or drifting sequence): the offset comes
  from the WCS, or, without one, from the cross-correlation of the images; pairs are
  aligned by the *integer* part of the offset, which moves pixels without resampling
  them, so their noise stays independent; the fraction of a pixel left is made up where
  the sky must match: the Noise2Noise target is moved onto its input's sky with a spline
  (:func:`astrodenoise.sampling.target_window`; resampling the target correlates its
  noise, never with the input's), and so is each layer of the leave-one-out reference;
- different grids (rotation, scale, another detector): the exposure is resampled onto
  the reference grid with the ``reproject`` package. Resampling correlates the noise,
  so it is recorded (``method: "reproject"``) for the later steps;
- no overlap: the exposure is left out of the pairs.

The alignment itself (offsets, shifts, resampling) is :mod:`astrodenoise.alignment`; which
exposures form a field, :mod:`astrodenoise.fields`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from astropy.io import fits

from . import io
from .alignment import same_grid, wcs_offset, xcorr_offset
from .provenance import code_version

__all__ = ["register_field", "register"]

log = logging.getLogger(__name__)


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
