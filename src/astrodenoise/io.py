"""File input and output: FITS, zarr v3 stores, JSON and model checkpoints.

Everything that touches the disk lives here, so that the science modules compute on
arrays only. Every writer is atomic: it writes to a temporary sibling and renames it
into place, so an interrupted run never leaves a file that looks complete.

Data conventions (see STYLE.md): arrays handed to the rest of the package are
native-endian ``float32``; NaN means "no data".
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from astropy.io import fits
from astropy.utils.exceptions import AstropyWarning
from astropy.wcs import WCS, FITSFixedWarning

__all__ = [
    "InputError",
    "atomic_path",
    "file_sha256",
    "read_fits_image",
    "read_fits_plane",
    "read_fits_header",
    "write_fits_image",
    "output_header",
    "FitsImageRegion",
    "create_fits_image",
    "write_zarr_image",
    "create_zarr_image",
    "remove_stale_temporaries",
    "open_zarr_image",
    "open_zarr_array",
    "header_from_attrs",
    "celestial_wcs",
    "read_json",
    "write_json",
    "save_checkpoint",
    "load_checkpoint",
    "FITS_SUFFIXES",
]

#: File name endings recognised as FITS images when a directory is given as input.
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.fz", ".fits.gz", ".fit.gz", ".fz")


class InputError(ValueError):
    """An input file cannot be used; the message names the file and what to do."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it onto ``path`` on success.

    Works for files and directories (zarr stores). On error the temporary is removed
    and ``path`` is untouched, so no half-written output survives.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporaries that :func:`atomic_path` left beside ``path`` when its
    process was killed (``finally`` never ran); return what was removed.

    A killed survey-scale run can leave gigabytes behind. Call this only where no
    other process writes ``path`` at the same time (one job per output, as in Snakemake).
    """
    path = Path(path)
    stale = sorted(path.parent.glob(f".{path.name}.*.tmp")) if path.parent.is_dir() else []
    for tmp in stale:
        shutil.rmtree(tmp, ignore_errors=True)
    return stale


def file_sha256(path: str | os.PathLike, *, block: int = 1 << 20) -> str:
    """Return the hex SHA-256 of a file, read in blocks (for provenance)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise InputError(path, "file does not exist; check the input path in config/config.yaml")
    if path.is_dir():
        raise InputError(path, "is a directory, not a FITS file")
    if path.stat().st_size == 0:
        raise InputError(path, "file is empty (0 bytes); re-download or remove it from the inputs")


#: EXTNAMEs that name the science image in multi-extension files, in order of preference.
SCIENCE_EXTNAMES = ("SCI", "SCIENCE", "IMAGE", "IMG", "DATA", "FLUX")

# Cards of a primary header that describe its own (empty) data, not the observation.
_STRUCTURAL = {"SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "EXTEND", "NEXTEND",
               "BSCALE", "BZERO", "BLANK", "CHECKSUM", "DATASUM", "", "COMMENT", "HISTORY"}


def _pick_image_hdu(hdul: fits.HDUList, path: Path, hdu: int | str | None):
    if hdu is not None:
        try:
            return hdul[hdu]
        except (KeyError, IndexError) as err:
            raise InputError(path, f"has no HDU {hdu!r}; available: {[h.name for h in hdul]}") from err
    images = [h for h in hdul if h.is_image and h.header.get("NAXIS", 0) >= 2]
    for name in SCIENCE_EXTNAMES:
        for candidate in images:
            if candidate.name.upper() == name:
                return candidate
    if images:
        return images[0]
    raise InputError(path, "contains no image HDU with two or more axes")


def _merged_header(hdul: fits.HDUList, image_hdu) -> fits.Header:
    """The image HDU's header plus the primary header's observation cards it lacks.

    Multi-extension files keep FILTER, EXPTIME, DATE-OBS... in the primary header.
    """
    header = image_hdu.header.copy()
    if image_hdu is hdul[0]:
        return header
    for card in hdul[0].header.cards:
        if card.keyword not in _STRUCTURAL and card.keyword not in header:
            header.append(card)
    return header


