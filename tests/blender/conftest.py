"""Fixtures: a real backend process on the tiny model, started through the add-on's own
Start operator, and a fresh default scene for each test."""

import os
import sys

import bpy
import pytest

from tests.blender.helpers import MODULE, addon, models_folder, write_compact_upscaler


@pytest.fixture(scope="session")
def session():
    return addon("session").SESSION


@pytest.fixture(scope="session")
def prefs():
    return bpy.context.preferences.addons[MODULE].preferences


@pytest.fixture(scope="session")
def backend(session, prefs, tmp_path_factory):
    # The backend needs torch; a Blender-only environment (the 4.2 LTS run) names another Python.
    prefs.python_path = os.environ.get("DREAM_BACKEND_PYTHON", sys.executable)
    prefs.port = 0
    prefs.device = "cpu"
    prefs.model = "tiny, tiny-b, tiny-inpaint, pocket"
    prefs.output_dir = str(tmp_path_factory.mktemp("outputs"))
    prefs.models_dir = models_folder(tmp_path_factory.mktemp("models"))  # test_models.py drops files in it
    prefs.upscalers = str(write_compact_upscaler(tmp_path_factory.mktemp("upscalers") / "rand-x2.safetensors"))
    assert bpy.ops.dream.backend_start() == {"FINISHED"}
    assert session.backend.wait_ready(120), "\n".join(session.backend.tail)
    session.drain()  # the ready event opens the connection
    yield session.backend
    bpy.ops.dream.backend_stop()


@pytest.fixture
def scene(backend, session):
    """A fresh default scene (cube, light, camera) with small, fast settings."""
    bpy.ops.wm.read_homefile(use_empty=False)
    for job_id in [j for j, job in session.jobs.items() if job.state == "detached"]:
        del session.jobs[job_id]  # an earlier test's file is gone for good: its jobs wait for nothing here
    props = bpy.context.scene.dream
    props.width, props.height, props.steps, props.preview_interval = 64, 64, 3, 0.0
    bpy.context.view_layer.objects.active = bpy.data.objects["Cube"]
    return bpy.context.scene
