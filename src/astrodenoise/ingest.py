"""Ingest: FITS exposures into chunked zarr v3 stores, header and WCS kept.

One store per exposure, holding array ``image`` (native float32, NaN = no data) whose
attributes carry the full FITS header, the unit, whether a celestial WCS was found and
the provenance of the file (path and SHA-256). Stores are written atomically.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import io
from .provenance import code_version

__all__ = ["IngestConfig", "ingest"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestConfig:
    """Settings of the ingest step.

    ``hdu`` selects the image HDU by index or EXTNAME (None: the first 2-D image);
    ``chunk`` is the zarr chunk size in pixels; ``min_size`` the smallest image side
    the pipeline accepts (training patches must fit).
    """

    hdu: int | str | None = None
    chunk: int = 512
    min_size: int = 64

    @classmethod
    def from_dict(cls, values: dict) -> IngestConfig:
        return cls(**values)


def ingest(fits_path: str | Path, out_zarr: str | Path, *, config: IngestConfig = IngestConfig()) -> dict:
    """Convert one FITS exposure to a zarr v3 store; return the attributes written.

    Raises
    ------
    InputError
        The file is not usable (missing, empty, not FITS, no 2-D image, all NaN,
        smaller than ``min_size``); nothing is written.
    """
    fits_path = Path(fits_path)
    data, header = io.read_fits_image(fits_path, hdu=config.hdu)
    if min(data.shape) < config.min_size:
        raise io.InputError(fits_path, f"image shape {data.shape} is smaller than "
                            f"ingest.min_size={config.min_size} pixels")
    has_wcs = io.celestial_wcs(header) is not None
    if not has_wcs:
        log.warning("%s: no usable celestial WCS; processing in pixel coordinates", fits_path)
    attrs = {
        "fits_header": header.tostring(),
        "bunit": str(header.get("BUNIT", "")),
        "has_wcs": has_wcs,
        "nan_fraction": float(np.isnan(data).mean()),
        "source_file": str(fits_path),
        "source_sha256": io.file_sha256(fits_path),
        "code_version": code_version(),
    }
    io.write_zarr_image(out_zarr, data, chunks=config.chunk, attrs=attrs)
    return attrs