def _read_hdu(path: Path, hdu: int | str | None, plane: int | None) -> tuple[np.ndarray, fits.Header]:
    """Read one 2-D plane as float32 (BSCALE/BZERO applied, BLANK -> NaN) and its header."""
    _check_readable(path)
    try:
        with fits.open(path) as hdul:
            image_hdu = _pick_image_hdu(hdul, path, hdu)
            header = _merged_header(hdul, image_hdu)
            # BLANK, BSCALE and BZERO disappear from .header once .data is read: take them
            # first. BLANK is a stored (unscaled) integer value.
            blank = header.get("BLANK")
            bscale, bzero = header.get("BSCALE", 1.0), header.get("BZERO", 0.0)
            raw = image_hdu.data
            raw = _select_plane(path, raw, plane)
            data = np.asarray(raw, dtype=np.float32)  # native endian, scaled by BSCALE/BZERO
            if blank is not None and header.get("BITPIX", 0) > 0:
                # Compare in float64, where every 16- and 32-bit stored integer is exact.
                data[np.asarray(raw, dtype=np.float64) == blank * bscale + bzero] = np.nan
    except InputError:
        raise
    except (OSError, TypeError, ValueError, IndexError) as err:
        raise InputError(path, f"is not a readable FITS file ({err})") from err
    for key in ("BSCALE", "BZERO", "BLANK"):
        header.remove(key, ignore_missing=True)
    return data, header


def _select_plane(path: Path, raw, plane: int | None):
    if raw is None:
        raise InputError(path, "image HDU holds no data")
    if raw.ndim == 2 and plane is None:
        return raw
    if raw.ndim == 3 and plane is not None:
        if not 0 <= plane < raw.shape[0]:
            raise InputError(path, f"cube has {raw.shape[0]} planes; ingest.plane={plane} is outside")
        return raw[plane]
    if raw.ndim == 3:
        raise InputError(path, f"is a 3-D cube of shape {raw.shape}; set ingest.plane to the index "
                         "of the image plane to denoise")
    raise InputError(path, f"image has shape {raw.shape}; a 2-D image is needed")


def read_fits_image(
    path: str | os.PathLike, *, hdu: int | str | None = None, plane: int | None = None
) -> tuple[np.ndarray, fits.Header]:
    """Read a 2-D science image from a FITS file.

    Parameters
    ----------
    path : path-like
        A FITS file, optionally tile-compressed (``.fits.fz``) or gzipped.
    hdu : int or str, optional
        The HDU index or EXTNAME holding the image; by default the HDU named SCI, SCIENCE,
        IMAGE, IMG, DATA or FLUX, else the first HDU with a 2-D image (so an empty
        primary HDU with the image in extension 1 works).
    plane : int, optional
        For a 3-D cube, the index of the plane to read; a cube without it is an error.

    Returns
    -------
    data : (ny, nx) float32, native byte order, in the file's units
        BLANK, NaN and infinite pixels become NaN (no data).
    header : astropy.io.fits.Header
        The full header of the image HDU (SIP and other distortion cards kept), plus
        the observation cards of the primary header for an image in an extension.

    Raises
    ------
    InputError
        The file is missing, empty, not FITS, truncated, has no 2-D image, is a cube
        without ``plane``, or is all NaN.
    """
    path = Path(path)
    data, header = _read_hdu(path, hdu, plane)
    data[~np.isfinite(data)] = np.nan
    if np.isnan(data).all():
        raise InputError(path, "image holds no valid pixel (all NaN or BLANK)")
    return data, header


def read_fits_header(path: str | os.PathLike, *, hdu: int | str | None = None) -> fits.Header:
    """Header of the image HDU that :func:`read_fits_image` would read, without its data.

    Cheap (the data are not read), so the workflow can group thousands of exposures.
    """
    path = Path(path)
    _check_readable(path)
    try:
        with fits.open(path) as hdul:
            return _merged_header(hdul, _pick_image_hdu(hdul, path, hdu))
    except InputError:
        raise
    except (OSError, TypeError, ValueError) as err:
        raise InputError(path, f"is not a readable FITS file ({err})") from err


