"""Ingest: FITS exposures into chunked zarr v3 stores, header and WCS kept.

One store per exposure, holding array ``image`` (native float32, NaN = no data) whose
attributes carry the full FITS header, the unit, whether a celestial WCS was found and
the provenance of the file (path and SHA-256). Stores are written atomically.
"""

from __future__ import annotations

import csv
import glob
import logging
import math
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import io
from .fields import group_by_header
from .provenance import code_version

__all__ = ["IngestConfig", "ingest", "exposure_name", "check_fits_signature", "discover_exposures",
           "sidecar_path", "inverse_variance", "pixel_mask", "batch_size", "batch_exposures",
           "NODATA", "SATURATED", "BAD", "NO_WEIGHT"]

log = logging.getLogger(__name__)


#: Bits of the ``mask`` array of an ingested store (0 = good pixel).
NODATA, SATURATED, BAD, NO_WEIGHT = 1, 2, 4, 8


@dataclass(frozen=True)
class IngestConfig:
    """Settings of the ingest step.

    ``hdu`` selects the image HDU by index or EXTNAME (None: SCI/IMAGE/DATA... or the
    first 2-D image); ``plane`` the plane of a 3-D cube; ``chunk`` the zarr chunk size
    in pixels; ``min_size`` the smallest image side accepted (training patches must fit).

    Weights and masks come from an HDU of the same file (``weight_hdu``, ``mask_hdu``)
    or from a sidecar file named by a substitution ``"from:to"`` on the file name
    (``weight_sidecar: "ooi:oow"`` finds ``c4d_..._oow_...fits`` beside
    ``c4d_..._ooi_...fits``). ``weight_kind`` says what the weight plane holds: ``ivar``
    (inverse variance), ``var`` or ``rms``; mask planes are bad where non-zero.
    ``saturate_key`` names the header keyword of the saturation level: pixels at or
    above it are flagged.
    """

    hdu: int | str | None = None
    plane: int | None = None
    chunk: int = 512
    min_size: int = 64
    weight_hdu: int | str | None = None
    weight_sidecar: str = ""
    weight_kind: str = "ivar"
    mask_hdu: int | str | None = None
    mask_sidecar: str = ""
    saturate_key: str = "SATURATE"

    def __post_init__(self):
        if self.weight_kind not in ("ivar", "var", "rms"):
            raise ValueError(f"ingest.weight_kind {self.weight_kind!r}: use ivar, var or rms")
        for rule in (self.weight_sidecar, self.mask_sidecar):
            if rule and rule.count(":") != 1:
                raise ValueError(f"sidecar rule {rule!r} must read 'from:to', e.g. 'ooi:oow'")

    @classmethod
    def from_dict(cls, values: dict) -> IngestConfig:
        return cls(**values)

    def sidecar_tokens(self) -> list[str]:
        """The 'to' parts of the sidecar rules: files holding them are not exposures."""
        return [rule.split(":")[1] for rule in (self.weight_sidecar, self.mask_sidecar) if rule]


def sidecar_path(path: str | Path, rule: str) -> Path:
    """The sidecar of ``path`` under a ``"from:to"`` rule on its file name."""
    old, new = rule.split(":")
    path = Path(path)
    if old not in path.name:
        raise io.InputError(path, f"file name does not contain {old!r} of sidecar rule {rule!r}")
    return path.with_name(path.name.replace(old, new, 1))


def _aux_plane(fits_path: Path, hdu, rule: str, shape) -> np.ndarray | None:
    if rule:
        return io.read_fits_plane(sidecar_path(fits_path, rule), shape=shape)
    if hdu is not None:
        return io.read_fits_plane(fits_path, hdu=hdu, shape=shape)
    return None


