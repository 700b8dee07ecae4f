"""An artist's day in real bpy against the real backend (issue 12, items 7-15): feather, Re-run
from any editor, wrapped UVs, empty prompts, the backend's limits in the panel, feedback on
where a result went, history that keeps its own pixels, walk frames that move with the
project, and a Start-ed backend that a second Blender can share."""

import json
import subprocess
import sys
import time

import bpy
import numpy as np
import pytest

from tests.blender.helpers import REPO, addon, generate, pixels, run_walk, select_only_face
from tests.blender.test_panels import RecordingLayout

job_builder = addon("job_builder")
protocol = addon("protocol")
uv_mask = addon("uv_mask")


def photo(name="photo", width=64, height=64, seed=5):
    """A byte image of noise, fully opaque."""
    image = bpy.data.images.new(name, width, height, alpha=True)
    values = np.random.default_rng(seed).random((height, width, 4)).astype(np.float32)
    values[..., 3] = 1.0
    image.pixels.foreach_set((np.round(values * 255) / 255).reshape(-1))
    return image, pixels(image).copy()


def editor(area_type="IMAGE_EDITOR", image=None):
    """A context override for the first area, turned into ``area_type`` (showing ``image``)."""
    window = bpy.context.window_manager.windows[0]
    area = window.screen.areas[0]
    area.type = area_type
    if image is not None:
        area.spaces.active.image = image
    return bpy.context.temp_override(window=window, area=area, region=area.regions[-1])


def welcome(session, timeout=30.0):
    """The backend's welcome, draining until the connection has it."""
    deadline = time.monotonic() + timeout
    while session.welcome is None and time.monotonic() < deadline:
        session.drain(timeout=0.5)
    assert session.welcome is not None, session.status
    return session.welcome


def last_job(session):
    return session.wait_for(list(session.jobs)[-1])


def chebyshev_distance_to(mask):
    """Per pixel, the Chebyshev distance to the nearest True pixel of ``mask`` (brute force)."""
    ys, xs = np.nonzero(mask)
    gy, gx = np.mgrid[:mask.shape[0], :mask.shape[1]]
    return np.min(np.maximum(np.abs(gy[..., None] - ys), np.abs(gx[..., None] - xs)), axis=-1)


# ----------------------------------------------------------------------------- 7. feather
def test_feather_blends_near_the_mask_and_leaves_farther_pixels_bit_identical(scene, session):
    image, before = photo()
    props = scene.dream
    props.mask_source, props.rect_min, props.rect_max = "RECT", (0.375, 0.375), (0.625, 0.625)
    props.feather, props.strength, props.result_target = 8.0, 1.0, "NEW"
    with editor(image=image):
        assert bpy.ops.dream.inpaint() == {"FINISHED"}
    job = last_job(session)
    assert job.state == "done", job.message
    got = pixels(bpy.data.images[job.image_name])
    frame = uv_mask.rectangle(64, 64, 0.375, 0.375, 0.625, 0.625)
    distance = chebyshev_distance_to(frame)
    assert protocol.feather_reach(8.0) == 8
    far = distance > 8
    np.testing.assert_array_equal(got[far], before[far])  # beyond the radius: the original, exactly
    ring = (distance >= 1) & (distance <= 2)
    changed = np.abs(got[ring] - before[ring]).max(axis=-1)
    assert (changed > 1 / 255).mean() > 0.5, "just outside the mask the result blends in"
    inside = np.abs(got[frame] - before[frame]).max()
    assert inside > 0.05


# ----------------------------------------------------------------------------- 9. UV wrap
def textured_cube(scene, session):
    job = generate(session)
    assert job.state == "done", job.message
    cube = bpy.data.objects["Cube"]
    return cube, bpy.data.images[job.image_name]


