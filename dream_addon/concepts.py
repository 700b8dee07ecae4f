"""Teach a Concept without Blender: the training images' square crop and size (numpy only)."""

import numpy as np


def square_resized(pixels: np.ndarray, size: int) -> np.ndarray:
    """The centred square of (h, w, c) ``pixels`` at ``size`` x ``size``: box-averaged when it shrinks
    (no aliasing of fine patterns), nearest neighbour when it grows."""
    h, w = pixels.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = pixels[top:top + side, left:left + side].astype(np.float64)
    if side <= size:
        index = np.arange(size) * side // size
        return square[index][:, index].astype(np.float32)
    edges = np.arange(size + 1) * side // size
    table = np.pad(square.cumsum(0).cumsum(1), ((1, 0), (1, 0), (0, 0)))  # summed-area table
    lo, hi = edges[:-1], edges[1:]
    total = table[hi][:, hi] - table[lo][:, hi] - table[hi][:, lo] + table[lo][:, lo]
    area = ((hi - lo)[:, None] * (hi - lo)[None, :])[..., None]
    return (total / area).astype(np.float32)
