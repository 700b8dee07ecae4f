"""Tiled jobs as lists of tile tasks: plan, run in batches, assemble (docs/techniques.md).

A job (photomosaic, hypermosaic, detail pass, region enhance) is planned as plain data: a list
of ``TileTask`` (index, crop box, tile size, prompt, noise seed, strength). ``run_tile_batch``
img2imgs several tasks in one UNet batch; the assemblers put finished tiles together. Tiles of
one level depend on nothing but their task and the level's source image, so the list can be run
by something other than the local queue (several GPUs) and in any batching: a tile's noise comes
from its own stream (core.stream_seed(seed, "tile:<index>")) and its latents from the VAE's mode.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from PIL import Image

from dream_addon.protocol import TILE_KINDS

from .core import GenerationRequest, encode_prompt, generate, stream_seed

KINDS = TILE_KINDS
# The parameters the tiled kinds own (strength is img2img's; batch_size and fps the walk's).
FIELDS = ("tile_size", "grid_x", "grid_y", "cell_prompts", "color_match", "levels", "zoom_cell_x", "zoom_cell_y",
          "zoom_frames", "loop", "scale", "enlarge_with", "enlarge_tile",
          "enlarge_overlap", "overlap", "region_x", "region_y", "region_width", "region_height",
          "region_feather")


@dataclass(frozen=True)
class TileTask:
    """One tile: what to crop from its level's source image, how the model sees it, and its own noise."""

    index: int  # unique within the job; names the tile's file (tiles/tile_<index>.png)
    level: int  # mosaic level (0 for the detail pass and region enhance)
    cell: tuple  # (column, row) in the level's grid
    box: tuple  # (x0, y0, x1, y1) in the source; on wrapped axes it may pass the edge and wraps around
    size: tuple  # (width, height) of the tile the model sees
    fit: str  # "stretch" (resized to size), "crop" (box is size), "pad" (scaled to fit, then edge-padded)
    prompt: str
    seed: int  # the tile's noise stream
    strength: float

    def to_dict(self) -> dict:
        return asdict(self)


def native_size(c) -> int:
    """The side the model was made for, in pixels."""
    sample = c.unet.config.sample_size
    return (sample if isinstance(sample, int) else sample[0]) * c.vae_scale_factor


def tile_seed(seed: int, index: int) -> int:
    return stream_seed(seed, f"tile:{index}")


# --------------------------------------------------------------------------- planners
def cell_box(col: int, row: int, grid: tuple, width: int, height: int) -> tuple:
    """Cell (col, row) of a grid over a width x height image, in whole pixels."""
    gx, gy = grid
    return (round(col * width / gx), round(row * height / gy), round((col + 1) * width / gx),
            round((row + 1) * height / gy))


def zoom_cell(params) -> tuple:
    """The cell a hypermosaic zooms into: the parameters', or the centre."""
    return tuple(params[f"grid_{a}"] // 2 if params[f"zoom_cell_{a}"] < 0 else params[f"zoom_cell_{a}"]
                 for a in ("x", "y"))


def plan_mosaic(params, tile: int) -> list:
    """Every tile of every level; level 0 cuts the primary (width x height), level k+1 the chosen tile
    of level k (tile x tile)."""
    gx, gy = params["grid_x"], params["grid_y"]
    prompts = params["cell_prompts"] or [params["prompt"]]
    tasks = []
    for level in range(params["levels"]):
        width, height = (params["width"], params["height"]) if level == 0 else (tile, tile)
        for row in range(gy):
            for col in range(gx):
                index = len(tasks)
                tasks.append(TileTask(index, level, (col, row), cell_box(col, row, (gx, gy), width, height),
                                      (tile, tile), "stretch", prompts[(row * gx + col) % len(prompts)],
                                      tile_seed(params["seed"], index), params["strength"]))
    return tasks


def axis_starts(length: int, tile: int, overlap: int, wrap: bool) -> tuple:
    """(starts, extent) of tiles covering [0, length) with at least ``overlap`` shared pixels."""
    extent = min(tile, length)
    if extent == length and not wrap:
        return [0], extent
    stride = max(extent - overlap, 1)
    if wrap:
        n = max(math.ceil(length / stride), 1)
        return [round(i * length / n) for i in range(n)], extent
    n = math.ceil((length - overlap) / stride) if length > extent else 1
    n = max(n, 2)
    return [round(i * (length - extent) / (n - 1)) for i in range(n)], extent


