"""The predict step: denoise one ingested exposure and stream it to zarr and FITS.

The denoising itself (outlier repair, dihedral mean, flux restoration, tiles without
seams) is :mod:`astrodenoise.tiling`; this module chooses where the tiles run
(:func:`dask_scheduler`) and writes the result: a zarr v3 store whose shards are the
dask blocks and a FITS file written in place, band by band, so memory stays flat however
large the mosaic, both under temporary names renamed at the end.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import torch
from astropy.io import fits
from distributed import Client, LocalCluster
from tqdm import tqdm

from . import io
from .denoise import load_normalisation, reuse_freed_memory
from .noise_model import read_noise_model
from .provenance import code_version
from .tiling import Execution, PredictConfig, compute_threads, predict_planes
from .transform import exposure_normalisation

__all__ = ["predict", "dask_scheduler", "row_bands"]


@contextlib.contextmanager
def dask_scheduler(execution: Execution):
    """Run the dask computations inside on the scheduler ``execution.scheduler`` names."""
    if execution.scheduler == "threads":
        # Torch threads per worker so that workers x threads <= cores.
        torch.set_num_threads(compute_threads(execution))
        with dask.config.set({"scheduler": "threads", "num_workers": execution.workers}):
            yield None
        return
    if execution.scheduler == "local":
        cluster = LocalCluster(n_workers=execution.workers, threads_per_worker=1, processes=True,
                               dashboard_address=None)
    elif execution.scheduler == "slurm":
        try:  # the cluster extra, an optional dependency
            from dask_jobqueue import SLURMCluster
        except ImportError as err:
            raise RuntimeError("execution.predict.scheduler 'slurm' needs dask-jobqueue: "
                               "pip install -e '.[cluster]'") from err
        cluster = SLURMCluster(processes=1)
        cluster.scale(jobs=execution.workers)
    else:
        cluster = None
    try:
        with Client(cluster if cluster is not None else execution.scheduler) as client:
            if cluster is not None:
                client.wait_for_workers(execution.workers, timeout=600)
            yield client
    finally:
        if cluster is not None:
            cluster.close()


def predict(input_zarr: str, noise_json: str, checkpoint: str, *, out_zarr: str, out_fits: str,
            config: PredictConfig | None = None, execution: Execution | None = None) -> None:
    """Denoise one ingested exposure; stream a zarr store and a FITS file to disk (atomic).

    The FITS file carries the input header (WCS and SIP kept) plus HISTORY cards naming
    the model, its hash and the code version; the zarr attributes carry the same. With
    ``config.uncertainty`` the FITS file gets an ``ERR`` image extension and the store an
    ``err`` array; with ``config.repair_outliers`` (the default) a ``REPAIRED`` extension
    and a ``repaired`` array mark the pixels filled as cosmic rays. Blocks are written as
    they are computed (one zarr shard and one FITS rectangle per block), so memory stays
    flat for mosaics of any size. Both outputs are
    built under temporary names and renamed at the end: a killed run leaves neither, and
    a rerun writes the same bytes. ``config`` says what is computed (default
    ``PredictConfig()``), ``execution`` how it runs (default ``Execution()``).
    """
    config, execution = config or PredictConfig(), execution or Execution()
    reuse_freed_memory()
    source = io.open_zarr_image(input_zarr)
    norm = exposure_normalisation(load_normalisation(str(checkpoint)), read_noise_model(noise_json))
    for path in (out_zarr, out_fits):
        io.remove_stale_temporaries(path)
    model_hash = io.file_sha256(checkpoint)[:16]
    provenance = {
        "model": str(checkpoint), "model_sha256": model_hash, "code_version": code_version(),
        "predict_config": dataclasses.asdict(config), "execution": dataclasses.asdict(execution),
        "input": str(input_zarr),
    }
    attrs = dict(source.attrs) | {"provenance_predict": provenance}
    # Short HISTORY lines: astropy wraps long ones mid-word, which breaks a grep for the hash.
    history = [f"astrodenoise {code_version()} predict", f"model {Path(checkpoint).name}",
               f"model sha256 {model_hash}", f"input {Path(input_zarr).name}"]
    header = io.header_from_attrs(source.attrs)
    names = config.planes
    extensions = {name.upper(): _plane_header(name, header) for name in names[1:]}
    tile = execution.tile
    with dask_scheduler(execution), contextlib.ExitStack() as stack:
        planes = predict_planes(da.from_zarr(source), checkpoint, norm=norm, config=config,
                                execution=execution)
        bands = row_bands(planes.chunks[1], blocks_per_row=len(planes.chunks[2]), workers=execution.workers)
        # One dask block per zarr shard: parallel writes smaller than a shard lose data.
        planes = planes.rechunk((len(names), tile, tile))
        zarr_tmp = stack.enter_context(io.atomic_path(out_zarr))
        fits_tmp = stack.enter_context(io.atomic_path(out_fits))
        targets = io.create_zarr_image(zarr_tmp, source.shape, shard=tile, attrs=attrs,
                                       names=names)
        targets += io.create_fits_image(fits_tmp, source.shape, header, history=history,
                                        extensions=extensions)
        # Band by band, so memory stays flat whatever order dask would pick on the whole
        # mosaic (the overlap re-reads the input rows next to each band; reading is cheap).
        # Progress per band in the log; a distributed run has its dashboard within a band.
        for rows in tqdm(bands, desc="predict", unit="band", mininterval=5.0, ascii=True):
            region = (rows, slice(None))
            band = [planes[i][region] for i in range(len(names))] * 2
            da.store(band, targets, regions=[region] * len(targets), lock=False)


def row_bands(row_chunks: tuple[int, ...], *, blocks_per_row: int, workers: int) -> list[slice]:
    """Row ranges computed one after the other: whole rows of blocks, at least two blocks
    per worker each, cut only at block edges (so no block is computed twice)."""
    step = max(1, -(-2 * workers // blocks_per_row))
    edges = np.cumsum((0,) + tuple(row_chunks))
    cuts = list(edges[::step]) + ([edges[-1]] if (len(edges) - 1) % step else [])
    return [slice(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


def _plane_header(name: str, header: fits.Header) -> fits.Header:
    """Header of the ERR or REPAIRED extension: the input's (so the WCS travels) plus a note."""
    out = header.copy()
    if name == "err":
        out["COMMENT"] = "ERR: standard deviation of the denoised value over the eight flips and"
        out["COMMENT"] = "transposes of the input (test-time augmentation), same units. A lower"
        out["COMMENT"] = "bound: on the demo survey the true error was 6-25 times larger."
    else:
        out["BUNIT"] = ""
        out["COMMENT"] = "REPAIRED: 1 where the input pixel was taken for a cosmic ray or hot"
        out["COMMENT"] = "pixel (far above the network's one-pass prediction) and filled from"
        out["COMMENT"] = "its neighbours before denoising; 0 elsewhere; NaN = no data."
    return out
