"""Ingest: FITS exposures into chunked zarr v3 stores, header and WCS kept.

One store per exposure, holding array ``image`` (native float32, NaN = no data) whose
attributes carry the full FITS header, the unit, whether a celestial WCS was found and
the provenance of the file (path and SHA-256). Stores are written atomically.
"""

from __future__ import annotations

import csv
import glob
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import io
from .provenance import code_version

__all__ = ["IngestConfig", "ingest", "exposure_name", "check_fits_signature", "discover_exposures"]

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


_FITS_MAGIC = b"SIMPLE  ="
_GZIP_MAGIC = b"\x1f\x8b"


def exposure_name(path: str | Path) -> str:
    """Exposure name of a file: its name without the FITS suffix, made path-safe."""
    name = Path(path).name
    for suffix in sorted(io.FITS_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def check_fits_signature(path: str | Path) -> None:
    """Raise InputError unless ``path`` starts like a FITS (or gzipped) file.

    Cheap (reads 9 bytes), so the workflow checks every input before any job runs.
    """
    path = Path(path)
    if not path.is_file():
        raise io.InputError(path, "file does not exist")
    with open(path, "rb") as handle:
        head = handle.read(len(_FITS_MAGIC))
    if not head:
        raise io.InputError(path, "file is empty (0 bytes); remove it from the inputs")
    if not (head.startswith(_FITS_MAGIC) or head.startswith(_GZIP_MAGIC)):
        raise io.InputError(path, "is not a FITS file (it does not start with 'SIMPLE  ='); "
                            "remove it from the inputs or fix inputs.path")


def _list_inputs(pattern: str) -> list[Path]:
    path = Path(pattern)
    if glob.has_magic(pattern):
        files = sorted(Path(p) for p in glob.glob(pattern) if Path(p).is_file())
        if not files:
            raise io.InputError(pattern, "no file matches this pattern; check inputs.path")
        return files
    if not path.exists():
        raise io.InputError(path, "input path does not exist; check inputs.path in the config")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(io.FITS_SUFFIXES))
    if not files:
        raise io.InputError(path, f"input directory holds no FITS file (looked for "
                            f"{', '.join(io.FITS_SUFFIXES)}); check inputs.path")
    ignored = [p.name for p in path.iterdir() if p.is_file() and p not in files]
    if ignored:
        log.warning("%s: ignoring %d non-FITS file(s): %s", path, len(ignored), ", ".join(ignored[:5]))
    return files


def _read_sheet(sheet: str | Path) -> list[tuple[Path, str]]:
    sheet = Path(sheet)
    if not sheet.is_file():
        raise io.InputError(sheet, "exposure sheet does not exist; check inputs.exposure_sheet")
    with open(sheet, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"path", "field"} <= set(rows[0]):
        raise io.InputError(sheet, "exposure sheet needs a header line with columns 'path' and 'field'")
    return [(sheet.parent / row["path"].strip(), row["field"].strip()) for row in rows]


def discover_exposures(path: str = "", *, sheet: str = "") -> dict[str, dict[str, str]]:
    """Find the user's exposures: ``{exposure name: {"path": ..., "field": ...}}``.

    Parameters
    ----------
    path : a FITS file, a directory of FITS files, or a glob pattern
    sheet : optional CSV with columns ``path`` and ``field``; when given it lists the
        exposures and ``path`` is not used. Without it every exposure is its own field.

    Raises
    ------
    InputError
        Missing or empty input, a file that is not FITS, or two files with one name.
    """
    if sheet:
        entries = _read_sheet(sheet)
    elif path:
        entries = [(p, exposure_name(p)) for p in _list_inputs(path)]
    else:
        raise io.InputError("inputs.path", "is empty: set inputs.path (or inputs.exposure_sheet) "
                            "to your FITS files, or inputs.source: demo")
    exposures: dict[str, dict[str, str]] = {}
    for file, field in entries:
        check_fits_signature(file)
        name = exposure_name(file)
        if name in exposures:
            raise io.InputError(file, f"has the same exposure name {name!r} as "
                                f"{exposures[name]['path']}; rename one of them")
        exposures[name] = {"path": str(file), "field": re.sub(r"[^A-Za-z0-9_.-]", "_", field)}
    return exposures
