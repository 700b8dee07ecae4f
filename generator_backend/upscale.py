"""Tiled upscaling with an image-to-image net: overlapping tiles blended with smooth weights.

The image is cut into a grid of tiles; each tile is run through the net on its own, so memory
holds one tile's activations whatever the image's size. Neighbouring tiles share ``overlap``
input pixels, where their outputs are blended with raised-cosine weights that sum to 1 (the left
tile fades out exactly as the right one fades in). On a seamless axis the grid wraps around:
the last tile reads the first pixels again and its output is blended onto the first tile's, so
the upscaled texture still tiles.

Exactness: a pixel covered by one tile only takes that tile's output as it is (weight 1). That
tile's output equals the untiled net's wherever the pixel lies at least the net's receptive
radius from the tile's inner edges, which holds in the single-cover zone when ``overlap`` is at
least that radius (``receptive_radius``). In the blend zones the difference is the net's own
boundary effect, faded out.

``upscale_image`` is the one entry point (the upscale job and any later pass that chains onto it).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from .core import Cancelled  # noqa: F401  (raised by on_tile callbacks to stop between tiles)
from .heap import flat_heap


@dataclass(frozen=True)
class Span:
    """One tile's extent along an axis, in input pixels: ``start`` may lie before 0 or past the end
    on a wrapped axis; ``fade_in``/``fade_out`` say whether its edges blend with a neighbour."""

    start: int
    length: int
    fade_in: bool
    fade_out: bool


@dataclass(frozen=True)
class Tile:
    """A tile of the grid: its row and column, and its spans along y and x."""

    row: int
    col: int
    y: Span
    x: Span

    @property
    def name(self) -> str:
        return f"tile_{self.row:03d}_{self.col:03d}"


def axis_spans(size: int, tile: int, overlap: int, wrap: bool) -> list[Span]:
    """The tiles along one axis: cores of near-equal size, each widened by ``overlap`` shared pixels
    (split before and after the core boundary), clipped at the image's edges unless ``wrap``."""
    if not wrap and size <= tile:
        return [Span(0, size, False, False)]
    count = max(1, math.ceil(size / (tile - overlap)))
    bounds = [round(k * size / count) for k in range(count + 1)]
    before, after = overlap // 2, overlap - overlap // 2
    spans = []
    for k in range(count):
        start, end = bounds[k] - before, bounds[k + 1] + after
        first, last = k == 0, k == count - 1
        if not wrap:
            start, end = (0 if first else start), (size if last else end)
        spans.append(Span(start, end - start, wrap or not first, wrap or not last))
    return spans


def plan_tiles(height: int, width: int, tile: int, overlap: int, wrap_x: bool = False, wrap_y: bool = False):
    """Every tile of the image, row by row."""
    check_tiling(tile, overlap)
    return [Tile(r, c, ys, xs) for r, ys in enumerate(axis_spans(height, tile, overlap, wrap_y))
            for c, xs in enumerate(axis_spans(width, tile, overlap, wrap_x))]


def check_tiling(tile: int, overlap: int):
    if tile < 8 or not 0 <= overlap <= tile // 2:
        raise ValueError(f"tile must be at least 8 and overlap in 0..tile/2, got tile {tile}, overlap {overlap}")


def ramp(length: int, fade: int, fade_in: bool, fade_out: bool) -> np.ndarray:
    """Blend weights along one axis of a tile's output: sin² up over the first ``fade`` pixels and
    cos² down over the last ones, so a fading-out tile and the next fading in sum to exactly 1."""
    w = np.ones(length, np.float64)
    if fade > 0:
        rise = np.sin(np.pi / 2 * (np.arange(fade) + 0.5) / fade) ** 2
        if fade_in:
            w[:fade] *= rise
        if fade_out:
            w[length - fade:] *= rise[::-1]
    return w


def segments(start: int, length: int, size: int):
    """A wrapped range as contiguous pieces: (destination start, source offset, count)."""
    offset = 0
    while offset < length:
        at = (start + offset) % size
        count = min(length - offset, size - at)
        yield at, offset, count
        offset += count


def tile_input(image: np.ndarray, tile: Tile) -> np.ndarray:
    """The tile's pixels, read around the image on wrapped axes."""
    h, w = image.shape[:2]
    rows = np.arange(tile.y.start, tile.y.start + tile.y.length) % h
    cols = np.arange(tile.x.start, tile.x.start + tile.x.length) % w
    return image[rows][:, cols]


def run_net(net, pixels: np.ndarray) -> np.ndarray:
    """(h, w, 3) float32 sRGB -> (h*s, w*s, 3): one call of the net, on its device."""
    import torch

    device = next(net.model.parameters()).device if hasattr(net, "model") else torch.device("cpu")
    x = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))[None].to(device)
    with torch.inference_mode():
        y = net(x)
    return y[0].clamp(0, 1).permute(1, 2, 0).float().cpu().numpy()


