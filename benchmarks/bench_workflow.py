"""Texture-workflow benchmarks (issue 5), in a bpy process with a real backend.

1. UV mask of a 10k-face mesh at 2048² (all faces selected), Object and Edit mode.
2. The longest main-thread drain call while a "texture selected faces" job streams previews
   (each preview is cropped and composited onto the original before it is written).
3. What binding jobs by identity adds to each event: finding a job's image by session_uid
   among 1000 images (done for every preview and result; the worst case, the last image), and
   the liveness check of a drain.
Usage: .venv/bin/python benchmarks/bench_workflow.py [--repeats N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from bench_common import longest_drain, timed

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import blender_session  # noqa: E402

import bpy  # noqa: E402




def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=1024, help="texture size for the drain measurement")
    args = parser.parse_args()
    module = blender_session.install_dev()
    job_builder = sys.modules[f"{module}.dream_addon.job_builder"]
    session = sys.modules[f"{module}.dream_addon.session"].SESSION

    bpy.ops.wm.read_homefile(use_empty=True)
    bpy.ops.mesh.primitive_grid_add(x_subdivisions=101, y_subdivisions=101, calc_uvs=True)
    grid = bpy.context.active_object
    faces = len(grid.data.polygons)
    for poly in grid.data.polygons:
        poly.select = True
    object_s = timed(lambda: job_builder.selected_faces_uv_mask(grid, 2048, 2048, 2), args.repeats)
    bpy.ops.object.mode_set(mode="EDIT")
    edit_s = timed(lambda: job_builder.selected_faces_uv_mask(grid, 2048, 2048, 2), args.repeats)
    bpy.ops.object.mode_set(mode="OBJECT")

    with tempfile.TemporaryDirectory() as out:
        prefs = bpy.context.preferences.addons[module].preferences
        prefs.python_path, prefs.port, prefs.device, prefs.output_dir = sys.executable, 0, "cpu", out
        bpy.ops.dream.backend_start()
        assert session.backend.wait_ready(300)
        session.drain()
        bpy.ops.wm.read_homefile(use_empty=False)
        scene = bpy.context.scene
        bpy.context.view_layer.objects.active = bpy.data.objects["Cube"]
        props = scene.dream
        props.width = props.height = args.size
        props.steps, props.preview_interval = 2, 0.0
        bpy.ops.dream.generate_texture()
        session.wait_for(list(session.jobs)[-1], 600)
        cube = bpy.data.objects["Cube"]
        for poly in cube.data.polygons:
            poly.select = poly.index in (0, 1, 2)
        props.steps, props.preview_interval, props.strength = 12, 0.001, 1.0
        bpy.ops.dream.texture_selected_faces()
        job = session.jobs[list(session.jobs)[-1]]
        drain_max = longest_drain(session, job)
        for i in range(1000 - len(bpy.data.images)):
            bpy.data.images.new(f"filler {i:04d}", 4, 4)
        bindings = sys.modules[f"{module}.dream_addon.bindings"]
        last = bindings.ref(bpy.data.images[-1])  # the worst case: found at the end of the list
        lookup_s = timed(lambda: bindings.resolve(last), args.repeats * 20)
        check_s = timed(session._check_alive, args.repeats * 20)
        bpy.ops.dream.backend_stop()
    print(f"| UV mask, {faces} faces selected, 2048², Object mode (median of {args.repeats}) "
          f"| {object_s * 1000:.0f} ms | <= 200 ms |")
    print(f"| UV mask, same, Edit mode (bmesh) | {edit_s * 1000:.0f} ms | <= 200 ms |")
    print(f"| longest drain call, texture-selected-faces job at {args.size}², {job.previews} previews "
          f"composited (result pack included) | {drain_max * 1000:.0f} ms | <= 50 ms |")
    print(f"| a job's image found by session_uid, last of 1000 images (median) | {lookup_s * 1e6:.0f} µs | |")
    print(f"| liveness check of one drain call (median) | {check_s * 1e6:.1f} µs | |")


if __name__ == "__main__":
    main()
