"""No lost work, no silent hang (issue 12, items 1-6): what an artist does while a job runs --
open another file, press Stop, Reconnect, rename the scene -- and jobs that are refused."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import bpy
import numpy as np
import pytest

from tests.blender.helpers import addon, generate
from tests.blender.test_panels import draw
from tests.blender.test_workflow import image_editor, photo, pixels

strips_of = addon("walk_frames").strips_of


def wait_until(session, condition, timeout=60.0, what="condition"):
    """Drain until ``condition()`` holds; fail at the deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        session.drain(timeout=0.2)


def new_job(session, operator, *args, **kwargs):
    before = set(session.jobs)
    assert operator(*args, **kwargs) == {"FINISHED"}
    (job_id,) = set(session.jobs) - before
    return session.jobs[job_id]


def running_replace_job(scene, session, name="albedo.png", steps=25):
    """A Replace img2img on a fresh image, drained until its first preview has been written."""
    image, before = photo(name, 64, 64)
    image.use_fake_user = True
    scene.dream.result_target, scene.dream.strength = "REPLACE", 1.0
    scene.dream.steps, scene.dream.preview_interval = steps, 0.001
    with image_editor(image):
        job = new_job(session, bpy.ops.dream.img2img)
    wait_until(session, lambda: job.previews >= 1 or not job.active, what="a preview")
    assert job.active, job.message
    assert np.abs(pixels(image) - before).max() > 1e-3  # the preview is in the image
    return job, image, before


def backend_meta(prefs, job_id):
    path = Path(prefs.output_dir) / job_id / "result.json"
    return json.loads(path.read_text()) if path.is_file() else {}


@pytest.fixture
def backend_back(session, backend, prefs):
    """For tests that stop or kill the backend: the shared backend runs again afterwards."""
    yield backend
    if session.backend is not backend:
        session.backend.stop()
        session.backend = backend
    if backend.state != backend.RUNNING:
        if backend.state != backend.STARTING:
            backend.start()
        assert backend.wait_ready(120), "\n".join(backend.tail)
    backend.restarts = 0  # as it was: a kill here does not count against later tests
    session.connect(prefs)
    wait_until(session, lambda: session.welcome is not None, what="the connection")


# ---------------------------------------------------------------- 1. opening another file

def test_opening_another_file_never_gets_the_running_jobs_result(scene, session, prefs, tmp_path):
    bpy.ops.wm.read_homefile(use_empty=True)
    other, other_before = photo("albedo.png", 64, 64)
    other.pixels.foreach_set((other_before * 0.5).reshape(-1))
    other.pack()  # saved with B, as a real texture would be
    other_before = pixels(other).copy()
    other.use_fake_user = True
    file_b = str(tmp_path / "shot_b.blend")
    bpy.ops.wm.save_as_mainfile(filepath=file_b)

    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    scene.dream.width = scene.dream.height = 64
    file_a = str(tmp_path / "shot_a.blend")
    job, image, before = running_replace_job(scene, session)
    bpy.ops.wm.save_as_mainfile(filepath=file_a)

    bpy.ops.wm.open_mainfile(filepath=file_b)
    wait_until(session, lambda: backend_meta(prefs, job.job_id).get("state") == "done", 120, what="the backend")
    wait_until(session, lambda: job.last_event == "result", what="the result event")
    image_b = bpy.data.images["albedo.png"]
    np.testing.assert_array_equal(pixels(image_b), other_before)
    assert len(bpy.context.scene.dream_history) == 0
    assert job.state == "detached", job.message  # waits for its own file

    bpy.ops.wm.open_mainfile(filepath=file_a)  # back to shot A: the result is fetched and applied there
    assert job.active, job.message
    session.wait_for(job.job_id, 120)
    assert job.state == "done", job.message
    image_a = bpy.data.images["albedo.png"]
    assert np.abs(pixels(image_a) - before).max() > 1e-3 and image_a.packed_file is not None
    entry = bpy.context.scene.dream_history[-1]
    assert entry.job_id == job.job_id and entry.image == image_a