@pytest.mark.parametrize("layout", ["shifted", "across_edge"])
def test_texture_selected_faces_wraps_uvs_outside_0_1(scene, session, layout):
    cube, image = textured_cube(scene, session)
    select_only_face(cube, 1)
    uv = cube.data.uv_layers.active.uv
    loops = list(cube.data.polygons[1].loop_indices)
    corners = np.array([uv[i].vector[:] for i in loops])
    (u0, v0), (u1, v1) = corners.min(axis=0), corners.max(axis=0)
    if layout == "shifted":  # the same texels, one repeat to the right
        new = corners + (1.0, 0.0)
        regions = [(u0, u1)]
    else:  # a face spanning u 0.8..1.2: its right half shows texels 0..0.2
        new = np.where(corners[:, :1] == u0, 0.8, 1.2)
        new = np.concatenate([new, corners[:, 1:]], axis=1)
        regions = [(0.8, 1.0), (0.0, 0.2)]
    for i, value in zip(loops, new):
        uv[i].vector = value
    before = pixels(image).copy()
    scene.dream.uv_margin, scene.dream.strength, scene.dream.prompt = 0, 1.0, "blue waves"
    assert bpy.ops.dream.texture_selected_faces() == {"FINISHED"}
    job = last_job(session)
    assert job.state == "done", job.message
    after = pixels(image)
    changed = np.abs(after - before).max(axis=-1) > 0
    allowed = np.zeros((64, 64), bool)
    for a, b in regions:
        region = uv_mask.rectangle(64, 64, a, v0, b, v1)
        assert changed[region].mean() > 0.5, f"texels {a}..{b} were not repainted"
        allowed |= region
    assert not changed[~uv_mask.dilate(allowed, 1)].any()  # nothing else moved


# ----------------------------------------------------------------------------- 10, 11. refused before anything exists
def datablock_counts():
    return len(bpy.data.images), len(bpy.data.materials), len(bpy.data.objects["Cube"].material_slots)


@pytest.mark.parametrize("prompt, extra", [("", None), ("   ", None), ("red bricks", " ")])
def test_a_blank_prompt_is_refused_naming_the_prompt(scene, session, prompt, extra):
    scene.dream.prompt = prompt
    if extra is not None:
        scene.dream.extra_prompts.add().text = extra
    before, jobs = datablock_counts(), len(session.jobs)
    with pytest.raises(RuntimeError, match="Prompt .*empty"):
        bpy.ops.dream.generate_texture()
    assert datablock_counts() == before and len(session.jobs) == jobs


def test_panel_sizes_are_only_what_the_backend_accepts(scene, session):
    largest = welcome(session)["capabilities"]["max_size"]
    props = scene.dream
    for typed, shown in ((100, 104), (61, 64), (4096, largest), (8192, largest), (517, 520), (512, 512)):
        props.width = typed
        assert props.width == shown, typed
        assert props.width % 8 == 0 and 64 <= props.width <= largest


def test_a_request_the_backend_would_refuse_creates_nothing(scene, session):
    image, _ = photo("refuse-me")
    scene.dream.steps, scene.dream.strength, scene.dream.result_target = 3, 0.2, "NEW"  # 0 denoising steps
    before, jobs = datablock_counts(), len(session.jobs)
    with editor(image=image), pytest.raises(RuntimeError, match="params.strength"):
        bpy.ops.dream.img2img()
    assert datablock_counts() == before and len(session.jobs) == jobs


# ----------------------------------------------------------------------------- 8. Re-run with New Seed
@pytest.mark.parametrize("where", ["VIEW_3D", "IMAGE_EDITOR"])
def test_rerun_of_an_inpaint_entry_uses_its_own_source_from_any_editor(scene, session, where):
    source, source_before = photo("source")
    props = scene.dream
    props.mask_source, props.rect_min, props.rect_max = "RECT", (0.25, 0.25), (0.5, 0.75)
    props.result_target, props.strength, props.seed = "NEW", 1.0, 7
    with editor(image=source):
        assert bpy.ops.dream.inpaint() == {"FINISHED"}
    first = last_job(session)
    assert first.state == "done", first.message
    # The artist moves on: other settings, another image in the editor (or the 3D View).
    other, other_before = photo("other", seed=9)
    props.mask_source, props.result_target, props.strength, props.rect_max = "ALPHA", "REPLACE", 0.3, (1.0, 1.0)
    images_before = set(bpy.data.images.keys())
    with editor(where, image=other if where == "IMAGE_EDITOR" else None):
        assert bpy.ops.dream.history_rerun() == {"FINISHED"}
    rerun = last_job(session)
    assert rerun.state == "done", rerun.message
    assert rerun.params["seed"] != 7 and rerun.params["strength"] == 1.0 and rerun.kind == "inpaint"
    (made,) = set(bpy.data.images.keys()) - images_before  # a new result image, as the entry's was
    result = pixels(bpy.data.images[made])
    frame = uv_mask.rectangle(64, 64, 0.25, 0.25, 0.5, 0.75)
    np.testing.assert_array_equal(result[~frame], source_before[~frame])  # the entry's source and mask
    assert np.abs(result[frame] - source_before[frame]).max() > 0.05
    np.testing.assert_array_equal(pixels(other), other_before)  # the image on show is left alone
    np.testing.assert_array_equal(pixels(source), source_before)
    assert scene.dream_history[-1].operator == "dream.inpaint"


