"""The tiled job kinds on the local queue: mosaic (and hypermosaic zoom), detail pass, region enhance.

Each job is planned as tile tasks (tiles.py); tasks run in batches of ``batch_size`` through one
UNet call, every finished tile is written to the job's folder (tiles/tile_<index>.png) before the
next batch, so a cancelled job keeps its tiles and a resumed one makes only the missing ones.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import torch
from PIL import Image

from dream_addon.protocol import MAX_TILED_SIDE, ProtocolError

from . import tiles
from .core import Cancelled, StepTimer, generate
from .encoding import Encoding, as_sent, image_alpha, image_tensor, to_rgba, with_alpha

TILE_FILE = "tiles/tile_{:05d}.png"


def load_png(path) -> np.ndarray | None:
    """A saved tile (uint8 RGB), or None if it is not there (or half-written by a crash)."""
    try:
        return np.asarray(Image.open(path).convert("RGB"))
    except (OSError, ValueError):
        return None


class TileRun:
    """One tiled job's tasks on the worker: tiles from disk where they are, the rest made in batches."""

    def __init__(self, worker, job, total: int):
        self.worker, self.job, self.store = worker, job, worker.store
        self.members, self.model_name = worker._members(job)
        self.c = self.members[0][0]
        worker._warn_ignored_words(job)
        from .runner import build_request, check_request

        self.base = build_request(job)
        check_request(self.base, self.c.unet)
        self.prompts = tiles.PromptCache(self.c)
        self.done, self.total = 0, total
        self.timer, self.started = StepTimer(), time.perf_counter()
        job.total = total

    def path(self, name: str):
        return self.store.job_dir(self.job.job_id) / name

    def on_step(self, step, total, latents):
        if self.job.cancel_requested.is_set():
            raise Cancelled()

    def run(self, tasks: list, source: np.ndarray, wrap: str = "", cells=None) -> dict:
        """index -> (h, w, 3) uint8 tile for ``tasks`` (one level, all cut from ``source``)."""
        out, todo = {}, []
        for task in tasks:
            tile = load_png(self.path(TILE_FILE.format(task.index)))
            if tile is not None and tile.shape[:2] == task.size[::-1]:
                out[task.index] = tile
                self.done += 1
            else:
                todo.append(task)
        fresh = 0
        color_match = self.job.params.get("color_match", "off")
        for batch in tiles.batches(todo, self.job.params["batch_size"]):
            if self.job.cancel_requested.is_set():
                raise Cancelled()
            inputs = [tiles.tile_input(t, source, wrap) for t in batch]
            made = tiles.run_tile_batch(self.members, self.base, batch, inputs, self.prompts, self.on_step,
                                        self.job.params["offload"])
            for task, cell, tile in zip(batch, inputs, made):
                if color_match != "off":
                    tile = tiles.color_matched(tile, cell, color_match)
                self.store.save_png(self.job.job_id, TILE_FILE.format(task.index), tile)
                out[task.index] = tile
            self.done += len(batch)
            fresh += len(batch)
            self.job.step = self.done
            self.job.emit({"type": "progress", "step": self.done, "total": self.total, "stage": "tiles",
                           "eta": round(self.timer.eta(fresh, len(todo)), 3)}, coalesce=True)
        return out

    def finish(self, image: np.ndarray, source=None, meta_extra=None):
        """Save the result and send it (``source``: the input's own pixels, kept bit for bit)."""
        from .jobs import DONE
        from .runner import result_frame

        job = self.job
        if job.cancel_requested.is_set():
            raise Cancelled()
        job.timings["generate_s"] = round(time.perf_counter() - self.started, 4)
        image = torch.from_numpy(np.ascontiguousarray(image, np.float32))
        meta = self.store.save_result(job, image.numpy(), self.model_name)
        if meta_extra:
            meta.update(meta_extra)
            self.store.save_meta(job.job_id, meta)
        job.state = DONE
        job.emit_result(lambda output: result_frame(self.store, meta, image, output, source))
        return meta


def tile_side(c, params) -> int:
    return params["tile_size"] or tiles.native_size(c)


def source_pixels(job) -> np.ndarray:
    """The job's init image as (H, W, 3) uint8 sRGB, rows top to bottom."""
    image = image_tensor(job.inputs["init_image"], **as_sent(job.params))
    return (image.numpy() * 255).round().clip(0, 255).astype(np.uint8)


def primary_image(run: TileRun) -> np.ndarray:
    """A mosaic's primary: the init image, or generated from the prompt (and kept for a resume)."""
    job = run.job
    if "init_image" in job.inputs:
        return source_pixels(job)
    saved = load_png(run.path("tiles/primary.png"))
    p = job.params
    if saved is not None and saved.shape[:2] == (p["height"], p["width"]):
        return saved
    job.emit({"type": "progress", "step": 0, "total": run.total, "stage": "primary", "eta": None})
    image = generate(run.members, replace(run.base, init_image=None), on_step=run.on_step, offload=p["offload"])
    pixels = (image.cpu().numpy() * 255).round().clip(0, 255).astype(np.uint8)
    run.store.save_png(job.job_id, "tiles/primary.png", pixels)
    return pixels