def test_a_replace_job_back_in_its_file_binds_each_datablock_to_its_own_role(scene, session, tmp_path):
    blend = str(tmp_path / "shot.blend")
    bpy.ops.wm.save_as_mainfile(filepath=blend)
    job, image, before = running_replace_job(bpy.context.scene, session, steps=200)
    bpy.ops.wm.save_mainfile()
    bpy.ops.wm.read_homefile(use_empty=False)
    bpy.ops.wm.open_mainfile(filepath=blend)
    # Three images play four roles: the target and the source are albedo.png, the backup its copy (its
    # name sorts after it); each role by its own tag, not the first tagged image of the collection.
    assert {role: job.datablock(role).name for role in ("image", "source", "backup")} == {
        "image": "albedo.png", "source": "albedo.png", "backup": "albedo.png (before Dream)"}
    if job.active:
        bpy.ops.dream.cancel()
    session.wait_for(job.job_id, 120)
    albedo = bpy.data.images["albedo.png"]  # never deleted as if it were the backup the job made
    if job.state == "cancelled":
        np.testing.assert_array_equal(pixels(albedo), before)
    else:
        assert job.state == "done", job.message
        np.testing.assert_array_equal(pixels(bpy.data.images["albedo.png (before Dream)"]), before)


def test_a_result_whose_image_was_never_saved_arrives_as_a_new_image(scene, session, tmp_path):
    file_a = str(tmp_path / "saved_before.blend")
    bpy.ops.wm.save_as_mainfile(filepath=file_a)
    job = new_job(session, bpy.ops.dream.generate_texture)  # its image and material exist in memory only
    bpy.ops.wm.read_homefile(use_empty=False)  # File > New, without saving
    assert job.state == "detached", job.message
    bpy.ops.wm.open_mainfile(filepath=file_a)
    session.wait_for(job.job_id, 120)
    assert job.state == "done" and "new image" in job.message, job.message
    image = bpy.data.images[job.image_name]
    assert image.packed_file is not None and image.use_fake_user and np.abs(pixels(image)).max() > 0
    assert bpy.context.scene.dream_history[-1].image == image
    assert not bpy.data.objects["Cube"].active_material.name.startswith("Dream")  # not saved: not there


def running_texture_job(session, scene, steps=200):
    """A Generate Texture without previews (nothing is written until the result), drained until it runs."""
    scene.dream.steps, scene.dream.preview_interval = steps, 0.0
    job = new_job(session, bpy.ops.dream.generate_texture)
    wait_until(session, lambda: job.state == "running" and job.step >= 1 or not job.active, what="the job to run")
    assert job.active, job.message
    return job


def test_closing_an_unsaved_file_stops_its_jobs_on_the_backend(scene, session, prefs):
    job = running_texture_job(session, scene)  # the default scene was never saved
    bpy.ops.wm.read_homefile(use_empty=False)  # File > New: that file can never be opened again
    assert job.state == "cancelled" and "without being saved" in job.message, job.message
    wait_until(session, lambda: backend_meta(prefs, job.job_id).get("state") == "cancelled", 60,
               what="the backend to stop the job")  # it no longer runs for nobody ahead of the next job


