"""The eight symmetries of a square pixel grid (the dihedral group D4), applied and undone.

Training draws one at random per patch (data augmentation); prediction averages the
network over all eight (test-time augmentation). An element is ``(k, flip)``: rotate by
``k`` quarter turns (``np.rot90``), then, with ``flip``, mirror the columns.
"""

from __future__ import annotations

import numpy as np

__all__ = ["D4", "apply", "undo"]

#: The group in an order where the first four keep the array's shape (k even) and the
#: last four transpose it (k odd): batches of four share a shape.
D4 = tuple((k, flip) for k in (0, 2, 1, 3) for flip in (False, True))


def apply(image: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """``image`` (..., ny, nx) rotated by ``k`` quarter turns, then columns mirrored if ``flip``."""
    out = np.rot90(image, k, axes=(-2, -1))
    return out[..., ::-1] if flip else out


def undo(image: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """The inverse of :func:`apply`: ``undo(apply(a, k, flip), k, flip) == a``."""
    out = image[..., ::-1] if flip else image
    return np.rot90(out, -k, axes=(-2, -1))
