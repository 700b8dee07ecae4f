"""Shared by the Blender tests: bpy with the extension enabled from this checkout.

bpy imports once per process and must never share it with torch, so this folder runs in
its own pytest process (scripts/test does that)."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import blender_session  # noqa: E402  (sets BLENDER_USER_RESOURCES before bpy is imported)

import bpy  # noqa: E402

MODULE = blender_session.install_dev()


def addon(name):
    return sys.modules[f"{MODULE}.dream_addon.{name}"]


def pixels(image):
    """(h, w, 4) float32 pixels of a Blender image, rows bottom to top."""
    import numpy as np

    out = np.empty(image.size[0] * image.size[1] * 4, np.float32)
    image.pixels.foreach_get(out)
    return out.reshape(image.size[1], image.size[0], 4)


def generate(session, timeout=120):
    """Run the operator and drain until its job ends, as the UI timer would."""
    before = set(session.jobs)
    assert bpy.ops.dream.generate_texture() == {"FINISHED"}
    (job_id,) = set(session.jobs) - before
    return session.wait_for(job_id, timeout)


def select_only_face(obj, index):
    """Select one face (its vertices and edges too, so Edit mode's selection flush agrees)."""
    mesh = obj.data
    chosen = set(mesh.polygons[index].vertices) if index >= 0 else set()
    for vertex in mesh.vertices:
        vertex.select = vertex.index in chosen
    for edge in mesh.edges:
        edge.select = set(edge.vertices) <= chosen
    for poly in mesh.polygons:
        poly.select = poly.index == index


def run_walk(scene, session, **settings):
    """A short circular walk with ``settings`` on the Walk panel, run to its end."""
    walk = scene.dream_walk
    scene.dream.steps = 2
    for name, value in {**dict(kind="circular", frames=6, batch_size=2, fps=8, start_frame=1), **settings}.items():
        setattr(walk, name, value)
    before = set(session.jobs)
    assert bpy.ops.dream.walk() == {"FINISHED"}
    (job_id,) = set(session.jobs) - before
    job = session.wait_for(job_id, 300)
    assert job.state == "done", job.message
    return job


def image_editor(image):
    """A context override: the first area as an Image Editor showing ``image``."""
    window = bpy.context.window_manager.windows[0]
    area = window.screen.areas[0]
    area.type = "IMAGE_EDITOR"
    area.spaces.active.image = image
    return bpy.context.temp_override(window=window, area=area, region=area.regions[-1])


def models_folder(root) -> str:
    """A models folder for the backend (Preferences > Models Folder) holding copies of the built tiny
    models when the cache has them (else the backend builds them there)."""
    import os
    import shutil

    cache = os.environ.get("DREAM_MODELS_DIR")
    for name in ("tiny", "tiny-b", "tiny-inpaint"):
        if cache and os.path.isdir(os.path.join(cache, name)):
            shutil.copytree(os.path.join(cache, name), os.path.join(root, name))
    return str(root)


def write_compact_upscaler(path, scale=2, features=4, seed=0):
    """A small random SRVGGNetCompact (one inner convolution) as .safetensors, written with numpy alone
    (the Blender side has no torch): a second upscaler for the backend the tests start."""
    import json
    import struct

    import numpy as np

    rng = np.random.default_rng(seed)
    shapes = {"body.0.weight": (features, 3, 3, 3), "body.0.bias": (features,), "body.1.weight": (features,),
              "body.2.weight": (features, features, 3, 3), "body.2.bias": (features,), "body.3.weight": (features,),
              "body.4.weight": (3 * scale * scale, features, 3, 3), "body.4.bias": (3 * scale * scale,)}
    header, blobs, offset = {}, [], 0
    for name, shape in shapes.items():
        data = (rng.normal(0, 0.1, shape) + (0.25 if name in ("body.1.weight", "body.3.weight") else 0)).astype("<f4")
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + data.nbytes]}
        blobs.append(data.tobytes())
        offset += data.nbytes
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))
    return path
