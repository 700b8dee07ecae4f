"""The Dream demo: build and install the extension like a user, start the backend through
the add-on, generate a texture onto an object in a real (headless) Blender scene, save it.

Writes out/demo.blend, out/texture.png and out/render.png. Run it with scripts/demo.
With --hypermosaic it makes a small hypermosaic zoom into the Sequencer instead (out/hypermosaic.blend,
out/mosaic.png, out/zoom_sheet.png: every fourth frame of the zoom).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import blender_session  # noqa: E402  (sets a private BLENDER_USER_RESOURCES before bpy loads)

import bpy  # noqa: E402

OUT = blender_session.REPO / "out"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prompt", default="seamless thick blue bricks texture")
    parser.add_argument("--model", default="pocket",
                        help="diffusers folder or hub id; 'pocket' (the offline texture model) and 'tiny' "
                             "need no download")
    parser.add_argument("--size", type=int, default=128,
                        help="pixels; the pocket model is trained up to 128 and does best there")
    parser.add_argument("--guidance", type=float, default=4.0, help="the pocket model does best at 3-5")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--hypermosaic", action="store_true",
                        help="a 3 x 3 hypermosaic of 3 levels, zooming on the Sequencer (docs/techniques.md)")
    args = parser.parse_args(argv)
    OUT.mkdir(exist_ok=True)

    # 1. Install the extension from its zip, as "Install from Disk" does.
    zip_path = blender_session.build_extension_zip(OUT / "extension")
    module = blender_session.install_zip(zip_path)
    session = sys.modules[f"{module}.dream_addon.session"].SESSION
    print(f"installed {zip_path.name} as {module}")

    # 2. Start the backend through the add-on (its Start button), with this interpreter.
    prefs = bpy.context.preferences.addons[module].preferences
    # The backend's Python: this one (scripts/demo), or the one named (a Blender-only environment).
    prefs.python_path = os.environ.get("DREAM_BACKEND_PYTHON", sys.executable)
    prefs.model, prefs.port = args.model, 0
    prefs.output_dir = str(OUT / "outputs")
    bpy.ops.dream.backend_start()
    if not session.backend.wait_ready(300):
        print("backend did not start:\n" + "\n".join(session.backend.tail), file=sys.stderr)
        return 1
    session.drain()
    print(f"backend: {session.backend.describe()}")

    try:
        # 3. A scene: a cube to texture, a camera and a light.
        bpy.ops.wm.read_homefile(use_empty=False)
        scene = bpy.context.scene
        cube = bpy.data.objects["Cube"]
        bpy.context.view_layer.objects.active = cube
        props = scene.dream
        props.prompt, props.seed, props.steps, props.guidance = args.prompt, args.seed, args.steps, args.guidance
        props.width = props.height = args.size
        props.seamless_x = props.seamless_y = True  # a texture that tiles on the cube's faces
        if args.hypermosaic:
            return hypermosaic(session, scene)

        # 4. Generate Texture, draining events as the UI timer would.
        started = time.perf_counter()
        bpy.ops.dream.generate_texture()
        job = list(session.jobs.values())[-1]
        last = None
        while job.active:
            session.drain(timeout=0.5)
            if job.progress_text() != last:
                last = job.progress_text()
                print(f"  {last}")
        if job.state != "done":
            print(f"generation failed: {job.message}", file=sys.stderr)
            return 1
        print(f"generated {args.size}x{args.size} in {time.perf_counter() - started:.1f} s "
              f"({job.previews} previews); material {cube.active_material.name!r} on {cube.name!r}")

        # 5. Save the scene and the texture, and render a frame with Cycles on the CPU.
        image = bpy.data.images[job.image_name]
        scene.view_settings.view_transform = "Standard"
        image.save_render(str(OUT / "texture.png"), scene=scene)
        bpy.ops.wm.save_as_mainfile(filepath=str(OUT / "demo.blend"))
        scene.render.engine = "CYCLES"
        scene.cycles.device, scene.cycles.samples = "CPU", 16
        scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = 480, 360, 100
        scene.render.filepath = str(OUT / "render.png")
        bpy.ops.render.render(write_still=True)
        for name in ("demo.blend", "texture.png", "render.png"):
            print(f"wrote {OUT / name}")
    finally:
        bpy.ops.dream.backend_stop()
    return 0


def hypermosaic(session, scene):
    """A 3 x 3 hypermosaic of three levels with 64 px tiles; its zoom goes onto the Sequencer."""
    import numpy as np

    scene.dream.seamless_x = scene.dream.seamless_y = False
    mosaic = scene.dream_mosaic
    mosaic.grid_x = mosaic.grid_y = 3
    mosaic.tile_size, mosaic.levels, mosaic.zoom_frames, mosaic.fps = 64, 3, 24, 12
    started = time.perf_counter()
    bpy.ops.dream.mosaic()
    job = list(session.jobs.values())[-1]
    deadline = time.monotonic() + 1800
    while job.active and time.monotonic() < deadline:
        session.drain(timeout=0.5)
    if job.state != "done":
        print(f"hypermosaic failed: {job.message}", file=sys.stderr)
        return 1
    strip = scene.sequence_editor.strips[-1] if hasattr(scene.sequence_editor, "strips") else \
        scene.sequence_editor.sequences[-1]
    print(f"hypermosaic in {time.perf_counter() - started:.1f} s: {len(strip.elements)} frames on the Sequencer")
    image = job.datablock("image")
    scene.view_settings.view_transform = "Standard"
    image.save_render(str(OUT / "mosaic.png"), scene=scene)
    from PIL import Image

    frames = [np.asarray(Image.open(Path(strip.directory) / e.filename)) for e in strip.elements][::4]
    Image.fromarray(np.concatenate(frames, axis=1)).save(OUT / "zoom_sheet.png")
    bpy.ops.wm.save_as_mainfile(filepath=str(OUT / "hypermosaic.blend"))
    for name in ("hypermosaic.blend", "mosaic.png", "zoom_sheet.png"):
        print(f"wrote {OUT / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