def execute_mosaic(worker, job):
    """Photomosaic, level by level (a hypermosaic's level k+1 is cut from level k's chosen tile);
    then the zoom's frames, written and streamed like a walk's."""
    p = job.params
    job.emit({"type": "progress", "step": 0, "total": 1, "stage": "loading", "eta": None})
    members, _ = worker._members(job)
    side = tile_side(members[0][0], p)
    if max(p["grid_x"], p["grid_y"]) * side > MAX_TILED_SIDE:
        raise ProtocolError("invalid_param", f"params.grid_x/grid_y x params.tile_size ({side}) makes a mosaic "
                            f"side longer than {MAX_TILED_SIDE}", field="params.tile_size",
                            allowed={"max_side": MAX_TILED_SIDE})
    plan = tiles.plan_mosaic(p, side)
    run = TileRun(worker, job, len(plan))
    source = primary_image(run)
    cell = tiles.zoom_cell(p)
    mosaics = []
    for level in range(p["levels"]):
        tasks = [t for t in plan if t.level == level]
        made = run.run(tasks, source)
        mosaics.append(tiles.assemble_grid(tasks, made))
        source = made[next(t.index for t in tasks if t.cell == cell)]  # the next level's primary
    frames = tiles.zoom_frame_count(p["levels"], p["zoom_frames"], p["loop"])
    extra = {}
    if frames:
        folder = worker.store.job_dir(job.job_id)
        for k, frame in tiles.zoom_frames(mosaics, (p["grid_x"], p["grid_y"]), cell, p["zoom_frames"], p["loop"]):
            if job.cancel_requested.is_set():
                raise Cancelled()
            path = worker.store.save_png(job.job_id, worker.store.frame_path(job.job_id, k).name, frame)
            job.emit({"type": "frame", "index": k, "frames": frames, "done": k + 1, "path": str(path)},
                     {"image": to_rgba(frame / np.float32(255), p["output_dtype"], p["flip_y"], p["linear"])})
        extra = {"frames": frames, "fps": p["fps"], "folder": str(folder)}
    return run.finish(mosaics[0] / np.float32(255), meta_extra={"levels": p["levels"], **extra})


def execute_detail(worker, job):
    """The detail pass: enlarge (Lanczos), img2img overlapping tiles, blend them (wrapping on seamless axes)."""
    from .upscale import upscale_alpha

    p = job.params
    job.emit({"type": "progress", "step": 0, "total": 1, "stage": "loading", "eta": None})
    members, _ = worker._members(job)
    source = source_pixels(job)
    height, width = source.shape[0] * p["scale"], source.shape[1] * p["scale"]
    enlarged = enlarge(source, p["scale"], p["seamless"], worker, p["enlarge_with"], p["enlarge_tile"],
                       p["enlarge_overlap"], upscale_progress(job))
    plan = tiles.plan_detail(p, width, height, tile_side(members[0][0], p))
    run = TileRun(worker, job, len(plan))
    alpha = image_alpha(job.inputs["init_image"], p["input_flip_y"])  # the pass repaints colour only
    alpha = upscale_alpha(alpha, p["scale"], "x" in p["seamless"], "y" in p["seamless"])
    if not tiles.runs_steps(run.base, p["strength"]):  # nothing to repaint: the enlarged image itself
        return run.finish(with_alpha(enlarged / np.float32(255), alpha), untouched_source(job, p["scale"] == 1))
    made = run.run(plan, enlarged, p["seamless"])
    return run.finish(with_alpha(tiles.assemble_blended(plan, made, width, height, p["overlap"], p["seamless"]),
                                 alpha))


WRAP_PAD = 4  # source pixels: more than Lanczos's reach (3) at any scale


def upscale_progress(job):
    """upscale_image's ``on_tile`` for a job whose upscale is one stage of it: progress per tile (stage
    "upscale"), and Stop between tiles."""
    def on_tile(tile, output, done, total):
        if job.cancel_requested.is_set():
            raise Cancelled()
        job.emit({"type": "progress", "step": done, "total": total, "stage": "upscale", "eta": None}, coalesce=True)
    return on_tile


