"""The pictures of one exposure: before/after/residual cutouts and a faint-source gallery.

Every image kind shares the input's asinh stretch, so that what a denoiser removed or
invented is visible. PNG files, written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.visualization import AsinhStretch, ImageNormalize, PercentileInterval
from matplotlib.figure import Figure

from . import io
from .photometry import FAINT_SNR

__all__ = ["gallery_path", "write_cutouts", "write_gallery"]


def gallery_path(out_png: str | Path) -> Path:
    """Where the faint-source gallery of an exposure's figure goes: ``<name>_faint.png``."""
    out_png = Path(out_png)
    return out_png.with_name(out_png.stem + "_faint.png")


def write_gallery(images: dict[str, np.ndarray], phot: dict | None, out_png: Path, *,
             count: int = 8, half: int = 8) -> bool:
    """Stamps of the faintest measured sources (faint class on the reference), one row
    per image kind, each column on the input stamp's asinh stretch. False when none."""
    if phot is None:
        return False
    data = images["input"]
    ny, nx = data.shape
    x, y = np.round(phot["positions"]).astype(int).T
    inside = (x >= half) & (x < nx - half) & (y >= half) & (y < ny - half)
    pick = np.flatnonzero(inside & (phot["snr"] > FAINT_SNR[0]) & (phot["snr"] < FAINT_SNR[1]))
    pick = pick[np.argsort(phot["snr"][pick])][:count]
    if not len(pick):
        return False
    fig = Figure(figsize=(1.2 * len(pick) + 1.0, 1.2 * len(images)))
    axes = fig.subplots(len(images), len(pick), squeeze=False)
    for col, i in enumerate(pick):
        box = (slice(y[i] - half, y[i] + half + 1), slice(x[i] - half, x[i] + half + 1))
        norm = ImageNormalize(data[box], interval=PercentileInterval(99.5), stretch=AsinhStretch(0.1))
        axes[0, col].set_title(f"S/N {phot['snr'][i]:.0f}", fontsize=7)
        for row, (name, image) in enumerate(images.items()):
            axes[row, col].imshow(image[box], norm=norm, origin="lower", cmap="gray")
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
            if col == 0:
                axes[row, col].set_ylabel(name, fontsize=7)
    fig.tight_layout()
    with io.atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    return True


def write_cutouts(images: dict[str, np.ndarray], sigma: float, size: int, out_png: str | Path) -> None:
    """Before/after/residual cutouts with a shared asinh stretch."""
    data = images["input"]
    ny, nx = data.shape
    h, w = min(size, ny), min(size, nx)
    y0, x0 = (ny - h) // 2, (nx - w) // 2
    cut = {k: v[y0:y0 + h, x0:x0 + w] for k, v in images.items()}
    norm = ImageNormalize(cut["input"], interval=PercentileInterval(99.7), stretch=AsinhStretch(0.05))
    outputs = [k for k in cut if k != "input"]
    fig = Figure(figsize=(3.2 * (len(outputs) + 1), 6.6))
    axes = fig.subplots(2, len(outputs) + 1, squeeze=False)
    axes[0, 0].imshow(cut["input"], norm=norm, origin="lower", cmap="gray")
    axes[0, 0].set_title("input")
    axes[1, 0].axis("off")
    for i, key in enumerate(outputs, start=1):
        axes[0, i].imshow(cut[key], norm=norm, origin="lower", cmap="gray")
        axes[0, i].set_title(key)
        axes[1, i].imshow((cut["input"] - cut[key]) / sigma, vmin=-3, vmax=3, origin="lower", cmap="RdBu_r")
        axes[1, i].set_title(f"(input - {key}) / sigma")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    with io.atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