def test_a_renamed_result_image_in_a_moved_file_gets_the_result(scene, session, tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    bpy.ops.wm.save_as_mainfile(filepath=str(folder / "shot.blend"))
    job = running_texture_job(session, bpy.context.scene, steps=60)
    job.datablock("image").name = "My Bricks"  # renamed before anything is written to it
    bpy.ops.wm.save_mainfile()
    bpy.ops.wm.read_homefile(use_empty=False)
    assert job.state == "detached", job.message
    moved = tmp_path / "moved"
    folder.rename(moved)  # the project folder moves while the job runs
    bpy.ops.wm.open_mainfile(filepath=str(moved / "shot.blend"))
    session.wait_for(job.job_id, 120)
    assert job.state == "done" and "new image" not in job.message, job.message
    image = bpy.data.images["My Bricks"]
    assert job.datablock("image") == image and image.packed_file is not None
    assert np.abs(pixels(image) - pixels(image).mean()).max() > 0.05  # the texture, not the flat placeholder
    material = bpy.data.objects["Cube"].active_material
    assert any(node.type == "TEX_IMAGE" and node.image == image for node in material.node_tree.nodes)
    assert not any(key.startswith("dream_job") for d in (image, material, bpy.context.scene) for key in d.keys())


def test_a_job_waiting_for_its_file_can_be_stopped_and_the_file_is_restored(scene, session, prefs, tmp_path):
    blend = str(tmp_path / "shot.blend")
    bpy.ops.wm.save_as_mainfile(filepath=blend)
    def in_use(collection):  # what the file holds (an unused datablock is not saved)
        return {d.name for d in collection if d.users}

    materials, images = in_use(bpy.data.materials), in_use(bpy.data.images)
    job = running_texture_job(session, bpy.context.scene)
    bpy.ops.wm.save_mainfile()  # saved with the job's new image, material and slot
    bpy.ops.wm.read_homefile(use_empty=False)
    assert job.state == "detached" and not bpy.ops.dream.cancel.poll()  # Stop is for the open file's jobs
    log = draw("VIEW3D_PT_dream_queue")  # listed, with its own stop button
    assert ("operator", "dream.stop_waiting") in log and ("operator", "dream.cancel") not in log
    assert bpy.ops.dream.stop_waiting(job_id=job.job_id) == {"FINISHED"}
    wait_until(session, lambda: backend_meta(prefs, job.job_id).get("state") == "cancelled", 60,
               what="the backend to stop the job")
    bpy.ops.wm.open_mainfile(filepath=blend)
    wait_until(session, lambda: not job.active and job.state != "lost", 60, what="the job to end")
    assert job.state == "cancelled", job.message
    assert in_use(bpy.data.materials) == materials and in_use(bpy.data.images) == images
    assert len(bpy.data.objects["Cube"].material_slots) == 1


RECOVER_SCRIPT = """
import sys, time
sys.path.insert(0, {scripts!r})
import blender_session, bpy, numpy as np
module = blender_session.install_dev()
prefs = bpy.context.preferences.addons[module].preferences
prefs.host, prefs.port, prefs.token = {host!r}, {port!r}, {token!r}
session = sys.modules[module + ".dream_addon.session"].SESSION
bpy.ops.wm.open_mainfile(filepath={blend!r})  # a new Blender: it never saw the job
deadline = time.monotonic() + 60
while (not session.jobs or any(j.active or j.state == "lost" for j in session.jobs.values())) \
        and time.monotonic() < deadline:
    session.drain(timeout=0.2)
(job,) = session.jobs.values()
print("JOB", job.job_id, job.state, job.message)
image, cube = bpy.data.images.get({image!r}), bpy.data.objects["Cube"]
if image is not None:
    out = np.empty(image.size[0] * image.size[1] * 4, np.float32)
    image.pixels.foreach_get(out)
    print("IMAGE", image.packed_file is not None, float(out.std()) > 0.05,
          any(n.type == "TEX_IMAGE" and n.image == image for n in cube.active_material.node_tree.nodes))
    print("HISTORY", len(bpy.context.scene.dream_history), bpy.context.scene.dream_history[-1].job_id)
    stored = np.load({result!r})[::-1]  # the backend's result, sRGB, rows top first; the image holds bytes
    print("MATCH", float(np.abs(out.reshape(stored.shape[0], stored.shape[1], 4)[..., :3] - stored).max()) <= 0.5 / 255)
print("SLOTS", [slot.material.name for slot in cube.material_slots], [m for m in bpy.data.materials.keys()
      if m.startswith("Dream")])
print("LEFT", "dream_pending_jobs" in bpy.context.scene.keys(), sorted(k for c in (bpy.data.images,
      bpy.data.materials, bpy.data.scenes, bpy.data.objects) for d in c for k in d.keys() if k.startswith("dream_job")))
"""


@pytest.mark.parametrize("backend_has_it", [True, False])
def test_a_file_saved_mid_job_gets_its_result_in_a_new_blender(scene, session, prefs, tmp_path, backend_has_it):
    blend = str(tmp_path / "shot.blend")
    bpy.ops.wm.save_as_mainfile(filepath=blend)
    job = running_texture_job(session, bpy.context.scene, steps=60)
    image_name = job.image_name
    bpy.ops.wm.save_mainfile()  # saved mid-job; then Blender quits (here: another file, then a new process)
    bpy.ops.wm.read_homefile(use_empty=False)
    wait_until(session, lambda: backend_meta(prefs, job.job_id).get("state") == "done", 120, what="the backend")
    result = Path(prefs.output_dir) / job.job_id / "result.npy"
    if not backend_has_it:  # its results were deleted (or another backend answers): the placeholder goes
        shutil.rmtree(result.parent)
    host, port, token = session.connection_settings(prefs)
    script = RECOVER_SCRIPT.format(scripts=str(Path(__file__).resolve().parents[2] / "scripts"), host=host,
                                   port=port, token=token, blend=blend, image=image_name, result=str(result))
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "LEFT False []" in run.stdout, run.stdout[-2000:]  # nothing is remembered once it has ended
    if backend_has_it:
        assert f"JOB {job.job_id} done" in run.stdout, run.stdout[-2000:]
        assert "IMAGE True True True" in run.stdout  # the texture, packed, in its material
        assert f"HISTORY 1 {job.job_id}" in run.stdout and "MATCH True" in run.stdout  # sRGB, as it was asked
    else:
        assert f"JOB {job.job_id} error" in run.stdout and "IMAGE" not in run.stdout, run.stdout[-2000:]
        assert "SLOTS ['Material'] []" in run.stdout  # its material and slot are taken back


def test_what_a_file_remembers_is_checked_and_nothing_stale_is_kept(scene, session, tmp_path):
    from tests.blender.helpers import generate

    job = generate(session)
    assert job.state == "done", job.message
    image = bpy.data.images[job.image_name]
    image["dream_job " + job.job_id] = "image"  # as an undo after the result would put the tag back
    scene["dream_pending_jobs"] = json.dumps({
        job.job_id: {"kind": "txt2img"},  # the ended job's record, back by the same undo
        "../../etc/passwd": {"kind": "txt2img"}, "blender-0123456789abcdef": {"kind": "walk", "params": {}},
        "blender-fedcba9876543210": "not a record", "blender-00000000000000aa": {
            "kind": "txt2img", "operator": "dream.generate_texture", "params": {}, "settings": {}, "image_name": "x",
            "crop": [64, "x"], "created": ["image"], "total": 3, "moved_faces": [[1, 2], [3]]}})
    copy = scene.copy()  # a copied scene copies the properties
    copy.use_fake_user, copy_name = True, copy.name
    blend = str(tmp_path / "remembers.blend")
    bpy.ops.wm.save_as_mainfile(filepath=blend)
    assert "dream_job " + job.job_id not in image.keys()  # an ended job leaves nothing in the saved file
    assert json.loads(scene.get("dream_pending_jobs", "{}")).get(job.job_id) is None
    jobs = set(session.jobs)
    bpy.ops.wm.open_mainfile(filepath=blend)  # no traceback, no job made from what is not a record of ours
    assert set(session.jobs) == jobs
    for each in bpy.data.scenes:  # records of jobs nobody knows are dropped, in the copy too
        assert "dream_pending_jobs" not in each.keys(), each.name
    assert copy_name in bpy.data.scenes


# ---------------------------------------------------------------- 2. materials are never orphaned

def three_material_cube():
    cube = bpy.data.objects["Cube"]
    cube.data.materials.clear()
    for name in ("Wood", "Metal", "Paint"):
        cube.data.materials.append(bpy.data.materials.new(name))
    cube.data.polygons.foreach_set("material_index", FACES_BEFORE)
    cube.active_material_index = 1
    return cube


FACES_BEFORE = [0, 0, 1, 1, 2, 2]  # two faces of wood, metal and paint each


def face_slots(obj):
    return [poly.material_index for poly in obj.data.polygons]


def slot_names(obj):
    return [slot.material.name if slot.material else "" for slot in obj.material_slots]


def test_generate_texture_adds_a_slot_and_keeps_the_users_material(scene, session, tmp_path):
    cube = three_material_cube()
    job = generate(session)
    assert job.state == "done", job.message
    names = slot_names(cube)
    assert names[:3] == ["Wood", "Metal", "Paint"] and names[3].startswith("Dream")
    assert cube.active_material_index == 3 and bpy.data.materials["Metal"].users >= 1
    assert face_slots(cube) == [0, 0, 3, 3, 2, 2]  # the metal faces show the result; Metal keeps its slot
    blend = tmp_path / "cube.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    script = (f"import bpy\nbpy.ops.wm.open_mainfile(filepath={str(blend)!r})\n"
              "print('SLOTS', [s.material.name for s in bpy.data.objects['Cube'].material_slots])\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"SLOTS {names}" in run.stdout


def test_replace_active_slot_keeps_the_old_material_to_restore(scene, session):
    cube = three_material_cube()
    scene.dream.texture_target = "REPLACE_SLOT"
    job = generate(session)
    assert job.state == "done", job.message
    assert slot_names(cube)[1].startswith("Dream") and len(cube.material_slots) == 3
    assert face_slots(cube) == FACES_BEFORE
    metal = bpy.data.materials["Metal"]
    assert metal.use_fake_user  # kept in the file although no slot uses it
    assert bpy.ops.dream.restore_material() == {"FINISHED"}
    assert slot_names(cube)[1] == "Metal" and not metal.use_fake_user


def test_image_only_leaves_the_materials_alone(scene, session):
    cube = three_material_cube()
    materials = set(bpy.data.materials.keys())
    scene.dream.texture_target = "IMAGE_ONLY"
    job = generate(session)
    assert job.state == "done", job.message
    assert slot_names(cube) == ["Wood", "Metal", "Paint"] and set(bpy.data.materials.keys()) == materials
    assert face_slots(cube) == FACES_BEFORE
    assert bpy.data.images[job.image_name].packed_file is not None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("refusal", ["backend_down", "unknown_model", "empty_prompt", "cancel"])
def test_a_refused_or_cancelled_generate_leaves_no_new_material_or_image(scene, session, prefs, refusal):
    cube = three_material_cube()
    materials, images = set(bpy.data.materials.keys()), set(bpy.data.images.keys())
    saved = session.backend, prefs.host, prefs.port, prefs.token
    try:
        if refusal == "backend_down":
            session.backend = None
            prefs.port = free_port()
            session.connect(prefs)
        elif refusal == "unknown_model":  # sizes the backend refuses cannot be typed any more (test_artist)
            scene.dream.use_model_ensemble = True
            for name in ("tiny", "no-such-model"):
                scene.dream.ensemble_models.add().name = name
        elif refusal == "empty_prompt":
            scene.dream.prompt = ""
        if refusal == "cancel":
            scene.dream.steps = 200
            job = new_job(session, bpy.ops.dream.generate_texture)
            assert bpy.ops.dream.cancel() == {"FINISHED"}
            assert session.wait_for(job.job_id, 60).state == "cancelled", job.message
        else:
            try:
                job = generate(session, timeout=60)
                assert job.state == "error", job.message
            except RuntimeError:  # refused by the panel before a job was made: as good
                pass
    finally:
        session.backend, prefs.host, prefs.port, prefs.token = saved
        if refusal == "backend_down":
            session.connect(prefs)
    assert set(bpy.data.materials.keys()) == materials and set(bpy.data.images.keys()) == images
    assert slot_names(cube) == ["Wood", "Metal", "Paint"] and cube.active_material_index == 1
    assert face_slots(cube) == FACES_BEFORE


def test_walk_to_texture_keeps_the_users_material(scene, session):
    cube = three_material_cube()
    walk = scene.dream_walk
    walk.kind, walk.frames, walk.batch_size, walk.target = "circular", 2, 2, "TEXTURE"
    scene.dream.steps = 2
    job = session.wait_for(new_job(session, bpy.ops.dream.walk).job_id, 120)
    assert job.state == "done", job.message
    names = slot_names(cube)
    assert names[:3] == ["Wood", "Metal", "Paint"] and names[3] == job.walk_target["image"]


# ---------------------------------------------------------------- 3. every other ending restores

@pytest.mark.parametrize("ending", ["stop", "kill"])
def test_stop_or_backend_death_during_replace_restores_the_image(scene, session, backend_back, ending):
    job, image, before = running_replace_job(scene, session)
    if ending == "stop":
        bpy.ops.dream.backend_stop()
    else:
        os.kill(backend_back.pid, signal.SIGKILL)
        wait_until(session, lambda: not job.active, what="the lost connection")
    assert not job.active, job.message
    np.testing.assert_array_equal(pixels(image), before)


# ---------------------------------------------------------------- 4. reconnect, start

def test_reconnect_during_a_job_still_delivers_its_result(scene, session, prefs):
    scene.dream.steps, scene.dream.preview_interval = 30, 0.0
    job = new_job(session, bpy.ops.dream.generate_texture)
    wait_until(session, lambda: job.step >= 1 or not job.active, what="the first step")
    assert job.active and job.step < 30
    assert bpy.ops.dream.backend_reconnect() == {"FINISHED"}
    session.wait_for(job.job_id, 120)
    assert job.state == "done", job.message
    # Fetched in the output it was submitted with: a byte image gets sRGB (it came back linear: too dark).
    stored = np.load(Path(prefs.output_dir) / job.job_id / "result.npy")[::-1]
    np.testing.assert_allclose(pixels(bpy.data.images[job.image_name])[..., :3], stored, atol=0.5 / 255)


def test_generate_while_the_backend_starts_waits_for_it(scene, session, backend_back):
    assert bpy.ops.dream.backend_stop() == {"FINISHED"}
    assert bpy.ops.dream.backend_start() == {"FINISHED"}
    session.drain()
    assert "not running" not in session.status, session.status
    job = new_job(session, bpy.ops.dream.generate_texture)
    assert job.active and job.progress_text() == "Starting backend…"
    session.drain()
    assert "not running" not in session.status, session.status
    session.wait_for(job.job_id, 120)
    assert job.state == "done", job.message


# ---------------------------------------------------------------- 5. nothing stays "Submitting"

def test_an_image_over_the_backend_maximum_is_refused_clearly(scene, session):
    image = bpy.data.images.new("wide", 2100, 16)
    images = set(bpy.data.images.keys())
    with image_editor(image), pytest.raises(RuntimeError, match="at most 2048"):
        bpy.ops.dream.img2img()
    assert set(bpy.data.images.keys()) == images


def test_an_error_without_job_id_reaches_the_job_being_submitted(scene, session, prefs):
    """A frame the backend rejects before reading its JSON (array over the size limit)."""
    params, arrays = addon("job_builder").scene_params(scene.dream)
    params.update(width=64, height=64, strength=0.5)
    arrays["init_image"] = np.zeros((2104, 16, 3), np.uint8)
    job = session.submit(prefs, params, "", arrays, kind="img2img")
    session.wait_for(job.job_id, 30)
    assert job.state == "error" and "arrays[0].shape" in job.message, job.message


def test_a_job_never_stays_active_without_a_live_connection(scene, session, prefs):
    scene.dream.steps = 30
    job = new_job(session, bpy.ops.dream.generate_texture)
    wait_until(session, lambda: job.state == "running", what="the job to start")
    worker = session.worker
    worker.stop()  # the worker ends without a word (as if its thread had died)
    worker.thread.join(10)
    wait_until(session, lambda: not job.active, 30, what="the job to notice")
    assert job.state == "lost", job.message
    session.connect(prefs)  # fetched again by id on the next connection
    session.wait_for(job.job_id, 120)
    assert job.state == "done", job.message


def test_walk_frames_made_while_disconnected_reach_the_strip_in_order(scene, session, prefs):
    walk = scene.dream_walk
    walk.kind, walk.frames, walk.batch_size, walk.target = "circular", 6, 2, "SEQUENCER"
    scene.dream.steps = 8
    job = new_job(session, bpy.ops.dream.walk)
    wait_until(session, lambda: job.walk_target.get("placed") or not job.active, what="the first frames")
    worker = session.worker
    worker.stop()  # the add-on hears nothing while the backend goes on
    worker.thread.join(10)
    folder = Path(prefs.output_dir) / job.job_id
    wait_until(session, lambda: (folder / "frame_000004.png").is_file(), 120, what="frames made meanwhile")
    session.connect(prefs)
    session.wait_for(job.job_id, 120)
    assert job.state == "done", job.message
    strip = strips_of(scene.sequence_editor)[job.walk_target["strip"]]
    assert [e.filename for e in strip.elements] == [f"frame_{i:06d}.png" for i in range(1, 7)]


# ---------------------------------------------------------------- 6. renaming the scene

def test_renaming_the_scene_during_a_walk_keeps_frames_arriving(scene, session):
    walk = scene.dream_walk
    walk.kind, walk.frames, walk.batch_size, walk.target = "circular", 6, 2, "SEQUENCER"
    scene.dream.steps = 25
    job = new_job(session, bpy.ops.dream.walk)
    wait_until(session, lambda: job.walk_target.get("placed") or not job.active, what="the first frames")
    assert job.active and len(job.walk_target["placed"]) < 6
    scene.name = "Renamed while walking"
    session.wait_for(job.job_id, 120)
    assert job.state == "done", job.message
    strip = strips_of(scene.sequence_editor)[job.walk_target["strip"]]
    assert len(strip.elements) == 6 and len(scene.dream_history) == 1
