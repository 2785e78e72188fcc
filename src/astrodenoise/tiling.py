"""Denoising as the predict step does it, on an image of any size, tile by tile, no seams.

:class:`PredictConfig` says *what* is computed (precision, dihedral averaging, outlier
repair, flux restoration, uncertainty); :class:`Execution` says *how* it runs (tile
size, workers, device, threads, scheduler), which changes the result only through
``precision: auto`` (bfloat16 on a GPU).
:func:`denoise_planes` is the recipe on one array; :func:`predict_planes` applies it to
every dask block, each extended by an overlap of at least the network's receptive field
(rounded up to a multiple of ``2**n_pool``, so that the pooling grid of every block
lines up with the whole image) and cropped back: the result equals whole-image
prediction to float32 rounding. Normalisation is global, never per tile.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import dask.array as da
import numpy as np
import torch

from .denoise import PRECISIONS, denoise_array, denoise_with_uncertainty, load_model, reuse_freed_memory
from .model import UNet
from .restore import outlier_mask, repair_outliers, restore_flux
from .transform import Normalisation

__all__ = ["PredictConfig", "Execution", "tile_overlap", "denoise_planes", "predict_planes",
           "predict_tiles", "compute_threads"]


@dataclass(frozen=True)
class PredictConfig:
    """What the predict step computes (the ``predict`` block of the config).

    ``precision`` one of :data:`~astrodenoise.denoise.PRECISIONS` (autocast dtype of the
    forward pass); ``average`` makes the image the mean over the eight dihedral
    test-time transforms (flips and transposes; eight forward passes per block: on the
    demo survey +0.3 dB PSNR for both networks, benchmarks/quality.py with
    ``--predict-set average=false``); ``uncertainty`` adds their spread as a second
    plane (and implies the mean). ``restore_flux`` gives the denoised sources back the
    flux the network shrank away (:func:`~astrodenoise.restore.restore_flux` with
    ``restore_threshold``, ``restore_grow``, ``restore_sigma``, ``restore_sharpen``).
    ``repair_outliers`` first finds cosmic rays and hot pixels as pixels far above a
    one-pass prediction (:func:`~astrodenoise.restore.outlier_mask` with
    ``outlier_threshold`` and ``outlier_contrast``), fills them from their neighbours
    and denoises the repaired data; the repaired pixels are written as a third plane.
    """

    precision: str = "auto"
    average: bool = True
    uncertainty: bool = False
    restore_flux: bool = True
    restore_threshold: float = 1.0
    restore_grow: int = 2
    restore_sigma: float = 1.0
    restore_sharpen: float = 20.0
    repair_outliers: bool = True
    outlier_threshold: float = 5.0
    outlier_contrast: float = 3.0

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"predict.precision {self.precision!r} is not one of {PRECISIONS}")

    @property
    def planes(self) -> tuple[str, ...]:
        """Names of the planes :func:`denoise_planes` returns, in order."""
        return ("image",) + (("err",) if self.uncertainty else ()) \
            + (("repaired",) if self.repair_outliers else ())

    @classmethod
    def from_dict(cls, values: dict) -> PredictConfig:
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"predict settings {unknown} unknown; see the predict block of "
                             "config/config.yaml (tile, workers, device and scheduler are under "
                             "execution.predict)")
        return cls(**values)


@dataclass(frozen=True)
class Execution:
    """How the predict step runs (``execution.predict`` in the config), not what it computes.

    One exception: with ``precision="auto"`` (the default) a GPU computes in bfloat16 and
    the CPU in float32 (bright pixels differ by ~0.4%); set ``predict.precision`` to a
    dtype for the same numbers on every device.

    ``tile`` is the dask block size in pixels (a multiple of ``2**n_pool``), also the
    shard side of the output zarr store; ``workers`` the number of dask workers, each
    running the model on its own block; ``device`` ``"auto"`` (CUDA when available),
    ``"cpu"`` or ``"cuda"``; ``threads`` the CPU cores to use in all (0: every core this
    process may run on). ``scheduler`` says where the blocks run: ``"threads"`` (this
    process, ``workers`` threads), ``"local"`` (a dask.distributed LocalCluster of
    ``workers`` processes), ``"slurm"`` (a dask-jobqueue SLURMCluster of ``workers``
    single-worker jobs, whose queue, account, memory and walltime come from the site's
    dask ``jobqueue.slurm`` config) or the address of a running scheduler
    (``"tcp://host:8786"``). Workers need the checkpoint and the input on a shared
    filesystem.
    """

    tile: int = 1024
    workers: int = 1
    device: str = "auto"
    threads: int = 0
    scheduler: str = "threads"

    @classmethod
    def from_dict(cls, values: dict) -> Execution:
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"execution.predict settings {unknown} unknown; use tile, workers, device, "
                             "threads or scheduler (what predict computes goes in the predict block)")
        return cls(**values)


#: Pixels an outlier repair reaches beyond one receptive field: the mask's growth, the
#: fill's Gaussian (truncated at 4 sigma) and the flux restoration after the second pass.
_REPAIR_REACH = 16


def tile_overlap(model: UNet, config: PredictConfig | None = None) -> int:
    """Overlap in pixels: the receptive field rounded up to a multiple of ``2**n_pool``.

    The overlap is the whole receptive field, twice what one pass needs on either side,
    which also covers the few pixels the flux restoration reads. With
    ``config.repair_outliers`` the second pass sees pixels the first pass repaired, so
    the reach is two half fields plus the repair's own few pixels."""
    step = 2**model.n_pool
    reach = model.receptive_field + (_REPAIR_REACH if config is not None and config.repair_outliers else 0)
    return -(-reach // step) * step


def _repair(data: np.ndarray, model: UNet, norm: Normalisation, config: PredictConfig):
    """Cosmic rays and hot pixels filled: (repaired data, float32 plane 1 = repaired, NaN no data)."""
    first = denoise_array(data, model, norm=norm, precision=config.precision)
    mask = outlier_mask(data, first, norm=norm, threshold=config.outlier_threshold,
                        contrast=config.outlier_contrast)
    data = repair_outliers(data, mask, first)
    return data, np.where(np.isfinite(data), mask, np.nan).astype(np.float32)


def denoise_planes(data: np.ndarray, model: UNet, *, norm: Normalisation,
                   config: PredictConfig = PredictConfig()) -> np.ndarray:
    """Denoise one 2-D array as ``config`` says (outlier repair, mean over the dihedral
    transforms, flux restoration, uncertainty).

    Parameters
    ----------
    data : (ny, nx) float32, data units; NaN = no data
    model : a UNet in eval mode
    norm : the exposure's map into the network's domain and back
    config : PredictConfig

    Returns
    -------
    (planes, ny, nx) float32, NaN where ``data`` is NaN, as ``config.planes`` names them:
    the denoised image (data units), with ``config.uncertainty`` its uncertainty (data
    units), and with ``config.repair_outliers`` the repaired pixels (1, else 0).
    """
    repaired = None
    if config.repair_outliers:
        data, repaired = _repair(data, model, norm, config)
    if config.average or config.uncertainty:
        planes = list(denoise_with_uncertainty(data, model, norm=norm, precision=config.precision))
    else:
        planes = [denoise_array(data, model, norm=norm, precision=config.precision)]
    if config.restore_flux:
        planes[0] = restore_flux(data, planes[0], norm=norm, threshold=config.restore_threshold,
                                 grow=config.restore_grow, sigma=config.restore_sigma,
                                 sharpen=config.restore_sharpen)
    planes = planes[:2 if config.uncertainty else 1]
    return np.stack(planes + ([repaired] if repaired is not None else []))


def _denoise_block(block: np.ndarray, *, checkpoint: str, norm: Normalisation, torch_threads: int,
                   config: PredictConfig, device: str, depth: int, block_info=None) -> np.ndarray:
    """Denoise one overlapped block; return the (planes, ny, nx) crop of its own region."""
    # Set in the process that runs the block: a distributed worker is another process.
    reuse_freed_memory()
    if torch.get_num_threads() != torch_threads:
        torch.set_num_threads(torch_threads)
    model = load_model(checkpoint, device)
    # The flux restoration reads a few pixels around each kept one (grow + 4 sigma); the
    # overlap (the whole receptive field) leaves them twice the half field from the edge,
    # and with repair_outliers two half fields plus the repair's reach (tile_overlap).
    planes = denoise_planes(block, model, norm=norm, config=config)
    # boundary="none" extends a block only towards its neighbours: crop those sides.
    where, count = block_info[0]["chunk-location"], block_info[0]["num-chunks"]
    (y0, x0) = (depth if i > 0 else 0 for i in where)
    (y1, x1) = (n - depth if i < c - 1 else n for i, c, n in zip(where, count, block.shape, strict=True))
    return planes[:, y0:y1, x0:x1]


def predict_planes(image: da.Array | np.ndarray, checkpoint: str, *, norm: Normalisation,
                   config: PredictConfig = PredictConfig(),
                   execution: Execution = Execution()) -> da.Array:
    """Return a lazy dask array: ``image`` denoised tile by tile, with its other planes.

    Parameters
    ----------
    image : (ny, nx) float32 dask or numpy array, data units; NaN = no data
    checkpoint : path of the trained model
    norm : the exposure's normalisation (:func:`astrodenoise.transform.exposure_normalisation`)
    config : PredictConfig, what is computed
    execution : Execution, how (tile size, device, threads)

    Returns
    -------
    (planes, ny, nx) float32 dask array, blocks of about ``execution.tile`` pixels, the
    planes named by ``config.planes`` (:func:`denoise_planes`).
    """
    model = load_model(str(checkpoint), execution.device)
    step = 2**model.n_pool
    if execution.tile % step:
        raise ValueError(f"execution.predict.tile {execution.tile} must be a multiple of "
                         f"2**n_pool = {step}")
    overlap = tile_overlap(model, config)
    array = da.asarray(image).astype(np.float32)
    array = array.rechunk(tuple(_axis_chunks(n, execution.tile, overlap) for n in array.shape))
    # Crop-and-place by hand (rather than map_overlap's trim) because the block function
    # adds the planes axis. An axis of one block needs no overlap (dask refuses one wider
    # than the block, and the block function crops only sides that have a neighbour).
    depth = {axis: overlap if len(chunks) > 1 else 0 for axis, chunks in enumerate(array.chunks)}
    extended = da.overlap.overlap(array, depth=depth, boundary="none")
    return extended.map_blocks(
        _denoise_block, new_axis=0, chunks=((len(config.planes),),) + array.chunks, dtype=np.float32,
        meta=np.empty((0, 0, 0), dtype=np.float32), checkpoint=str(checkpoint), norm=norm,
        torch_threads=compute_threads(execution), config=config, device=execution.device, depth=overlap,
    )


def predict_tiles(image: da.Array | np.ndarray, checkpoint: str, *, norm: Normalisation,
                  config: PredictConfig = PredictConfig(), execution: Execution = Execution()) -> da.Array:
    """Return a lazy (ny, nx) float32 dask array: ``image`` denoised tile by tile.

    Plane 0 of :func:`predict_planes` (the mean of the dihedral transforms when
    ``config.average`` or ``config.uncertainty`` is set).
    """
    return predict_planes(image, checkpoint, norm=norm, config=config, execution=execution)[0]


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


def compute_threads(execution: Execution) -> int:
    """Torch threads per dask worker, so that workers x threads does not exceed the cores."""
    cores = execution.threads or len(os.sched_getaffinity(0))
    return max(1, cores // max(1, execution.workers))
