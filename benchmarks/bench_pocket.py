"""The artist's path with the pocket model: a 128-px texture at the demo's settings (scripts/demo.py:
"seamless thick blue bricks texture", 20 steps, guidance 4, seamless xy, the model's Euler,
layout "auto", so the layout pass runs). Times the layout pass at a share of the job's steps
(core.LAYOUT_STEP_FRACTION) side by side, interleaved in one process, and without the pass.

    .venv/bin/python benchmarks/bench_pocket.py --repeats 7 --fractions 1.0,0.5
    # two weight folders side by side (before/after a training), at the backend's default share:
    .venv/bin/python benchmarks/bench_pocket.py --repeats 7 --against /path/to/old_pocket_model
    # ... where the VAE itself was replaced (say so: the UNets must still match)
    .venv/bin/python benchmarks/bench_pocket.py --repeats 7 --against /path/to/old_pocket_model --vae-changed
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from generator_backend import core  # noqa: E402
from generator_backend.core import GenerationRequest, generate  # noqa: E402
from generator_backend.models import POCKET_DIR, ModelManager  # noqa: E402

DEMO = GenerationRequest(prompt="seamless thick blue bricks texture", seed=42, steps=20, guidance=4.0, width=128,
                         height=128, scheduler="default", tile_axes="xy", layout="auto")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=POCKET_DIR)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--fractions", default="1.0,0.5", help="layout-pass shares of the steps to compare")
    parser.add_argument("--against", type=Path, help="another pocket folder, timed interleaved with --model")
    parser.add_argument("--vae-changed", action="store_true",
                        help="with --against: the VAEs may differ (a replaced VAE is what is timed); the UNets may not")
    args = parser.parse_args(argv)
    if args.against:
        return compare_models(args)
    components = ModelManager([f"pocket={args.model}"], device="cpu").get()
    sides = {f"layout pass, {float(f):g} of the steps": (DEMO, float(f)) for f in args.fractions.split(",")}
    sides["no layout pass"] = (replace(DEMO, layout="off"), 1.0)
    # Only the layout setting may differ between the sides: the same model, size and sampling.
    differing = {k for request, _ in sides.values() for k, v in vars(request).items() if v != vars(DEMO)[k]}
    assert differing <= {"layout"}, f"the sides differ in {differing}"
    assert all(core.uses_layout_pass(components, request) == (request.layout != "off") for request, _ in
               sides.values()), "the demo size must turn the layout pass on"
    times = {name: [] for name in sides}
    default_fraction = core.LAYOUT_STEP_FRACTION
    try:
        for repeat in range(args.repeats + 1):  # the first round warms up
            for name, (request, fraction) in sides.items():
                core.LAYOUT_STEP_FRACTION = fraction
                started = time.perf_counter()
                generate(components, request)
                if repeat:
                    times[name].append(time.perf_counter() - started)
    finally:
        core.LAYOUT_STEP_FRACTION = default_fraction
    print(f"pocket model ({args.model}), 128 px, demo settings, median of {args.repeats}, interleaved; "
          f"the backend's default share: {default_fraction:g}")
    print("| job | s / image | vs full layout pass |\n|---|---|---|")
    reference = statistics.median(next(iter(times.values())))
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.3f} | {median / reference:.2f}x |")


def same_architecture(a, b, parts=("unet", "vae")):
    """Configs of two pocket folders that must match for a fair time comparison (weights aside)."""
    import json

    keys = ("_class_name", "block_out_channels", "layers_per_block", "down_block_types", "up_block_types",
            "sample_size")
    configs = [{part: {k: v for k, v in json.loads((folder / part / "config.json").read_text()).items() if k in keys}
                for part in parts} for folder in (a, b)]
    return configs[0] == configs[1]


def compare_models(args):
    """The demo's texture with two weight folders, interleaved, the same request and layout share."""
    parts = ("unet",) if args.vae_changed else ("unet", "vae")
    assert same_architecture(args.model, args.against, parts), f"the two folders differ in architecture ({parts})"
    sides = {f"{folder}": ModelManager([f"pocket={folder}"], device="cpu").get() for folder in (args.against, args.model)}
    times = {name: [] for name in sides}
    for repeat in range(args.repeats + 1):  # the first round warms up
        for name, components in sides.items():
            started = time.perf_counter()
            generate(components, DEMO)
            if repeat:
                times[name].append(time.perf_counter() - started)
    print(f"pocket weights side by side, 128 px, demo settings, median of {args.repeats}, interleaved; "
          f"layout share {core.LAYOUT_STEP_FRACTION:g}")
    print("| weights | s / image | vs first |\n|---|---|---|")
    reference = statistics.median(next(iter(times.values())))
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} ({type(sides[name].vae).__name__}) | {median:.3f} | {median / reference:.2f}x |")


if __name__ == "__main__":
    main()