def enlarge(source: np.ndarray, scale: int, wrap: str = "", worker=None, upscaler: str = "", tile: int = 256,
            overlap: int = 16, on_tile=None) -> np.ndarray:
    """Enlargement by the served ``upscaler`` (tiled, wrapping on seamless axes: upscale.py; ``on_tile`` as
    upscale_image's), or Lanczos; on the ``wrap`` axes the image is padded with its own other side first, so
    a seamless texture stays seamless (PIL's filter would clamp at the edges)."""
    if scale == 1:
        return source
    if upscaler:
        from .upscale import upscale_to

        net = worker.upscalers.get(upscaler)
        big = upscale_to(net, source / np.float32(255), scale, tile, overlap, "x" in wrap, "y" in wrap, on_tile)
        return np.round(np.clip(big, 0, 1) * 255).astype(np.uint8)
    pad = [(WRAP_PAD, WRAP_PAD) if axis in wrap else (0, 0) for axis in ("y", "x")] + [(0, 0)]
    padded = np.pad(source, pad, mode="wrap")
    big = np.asarray(Image.fromarray(padded).resize((padded.shape[1] * scale, padded.shape[0] * scale),
                                                    Image.Resampling.LANCZOS))
    (top, _), (left, _) = pad[0], pad[1]
    return big[top * scale:top * scale + source.shape[0] * scale, left * scale:left * scale + source.shape[1] * scale]


def untouched_source(job, same_size: bool, untouched: np.ndarray | None = None):
    """result_frame's ``source``: the input array, its encoding, and the pixels that are its own."""
    if not same_size:
        return None
    p = job.params
    if untouched is None:
        untouched = np.ones((p["height"], p["width"]), bool)
    return job.inputs["init_image"], Encoding(p["input_linear"], p["input_flip_y"]), torch.from_numpy(untouched)


def enhance_box(job) -> tuple:
    """The region: the parameters' rectangle, or the mask's extent; rows from the top."""
    p = job.params
    if p["region_width"] and p["region_height"]:
        return (p["region_x"], p["region_y"], p["region_x"] + p["region_width"], p["region_y"] + p["region_height"])
    mask = region_mask(job)
    if mask is None or not mask.any():
        raise ProtocolError("invalid_param", "arrays.mask is empty: paint the region to enhance", field="arrays.mask")
    rows, cols = np.nonzero(mask)
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


def region_mask(job):
    """The mask array as (H, W) bool, rows top to bottom, or None."""
    if "mask" not in job.inputs:
        return None
    mask = np.asarray(job.inputs["mask"])[..., 0]
    mask = mask > (127 if mask.dtype == np.uint8 else 0.5)
    return mask[::-1] if job.params["input_flip_y"] else mask


def execute_enhance(worker, job):
    """Region enhance: the region scaled and padded to the tile size, img2img'd, scaled back and pasted
    with a feathered edge inside it; every pixel outside is the input's, bit for bit."""
    p = job.params
    job.emit({"type": "progress", "step": 0, "total": 1, "stage": "loading", "eta": None})
    members, _ = worker._members(job)
    box = enhance_box(job)
    [task] = tiles.plan_enhance(p, box, tile_side(members[0][0], p))
    run = TileRun(worker, job, 1)
    source = source_pixels(job)
    made = run.run([task], source)[0]
    weights = tiles.region_weights(p["height"], p["width"], box, p["region_feather"], region_mask(job))
    image = image_tensor(job.inputs["init_image"], **as_sent(p)).numpy()
    x0, y0, x1, y1 = box
    w = weights[y0:y1, x0:x1, None]
    image[y0:y1, x0:x1] = image[y0:y1, x0:x1] * (1 - w) + tiles.unpadded(task, made) * w
    alpha = image_alpha(job.inputs["init_image"], p["input_flip_y"])  # enhance repaints colour, never coverage
    if p["scale"] == 1:
        return run.finish(with_alpha(image, alpha), untouched_source(job, True, weights == 0))
    job.emit({"type": "progress", "step": 0, "total": 1, "stage": "upscale", "eta": None})
    return run.finish(enlarged_float(worker, p, image, alpha, upscale_progress(job)))


def enlarged_float(worker, p, image: np.ndarray, alpha=None, on_tile=None) -> np.ndarray:
    """An (H, W, 3) float sRGB image enlarged p["scale"] times by p["enlarge_with"] (tiled as p["enlarge_tile"] /
    p["enlarge_overlap"]; ``on_tile`` as upscale_image's) or Lanczos, wrapping on the seamless axes; alpha (or
    None) by Lanczos."""
    from .upscale import upscale_alpha, upscale_to, wrapped_resize

    wrap_x, wrap_y = "x" in p["seamless"], "y" in p["seamless"]
    if p["enlarge_with"]:
        big = upscale_to(worker.upscalers.get(p["enlarge_with"]), image, p["scale"], p["enlarge_tile"],
                         p["enlarge_overlap"], wrap_x, wrap_y, on_tile)
    else:
        big = wrapped_resize(image, p["scale"], 1, wrap_x, wrap_y)
    return with_alpha(big, upscale_alpha(alpha, p["scale"], wrap_x, wrap_y))


EXECUTORS = {"mosaic": execute_mosaic, "detail": execute_detail, "enhance": execute_enhance}