def inverse_variance(weight: np.ndarray, kind: str) -> np.ndarray:
    """Convert a weight plane to inverse variance (data units^-2); 0 where unusable."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ivar = {"ivar": weight, "var": 1.0 / weight, "rms": 1.0 / weight**2}[kind]
    return np.where(np.isfinite(ivar) & (ivar > 0), ivar, 0.0).astype(np.float32)


def pixel_mask(data: np.ndarray, header, *, bad=None, ivar=None, saturate_key: str = "SATURATE"):
    """Bit mask of an exposure (uint8): NODATA, SATURATED, BAD, NO_WEIGHT; 0 = good."""
    mask = np.where(np.isnan(data), NODATA, 0).astype(np.uint8)
    level = header.get(saturate_key) if saturate_key else None
    if isinstance(level, (int, float)) and not isinstance(level, bool):
        with np.errstate(invalid="ignore"):
            mask[data >= level] |= SATURATED
    if bad is not None:
        mask[np.nan_to_num(bad, nan=1.0) != 0] |= BAD
    if ivar is not None:
        mask[ivar <= 0] |= NO_WEIGHT
    return mask


def ingest(fits_path: str | Path, out_zarr: str | Path, *, config: IngestConfig = IngestConfig()) -> dict:
    """Convert one FITS exposure to a zarr v3 store; return the attributes written.

    The store holds ``image`` (float32, NaN = no data, header and provenance in its
    attributes), ``mask`` (uint8 bits: 1 no data, 2 saturated, 4 bad in the mask plane,
    8 zero weight) and, with a weight plane, ``ivar`` (inverse variance, data units^-2).

    Raises
    ------
    InputError
        The file is not usable (missing, empty, not FITS, truncated, no 2-D image, a
        cube without ``plane``, all NaN, smaller than ``min_size``, a weight or mask of
        another shape); nothing is written.
    """
    fits_path = Path(fits_path)
    data, header = io.read_fits_image(fits_path, hdu=config.hdu, plane=config.plane)
    if min(data.shape) < config.min_size:
        raise io.InputError(fits_path, f"image shape {data.shape} is smaller than "
                            f"ingest.min_size={config.min_size} pixels")
    weight = _aux_plane(fits_path, config.weight_hdu, config.weight_sidecar, data.shape)
    ivar = None if weight is None else inverse_variance(weight, config.weight_kind)
    bad = _aux_plane(fits_path, config.mask_hdu, config.mask_sidecar, data.shape)
    mask = pixel_mask(data, header, bad=bad, ivar=ivar, saturate_key=config.saturate_key)
    has_wcs = io.celestial_wcs(header) is not None
    if not has_wcs:
        log.warning("%s: no usable celestial WCS; processing in pixel coordinates", fits_path)
    attrs = {
        "fits_header": header.tostring(),
        "bunit": str(header.get("BUNIT", "")),
        "has_wcs": has_wcs,
        "nan_fraction": float(np.isnan(data).mean()),
        "masked_fraction": float((mask != 0).mean()),
        "saturated_pixels": int(((mask & SATURATED) != 0).sum()),
        "has_weight": ivar is not None,
        "source_file": str(fits_path),
        "source_sha256": io.file_sha256(fits_path),
        "code_version": code_version(),
    }
    extra = {"mask": mask} | ({"ivar": ivar} if ivar is not None else {})
    io.write_zarr_image(out_zarr, data, chunks=config.chunk, attrs=attrs, extra=extra)
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


def discover_exposures(path: str = "", *, sheet: str = "", sidecars: list[str] = (),
                       grouping: str = "none", hdu: int | str | None = None) -> dict[str, dict[str, str]]:
    """Find the user's exposures: ``{exposure name: {"path": ..., "field": ...}}``.

    Parameters
    ----------
    path : a FITS file, a directory of FITS files, or a glob pattern
    sheet : optional CSV with columns ``path`` and ``field``; when given it lists the
        exposures and ``path`` is not used. Without it every exposure is its own field.
    sidecars : name parts of weight/mask sidecar files (``IngestConfig.sidecar_tokens``):
        files whose names contain one are not exposures.
    grouping : without a sheet, ``"none"`` makes every exposure its own field and
        ``"auto"`` groups them from their headers (same FILTER and overlapping WCS
        footprints; without WCS, same INSTRUME, FILTER, OBJECT and shape), see
        :func:`astrodenoise.fields.group_by_header`. Only headers are read.
    hdu : the image HDU (``IngestConfig.hdu``), for reading headers when grouping

    Raises
    ------
    InputError
        Missing or empty input, a file that is not FITS, or two files with one name.
    """
    if sheet:
        entries = _read_sheet(sheet)
    elif path:
        entries = [(p, exposure_name(p)) for p in _list_inputs(path)
                   if not any(token in p.name for token in sidecars)]
        if not entries:
            raise io.InputError(path, f"holds only sidecar files (names with {list(sidecars)})")
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
    if grouping == "auto" and not sheet:
        _group_from_headers(exposures, hdu)
    return exposures


def _group_from_headers(exposures: dict[str, dict[str, str]], hdu) -> None:
    headers, shapes = {}, {}
    for name, entry in exposures.items():
        header = io.read_fits_header(entry["path"], hdu=hdu)
        headers[name] = header
        shapes[name] = (int(header.get("ZNAXIS2", header.get("NAXIS2", 0))),
                        int(header.get("ZNAXIS1", header.get("NAXIS1", 0))))
    for name, field in group_by_header(headers, shapes).items():
        exposures[name]["field"] = field


def batch_size(n_exposures: int, setting: int = 0, *, jobs: int = 500, small: int = 1000) -> int:
    """Exposures per ingest/noise job of the workflow.

    ``setting`` > 0 is used as given. 0 (auto) gives one exposure a job for surveys of up
    to ``small`` exposures, and beyond that enough to keep about ``jobs`` jobs a step:
    Snakemake spends about a millisecond planning each job, and a cluster seconds
    starting it.
    """
    if setting:
        return setting
    return 1 if n_exposures <= small else math.ceil(n_exposures / jobs)


def batch_exposures(names: list[str], size: int) -> dict[str, list[str]]:
    """Split exposures into batches: ``{batch name: [exposure, ...]}``, names sorted.

    With ``size`` 1 each exposure is a batch named after it. Larger batches are buckets
    of a CRC-32 of the exposure name, their number the power of two at or above
    ``len(names) / size``: adding an exposure changes one batch and leaves the others
    (and their finished jobs) alone, until the survey grows enough to double the count.
    """
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    if size == 1:
        return {name: [name] for name in sorted(names)}
    n_buckets = 2 ** math.ceil(math.log2(max(1, math.ceil(len(names) / size))))
    batches: dict[str, list[str]] = {}
    for name in sorted(names):
        batches.setdefault(f"batch{zlib.crc32(name.encode()) % n_buckets:05d}", []).append(name)
    return dict(sorted(batches.items()))