# ----------------------------------------------------------------------------- 13. history
def test_entries_keep_their_own_pixels_and_delete_frees_their_images(scene, session):
    job = generate(session)
    assert job.state == "done", job.message
    texture = bpy.data.images[job.image_name]
    generated = pixels(texture).copy()
    scene.dream.result_target, scene.dream.strength = "REPLACE", 0.8
    with editor(image=texture):
        assert bpy.ops.dream.img2img() == {"FINISHED"}
    assert last_job(session).state == "done"
    first, second = scene.dream_history
    assert second.image == texture and np.abs(pixels(texture) - generated).max() > 1e-3
    np.testing.assert_array_equal(pixels(first.image), generated)  # the txt2img entry keeps its pixels
    np.testing.assert_array_equal(pixels(second.original), generated)
    backup = second.original.name
    # Deleting the Replace entry keeps the texture (a material shows it) and the backup (the first entry's).
    assert bpy.ops.dream.history_delete(index=1) == {"FINISHED"}
    assert len(scene.dream_history) == 1 and texture.name in bpy.data.images and backup in bpy.data.images
    assert bpy.ops.dream.history_delete(index=0) == {"FINISHED"}
    assert len(scene.dream_history) == 0 and backup not in bpy.data.images  # freed: nothing else used it
    assert texture.name in bpy.data.images  # still on the cube


def test_textures_are_8_bit_png_by_default_and_float_on_request(scene, session, prefs):
    job = generate(session)
    image = bpy.data.images[job.image_name]
    assert not image.is_float and image.packed_file is not None
    assert image.packed_file.data[:8] == b"\x89PNG\r\n\x1a\n"
    stored = np.load(f"{prefs.output_dir}/{job.job_id}/result.npy")  # the backend's sRGB result
    np.testing.assert_allclose(pixels(image)[::-1, :, :3], stored, atol=0.5 / 255 + 1e-6)
    prefs.float_results = True
    try:
        job = generate(session)
    finally:
        prefs.float_results = False
    image = bpy.data.images[job.image_name]
    assert image.is_float and image.colorspace_settings.name == "Linear Rec.709"
    stored = np.load(f"{prefs.output_dir}/{job.job_id}/result.npy")
    linear = np.where(stored <= 0.04045, stored / 12.92, ((stored + 0.055) / 1.055) ** 2.4)
    np.testing.assert_allclose(pixels(image)[::-1, :, :3], linear, atol=2e-6)


# ----------------------------------------------------------------------------- 12. where the result went
def generate_and_report(session, capfd, **options):
    """Generate Texture; return the report it printed (background Blender prints reports)."""
    capfd.readouterr()
    before = set(session.jobs)
    assert bpy.ops.dream.generate_texture(**options) == {"FINISHED"}
    (job_id,) = set(session.jobs) - before
    assert session.wait_for(job_id).state == "done"
    return capfd.readouterr().out


@pytest.mark.parametrize("case", ["no_object", "camera", "sequencer"])
def test_a_texture_that_goes_on_no_object_says_so(scene, session, capfd, case):
    if case == "no_object":
        bpy.context.view_layer.objects.active = None
        printed, expected = generate_and_report(session, capfd), "no object is active"
    elif case == "camera":
        bpy.context.view_layer.objects.active = bpy.data.objects["Camera"]
        printed, expected = generate_and_report(session, capfd), "'Camera' is a camera, not a mesh"
    else:
        with editor("SEQUENCE_EDITOR"):
            printed = generate_and_report(session, capfd)
        expected = "the Sequencer shows no textures"
    assert "Warning: The texture goes to the image 'Dream" in printed and expected in printed, printed
    assert not any(m.name.startswith("Dream") for m in bpy.data.materials)


def test_a_mesh_without_uvs_gets_a_smart_uv_projection_or_a_warning(scene, session, capfd):
    cube = bpy.data.objects["Cube"]
    cube.data.uv_layers.remove(cube.data.uv_layers[0])
    printed = generate_and_report(session, capfd, missing_uvs="WARN")
    assert "'Cube' has no UV map" in printed and cube.data.uv_layers.active is None
    printed = generate_and_report(session, capfd)  # the default adds one
    assert "with a new UV map (Smart UV Project)" in printed and cube.data.uv_layers.active is not None
    uvs = np.empty(len(cube.data.loops) * 2)
    cube.data.uv_layers.active.uv.foreach_get("vector", uvs)
    assert 0 <= uvs.min() and uvs.max() <= 1 and np.ptp(uvs) > 0.5  # the faces spread over the image
    printed = generate_and_report(session, capfd)
    assert "Info: The texture goes to the material 'Dream" in printed and "on 'Cube'" in printed


