"""The add-on in real bpy against a real backend process."""

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import bpy
import numpy as np
import pytest

from dream_addon import protocol
from tests.blender.helpers import MODULE, REPO, addon, generate, pixels


def start_long_job(scene, session):
    """Generate with 200 steps and drain until the backend has done the first one."""
    scene.dream.steps = 200
    before = set(session.jobs)
    bpy.ops.dream.generate_texture()
    (job_id,) = set(session.jobs) - before
    job = session.jobs[job_id]
    deadline = time.monotonic() + 60
    while not (job.state == "running" and job.step >= 1):
        assert job.active and time.monotonic() < deadline, job.message
        session.drain(timeout=1.0)
    return job


def test_generate_texture_onto_object_survives_save_and_reopen(scene, session, tmp_path):
    scene.dream.width, scene.dream.height = 128, 64
    job = generate(session)
    assert job.state == "done", job.message
    image = bpy.data.images[job.image_name]
    assert tuple(image.size) == (128, 64)
    assert image.use_fake_user and image.packed_file is not None and image.alpha_mode == "CHANNEL_PACKED"
    material = bpy.data.objects["Cube"].active_material
    assert material.name.startswith("Dream") and any(
        n.type == "TEX_IMAGE" and n.image == image for n in material.node_tree.nodes)
    # The pixels are the backend's saved sRGB result in 8 bits, flipped to Blender's row order.
    result_dir = Path(session.welcome and bpy.context.preferences.addons[MODULE].preferences.output_dir) / job.job_id
    stored = np.load(result_dir / "result.npy")
    got = pixels(image)
    np.testing.assert_allclose(got[::-1, :, :3], stored, atol=0.5 / 255 + 1e-6)
    assert np.all(got[..., 3] == 1)

    blend = tmp_path / "scene.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    np.save(tmp_path / "before.npy", got)
    script = (f"import bpy, numpy as np\nbpy.ops.wm.open_mainfile(filepath={str(blend)!r})\n"
              f"img = bpy.data.images[{job.image_name!r}]\n"
              "out = np.empty(img.size[0] * img.size[1] * 4, np.float32)\nimg.pixels.foreach_get(out)\n"
              f"np.save({str(tmp_path / 'after.npy')!r}, out.reshape(img.size[1], img.size[0], 4))\n"
              "print('MAT', bpy.data.objects['Cube'].active_material.name)\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert f"MAT {material.name}" in run.stdout
    np.testing.assert_array_equal(np.load(tmp_path / "after.npy"), got)


def test_previews_update_the_image_while_generating(scene, session):
    scene.dream.steps, scene.dream.preview_interval = 12, 0.001
    job = generate(session)
    assert job.state == "done" and job.previews >= 1


def test_image_editor_generate_shows_image_without_material(scene, session):
    window = bpy.context.window_manager.windows[0]
    area = window.screen.areas[0]
    area.type = "IMAGE_EDITOR"
    with bpy.context.temp_override(window=window, area=area, region=area.regions[-1]):
        before = set(session.jobs)
        assert bpy.ops.dream.generate_texture() == {"FINISHED"}
        (job_id,) = set(session.jobs) - before
        image_name = session.jobs[job_id].image_name
        assert area.spaces.active.image.name == image_name
    assert session.wait_for(job_id).state == "done"
    assert bpy.data.objects["Cube"].active_material is None or not bpy.data.objects[
        "Cube"].active_material.name.startswith("Dream")


def test_cancel_stops_the_backend_job(scene, session):
    job = start_long_job(scene, session)
    job_id = job.job_id
    assert bpy.ops.dream.cancel() == {"FINISHED"}
    session.wait_for(job_id)
    assert job.state == "cancelled" and job.step < 200
    assert not bpy.ops.dream.cancel.poll()  # nothing left to cancel


def test_seed_and_random_seed(scene, session):
    scene.dream.seed = 7
    first = generate(session)
    second = generate(session)
    assert first.params["seed"] == second.params["seed"] == 7
    np.testing.assert_array_equal(pixels(bpy.data.images[first.image_name]),
                                  pixels(bpy.data.images[second.image_name]))
    scene.dream.randomize_seed = True
    third = generate(session)
    assert third.params["seed"] == scene.dream.seed
    bpy.ops.dream.randomize_seed()
    assert scene.dream.seed != third.params["seed"]


def test_layout_pass_changes_the_texture(scene, session):
    """Sent with Generate Texture (the other kinds start from an image); on and off differ."""
    results = {}
    for layout in ("on", "off", "on"):
        scene.dream.layout = layout
        job = generate(session)
        assert job.state == "done" and job.params["layout"] == layout, job.message
        pixels_now = pixels(bpy.data.images[job.image_name])
        if layout in results:  # the same setting and seed: the same pixels
            np.testing.assert_array_equal(pixels_now, results[layout])
        results[layout] = pixels_now
    assert np.abs(results["on"] - results["off"]).max() > 0.05
    assert "layout" not in addon("job_builder").scene_params(scene.dream)[0]


def test_every_panel_property_changes_the_request(scene):
    """Each property the panels show changes what is sent (conditional ones under their condition)."""
    scene_params = addon("job_builder").scene_params
    props = scene.dream
    props.extra_prompts.add().text = "blue waves"  # makes the ensemble controls live
    props.infusion_images.add().image = bpy.data.images.new("bias", 64, 64)
    props.use_model_ensemble = True
    for name in ("tiny", "tiny"):
        props.ensemble_models.add().name = name
    changes = {"prompt": "green moss", "negative_prompt": "blurry", "seed": 99, "steps": 9, "guidance": 3.0,
               "width": 128, "height": 256, "scheduler": "ddim", "preview_interval": 2.0, "model": "tiny",
               "prompt_weight": 0.3, "ensemble_mode": "embedding", "seamless_x": True, "seamless_y": True,
               "infusion_down": 0.9, "infusion_mid": 0.1, "infusion_up": 0.7, "infusion_decay": 0.5,
               "infusion_cond_only": True, "use_model_ensemble": False}
    txt2img_props = {"layout"}  # Generate Texture only: see test_layout_pass_changes_the_texture
    image_tool_props = {"strength", "feather", "uv_margin", "mask_source", "mask_image", "rect_min", "rect_max",
                        "result_target"}  # covered by the image-tool tests below
    shown = {name for name in type(props).__annotations__ if not name.endswith("_index")}
    collections = {"extra_prompts", "infusion_images", "ensemble_models"}
    placement = {"texture_target"}  # where the result goes, not what is sent: see test_safety.py
    assert shown - txt2img_props - image_tool_props - collections - placement - {"randomize_seed"} == set(changes)
    base = scene_params(props)
    for name, value in changes.items():
        old = getattr(props, name)
        setattr(props, name, value)
        changed = scene_params(props)
        setattr(props, name, old)
        assert changed != base, name
    props.extra_prompts[0].weight = -0.5
    assert scene_params(props)[0]["prompts"][1]["weight"] == -0.5
    props.ensemble_models[1].weight = 0.2
    assert scene_params(props)[0]["models"][1]["weight"] == pytest.approx(0.2)


def test_validation_error_from_the_backend_is_shown(scene, session):
    props = scene.dream  # sizes the backend refuses cannot be typed (test_artist); unknown models can
    props.use_model_ensemble = True
    for name in ("tiny", "no-such-model"):
        props.ensemble_models.add().name = name
    job = generate(session)
    assert job.state == "error"
    assert job.message.startswith("Invalid setting: params.models[1].name 'no-such-model' is not served here")


@pytest.fixture
def detached(session, prefs):
    """Point the add-on at an address of the test's choosing, away from the managed backend."""
    saved = session.backend, prefs.host, prefs.port, prefs.token
    session.backend = None
    yield prefs
    session.backend, prefs.host, prefs.port, prefs.token = saved
    session.connect(prefs)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_backend_not_running_message(scene, session, detached):
    detached.port = free_port()
    session.connect(detached)
    job = generate(session)
    assert job.state == "error"
    assert job.message.startswith(f"Backend not running at 127.0.0.1:{detached.port}")


def test_wrong_token_message(scene, session, detached, backend):
    detached.port, detached.token = backend.ready_info["port"], "wrong-token"
    session.connect(detached)
    job = generate(session)
    assert job.state == "error" and "refused the token" in job.message


@pytest.mark.parametrize("first_handshake_done", [False, True], ids=["submit-during-handshake", "submit-after"])
def test_protocol_version_mismatch_message(scene, session, detached, first_handshake_done):
    """A backend of another release: it answers every hello with a version-2 frame.

    It must answer every connection, as a real backend does: when the first handshake has
    already failed by the time the operator submits, the session connects again.
    """
    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:  # the listener was closed: the test is over
                return
            with conn:
                protocol.recv_frame(conn)
                body = json.dumps({"type": "welcome", "protocol": 2}).encode()
                conn.sendall(struct.pack("!4sHHIQ", b"DREM", 2, 0, len(body), 0) + body)
                conn.recv(1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    detached.port = listener.getsockname()[1]
    session.connect(detached)
    if first_handshake_done:  # the operator then finds a dead worker and connects again
        session.worker.thread.join(timeout=30)
        assert not session.worker.thread.is_alive()
    job = generate(session)
    listener.close()
    assert job.state == "error" and job.message.startswith("Protocol version mismatch")


def test_backend_killed_mid_job_gives_clear_error_then_recovers(scene, session, backend):
    job = start_long_job(scene, session)
    job_id = job.job_id
    old_pid = backend.pid
    os.kill(old_pid, signal.SIGKILL)
    session.wait_for(job_id)
    assert job.state == "lost" and job.message.startswith("Lost the connection to the backend")
    # The supervisor restarts the backend; the add-on reconnects and asks for the job by id.
    deadline = time.monotonic() + 120
    while job.state != "error" and time.monotonic() < deadline:
        session.drain(timeout=0.5)
    assert backend.pid != old_pid and backend.restarts == 1
    assert "stopped before this job finished" in job.message
    scene.dream.steps = 3
    assert generate(session).state == "done"  # nothing is left frozen


def test_extension_zip_installs_in_a_fresh_blender(tmp_path):
    script = f"""
import os, sys
sys.path.insert(0, {str(REPO / 'scripts')!r})
import blender_session, bpy
zip_path = blender_session.build_extension_zip({str(tmp_path)!r})
module = blender_session.install_zip(zip_path)
assert module in bpy.context.preferences.addons, module
assert hasattr(bpy.types.Scene, "dream")
assert "DREAM_OT_generate_texture" in dir(bpy.types)
print("INSTALLED", os.path.basename(zip_path))
"""
    env = dict(os.environ, BLENDER_USER_RESOURCES=str(tmp_path / "user"))
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "INSTALLED dream-0.1.0.zip" in run.stdout
