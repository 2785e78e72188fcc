"""Tiled inference with dask: denoise images of any size, block by block, without seams.

Each dask block is extended by an overlap of at least the network's receptive field
(rounded up to a multiple of ``2**n_pool``, so that the pooling grid of every block
lines up with the whole image), reflect-padded to a multiple of ``2**n_pool``, denoised
and cropped back (crop-and-place). The result equals whole-image prediction to float32
rounding. Normalisation is global (the exposure's sky level and the survey scale from
the checkpoint), never per tile. NaN pixels (no data) stay NaN.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from dataclasses import dataclass
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import torch
from dask.diagnostics import ProgressBar

from . import io
from .io import load_checkpoint
from .model import UNet, UNetConfig
from .provenance import code_version
from .train import normalise

__all__ = [
    "PredictConfig",
    "load_model",
    "tile_overlap",
    "denoise_array",
    "predict_tiles",
    "predict",
    "dask_scheduler",
]


@dataclass(frozen=True)
class PredictConfig:
    """Settings of the predict step.

    ``tile`` is the dask block size in pixels (a multiple of ``2**n_pool``);
    ``workers`` the number of dask threads, each running the model on its own block;
    ``device`` ``"auto"`` (CUDA when available), ``"cpu"`` or ``"cuda"``; ``threads``
    the CPU cores to use in all (0: every core this process may run on).

    ``scheduler`` says where the blocks run: ``"threads"`` (this process, ``workers``
    threads), ``"local"`` (a dask.distributed LocalCluster of ``workers`` processes),
    ``"slurm"`` (a dask-jobqueue SLURMCluster of ``workers`` single-worker jobs, whose
    queue, account, memory and walltime come from the site's dask ``jobqueue.slurm``
    config, not from here) or the address of a running scheduler (``"tcp://host:8786"``).
    Workers need the checkpoint and the input on a shared filesystem.
    """

    tile: int = 512
    workers: int = 1
    device: str = "auto"
    threads: int = 0
    scheduler: str = "threads"

    @classmethod
    def from_dict(cls, values: dict) -> PredictConfig:
        return cls(**values)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("predict.device is 'cuda' but torch sees no CUDA device; "
                           "install a CUDA build of torch (README) or set device: auto")
    return torch.device(name)


@functools.lru_cache(maxsize=4)
def load_model(checkpoint_path: str, device: str = "auto") -> tuple[UNet, float]:
    """Load a checkpoint once per process; return (model in eval mode, survey scale).

    Cached on the path, so dask blocks reuse the model instead of reloading it.
    """
    checkpoint = load_checkpoint(checkpoint_path)
    model = UNet(UNetConfig.from_dict(checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model"])
    model.to(_device(device)).eval()
    return model, float(checkpoint["normalisation"]["scale"])


def tile_overlap(model: UNet) -> int:
    """Overlap in pixels: the receptive field rounded up to a multiple of ``2**n_pool``."""
    step = 2**model.n_pool
    return -(-model.receptive_field // step) * step


def denoise_array(data: np.ndarray, model: UNet, *, offset: float, scale: float) -> np.ndarray:
    """Denoise one 2-D array in one forward pass.

    Parameters
    ----------
    data : (ny, nx) float32, data units; NaN = no data
    model : a UNet in eval mode
    offset : sky level subtracted before the network (data units)
    scale : survey noise scale the network was trained with (data units)

    Returns
    -------
    (ny, nx) float32 in data units, NaN where ``data`` is NaN.
    """
    image, nodata = normalise(data, offset=offset, scale=scale)
    step = 2**model.n_pool
    ny, nx = image.shape
    pad = ((0, -ny % step), (0, -nx % step))
    # Reflect padding needs at least two pixels; symmetric works for any size.
    padded = np.pad(image, pad, mode="reflect" if min(ny, nx) > step else "symmetric")
    device = next(model.parameters()).device
    with torch.inference_mode():
        tensor = torch.from_numpy(padded)[None, None].to(device)
        out = model(tensor)[0, 0, :ny, :nx].float().cpu().numpy()
    out = out * scale + offset
    out[nodata] = np.nan
    return out.astype(np.float32)


def _denoise_block(block: np.ndarray, *, checkpoint: str, device: str, offset: float,
                   torch_threads: int) -> np.ndarray:
    # Set in the process that runs the block: a distributed worker is another process.
    if torch.get_num_threads() != torch_threads:
        torch.set_num_threads(torch_threads)
    model, scale = load_model(checkpoint, device)
    return denoise_array(block, model, offset=offset, scale=scale)


def predict_tiles(image: da.Array | np.ndarray, checkpoint: str, *, offset: float,
                  config: PredictConfig = PredictConfig()) -> da.Array:
    """Return a lazy dask array: ``image`` denoised tile by tile.

    Parameters
    ----------
    image : (ny, nx) float32 dask or numpy array, data units; NaN = no data
    checkpoint : path of the trained model
    offset : the exposure's sky level (noise step), in data units
    config : PredictConfig

    Returns
    -------
    (ny, nx) float32 dask array chunked in ``config.tile`` blocks.
    """
    model, _ = load_model(str(checkpoint), config.device)
    step = 2**model.n_pool
    if config.tile % step:
        raise ValueError(f"predict.tile {config.tile} must be a multiple of 2**n_pool = {step}")
    overlap = tile_overlap(model)
    array = da.asarray(image).astype(np.float32)
    array = array.rechunk(tuple(_axis_chunks(n, config.tile, overlap) for n in array.shape))
    return array.map_overlap(
        _denoise_block, depth=overlap, boundary="none", trim=True,
        dtype=np.float32, meta=np.array((), dtype=np.float32),
        checkpoint=str(checkpoint), device=config.device, offset=float(offset),
        torch_threads=compute_threads(config),
    )


def _axis_chunks(length: int, tile: int, overlap: int) -> tuple[int, ...]:
    """Chunk sizes along one axis: block edges on multiples of ``tile`` (itself a multiple
    of ``2**n_pool``), and a last block no thinner than ``overlap``.

    dask's map_overlap re-chunks an array whose last block is thinner than the overlap,
    which would move block edges off the pooling grid and make seams; a thin remainder is
    therefore merged into the block before it.
    """
    tile = max(tile, overlap)
    chunks = [tile] * (length // tile)
    remainder = length - tile * len(chunks)
    if remainder and chunks and remainder < overlap:
        chunks[-1] += remainder
    elif remainder:
        chunks.append(remainder)
    return tuple(chunks)


def compute_threads(config: PredictConfig) -> int:
    """Torch threads per dask worker, so that workers x threads does not exceed the cores."""
    cores = config.threads or len(os.sched_getaffinity(0))
    return max(1, cores // max(1, config.workers))


def scheduler_options(config: PredictConfig) -> dict:
    """Settings for ``dask.config.set``: the local threaded scheduler with ``workers``
    threads, and torch threads per worker set so that workers x threads <= cores."""
    torch.set_num_threads(compute_threads(config))
    return {"scheduler": "threads", "num_workers": config.workers}


@contextlib.contextmanager
def dask_scheduler(config: PredictConfig):
    """Run the dask computations inside on the scheduler ``config.scheduler`` names."""
    if config.scheduler == "threads":
        with dask.config.set(scheduler_options(config)):
            yield None
        return
    from distributed import Client, LocalCluster

    if config.scheduler == "local":
        cluster = LocalCluster(n_workers=config.workers, threads_per_worker=1, processes=True,
                               dashboard_address=None)
    elif config.scheduler == "slurm":
        from dask_jobqueue import SLURMCluster

        cluster = SLURMCluster(processes=1)
        cluster.scale(jobs=config.workers)
    else:
        cluster = None
    try:
        with Client(cluster if cluster is not None else config.scheduler) as client:
            if cluster is not None:
                client.wait_for_workers(config.workers, timeout=600)
            yield client
    finally:
        if cluster is not None:
            cluster.close()


def predict(input_zarr: str, noise_json: str, checkpoint: str, *, out_zarr: str, out_fits: str,
            config: PredictConfig = PredictConfig()) -> None:
    """Denoise one ingested exposure; write a zarr store and a FITS file (both atomic).

    The FITS file carries the input header (WCS and SIP kept) plus HISTORY cards naming
    the model, its hash and the code version; the zarr attributes carry the same.
    """
    source = io.open_zarr_image(input_zarr)
    noise = io.read_json(noise_json)
    image = da.from_zarr(source)
    with dask_scheduler(config) as client:
        denoised = predict_tiles(image, checkpoint, offset=noise["sky_level"], config=config)
        # Progress per block in the log (threads); a distributed run has its dashboard.
        with contextlib.nullcontext() if client else ProgressBar(dt=5.0):
            result = denoised.compute()
    model_hash = io.file_sha256(checkpoint)[:16]
    provenance = {
        "model": str(checkpoint), "model_sha256": model_hash, "code_version": code_version(),
        "predict_config": dataclasses.asdict(config), "input": str(input_zarr),
    }
    attrs = dict(source.attrs) | {"provenance_predict": provenance}
    io.write_zarr_image(out_zarr, result, chunks=config.tile, attrs=attrs)
    # Short HISTORY lines: astropy wraps long ones mid-word, which breaks a grep for the hash.
    history = [f"astrodenoise {code_version()} predict", f"model {Path(checkpoint).name}",
               f"model sha256 {model_hash}", f"input {Path(input_zarr).name}"]
    io.write_fits_image(out_fits, result, io.header_from_attrs(source.attrs), history=history)
