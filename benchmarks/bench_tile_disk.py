"""Disk use of finished tiles (issue 16), side by side in one run: a 1024² upscale job (pocket-x4, x4,
the panel's 256 px tiles with 16 px overlap) with tiles kept as 16-bit levels (now) and as float32
(before), through the real worker; and a mosaic at the Mosaic panel's defaults with a 1024² primary
(8-bit PNG tiles, unchanged). The folder is measured when the last tile is written, just before the
result is saved and the tiles are removed: the job's peak. Both upscale sides get the same input,
net and tiling, and the script exits with an error when their tile counts differ. Usage: .venv/bin/python benchmarks/bench_tile_disk.py [--size 1024]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402

from bench_common import require_same, set_torch_threads  # noqa: E402
from dream_addon import protocol  # noqa: E402
from generator_backend import upscale as up  # noqa: E402
from generator_backend.jobs import Job, JobStore  # noqa: E402
from generator_backend.pocket_dataset import render  # noqa: E402
from generator_backend.runner import Worker  # noqa: E402
from generator_backend.upscalers import UpscalerManager  # noqa: E402


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


class PeakTiles(up.TileStore):
    """The real tile store, measuring its folder when the job is done with it."""

    peak = 0

    def clear(self):
        PeakTiles.peak = folder_bytes(self.folder)
        super().clear()


def run(worker, kind, params, arrays):
    params, arrays = protocol.validate_job(kind, params, arrays)
    job = Job(f"{kind}-{time.monotonic_ns()}", kind, params, arrays)
    started = time.perf_counter()
    worker.execute(job)
    assert job.state == "done", job.message
    return job, time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args()
    threads = set_torch_threads()
    from generator_backend.models import ModelManager

    worker = Worker(None, ModelManager(["pocket"], device="cpu"), JobStore(Path(tempfile.mkdtemp()) / "out"))
    worker.upscalers = UpscalerManager(device="cpu")
    texture = render("green", "bricks", args.size, seed=3).astype(np.float32)
    params = {"width": args.size, "height": args.size, "upscaler": "pocket-x4", "factor": 4}
    up.TileStore = PeakTiles
    sides = {}
    for name, keep in (("16-bit levels (now)", up.kept), ("float32 (before)", lambda output: output)):
        up.kept = keep
        job, seconds = run(worker, "upscale", params, {"init_image": texture})
        sides[name] = (PeakTiles.peak, seconds, job.total)
    require_same("tiles", *(count for _, _, count in sides.values()))
    # Both sides run uninterrupted, so their results never read a kept tile: what a resume from 16-bit tiles
    # gives is asserted in tests/backend/test_upscale.py (within half a level), not here.
    primary = (render("orange", "dots", args.size, seed=2) * 255).round().clip(0, 255).astype(np.uint8)
    mosaic_params = {"prompt": "seamless red bricks texture", "width": args.size, "height": args.size, "tile_size": 64}
    job, seconds = run(worker, "mosaic", mosaic_params, {"init_image": primary})
    mosaic_tiles = worker.store.job_dir(job.job_id) / "tiles"
    print(f"{args.size}² input, {threads} torch threads")
    print("| job | tiles kept as | tiles | peak tile folder | job s |")
    print("|---|---|---|---|---|")
    for name, (peak, seconds_, count) in sides.items():
        print(f"| upscale x4 (pocket-x4, 256 px tiles, 16 overlap) | {name} | {count} | {peak / 2**20:.1f} MiB | "
              f"{seconds_:.1f} |")
    now, before = (peak for peak, _, _ in sides.values())
    print(f"| upscale: now / before | | | {now / before:.3f} | |")
    print(f"| mosaic at the panel's defaults (4 x 4, 64 px tiles) | 8-bit PNG (unchanged) | "
          f"{len(list(mosaic_tiles.glob('tile_*.png')))} | {folder_bytes(mosaic_tiles) / 2**10:.0f} KiB | "
          f"{seconds:.1f} |")


if __name__ == "__main__":
    main()