def read_fits_plane(path: str | os.PathLike, *, hdu: int | str | None = None,
                    shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read an auxiliary 2-D plane (weight, variance, mask) as float32.

    ``shape``, when given, must match: a weight map of another size is an error.
    """
    path = Path(path)
    data, _ = _read_hdu(path, hdu, None)
    if shape is not None and data.shape != tuple(shape):
        raise InputError(path, f"plane has shape {data.shape}, the image {tuple(shape)}")
    return data


def celestial_wcs(header: fits.Header) -> WCS | None:
    """Return the celestial WCS of ``header``, or None where it has none or it is broken."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (FITSFixedWarning, AstropyWarning))
        try:
            wcs = WCS(header, naxis=2)
        except Exception:  # noqa: BLE001 - astropy raises many types on broken WCS
            return None
    return wcs if wcs.has_celestial else None


def write_fits_image(
    path: str | os.PathLike,
    data: np.ndarray,
    header: fits.Header,
    *,
    history: list[str] = (),
) -> None:
    """Write ``data`` as a float32 FITS image with ``header`` (copied) plus HISTORY cards.

    The input header is copied rather than rebuilt from a WCS object, because
    ``WCS.to_header()`` drops SIP distortion.
    """
    header = header.copy()
    for key in ("BSCALE", "BZERO", "BLANK", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2"):
        header.remove(key, ignore_missing=True)
    for line in history:
        header.add_history(line)
    hdu = fits.PrimaryHDU(data=np.asarray(data, dtype=np.float32), header=header)
    with atomic_path(path) as tmp:
        hdu.writeto(tmp, output_verify="silentfix")


_FITS_BLOCK = 2880  # FITS headers and data are padded to whole 2880-byte blocks


class FitsImageRegion:
    """Write rectangles of one float32 image HDU of an existing FITS file, in place.

    Supports ``region[y0:y1, x0:x1] = values`` (the ``dask.array.store`` protocol) with
    plain slices. Each row is written with ``os.pwrite`` at its offset in the file, so
    neither the image nor a memory map of it is ever held in memory, and concurrent
    writes of disjoint rectangles (threads or processes) are safe. Holds only the path
    and offsets, so it pickles to dask.distributed workers.
    """

    def __init__(self, path: str | os.PathLike, offset: int, shape: tuple[int, int]):
        self.path = str(path)
        self.offset = int(offset)
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(np.float32)
        self.ndim = 2

    def __setitem__(self, key: tuple[slice, slice], values: np.ndarray) -> None:
        (y0, y1), (x0, x1) = (_slice_bounds(k, n) for k, n in zip(key, self.shape, strict=True))
        # FITS stores big-endian IEEE floats, rows of NAXIS1 pixels.
        rows = np.ascontiguousarray(np.broadcast_to(values, (y1 - y0, x1 - x0)), dtype=">f4")
        nx = self.shape[1]
        fd = os.open(self.path, os.O_WRONLY)
        try:
            if x0 == 0 and x1 == nx:  # whole rows: one contiguous write
                os.pwrite(fd, rows.tobytes(), self.offset + 4 * y0 * nx)
                return
            for i, row in enumerate(rows):
                os.pwrite(fd, row.tobytes(), self.offset + 4 * ((y0 + i) * nx + x0))
        finally:
            os.close(fd)


def _slice_bounds(key: slice, length: int) -> tuple[int, int]:
    start, stop, step = key.indices(length)
    if step != 1:
        raise ValueError("FitsImageRegion writes need slices with step 1")
    return start, stop


def output_header(header: fits.Header, history: list[str] = ()) -> fits.Header:
    """Copy of ``header`` without the cards that describe the data layout, plus HISTORY."""
    header = header.copy()
    for key in ("BSCALE", "BZERO", "BLANK", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2",
                "SIMPLE", "XTENSION", "EXTEND", "PCOUNT", "GCOUNT", "EXTNAME"):
        header.remove(key, ignore_missing=True)
    for line in history:
        header.add_history(line)
    return header


def create_fits_image(
    path: str | os.PathLike,
    shape: tuple[int, int],
    header: fits.Header,
    *,
    history: list[str] = (),
    extensions: dict[str, fits.Header] | None = None,
) -> list[FitsImageRegion]:
    """Create a FITS file of float32 images of ``shape`` whose pixels are written later.

    The primary HDU gets ``header`` (copied, as :func:`write_fits_image` does) plus
    HISTORY cards; each item of ``extensions`` adds an image extension ``EXTNAME`` with
    that header. Pixels start at 0.0 (a sparse file: nothing is allocated in memory or
    on disk). Once every pixel is written through the returned regions, the file has
    the same bytes as ``HDUList.writeto`` would give. Not atomic by itself: create it
    inside :func:`atomic_path`.

    Parameters
    ----------
    path : where to create the file (overwritten)
    shape : (ny, nx) of every image
    header : cards of the primary HDU (WCS, SIP, observation keywords)
    history : HISTORY lines added to the primary header
    extensions : ``{EXTNAME: header}`` of further float32 images of the same shape

    Returns
    -------
    list of FitsImageRegion, the primary image first, then the extensions in order.
    """
    # A zero-stride view: astropy derives BITPIX/NAXISn from it without any memory.
    empty = np.broadcast_to(np.float32(0), tuple(shape))
    hdus = [fits.PrimaryHDU(data=empty, header=output_header(header, history))]
    for name, ext_header in (extensions or {}).items():
        hdus.append(fits.ImageHDU(data=empty, header=output_header(ext_header), name=name))
    hdulist = fits.HDUList(hdus)
    hdulist.verify("silentfix")
    hdulist.update_extend()
    data_bytes = 4 * shape[0] * shape[1]
    padded = -(-data_bytes // _FITS_BLOCK) * _FITS_BLOCK
    regions, offset = [], 0
    with open(path, "wb") as handle:
        for hdu in hdus:
            hdu.update_header()
            text = hdu.header.tostring().encode("ascii")
            handle.seek(offset)
            handle.write(text)
            regions.append(FitsImageRegion(path, offset + len(text), shape))
            offset += len(text) + padded
        handle.truncate(offset)
    return regions


def write_zarr_image(
    path: str | os.PathLike,
    data: np.ndarray,
    *,
    chunks: int,
    attrs: dict[str, Any],
    name: str = "image",
    extra: dict[str, np.ndarray] | None = None,
) -> None:
    """Write a 2-D float32 image as array ``name`` of a new zarr v3 store, atomically.

    ``attrs`` (JSON-serialisable) go on the image array: header, units, provenance.
    ``extra`` adds same-shape arrays beside it (``mask`` bit flags, ``ivar`` weights),
    chunked alike.
    """
    data = np.asarray(data, dtype=np.float32)
    chunk_shape = (min(chunks, data.shape[0]), min(chunks, data.shape[1]))
    with atomic_path(path) as tmp:
        root = zarr.open_group(tmp, mode="w", zarr_format=3)
        for key, values in {name: data, **(extra or {})}.items():
            values = np.asarray(values)
            fill = np.nan if np.issubdtype(values.dtype, np.floating) else 0
            array = root.create_array(key, shape=values.shape, dtype=values.dtype,
                                      chunks=chunk_shape, fill_value=fill)
            array[...] = values
        root[name].attrs.update(attrs)


def _inner_chunk(shard: int, *, limit: int = 512) -> int:
    """Largest halving of ``shard`` that is at most ``limit`` (inner chunks must divide shards)."""
    chunk = shard
    while chunk > limit and chunk % 2 == 0:
        chunk //= 2
    return chunk


def create_zarr_image(
    path: str | os.PathLike,
    shape: tuple[int, int],
    *,
    shard: int,
    attrs: dict[str, Any],
    names: tuple[str, ...] = ("image",),
) -> list[zarr.Array]:
    """Create a zarr v3 store of empty, sharded float32 arrays whose pixels are written later.

    Each array is split into ``shard`` x ``shard`` shards (one file each) of inner chunks
    of at most 512 pixels a side; unwritten pixels read as NaN. Write whole shards only,
    each by one writer: a parallel write smaller than a shard can silently lose data.
    ``attrs`` go on the first array. Not atomic by itself: create it inside
    :func:`atomic_path`.

    Returns
    -------
    list of zarr.Array, one per name, in order.
    """
    shard_shape = (min(shard, shape[0]), min(shard, shape[1]))
    chunk_shape = tuple(_inner_chunk(n) for n in shard_shape)
    root = zarr.open_group(path, mode="w", zarr_format=3)
    arrays = [root.create_array(name, shape=tuple(shape), dtype=np.float32, shards=shard_shape,
                                chunks=chunk_shape, fill_value=np.nan) for name in names]
    arrays[0].attrs.update(attrs)
    return arrays


def open_zarr_array(path: str | os.PathLike, name: str) -> zarr.Array | None:
    """Open array ``name`` of a zarr store read-only, or None when the store lacks it."""
    try:
        return zarr.open_array(Path(path) / name, mode="r")
    except (FileNotFoundError, KeyError, zarr.errors.ArrayNotFoundError):
        return None


def open_zarr_image(path: str | os.PathLike, *, name: str = "image") -> zarr.Array:
    """Open array ``name`` of a zarr store read-only (data stay on disk)."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "zarr store does not exist; run the ingest step first")
    return zarr.open_array(path / name, mode="r")


def header_from_attrs(attrs: dict[str, Any]) -> fits.Header:
    """Rebuild the FITS header stored by ingest in zarr attributes."""
    return fits.Header.fromstring(attrs["fits_header"])


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """Read a JSON file into a dict."""
    with open(path) as handle:
        return json.load(handle)


def write_json(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__} to JSON")


def save_checkpoint(path: str | os.PathLike, checkpoint: dict[str, Any]) -> None:
    """Save a checkpoint dict (tensors, plain Python values) atomically with torch.save."""
    import torch  # here, not at the top: steps without a network need no torch

    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``: a checkpoint is data, never code."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "checkpoint does not exist; run the train step first")
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)
