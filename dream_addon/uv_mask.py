"""Masks in texture space, with numpy only (Blender ships no PIL): UV polygons rasterised by
an even-odd scanline fill at pixel centres, dilation against seams, and rectangles.

Masks are (H, W) bool arrays with row 0 at the BOTTOM, as Blender stores pixels and as UV
v = 0 lies, so they apply to ``image.pixels`` without flipping.
"""

from __future__ import annotations

import numpy as np


def rasterize_polygons(uvs: np.ndarray, loop_starts: np.ndarray, loop_totals: np.ndarray,
                       width: int, height: int, extension: str = "REPEAT") -> np.ndarray:
    """Fill polygons given as UV loops (n-gons, concave too) into a (height, width) mask.

    ``uvs`` is (L, 2) for all loops; polygon i uses uvs[loop_starts[i]:+loop_totals[i]].
    A pixel is inside when its centre is (even-odd rule per polygon; polygons are OR-ed).
    UVs outside 0..1 land where the image texture's ``extension`` shows them: REPEAT wraps,
    MIRROR reflects, CLIP and EXTEND show no texel there (EXTEND only smears the edge).
    """
    uvs = np.asarray(uvs, dtype=np.float64).reshape(-1, 2)
    loop_starts = np.asarray(loop_starts, dtype=np.int64)
    loop_totals = np.asarray(loop_totals, dtype=np.int64)
    if extension not in ("REPEAT", "MIRROR") or len(loop_starts) == 0:
        return _rasterize(uvs, loop_starts, loop_totals, width, height)
    mask = np.zeros((height, width), dtype=bool)
    for tile, polygons in _tiles(uvs, loop_starts, loop_totals).items():
        totals = loop_totals[polygons]
        local = uvs[_loop_indices(loop_starts[polygons], totals)] - tile
        if extension == "MIRROR":  # odd tiles are reflected
            local = np.where(np.asarray(tile) % 2 == 1, 1.0 - local, local)
        mask |= _rasterize(local, np.cumsum(totals) - totals, totals, width, height)
    return mask


MAX_TILES = 16  # per axis and polygon: a face spanning more repeats is clipped to these


def _tiles(uvs, loop_starts, loop_totals) -> dict:
    """{(u tile, v tile): indices of the polygons overlapping that repeat of the image}."""
    poly = np.repeat(np.arange(len(loop_starts)), loop_totals)
    lo = np.full((len(loop_starts), 2), np.inf)
    hi = np.full((len(loop_starts), 2), -np.inf)
    np.minimum.at(lo, poly, uvs)
    np.maximum.at(hi, poly, uvs)
    first = np.floor(lo).astype(np.int64)
    count = np.clip(np.ceil(hi).astype(np.int64) - first, 1, MAX_TILES)
    tiles = {}
    for i in range(len(loop_starts)):
        for a in range(first[i, 0], first[i, 0] + count[i, 0]):
            for b in range(first[i, 1], first[i, 1] + count[i, 1]):
                tiles.setdefault((a, b), []).append(i)
    return {tile: np.array(polygons) for tile, polygons in tiles.items()}


def _rasterize(uvs, loop_starts, loop_totals, width, height) -> np.ndarray:
    """The even-odd scanline fill of polygons, clipped to the image (no wrapping)."""
    mask = np.zeros((height, width), dtype=bool)
    if len(loop_starts) == 0:
        return mask
    points = uvs * (width, height)  # pixel units; centres at +0.5
    # Edges: each loop to the next loop of its polygon (the last wraps to the first).
    poly_of_loop = np.repeat(np.arange(len(loop_starts)), loop_totals)
    index = _loop_indices(loop_starts, loop_totals)
    nxt = index + 1
    last = np.cumsum(loop_totals) - 1
    nxt[last] = loop_starts
    (x0, y0), (x1, y1) = points[index].T, points[nxt].T
    # Scanlines at row centres y = r + 0.5 crossed by each edge, half-open so vertices count once.
    lo, hi = np.minimum(y0, y1), np.maximum(y0, y1)
    first = np.clip(np.ceil(lo - 0.5), 0, height).astype(np.int64)
    stop = np.clip(np.ceil(hi - 0.5), 0, height).astype(np.int64)
    count = np.maximum(stop - first, 0)
    edge = np.repeat(np.arange(len(index)), count)
    if len(edge) == 0:
        return mask
    row = first[edge] + (np.arange(len(edge)) - np.repeat(np.cumsum(count) - count, count))
    yc = row + 0.5
    t = (yc - y0[edge]) / (y1[edge] - y0[edge])
    xc = x0[edge] + t * (x1[edge] - x0[edge])
    # Sort crossings by polygon, row, x: each (polygon, row) has an even number; pair them up.
    poly = poly_of_loop[edge]
    order = np.lexsort((xc, row, poly))
    xc, row = xc[order], row[order]
    start_x = np.clip(np.ceil(xc[0::2] - 0.5), 0, width).astype(np.int64)
    end_x = np.clip(np.ceil(xc[1::2] - 0.5), 0, width).astype(np.int64)
    span_row = row[0::2]
    keep = end_x > start_x
    # Difference array over each row: +1 at a span's start, -1 at its end; filled where > 0.
    flat = np.bincount(span_row[keep] * (width + 1) + start_x[keep], minlength=height * (width + 1))
    flat -= np.bincount(span_row[keep] * (width + 1) + end_x[keep], minlength=height * (width + 1))
    coverage = np.cumsum(flat.reshape(height, width + 1), axis=1)[:, :width]
    return coverage > 0


def _loop_indices(loop_starts, loop_totals):
    """The loop index of every corner, polygon after polygon."""
    offsets = np.repeat(loop_starts - (np.cumsum(loop_totals) - loop_totals), loop_totals)
    return np.arange(loop_totals.sum()) + offsets


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Grow a mask by ``pixels`` in every direction (a square), against bleeding at UV seams."""
    out = mask.copy()
    for _ in range(pixels):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= grown[:, :-1].copy()
        grown[:, :-1] |= grown[:, 1:].copy()
        out = grown
    return out


def rectangle(width: int, height: int, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """A mask of the pixels whose centres lie in the rectangle given in 0..1 image coordinates
    (y up, as in Blender's image editor)."""
    xs = (np.arange(width) + 0.5) / width
    ys = (np.arange(height) + 0.5) / height
    inside_x = (xs >= min(x0, x1)) & (xs <= max(x0, x1))
    inside_y = (ys >= min(y0, y1)) & (ys <= max(y0, y1))
    return inside_y[:, None] & inside_x[None, :]


def padded_size(n: int, multiple: int = 8, minimum: int = 64) -> int:
    """The job size for an image side: a multiple of 8, at least 64."""
    return max(minimum, -(-n // multiple) * multiple)


def pad_to(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pad an (h, w, ...) array at the top and right (Blender rows: bottom first) by repeating
    its edge, to the job size; ``crop`` takes the padding off the result again."""
    h, w = array.shape[:2]
    pad = [(0, height - h), (0, width - w)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pad, mode="edge") if (h, w) != (height, width) else array