def upscale_image(net, image: np.ndarray, tile: int = 256, overlap: int = 16, wrap_x: bool = False,
                  wrap_y: bool = False, on_tile=None, load_tile=None) -> np.ndarray:
    """(H, W, 3) float32 sRGB in [0, 1] -> (H*s, W*s, 3) upscaled by ``net`` (its ``scale`` s), tile by tile.

    ``on_tile(tile, output, done, total)`` runs after each tile (persist it, report progress; raise
    Cancelled to stop); ``load_tile(tile)`` may return a tile's output made before (a resumed job)."""
    with flat_heap():  # freed tile buffers go back to the system: peak memory does not grow with the tiles
        return _upscale_tiles(net, np.asarray(image, np.float32), tile, overlap, wrap_x, wrap_y, on_tile, load_tile)


def _upscale_tiles(net, image, tile, overlap, wrap_x, wrap_y, on_tile, load_tile) -> np.ndarray:
    """upscale_image's work."""
    h, w = image.shape[:2]
    s = int(net.scale)
    tiles = plan_tiles(h, w, tile, overlap, wrap_x, wrap_y)
    out = np.zeros((h * s, w * s, 3), np.float32)
    row_weight, col_weight = np.zeros(h * s), np.zeros(w * s)
    fade = overlap * s
    for done, t in enumerate(tiles, 1):
        result = load_tile(t) if load_tile else None
        if result is None:
            result = run_net(net, tile_input(image, t))
        wy = ramp(t.y.length * s, fade, t.y.fade_in, t.y.fade_out)
        wx = ramp(t.x.length * s, fade, t.x.fade_in, t.x.fade_out)
        weighted = result * (wy[:, None, None] * wx[None, :, None]).astype(np.float32)
        for y0, sy, ny in segments(t.y.start * s, t.y.length * s, h * s):
            for x0, sx, nx in segments(t.x.start * s, t.x.length * s, w * s):
                out[y0:y0 + ny, x0:x0 + nx] += weighted[sy:sy + ny, sx:sx + nx]
        if t.col == 0:  # the weights are separable and the grid a full product: sum them per axis once
            for y0, sy, ny in segments(t.y.start * s, t.y.length * s, h * s):
                row_weight[y0:y0 + ny] += wy[sy:sy + ny]
        if t.row == 0:
            for x0, sx, nx in segments(t.x.start * s, t.x.length * s, w * s):
                col_weight[x0:x0 + nx] += wx[sx:sx + nx]
        if on_tile:
            on_tile(t, result, done, len(tiles))
    col_weight = col_weight.astype(np.float32)[None, :, None]
    for y0 in range(0, h * s, 256):  # in bands: a full-size weight array would grow with the image
        out[y0:y0 + 256] /= row_weight[y0:y0 + 256].astype(np.float32)[:, None, None] * col_weight
    return out


def receptive_radius(net) -> int | None:
    """Input pixels each output pixel depends on, each side, for a plain stack of convolutions at the
    input's resolution (SRVGGNetCompact); None for other architectures (attention windows, inner resampling)."""
    import torch

    model = getattr(net, "model", net)
    if type(model).__name__ != "SRVGGNetCompact":
        return None
    return sum((m.kernel_size[0] - 1) // 2 * m.dilation[0] for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def resized(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """An (H, W, C) float image resized to ``width`` x ``height`` with Lanczos, per channel in float."""
    from PIL import Image

    if image.shape[:2] == (height, width):
        return image
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c]), "F").resize(
        (width, height), Image.Resampling.LANCZOS)) for c in range(image.shape[2])]
    return np.clip(np.stack(channels, -1), 0, 1).astype(np.float32)


def fingerprint(image: np.ndarray, *parts) -> str:
    """What a job's finished tiles were made from (the input's bytes and the settings): tiles of another input are stale."""
    digest = hashlib.sha256(np.ascontiguousarray(image).tobytes())
    for part in parts:
        digest.update(repr(part).encode())
    return digest.hexdigest()[:32]


# The job kind this module runs (runner.execute_upscale) and the protocol parameters it owns; the
# others of the kind (encodings, seamless, size) are the runner's, the seamless technique's and the core's.
KINDS = ("upscale",)
FIELDS = ("upscaler", "factor", "tile_size", "tile_overlap")


KEPT_LEVELS = 65535  # tiles are kept as 16-bit levels of [0, 1]: within half a level (7.6e-6) of the net's output


def kept(output: np.ndarray) -> np.ndarray:
    """A tile's output (float in [0, 1]) as it is kept on disk: uint16 levels, half the bytes of float32."""
    return np.round(np.clip(output, 0, 1) * KEPT_LEVELS).astype(np.uint16)