def plan_detail(params, width: int, height: int, tile: int) -> list:
    """Overlapping tiles over the enlarged image (width x height), wrapping on seamless axes."""
    axes = params["seamless"]
    xs, w = axis_starts(width, tile, params["overlap"], "x" in axes)
    ys, h = axis_starts(height, tile, params["overlap"], "y" in axes)
    tasks = []
    for row, y in enumerate(ys):
        for col, x in enumerate(xs):
            index = len(tasks)
            tasks.append(TileTask(index, 0, (col, row), (x, y, x + w, y + h), (w, h), "crop", params["prompt"],
                                  tile_seed(params["seed"], index), params["strength"]))
    return tasks


def plan_enhance(params, box: tuple, tile: int) -> list:
    """One tile: the region, scaled and padded to the tile size."""
    return [TileTask(0, 0, (0, 0), tuple(box), (tile, tile), "pad", params["prompt"], tile_seed(params["seed"], 0),
                     params["strength"])]


# --------------------------------------------------------------------------- tile inputs
def crop(source: np.ndarray, box: tuple, wrap: str = "") -> np.ndarray:
    """The box of a (H, W, C) array; on the ``wrap`` axes ("x", "y") it wraps around, elsewhere it is clamped."""
    x0, y0, x1, y1 = box
    height, width = source.shape[:2]
    cols = np.arange(x0, x1)
    rows = np.arange(y0, y1)
    cols = cols % width if "x" in wrap else cols.clip(0, width - 1)
    rows = rows % height if "y" in wrap else rows.clip(0, height - 1)
    return source[np.ix_(rows, cols)]


def pad_layout(box: tuple, size: tuple) -> tuple:
    """Where a region of ``box``'s size lands in a padded tile: (x, y, width, height), centred."""
    w, h = box[2] - box[0], box[3] - box[1]
    scale = min(size[0] / w, size[1] / h)
    sw, sh = max(1, min(size[0], round(w * scale))), max(1, min(size[1], round(h * scale)))
    return (size[0] - sw) // 2, (size[1] - sh) // 2, sw, sh


def tile_input(task: TileTask, source: np.ndarray, wrap: str = "") -> np.ndarray:
    """The (h, w, 3) uint8 image the model starts the tile from."""
    part = crop(source, task.box, wrap)
    if task.fit == "crop":
        return np.ascontiguousarray(part)
    if task.fit == "stretch":
        return np.asarray(Image.fromarray(part).resize(task.size, Image.Resampling.BICUBIC))
    x, y, w, h = pad_layout(task.box, task.size)
    scaled = np.asarray(Image.fromarray(part).resize((w, h), Image.Resampling.LANCZOS))
    return np.pad(scaled, ((y, task.size[1] - h - y), (x, task.size[0] - w - x), (0, 0)), mode="edge")


def unpadded(task: TileTask, tile: np.ndarray) -> np.ndarray:
    """A "pad" tile back at its region's size (float in [0, 1])."""
    x, y, w, h = pad_layout(task.box, task.size)
    width, height = task.box[2] - task.box[0], task.box[3] - task.box[1]
    part = Image.fromarray(np.ascontiguousarray(tile[y:y + h, x:x + w]))
    return np.asarray(part.resize((width, height), Image.Resampling.LANCZOS), np.float32) / 255.0


