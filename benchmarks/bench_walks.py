"""Walk benchmark (issue 4): a 48-frame circular walk, tiny model, 256 px, 20 steps, frames per
second batched against one frame at a time, side by side in one run.
Usage: .venv/bin/python benchmarks/bench_walks.py [--frames 48] [--batch 8]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from dream_addon import protocol  # noqa: E402
from generator_backend.core import GenerationRequest, generate  # noqa: E402
from generator_backend.models import ModelManager  # noqa: E402
from generator_backend.walks import WalkPlan  # noqa: E402


def render(components, params, batch):
    plan = WalkPlan(components, params)
    request = GenerationRequest(prompt=params["prompt"], seed=params["seed"], steps=params["steps"],
                                width=params["width"], height=params["height"], scheduler=params["scheduler"])
    start = time.perf_counter()
    for first in range(0, params["frames"], batch):
        request.frame_noise, request.frame_embeds = plan.batch(range(first, min(first + batch, params["frames"])))
        generate(components, request)
    return params["frames"] / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    components = ModelManager(["tiny"], device="cpu").get()
    params = protocol.validate_params({"prompt": "red bricks", "walk": "circular", "frames": args.frames,
                                       "width": 256, "height": 256, "steps": 20, "scheduler": "euler"},
                                      protocol.walk_fields())
    render(components, dict(params, frames=2), 2)  # warm-up
    single = render(components, params, 1)
    batched = render(components, params, args.batch)
    print(f"| {args.frames}-frame circular walk, 256 px, 20 steps, one frame at a time | {single:.2f} frames/s |")
    print(f"| same, batches of {args.batch} | {batched:.2f} frames/s |")
    print(f"| speed-up of batching | {batched / single:.2f}x |")


if __name__ == "__main__":
    main()
