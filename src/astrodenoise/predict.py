"""Tiled inference with dask: denoise images of any size, block by block, without seams.

Each dask block is extended by an overlap of at least the network's receptive field
(rounded up to a multiple of ``2**n_pool``, so that the pooling grid of every block
lines up with the whole image), reflect-padded to a multiple of ``2**n_pool``, denoised
and cropped back (crop-and-place). The result equals whole-image prediction to float32
rounding. Normalisation is global (the exposure's sky level and the survey scale from
the checkpoint), never per tile. NaN pixels (no data) stay NaN.

By default (``average``) the eight dihedral transforms of each block (flips and
transposes) are denoised and undone, and their mean is the image; optionally their
spread is written as a per-pixel uncertainty. By default (``restore_flux``) the flux the
network shrank away is then given back to the sources (:func:`restore_flux`).

Outputs stream to disk block by block (a zarr v3 store whose shards are the dask blocks
and a FITS file written in place), so memory stays flat however large the mosaic.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import os
from dataclasses import dataclass
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import torch
from astropy.io import fits
from scipy import ndimage
from tqdm import tqdm

from . import io
from .io import load_checkpoint
from .model import UNet, UNetConfig
from .noise import pixel_sigma
from .provenance import code_version
from .train import Normalisation, exposure_normalisation

__all__ = [
    "PredictConfig",
    "PRECISIONS",
    "load_model",
    "load_normalisation",
    "tile_overlap",
    "denoise_array",
    "denoise_with_uncertainty",
    "restore_flux",
    "denoise_planes",
    "predict_planes",
    "predict_tiles",
    "predict",
    "dask_scheduler",
]

#: Values of ``predict.precision``: ``auto`` is bfloat16 autocast on CUDA and float32 on
#: the CPU (where bfloat16 gained little on AVX-512 and rounds bright pixels).
PRECISIONS = ("auto", "float32", "bfloat16", "float16")


@dataclass(frozen=True)
class PredictConfig:
    """Settings of the predict step.

    ``tile`` is the dask block size in pixels (a multiple of ``2**n_pool``), also the
    shard side of the output zarr store; ``workers`` the number of dask threads, each
    running the model on its own block; ``device`` ``"auto"`` (CUDA when available),
    ``"cpu"`` or ``"cuda"``; ``threads`` the CPU cores to use in all (0: every core this
    process may run on); ``precision`` one of :data:`PRECISIONS` (autocast dtype of the
    forward pass); ``average`` makes the image the mean over the eight dihedral
    test-time transforms (flips and transposes; eight forward passes per block: on the
    demo survey +0.3 dB PSNR for both networks, benchmarks/quality.py with
    ``--predict-set average=false``);
    ``uncertainty`` adds their spread as a second plane (and implies the mean).
    ``restore_flux`` gives the denoised sources back the flux the network shrank away
    (:func:`restore_flux` with ``restore_threshold``, ``restore_grow``, ``restore_sigma``,
    ``restore_sharpen``).
    ``repair_outliers`` first finds cosmic rays and hot pixels as pixels far above a
    one-pass prediction (:func:`outlier_mask` with ``outlier_threshold`` and
    ``outlier_contrast``), fills them from their neighbours and denoises the repaired
    data (:func:`repair_outliers`); the repaired pixels are written as a third plane.

    ``scheduler`` says where the blocks run: ``"threads"`` (this process, ``workers``
    threads), ``"local"`` (a dask.distributed LocalCluster of ``workers`` processes),
    ``"slurm"`` (a dask-jobqueue SLURMCluster of ``workers`` single-worker jobs, whose
    queue, account, memory and walltime come from the site's dask ``jobqueue.slurm``
    config, not from here) or the address of a running scheduler (``"tcp://host:8786"``).
    Workers need the checkpoint and the input on a shared filesystem.
    """

    tile: int = 1024
    workers: int = 1
    device: str = "auto"
    threads: int = 0
    scheduler: str = "threads"
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

    Cached on the path, so dask blocks reuse the model instead of reloading it (in a
    dask.distributed cluster, once per worker process). The weights are stored
    channels-last: oneDNN's convolutions ran 1.8x faster so on AVX-512, same results.
    """
    checkpoint = load_checkpoint(checkpoint_path)
    model = UNet(UNetConfig.from_dict(checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model"])
    model.to(_device(device), memory_format=torch.channels_last).eval()
    return model, float(checkpoint["normalisation"]["scale"])


@functools.lru_cache(maxsize=4)
def load_normalisation(checkpoint_path: str) -> dict:
    """The checkpoint's survey-wide normalisation settings (``kind``, ``scale``, ``gain``)."""
    return dict(load_checkpoint(checkpoint_path)["normalisation"])


def _linear(norm: Normalisation | None, offset: float | None, scale: float | None) -> Normalisation:
    """``norm``, or the linear map of ``offset`` and ``scale`` (the older calling form)."""
    if norm is not None:
        return norm
    if offset is None or scale is None:
        raise ValueError("give norm, or offset and scale")
    return Normalisation("linear", offset=float(offset), scale=float(scale))


@functools.cache
def _reuse_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse; return whether it applied (Linux only).

    The network's activations on a 1024^2 block are buffers of 80-160 MB. glibc returns
    such buffers to the kernel at every free (they are above its mmap threshold, and a
    dask thread has an arena of its own), so every forward pass faults them in again:
    on this project's 2-core VM that doubled the time of a forward pass. One arena and
    high mmap/trim thresholds keep them in the heap; the peak memory stays the same. It
    changes the whole process, once: call it before the dask threads start.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8  # <malloc.h>
    settings = ((m_arena_max, 1), (m_mmap_threshold, 1 << 30), (m_trim_threshold, 1 << 30))
    return all(libc.mallopt(option, value) == 1 for option, value in settings)


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


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        precision = "bfloat16" if device.type == "cuda" else "float32"
    return None if precision == "float32" else getattr(torch, precision)


def _forward(model: UNet, batch: np.ndarray, precision: str) -> np.ndarray:
    """Run the network on a (batch, ny, nx) float32 stack; return the same shape, float32."""
    device = next(model.parameters()).device
    dtype = _autocast_dtype(precision, device)
    tensor = torch.from_numpy(np.ascontiguousarray(batch))[:, None].to(device)
    tensor = tensor.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        out = model(tensor)
    return out[:, 0].float().cpu().numpy()


def _pad_to_pool(image: np.ndarray, step: int) -> np.ndarray:
    """Pad bottom and right to multiples of ``step``; reflect needs two pixels, symmetric any."""
    ny, nx = image.shape
    mode = "reflect" if min(ny, nx) > step else "symmetric"
    return np.pad(image, ((0, -ny % step), (0, -nx % step)), mode=mode)


def _to_data_units(out: np.ndarray, nodata: np.ndarray, norm: Normalisation) -> np.ndarray:
    out = norm.inverse(out)
    out[nodata] = np.nan
    return out.astype(np.float32)


def denoise_array(data: np.ndarray, model: UNet, *, offset: float | None = None,
                  scale: float | None = None, norm: Normalisation | None = None,
                  precision: str = "float32") -> np.ndarray:
    """Denoise one 2-D array in one forward pass.

    Parameters
    ----------
    data : (ny, nx) float32, data units; NaN = no data
    model : a UNet in eval mode
    norm : the exposure's map into the network's domain and back
        (:func:`astrodenoise.train.exposure_normalisation`: linear, or the generalised
        Anscombe transform with its unbiased inverse)
    offset, scale : instead of ``norm``, a linear map: sky level (data units) and the
        survey noise scale the network was trained with (data units)
    precision : one of :data:`PRECISIONS`, the autocast dtype of the forward pass

    Returns
    -------
    (ny, nx) float32 in data units, NaN where ``data`` is NaN.
    """
    norm = _linear(norm, offset, scale)
    image, nodata = norm.forward(data)
    padded = _pad_to_pool(image, 2**model.n_pool)
    out = _forward(model, padded[None], precision)[0, :image.shape[0], :image.shape[1]]
    return _to_data_units(out, nodata, norm)


#: The dihedral group D4 as (transpose, flip rows, flip columns); the first is identity.
_DIHEDRAL = tuple((t, fy, fx) for t in (False, True) for fy in (False, True) for fx in (False, True))


def _transform(image: np.ndarray, transpose: bool, flip_y: bool, flip_x: bool) -> np.ndarray:
    out = image.T if transpose else image
    return out[::-1 if flip_y else 1, ::-1 if flip_x else 1]


def _untransform(image: np.ndarray, transpose: bool, flip_y: bool, flip_x: bool) -> np.ndarray:
    out = image[::-1 if flip_y else 1, ::-1 if flip_x else 1]
    return out.T if transpose else out


def _dihedral_predictions(model: UNet, padded: np.ndarray, precision: str) -> np.ndarray:
    """(8, ny, nx) float32: the network on each dihedral transform of ``padded``, undone.

    The padded image's sides are multiples of ``2**n_pool``, so flipped and transposed
    copies keep the pooling grid of the whole image. Same-shape transforms run as one
    batch on a GPU; on the CPU one at a time (a batch only multiplies memory there).
    """
    device = next(model.parameters()).device
    batch = 4 if device.type == "cuda" else 1
    outputs = []
    for start in range(0, len(_DIHEDRAL), batch):
        group = _DIHEDRAL[start:start + batch]  # groups of 4 share the transpose, so a shape
        stack = np.stack([_transform(padded, *t) for t in group])
        outputs += [_untransform(out, *t) for out, t in zip(_forward(model, stack, precision), group,
                                                              strict=True)]
    return np.stack(outputs)


def denoise_with_uncertainty(data: np.ndarray, model: UNet, *, offset: float | None = None,
                             scale: float | None = None, norm: Normalisation | None = None,
                             precision: str = "float32") -> tuple[np.ndarray, np.ndarray]:
    """Denoise with the eight dihedral test-time transforms; return (mean, spread).

    Parameters are those of :func:`denoise_array`.

    Returns
    -------
    mean : (ny, nx) float32, data units, the mean of the eight denoised copies
    err : (ny, nx) float32, data units, their standard deviation: how much the estimate
        depends on the orientation of the input. It ranks pixels by trustworthiness but
        underestimates the error (benchmarks/uncertainty_calibration.md: on the demo survey
        6-12% of truth pixels, not 68%, lay within +/-1 err).
    Both NaN where ``data`` is NaN.
    """
    norm = _linear(norm, offset, scale)
    image, nodata = norm.forward(data)
    ny, nx = image.shape
    outs = _dihedral_predictions(model, _pad_to_pool(image, 2**model.n_pool), precision)
    # Each copy back to data units first: the spread of a non-linear domain is not the
    # spread in data units.
    outs = np.stack([norm.inverse(o) for o in outs[:, :ny, :nx]]).astype(np.float64)
    mean, err = outs.mean(axis=0), outs.std(axis=0)
    mean[nodata] = err[nodata] = np.nan
    return mean.astype(np.float32), err.astype(np.float32)


#: Residuals beyond this many noise sigmas are cosmic rays or hot pixels, not source light
#: the network shrank: :func:`restore_flux` clips them so that it does not put them back.
RESTORE_CLIP = 4.0


def restore_flux(data: np.ndarray, denoised: np.ndarray, *, norm: Normalisation,
                 threshold: float = 1.0, grow: int = 2, sigma: float = 1.0,
                 sharpen: float = 20.0) -> np.ndarray:
    """Give the sources of a denoised image back the flux the network shrank away.

    A denoiser trained for the mean squared error returns the posterior mean, which pulls
    faint sources towards the sky (on the demo survey Noise2Void dimmed 5 < S/N < 20
    sources by 17%). As in the relaxed lasso, the shrinking estimate picks the support,
    and the data give the amplitude on it: on the footprint of the sources that the
    denoised image shows, the residual ``data - denoised``, smoothed on the scale of the
    PSF core, is added back. The aperture flux there is then that of the data (unbiased),
    while the pixel-scale noise stays removed, and the sky, where the residual is only
    noise, is left as the network made it.

    Parameters
    ----------
    data : (ny, nx) float32, data units; NaN = no data
    denoised : (ny, nx) float32, data units, the network's output for ``data``
    norm : the exposure's normalisation; its domain has unit noise around the sky (0)
    threshold : footprint = ``norm.forward(denoised) > threshold`` (noise sigmas) ...
    grow : ... grown by this many pixels
    sigma : Gaussian smoothing of the residual, pixels
    sharpen : where the denoised image is above this many noise sigmas (grown by
        ``grow + 2`` pixels), the residual is smoothed by ``2 G - G * G`` instead of the
        Gaussian ``G``; 0 = never. Smoothing spreads a residual: for a PSF of FWHM 4 px it
        moves 7% of the correction out of an aperture of radius FWHM, which is what a
        network's error on a bright star leaves behind (a Noise2Void run that made bright
        stars 8% too bright still read +0.8% after the restoration). ``2 G - G * G`` keeps
        the correction's aperture flux to second order in ``sigma`` but lets more pixel
        noise through, which on a bright source is small beside its signal (on the demo
        +0.8% became +0.0% and PSNR moved by less than 0.05 dB).

    Returns
    -------
    (ny, nx) float32, data units; NaN where ``denoised`` is NaN.
    """
    level = norm.forward(denoised)[0]  # noise sigmas above the sky
    footprint = level > threshold
    if grow:
        footprint = ndimage.binary_dilation(footprint, iterations=grow)
    noise = _noise_sigma(denoised, norm)
    residual = np.clip(np.nan_to_num(data - denoised), -RESTORE_CLIP * noise, RESTORE_CLIP * noise)
    add = ndimage.gaussian_filter(residual, sigma)
    if sharpen:
        bright = ndimage.binary_dilation(level > sharpen, iterations=grow + 2)
        add += bright * (add - ndimage.gaussian_filter(add, sigma))
    return (denoised + footprint * add).astype(np.float32)


#: Gaussian sigma (pixels) of the normalised convolution that fills repaired pixels.
REPAIR_FILL_SIGMA = 1.5


def outlier_mask(data: np.ndarray, denoised: np.ndarray, *, norm: Normalisation,
                 threshold: float = 5.0, contrast: float = 3.0, grow: int = 1) -> np.ndarray:
    """Cosmic rays and hot pixels: pixels far above what the network makes of their area.

    A pixel is an outlier when ``data - denoised`` exceeds ``threshold`` noise sigmas
    (read noise and the photon noise of ``denoised``) and also ``contrast`` times the
    denoised signal above the sky. The second test keeps stars: a network that predicts
    a sharp, undersampled star core 30% low leaves a residual of 0.3 peak on 0.7 peak of
    signal (ratio 0.4; the default 3 needs a core predicted 75% low), while a cosmic ray
    on the sky, which a network trained on the survey passes only in part, leaves nearly
    all of itself (Noise2Void on the demo survey: median 12, three in four above 5,
    while bright star cores stay below 0.2). A cosmic ray on a
    bright star is not found; it is left as it is. Only positive outliers.

    Parameters
    ----------
    data : (ny, nx) float32, data units; NaN = no data
    denoised : (ny, nx), the network's one-pass output for ``data``, data units
    norm : the exposure's normalisation (sky level, noise scale, gain)
    threshold : noise sigmas above the denoised value
    contrast : times the denoised signal above the sky
    grow : pixels the mask is grown by (a cosmic ray's faint wings)

    Returns
    -------
    (ny, nx) bool, True = outlier.
    """
    residual = np.nan_to_num(data - denoised, nan=0.0)
    signal = np.clip(np.nan_to_num(denoised, nan=0.0) - norm.offset, 0, None)
    mask = (residual > threshold * _noise_sigma(denoised, norm)) & (residual > contrast * signal)
    if grow and mask.any():
        mask = ndimage.binary_dilation(mask, iterations=grow)
    return mask & np.isfinite(data)


def repair_outliers(data: np.ndarray, mask: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """``data`` with the ``mask`` pixels filled from their unmasked neighbours.

    The fill is a normalised convolution: the Gaussian-weighted mean (sigma
    :data:`REPAIR_FILL_SIGMA` pixels) of the valid, unmasked pixels around each masked
    one; where none is within reach (a long cosmic-ray track), ``fallback`` (the
    one-pass denoised value). NaN (no data) stays NaN.
    """
    if not mask.any():
        return data
    good = (~mask & np.isfinite(data)).astype(np.float64)
    weight = ndimage.gaussian_filter(good, REPAIR_FILL_SIGMA)
    total = ndimage.gaussian_filter(np.where(good > 0, data, 0.0).astype(np.float64), REPAIR_FILL_SIGMA)
    with np.errstate(invalid="ignore", divide="ignore"):
        fill = np.where(weight > 1e-3, total / weight, fallback)
    return np.where(mask, fill, data).astype(np.float32)


def _noise_sigma(image: np.ndarray, norm: Normalisation) -> np.ndarray:
    """Per-pixel noise sigma (data units) of an exposure whose mean is ``image``."""
    return pixel_sigma(image, sky=norm.offset, sigma=norm.scale,
                       gain=norm.gain if norm.kind == "gat" else None)


def denoise_planes(data: np.ndarray, model: UNet, *, norm: Normalisation,
                   config: PredictConfig = PredictConfig()) -> np.ndarray:
    """Denoise one 2-D array as ``config`` says (mean over the dihedral transforms,
    flux restoration, uncertainty).

    Parameters
    ----------
    data : (ny, nx) float32, data units; NaN = no data
    model : a UNet in eval mode
    norm : the exposure's map into the network's domain and back
    config : PredictConfig (``precision``, ``average``, ``uncertainty``, ``restore_*``)

    Returns
    -------
    (planes, ny, nx) float32, NaN where ``data`` is NaN, as ``config.planes`` names them:
    the denoised image (data units), with ``config.uncertainty`` its uncertainty (data
    units), and with ``config.repair_outliers`` the repaired pixels (1, else 0).
    """
    repaired = None
    if config.repair_outliers:
        first = denoise_array(data, model, norm=norm, precision=config.precision)
        mask = outlier_mask(data, first, norm=norm, threshold=config.outlier_threshold,
                            contrast=config.outlier_contrast)
        data = repair_outliers(data, mask, first)
        repaired = np.where(np.isfinite(data), mask, np.nan).astype(np.float32)
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
                   config: PredictConfig, depth: int, block_info=None) -> np.ndarray:
    """Denoise one overlapped block; return the (planes, ny, nx) crop of its own region."""
    # Set in the process that runs the block: a distributed worker is another process.
    _reuse_freed_memory()
    if torch.get_num_threads() != torch_threads:
        torch.set_num_threads(torch_threads)
    model, _ = load_model(checkpoint, config.device)
    # The flux restoration reads a few pixels around each kept one (grow + 4 sigma); the
    # overlap (the whole receptive field) leaves them twice the half field from the edge,
    # and with repair_outliers two half fields plus the repair's reach (tile_overlap).
    planes = denoise_planes(block, model, norm=norm, config=config)
    # boundary="none" extends a block only towards its neighbours: crop those sides.
    where, count = block_info[0]["chunk-location"], block_info[0]["num-chunks"]
    (y0, x0) = (depth if i > 0 else 0 for i in where)
    (y1, x1) = (n - depth if i < c - 1 else n for i, c, n in zip(where, count, block.shape, strict=True))
    return planes[:, y0:y1, x0:x1]


def predict_planes(image: da.Array | np.ndarray, checkpoint: str, *, offset: float | None = None,
                   norm: Normalisation | None = None,
                   config: PredictConfig = PredictConfig()) -> da.Array:
    """Return a lazy dask array: ``image`` denoised tile by tile, with its uncertainty.

    Parameters
    ----------
    image : (ny, nx) float32 dask or numpy array, data units; NaN = no data
    checkpoint : path of the trained model
    offset : the exposure's sky level (noise step), in data units, for a linear
        checkpoint; or ``norm``, the exposure's normalisation
        (:func:`astrodenoise.train.exposure_normalisation`), which any checkpoint needs
    config : PredictConfig

    Returns
    -------
    (planes, ny, nx) float32 dask array, blocks of about ``config.tile`` pixels: plane 0
    the denoised image, plane 1 (only with ``config.uncertainty``) its uncertainty, both
    in data units and NaN where ``image`` is NaN.
    """
    model, scale = load_model(str(checkpoint), config.device)
    if norm is None:
        if load_normalisation(str(checkpoint)).get("kind", "linear") != "linear":
            raise ValueError(f"{checkpoint}: a non-linear model needs the exposure's norm "
                             "(train.exposure_normalisation), not just its sky level")
        norm = _linear(None, offset, scale)
    step = 2**model.n_pool
    if config.tile % step:
        raise ValueError(f"predict.tile {config.tile} must be a multiple of 2**n_pool = {step}")
    overlap = tile_overlap(model, config)
    array = da.asarray(image).astype(np.float32)
    array = array.rechunk(tuple(_axis_chunks(n, config.tile, overlap) for n in array.shape))
    n_planes = len(config.planes)
    # Crop-and-place by hand (rather than map_overlap's trim) because the block function
    # adds the planes axis. An axis of one block needs no overlap (dask refuses one wider
    # than the block, and the block function crops only sides that have a neighbour).
    depth = {axis: overlap if len(chunks) > 1 else 0 for axis, chunks in enumerate(array.chunks)}
    extended = da.overlap.overlap(array, depth=depth, boundary="none")
    return extended.map_blocks(
        _denoise_block, new_axis=0, chunks=((n_planes,),) + array.chunks, dtype=np.float32,
        meta=np.empty((0, 0, 0), dtype=np.float32),
        checkpoint=str(checkpoint), norm=norm, torch_threads=compute_threads(config),
        config=config, depth=overlap,
    )


def predict_tiles(image: da.Array | np.ndarray, checkpoint: str, *, offset: float | None = None,
                  norm: Normalisation | None = None,
                  config: PredictConfig = PredictConfig()) -> da.Array:
    """Return a lazy (ny, nx) float32 dask array: ``image`` denoised tile by tile.

    Plane 0 of :func:`predict_planes` (the mean of the dihedral transforms when
    ``config.average`` or ``config.uncertainty`` is set).
    """
    return predict_planes(image, checkpoint, offset=offset, norm=norm, config=config)[0]


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
    """Denoise one ingested exposure; stream a zarr store and a FITS file to disk (atomic).

    The FITS file carries the input header (WCS and SIP kept) plus HISTORY cards naming
    the model, its hash and the code version; the zarr attributes carry the same. With
    ``config.uncertainty`` the FITS file gets an ``ERR`` image extension and the store an
    ``err`` array; with ``config.repair_outliers`` (the default) a ``REPAIRED`` extension
    and a ``repaired`` array mark the pixels filled as cosmic rays. Blocks are written as
    they are computed (one zarr shard and one FITS rectangle per block), so memory stays
    flat for mosaics of any size. Both outputs are
    built under temporary names and renamed at the end: a killed run leaves neither, and
    a rerun writes the same bytes.
    """
    _reuse_freed_memory()
    source = io.open_zarr_image(input_zarr)
    norm = exposure_normalisation(load_normalisation(str(checkpoint)), io.read_json(noise_json))
    for path in (out_zarr, out_fits):
        io.remove_stale_temporaries(path)
    model_hash = io.file_sha256(checkpoint)[:16]
    provenance = {
        "model": str(checkpoint), "model_sha256": model_hash, "code_version": code_version(),
        "predict_config": dataclasses.asdict(config), "input": str(input_zarr),
    }
    attrs = dict(source.attrs) | {"provenance_predict": provenance}
    # Short HISTORY lines: astropy wraps long ones mid-word, which breaks a grep for the hash.
    history = [f"astrodenoise {code_version()} predict", f"model {Path(checkpoint).name}",
               f"model sha256 {model_hash}", f"input {Path(input_zarr).name}"]
    header = io.header_from_attrs(source.attrs)
    names = config.planes
    extensions = {name.upper(): _plane_header(name, header) for name in names[1:]}
    with dask_scheduler(config), contextlib.ExitStack() as stack:
        planes = predict_planes(da.from_zarr(source), checkpoint, norm=norm, config=config)
        bands = _bands(planes.chunks[1], blocks_per_row=len(planes.chunks[2]), workers=config.workers)
        # One dask block per zarr shard: parallel writes smaller than a shard lose data.
        planes = planes.rechunk((len(names), config.tile, config.tile))
        zarr_tmp = stack.enter_context(io.atomic_path(out_zarr))
        fits_tmp = stack.enter_context(io.atomic_path(out_fits))
        targets = io.create_zarr_image(zarr_tmp, source.shape, shard=config.tile, attrs=attrs,
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


def _bands(row_chunks: tuple[int, ...], *, blocks_per_row: int, workers: int) -> list[slice]:
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
