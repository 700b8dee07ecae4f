"""What history costs in the .blend (issue 12, item 13), in a bpy process with a real backend.

Generate Texture N times on the default cube and save after each: the file grows by one packed
result per entry. Default 8-bit sRGB textures (PNG-packed) against the Float Textures preference
(EXR-packed), same model, size, steps, prompt and seeds on both sides.
Usage: .venv/bin/python benchmarks/bench_history_storage.py [--size 512] [--count 3] [--model pocket]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import blender_session  # noqa: E402

import bpy  # noqa: E402


def grow(session, props, path, count, seeds):
    """Save, then generate and save ``count`` times; return the file's sizes in bytes."""
    bpy.ops.wm.save_as_mainfile(filepath=path)
    sizes = [os.path.getsize(path)]
    for seed in seeds[:count]:
        props.seed = seed
        bpy.ops.dream.generate_texture()
        job = session.wait_for(list(session.jobs)[-1], 900)
        assert job.state == "done", job.message
        bpy.ops.wm.save_as_mainfile(filepath=path)
        sizes.append(os.path.getsize(path))
    return sizes


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--count", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--model", default="pocket")
    args = parser.parse_args()
    module = blender_session.install_dev()
    session = sys.modules[f"{module}.dream_addon.session"].SESSION
    seeds = list(range(1, args.count + 1))
    with tempfile.TemporaryDirectory() as out:
        prefs = bpy.context.preferences.addons[module].preferences
        prefs.python_path, prefs.port, prefs.device, prefs.output_dir = sys.executable, 0, "cpu", out
        prefs.model = args.model
        bpy.ops.dream.backend_start()
        assert session.backend.wait_ready(300), "\n".join(session.backend.tail)
        session.drain()
        rows = {}
        for float_results in (False, True):
            bpy.ops.wm.read_homefile(use_empty=False)
            bpy.context.view_layer.objects.active = bpy.data.objects["Cube"]
            props = bpy.context.scene.dream
            props.prompt = "seamless thick blue bricks texture"
            props.width = props.height = args.size
            props.steps, props.preview_interval = args.steps, 0.0
            prefs.float_results = float_results
            sizes = grow(session, props, f"{out}/history-{float_results}.blend", args.count, seeds)
            assert len(bpy.context.scene.dream_history) == args.count
            rows[float_results] = sizes
        bpy.ops.dream.backend_stop()
    for float_results, sizes in rows.items():
        per_entry = (sizes[-1] - sizes[0]) / args.count / 1e6
        kind = "Float Textures on (32-bit EXR)" if float_results else "default (8-bit sRGB PNG)"
        print(f"| {args.model} {args.size}², {args.steps} steps, {args.count} entries, {kind} | "
              f"{sizes[0] / 1e3:.0f} KB -> {sizes[-1] / 1e6:.2f} MB | {per_entry:.3f} MB per entry |")
    print(f"| ratio float / default per entry | "
          f"{(rows[True][-1] - rows[True][0]) / (rows[False][-1] - rows[False][0]):.2f}x | |")


if __name__ == "__main__":
    main()