# ----------------------------------------------------------------------------- 13, 14. walk frames
REOPEN = f"""
import os, sys, json
sys.path.insert(0, {str(REPO / "scripts")!r})
import blender_session, bpy
blender_session.install_dev()
bpy.ops.wm.open_mainfile(filepath=sys.argv[-1])
scene = bpy.context.scene
editor = scene.sequence_editor
strips = (editor.strips if hasattr(editor, "strips") else editor.sequences) if editor else []
found = {{"strips": [[os.path.isfile(bpy.path.abspath(s.directory + e.filename)) for e in s.elements]
                     for s in strips if s.type == "IMAGE"],
         "entries": []}}
for item in scene.dream_history:
    image = item.image
    folder = os.path.dirname(bpy.path.abspath(image.filepath))
    files = sorted(n for n in os.listdir(folder) if n.startswith("frame_")) if os.path.isdir(folder) else []
    sizes = [list(bpy.data.images.load(os.path.join(folder, n)).size) for n in files]
    found["entries"].append({{"frames": item.frames, "sizes": sizes, "relative": image.filepath.startswith("//")}})
print("FOUND", json.dumps(found))
"""


def test_walk_frames_move_with_the_project_folder(scene, session, tmp_path, prefs):
    bpy.ops.mesh.primitive_plane_add(size=2)
    jobs = [run_walk(scene, session, target=t, frames=3, batch_size=3) for t in ("SEQUENCER", "TEXTURE")]
    assert [item.frames for item in scene.dream_history] == [3, 3]  # walk entries show their frames
    assert all(item.image is not None and item.image.source == "SEQUENCE" for item in scene.dream_history)
    project = tmp_path / "project"
    project.mkdir()
    bpy.ops.wm.save_as_mainfile(filepath=str(project / "shot.blend"))
    moved = tmp_path / "elsewhere" / "project"
    moved.parent.mkdir()
    project.rename(moved)
    # The backend's output folder is not part of the project: hide it, as on another machine.
    outputs = tmp_path.parent / (tmp_path.name + "-outputs-hidden")
    hidden = [(prefs.output_dir + "/" + job.job_id, str(outputs / job.job_id)) for job in jobs]
    outputs.mkdir()
    for old, new in hidden:
        __import__("os").rename(old, new)
    try:
        run = subprocess.run([sys.executable, "-c", REOPEN, str(moved / "shot.blend")], capture_output=True,
                             text=True, timeout=120)
    finally:
        for old, new in hidden:
            __import__("os").rename(new, old)
    assert run.returncode == 0, run.stderr[-2000:]
    found = json.loads(run.stdout.split("FOUND ", 1)[1].splitlines()[0])
    assert found["strips"] == [[True, True, True]]
    assert found["entries"] == [{"frames": 3, "sizes": [[64, 64]] * 3, "relative": True}] * 2


# ----------------------------------------------------------------------------- 15. sharing a started backend
SECOND_BLENDER = f"""
import sys, time
sys.path.insert(0, {str(REPO / "scripts")!r})
import blender_session, bpy
module = blender_session.install_dev()
session = sys.modules[module + ".dream_addon.session"].SESSION
assert bpy.ops.dream.paste_connection(text=sys.argv[-1]) == {{"FINISHED"}}
props = bpy.context.scene.dream
props.width, props.height, props.steps, props.preview_interval = 64, 64, 2, 0.0
bpy.ops.dream.generate_texture()
(job,) = session.jobs.values()
print("SECOND", session.wait_for(job.job_id, 60).state, job.message)
"""


def test_a_second_blender_shares_the_started_backend(scene, session, prefs):
    welcome(session)
    assert bpy.ops.dream.copy_connection() == {"FINISHED"}  # the clipboard: empty in background Blender
    shared = addon("operators.backend").connection_text()  # what it copies
    host, port = shared.split()[0].rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) == session.backend.ready_info["port"] > 0
    assert shared.split()[1] == session.backend.token
    run = subprocess.run([sys.executable, "-c", SECOND_BLENDER, shared], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "SECOND done" in run.stdout, run.stdout[-2000:]
    with pytest.raises(RuntimeError, match="No connection details"):
        bpy.ops.dream.paste_connection(text="not a connection")
    # The preferences show the address and offer the copy.
    log = []
    type(prefs).draw(type("Prefs", (), {"layout": RecordingLayout(log), "bl_rna": prefs.bl_rna})(), bpy.context)
    assert ("label", f"Address {host}:{port}, token {shared.split()[1][:4]}…") in log
    assert ("operator", "dream.copy_connection") in log and ("operator", "dream.paste_connection") in log
