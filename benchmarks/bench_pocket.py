"""The artist's path with the pocket model: a 128-px texture at the demo's settings (scripts/demo.py:
"seamless thick blue bricks texture", 20 steps, guidance 4, seamless xy, the model's Euler,
layout "auto", so the layout pass runs). Times the layout pass at a share of the job's steps
(core.LAYOUT_STEP_FRACTION) side by side, interleaved in one process, and without the pass.

    .venv/bin/python benchmarks/bench_pocket.py --repeats 7 --fractions 1.0,0.5
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
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    main()