def unkept(stored: np.ndarray) -> np.ndarray | None:
    """A tile read back as float32: 16-bit levels, or an earlier version's exact float32; None for anything else."""
    if stored.ndim != 3:
        return None
    if stored.dtype == np.uint16:
        return stored.astype(np.float32) / np.float32(KEPT_LEVELS)
    return stored if stored.dtype == np.float32 else None


class TileStore:
    """A job's finished tiles on disk (<job folder>/tiles/<tile>.npy, 16-bit levels: ``kept``; folders of
    earlier versions hold float32 and resume as they are), so a cancelled or interrupted job resumes
    with the missing tiles only. ``key`` names what they were made from: tiles of another input, net or
    tiling are stale and removed."""

    def __init__(self, folder, key: str):
        from pathlib import Path

        from .jobs import _private_dir, _write_atomic

        self.folder = Path(folder)
        _private_dir(self.folder)
        stamp = self.folder / "key.txt"
        if not stamp.exists() or stamp.read_text() != key:
            for old in self.folder.glob("tile_*.npy"):
                old.unlink()
            _write_atomic(stamp, lambda p: p.write_text(key))
        self.made = 0  # tiles computed (not loaded) in this run

    def path(self, tile: Tile):
        return self.folder / f"{tile.name}.npy"

    def load(self, tile: Tile):
        try:
            return unkept(np.load(self.path(tile), allow_pickle=False))
        except (OSError, ValueError, EOFError):
            return None

    def save(self, tile: Tile, output: np.ndarray):
        from .jobs import _write_atomic

        _write_atomic(self.path(tile), lambda p: np.save(open(p, "wb"), kept(output)))
        self.made += 1

    def clear(self):
        """The result is saved: the tiles are not needed any more."""
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)


def upscale_to(net, image: np.ndarray, factor: int, tile: int, overlap: int, wrap_x=False, wrap_y=False,
               on_tile=None, load_tile=None) -> np.ndarray:
    """``upscale_image``, then Lanczos down to ``factor`` when it is below the net's scale (on a seamless axis
    the resize reads around the edge, so the result still tiles)."""
    out = upscale_image(net, image, tile, overlap, wrap_x, wrap_y, on_tile, load_tile)
    if factor == net.scale:
        return out
    return wrapped_resize(out, factor, int(net.scale), wrap_x, wrap_y)


def wrapped_resize(image: np.ndarray, factor: int, divisor: int = 1, wrap_x=False, wrap_y=False) -> np.ndarray:
    """Lanczos by ``factor / divisor``; on a wrapped axis the image is padded with its own other side first
    (PIL's filter would clamp at the edges), so a seamless texture stays seamless."""
    h, w = image.shape[0] * factor // divisor, image.shape[1] * factor // divisor
    pad = 4 * divisor  # source pixels of context around a wrapped edge (Lanczos reaches 3); the crop keeps whole pixels
    padded = np.pad(image, ((pad * wrap_y,) * 2, (pad * wrap_x,) * 2) + ((0, 0),) * (image.ndim - 2), mode="wrap")
    scaled = resized(padded, padded.shape[1] * factor // divisor, padded.shape[0] * factor // divisor)
    cy, cx = pad * wrap_y * factor // divisor, pad * wrap_x * factor // divisor
    return np.ascontiguousarray(scaled[cy:cy + h, cx:cx + w])


def upscale_alpha(alpha: np.ndarray | None, factor: int, wrap_x=False, wrap_y=False) -> np.ndarray | None:
    """An alpha channel (H, W) enlarged ``factor`` times with Lanczos (None stays None: alpha 1 everywhere).

    Lanczos rather than the net: alpha is coverage, not a picture; the net was taught on colour textures and
    their degradations, and would add texture to a mask. Lanczos is linear, so a flat alpha stays flat (0 and 1
    exactly, ringing clipped), costs no second run of the net and no tiles to resume."""
    if alpha is None or factor == 1:
        return alpha
    return wrapped_resize(alpha[..., None], factor, 1, wrap_x, wrap_y)[..., 0]


def seam_error(image: np.ndarray, scale: int = 1) -> float:
    """The wrap-around step against the mean step across the other lines of the source's pixel grid (every
    ``scale``-th line of an image upscaled ``scale`` times): 1.0 means the seam looks like any such line."""
    inner = np.abs(image[:, scale::scale] - image[:, scale - 1:-1:scale]).mean() + \
        np.abs(image[scale::scale] - image[scale - 1:-1:scale]).mean()
    wrap = np.abs(image[:, 0] - image[:, -1]).mean() + np.abs(image[0] - image[-1]).mean()
    return float(wrap / (inner + 1e-9))