def color_matched(tile: np.ndarray, cell: np.ndarray, mode: str = "full") -> np.ndarray:
    """The tile with each channel's mean moved to the cell's ("mean": the tile's own spread, its detail,
    is kept), or its mean and standard deviation ("full": Reinhard et al. 2001, in RGB): uint8 in and out."""
    t, c = tile.astype(np.float64), cell.astype(np.float64)
    t_mean, t_std = t.mean((0, 1)), t.std((0, 1))
    c_mean, c_std = c.mean((0, 1)), c.std((0, 1))
    spread = c_std / np.maximum(t_std, 1e-6) if mode == "full" else 1.0
    out = (t - t_mean) * spread + c_mean
    return out.round().clip(0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- running
def runs_steps(base: GenerationRequest, strength: float) -> bool:
    """Whether img2img at ``strength`` runs any denoising step; if not, a tile is its input."""
    return int(base.steps * strength) >= 1


def batches(tasks: list, size: int):
    """Runs of at most ``size`` consecutive tasks that share a tile size and strength (one UNet batch each)."""
    run = []
    for task in tasks:
        if run and (len(run) == size or (task.size, task.strength) != (run[0].size, run[0].strength)):
            yield run
            run = []
        run.append(task)
    if run:
        yield run


class PromptCache:
    """Text embeddings of the prompts tiles use, each encoded once."""

    def __init__(self, c):
        self.c, self.embeds = c, {}

    def __call__(self, text: str) -> torch.Tensor:
        if text not in self.embeds:
            self.embeds[text] = encode_prompt(self.c, text).float().cpu()
        return self.embeds[text]


def run_tile_batch(members, base: GenerationRequest, tasks: list, inputs: list, prompts: PromptCache | None = None,
                   on_step=None, offload: bool = False) -> list:
    """img2img of ``tasks`` (one size and strength) from ``inputs`` ((h, w, 3) uint8) in one UNet batch;
    returns (h, w, 3) uint8 tiles. With no denoising step to run, each tile is its input exactly."""
    strength = tasks[0].strength
    if not runs_steps(base, strength):
        return [np.array(image) for image in inputs]
    c = members[0][0]
    width, height = tasks[0].size
    f = c.vae_scale_factor
    shape = (1, c.vae.config.latent_channels, height // f, width // f)
    noise = torch.cat([torch.randn(shape, generator=torch.Generator().manual_seed(t.seed)) for t in tasks])
    embeds = None
    if prompts is not None and any(t.prompt != base.prompt for t in tasks):  # per-cell prompts
        embeds = torch.cat([prompts(t.prompt) for t in tasks])
    images = torch.from_numpy(np.stack(inputs).astype(np.float32) / 255.0)
    request = replace(base, width=width, height=height, strength=strength, tile_images=images, frame_noise=noise,
                      frame_embeds=embeds, init_image=None, mask=None, tile_axes="", layout="off")
    out = generate(members, request, on_step=on_step, offload=offload)
    return list((out.cpu().numpy() * 255).round().clip(0, 255).astype(np.uint8))


# --------------------------------------------------------------------------- assembling
def assemble_grid(tasks: list, tiles: dict) -> np.ndarray:
    """A mosaic: each tile of one level at its cell, side by side (uint8, exact)."""
    width, height = tasks[0].size
    gx = 1 + max(t.cell[0] for t in tasks)
    gy = 1 + max(t.cell[1] for t in tasks)
    out = np.zeros((gy * height, gx * width, 3), np.uint8)
    for t in tasks:
        col, row = t.cell
        out[row * height:(row + 1) * height, col * width:(col + 1) * width] = tiles[t.index]
    return out


def edge_ramp(length: int, overlap: int, ramp_start: bool, ramp_end: bool) -> np.ndarray:
    """A tile's blend weight along one axis: a smoothstep over ``overlap`` pixels at the edges that
    neighbours share, 1 elsewhere; never 0, so every covered pixel has weight."""
    w = np.ones(length)
    if overlap > 0:
        d = (np.arange(length) + 0.5) / overlap
        ramp = np.clip(d, 0, 1)
        ramp = ramp * ramp * (3 - 2 * ramp)
        if ramp_start:
            w = np.minimum(w, ramp)
        if ramp_end:
            w = np.minimum(w, ramp[::-1])
    return np.maximum(w, 1e-3)


def assemble_blended(tasks: list, tiles: dict, width: int, height: int, overlap: int, wrap: str = "") -> np.ndarray:
    """The detail pass's image: overlapping tiles blended with smooth weights (wrapping around on the
    ``wrap`` axes), as float32 in [0, 1]."""
    total = np.zeros((height, width, 3))
    weight = np.zeros((height, width, 1))
    for t in tasks:
        x0, y0, x1, y1 = t.box
        wx = edge_ramp(x1 - x0, overlap, "x" in wrap or x0 > 0, "x" in wrap or x1 < width)
        wy = edge_ramp(y1 - y0, overlap, "y" in wrap or y0 > 0, "y" in wrap or y1 < height)
        cols = np.arange(x0, x1) % width
        rows = np.arange(y0, y1) % height
        w = (wy[:, None] * wx[None, :])[..., None]
        np.add.at(total, np.ix_(rows, cols), w * (tiles[t.index] / 255.0))
        np.add.at(weight, np.ix_(rows, cols), w)
    return (total / weight).astype(np.float32)


def region_weights(height: int, width: int, box: tuple, feather: float, mask: np.ndarray | None = None):
    """Paste weights of a region enhance: 0 outside the region (and the mask), rising to 1 over
    ``feather`` pixels inside it (Chebyshev distance to the nearest pixel outside)."""
    inside = np.zeros((height, width), bool)
    x0, y0, x1, y1 = box
    inside[y0:y1, x0:x1] = True
    if mask is not None:
        inside &= mask
    if feather <= 0:
        return inside.astype(np.float32)
    distance = np.zeros((height, width))
    current = inside.copy()
    for step in range(1, math.ceil(feather) + 1):  # erosion by a 3x3 square: Chebyshev distance
        distance[current] = step
        padded = np.pad(current, 1, constant_values=False)
        current = np.logical_and.reduce([padded[1 + dy:1 + dy + height, 1 + dx:1 + dx + width]
                                         for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
    distance[current] = math.ceil(feather) + 1
    return np.clip(distance / (feather + 1), 0, 1).astype(np.float32) * inside


# --------------------------------------------------------------------------- hypermosaic zoom
def smoothstep(u: float) -> float:
    return u * u * (3 - 2 * u)


def _coverage(start: float, end: float, n: int) -> np.ndarray:
    """How much of each of n unit pixels lies in [start, end)."""
    i = np.arange(n)
    return np.clip(np.minimum(i + 1, end) - np.maximum(i, start), 0, 1)


def zoom_frame_count(levels: int, per_level: int, loop: bool) -> int:
    """Frames of a hypermosaic zoom: every level's, plus the last level's full view (or none: a loop)."""
    if per_level == 0 or (levels == 1 and not loop):
        return 0
    return levels * per_level if loop else (levels - 1) * per_level + 1


def zoom_frame_size(width: int, height: int, grid: tuple) -> tuple:
    """Frames are larger than the mosaic by √grid per side (multiples of 8, as video needs even sides).
    A level's mosaic then reaches the frame's own resolution halfway through the zoom into the level
    above, not at the handover: the sharpest frames (the largest frame-to-frame change) fall inside
    the levels, and a handover is no larger a change than the frames around it."""
    return tuple(max(8, round(side * math.sqrt(g) / 8) * 8) for side, g in ((width, grid[0]), (height, grid[1])))


SUPERSAMPLE = 2  # frames are drawn at twice their size and averaged down: resampling without aliasing


def zoom_frames(mosaics: list, grid: tuple, cell: tuple, per_level: int, loop: bool = False, crossfade: bool = True):
    """Frames zooming from each level's mosaic into its chosen cell, where the next level's mosaic lies.

    The view is scaled about the zoom's fixed point by grid^-u (u from 0 to 1 within a level), so
    the cell fills the frame at u = 1. The next level's mosaic is drawn into the cell, fading in
    with smoothstep(u): at u = 1 the frame is the next level's full view, which is where that level
    starts, so handing over makes no jump. A loop hands the last level over to the first."""
    levels = len(mosaics)
    height, width = mosaics[0].shape[:2]
    gx, gy = grid
    out_w, out_h = zoom_frame_size(width, height, grid)
    fw, fh = out_w * SUPERSAMPLE, out_h * SUPERSAMPLE
    box = cell_box(cell[0], cell[1], grid, width, height)
    # The point that scaling by 1/grid maps the whole view onto the cell: p = box0 · g / (g − 1).
    px = box[0] * gx / (gx - 1) if gx > 1 else width / 2
    py = box[1] * gy / (gy - 1) if gy > 1 else height / 2
    images = [Image.fromarray(m) for m in mosaics]
    bx, by = (box[2] - box[0]) / width, (box[3] - box[1]) / height  # the cell's share of each side

    def view(image, window):
        return np.asarray(image.transform((fw, fh), Image.Transform.EXTENT, window, Image.Resampling.BICUBIC),
                          np.float32)

    for j in range(zoom_frame_count(levels, per_level, loop)):
        k, step = divmod(j, per_level)
        u = step / per_level
        sx, sy = bx ** u, by ** u
        window = (px * (1 - sx), py * (1 - sy), px + (width - px) * sx, py + (height - py) * sy)
        frame = view(images[k], window)
        inner = (k + 1) % levels if loop else k + 1
        alpha = smoothstep(u) if crossfade else 0.0
        if inner < levels and alpha > 0:
            # The window in the inner mosaic's coordinates: the cell box spans all of it.
            ix, iy = width / (box[2] - box[0]), height / (box[3] - box[1])
            inner_window = ((window[0] - box[0]) * ix, (window[1] - box[1]) * iy,
                            (window[2] - box[0]) * ix, (window[3] - box[1]) * iy)
            top = view(images[inner], inner_window)
            # The cell's place in the frame, antialiased.
            zx, zy = fw / (window[2] - window[0]), fh / (window[3] - window[1])
            cover = (_coverage((box[1] - window[1]) * zy, (box[3] - window[1]) * zy, fh)[:, None]
                     * _coverage((box[0] - window[0]) * zx, (box[2] - window[0]) * zx, fw)[None, :])
            frame = frame + (alpha * cover)[..., None] * (top - frame)
        frame = frame.reshape(out_h, SUPERSAMPLE, out_w, SUPERSAMPLE, 3).mean((1, 3))
        yield j, frame.round().clip(0, 255).astype(np.uint8)
