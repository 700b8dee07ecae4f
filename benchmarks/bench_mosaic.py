"""Mosaic benchmark (issue 16): tiles per second of a photomosaic made in batches against one tile at a
time, pocket model on the CPU, side by side in one run (the sides alternate). Both sides get the same
plan, primary, seed and settings; the script checks they made the same mosaic (within one 8-bit level:
batches change fp32 results by ~1e-6) and exits with an error when they did not.
Usage: .venv/bin/python benchmarks/bench_mosaic.py [--grid 4] [--tile 64] [--batch 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402

from bench_common import interleaved, require_same, require_same_pixels, set_torch_threads  # noqa: E402
from dream_addon import protocol  # noqa: E402
from generator_backend import tiles  # noqa: E402
from generator_backend.models import ModelManager  # noqa: E402
from generator_backend.pocket_dataset import render  # noqa: E402
from generator_backend.techniques import request_from_params  # noqa: E402


def make_mosaic(members, base, plan, primary, batch):
    """The level-0 mosaic, its tiles run ``batch`` per UNet call."""
    made = {}
    for group in tiles.batches(plan, batch):
        inputs = [tiles.tile_input(t, primary) for t in group]
        made.update(zip([t.index for t in group], tiles.run_tile_batch(members, base, group, inputs)))
    return tiles.assemble_grid(plan, made)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--grid", type=int, default=4)
    parser.add_argument("--tile", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    threads = set_torch_threads()
    members = [(ModelManager(["pocket"], device="cpu").get(), 1.0)]
    params = protocol.validate_job("mosaic", {"prompt": "bricks", "width": 128, "height": 128, "grid_x": args.grid,
                                              "grid_y": args.grid, "tile_size": args.tile, "steps": args.steps}, {})[0]
    base = request_from_params(params, {})
    plan = tiles.plan_mosaic(params, args.tile)
    primary = (render("orange", "dots", 128, seed=2) * 255).round().clip(0, 255).astype(np.uint8)
    sides = {"one at a time": 1, f"batches of {args.batch}": args.batch}
    results = {}
    for name, batch in sides.items():  # the sides' settings, checked before any timing
        results[name] = make_mosaic(members, base, plan, primary, batch)
    require_same("plan", len(plan), args.grid * args.grid)
    require_same_pixels(*results.values(), atol=1.0)
    seconds = interleaved({name: (lambda b=batch: make_mosaic(members, base, plan, primary, b))
                           for name, batch in sides.items()}, args.repeats)
    strength = params["strength"]
    print(f"pocket model, {args.grid} x {args.grid} tiles of {args.tile} px, {args.steps} steps at strength "
          f"{strength} ({int(args.steps * strength)} run), {threads} torch threads, median of {args.repeats}")
    print("| side | s / mosaic | tiles / s |")
    print("|---|---|---|")
    for name, s in seconds.items():
        print(f"| {name} | {s:.3f} | {len(plan) / s:.2f} |")
    single, batched = seconds.values()
    print(f"| speed-up of batching | | {single / batched:.2f}x |")


if __name__ == "__main__":
    main()
