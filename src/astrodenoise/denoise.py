"""A trained network on one image: load it, run it, average it over the grid's symmetries.

The building blocks that training (its photometry probe), prediction and evaluation
(injection-recovery) share: a checkpoint loaded once per process, one forward pass on a
whole array (padded to the pooling grid), and the mean and spread of the network over
the eight dihedral transforms (:mod:`astrodenoise.symmetry`). Data go in and come out in
data units through the exposure's :class:`~astrodenoise.transform.Normalisation`.
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np
import torch

from . import symmetry
from .io import load_checkpoint
from .model import UNet, UNetConfig
from .transform import Normalisation

__all__ = ["PRECISIONS", "torch_device", "load_model", "load_normalisation", "reuse_freed_memory",
           "forward", "pad_to_pool", "network_pass", "denoise_array", "denoise_with_uncertainty"]

#: Values of ``predict.precision``: ``auto`` is bfloat16 autocast on CUDA and float32 on
#: the CPU (where bfloat16 gained little on AVX-512 and rounds bright pixels).
PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def torch_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when torch sees one), ``"cpu"`` or ``"cuda"`` as a torch device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("execution.predict.device is 'cuda' but torch sees no CUDA device; "
                           "install a CUDA build of torch (README) or set device: auto")
    return torch.device(name)


@functools.lru_cache(maxsize=4)
def load_model(checkpoint_path: str, device: str = "auto") -> UNet:
    """Load a checkpoint once per process; return the model in eval mode.

    Cached on the path, so dask blocks reuse the model instead of reloading it (in a
    dask.distributed cluster, once per worker process). The weights are stored
    channels-last: oneDNN's convolutions ran 1.8x faster so on AVX-512, same results.
    """
    checkpoint = load_checkpoint(checkpoint_path)
    model = UNet(UNetConfig.from_dict(checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model"])
    return model.to(torch_device(device), memory_format=torch.channels_last).eval()


@functools.lru_cache(maxsize=4)
def load_normalisation(checkpoint_path: str) -> dict:
    """The checkpoint's survey-wide normalisation settings (``kind``, ``scale``, ``gain``)."""
    return dict(load_checkpoint(checkpoint_path)["normalisation"])


@functools.cache
def reuse_freed_memory() -> bool:
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


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {PRECISIONS}")
    if precision == "auto":
        precision = "bfloat16" if device.type == "cuda" else "float32"
    return None if precision == "float32" else getattr(torch, precision)


def forward(model: UNet, batch: np.ndarray, precision: str = "float32") -> np.ndarray:
    """Run the network on a (batch, ny, nx) float32 stack; return the same shape, float32.

    ``ny`` and ``nx`` must be multiples of ``2**model.n_pool`` (:func:`pad_to_pool`)."""
    device = next(model.parameters()).device
    dtype = _autocast_dtype(precision, device)
    tensor = torch.from_numpy(np.ascontiguousarray(batch))[:, None].to(device)
    tensor = tensor.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        out = model(tensor)
    return out[:, 0].float().cpu().numpy()


def pad_to_pool(image: np.ndarray, step: int) -> np.ndarray:
    """Pad bottom and right to multiples of ``step``; reflect needs two pixels, symmetric any."""
    ny, nx = image.shape
    mode = "reflect" if min(ny, nx) > step else "symmetric"
    return np.pad(image, ((0, -ny % step), (0, -nx % step)), mode=mode)


def network_pass(model: UNet, image: np.ndarray, precision: str = "float32") -> np.ndarray:
    """One forward pass on a whole (ny, nx) image in the network's domain (no normalisation)."""
    padded = pad_to_pool(np.asarray(image, np.float32), 2**model.n_pool)
    return forward(model, padded[None], precision)[0, :image.shape[0], :image.shape[1]]


def denoise_array(data: np.ndarray, model: UNet, *, norm: Normalisation,
                  precision: str = "float32") -> np.ndarray:
    """Denoise one 2-D array in one forward pass.

    Parameters
    ----------
    data : (ny, nx) float32, data units; NaN = no data
    model : a UNet in eval mode
    norm : the exposure's map into the network's domain and back
        (:func:`astrodenoise.transform.exposure_normalisation`: linear, or the generalised
        Anscombe transform with its unbiased inverse)
    precision : one of :data:`PRECISIONS`, the autocast dtype of the forward pass

    Returns
    -------
    (ny, nx) float32 in data units, NaN where ``data`` is NaN.
    """
    image, nodata = norm.forward(data)
    out = norm.inverse(network_pass(model, image, precision))
    out[nodata] = np.nan
    return out.astype(np.float32)


def _dihedral_predictions(model: UNet, padded: np.ndarray, precision: str) -> np.ndarray:
    """(8, ny, nx) float32: the network on each dihedral transform of ``padded``, undone.

    The padded image's sides are multiples of ``2**n_pool``, so flipped and transposed
    copies keep the pooling grid of the whole image. Same-shape transforms run as one
    batch on a GPU; on the CPU one at a time (a batch only multiplies memory there).
    """
    device = next(model.parameters()).device
    batch = 4 if device.type == "cuda" else 1  # groups of 4 of symmetry.D4 share a shape
    outputs = []
    for start in range(0, len(symmetry.D4), batch):
        group = symmetry.D4[start:start + batch]
        stack = np.stack([symmetry.apply(padded, *g) for g in group])
        outputs += [symmetry.undo(out, *g) for out, g in zip(forward(model, stack, precision), group,
                                                               strict=True)]
    return np.stack(outputs)


def denoise_with_uncertainty(data: np.ndarray, model: UNet, *, norm: Normalisation,
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
    image, nodata = norm.forward(data)
    ny, nx = image.shape
    outs = _dihedral_predictions(model, pad_to_pool(image, 2**model.n_pool), precision)
    # Each copy back to data units first: the spread of a non-linear domain is not the
    # spread in data units.
    outs = np.stack([norm.inverse(o) for o in outs[:, :ny, :nx]]).astype(np.float64)
    mean, err = outs.mean(axis=0), outs.std(axis=0)
    mean[nodata] = err[nodata] = np.nan
    return mean.astype(np.float32), err.astype(np.float32)
