"""The models folder in Blender: the Model menu after a Rescan, the LoRA list with weights, refusals.

The backend runs with a models folder (Preferences > Models Folder, set in conftest.py); files are made
in it by the backend's Python (torch never enters this process)."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import bpy
import numpy as np
import pytest

from tests.blender.helpers import REPO, addon, generate

BACKEND_PYTHON = os.environ.get("DREAM_BACKEND_PYTHON", sys.executable)


def backend_python(code: str):
    """Run ``code`` with the backend's Python (torch, diffusers) from the repository root."""
    done = subprocess.run([BACKEND_PYTHON, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), "TRANSFORMERS_VERBOSITY": "error"})
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.fixture(scope="module")
def folder(backend, session, prefs):
    """The backend's models folder (conftest.py) with one LoRA of the tiny model in it, listed."""
    root = Path(prefs.models_dir)
    backend_python(
        "from generator_backend.models import ModelManager\n"
        "from generator_backend.tiny_lora import build_lora\n"
        f"c = ModelManager(['tiny'], device='cpu', models_dir={str(root)!r}).get()\n"
        f"build_lora(c, {str(root / 'Lora' / 'bricks.safetensors')!r}, seed=4, scale=0.2, text_encoder=True)\n")
    session.ensure_connected(prefs)
    assert drain_until(session, lambda: session.welcome is not None), session.status
    assert bpy.ops.dream.rescan_models() == {"FINISHED"}
    assert drain_until(session, lambda: [e["name"] for e in session.welcome["library"]["loras"]] == ["Lora/bricks"])
    yield root
    shutil.rmtree(root / "Lora")
    bpy.ops.dream.rescan_models()
    drain_until(session, lambda: not session.welcome["library"]["loras"])


def drain_until(session, done, seconds=60):
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        session.drain(timeout=0.2)
    return done()


def result_pixels(session, job):
    assert job.state == "done", job.message
    image = bpy.data.images[job.image_name]
    out = np.empty(len(image.pixels), np.float32)
    image.pixels.foreach_get(out)
    return out


@pytest.fixture
def small(scene, folder):
    scene.dream.model = "tiny"
    scene.dream.seed = 11
    return scene


def test_a_file_dropped_into_the_folder_is_in_the_model_menu_after_a_rescan(small, session, folder, prefs):
    def labels():  # what the Model menu offers (its items come from the welcome, as Blender asks for them)
        return {item[0]: item[1] for item in addon("properties").model_items(small.dream, bpy.context)}

    assert "dropped" not in labels() and labels()["tiny-b"] == "tiny-b (sd1, txt2img)"
    backend_python("from generator_backend.checkpoint_convert import save_single_file\n"
                   f"save_single_file({str(folder / 'tiny')!r}, {str(folder / 'dropped.safetensors')!r})\n")
    try:
        assert bpy.ops.dream.rescan_models() == {"FINISHED"}
        assert drain_until(session, lambda: "dropped" in labels())
        assert labels()["dropped"] == "dropped (sd1, txt2img)"
        plain = result_pixels(session, generate(session))
        small.dream.model = "dropped"
        np.testing.assert_array_equal(result_pixels(session, generate(session)), plain)  # the same weights
        prefs.model_types = "dropped=sd2"  # the user says: a v-prediction SD 2 model
        assert bpy.ops.dream.rescan_models() == {"FINISHED"}
        assert drain_until(session, lambda: labels().get("dropped") == "dropped (sd2, txt2img)")
        assert not np.array_equal(result_pixels(session, generate(session)), plain)
    finally:
        prefs.model_types = ""
        (folder / "dropped.safetensors").unlink()
        bpy.ops.dream.rescan_models()
        assert drain_until(session, lambda: "dropped" not in labels())


def test_a_lora_with_a_weight_changes_the_result_and_weight_zero_is_none(small, session):
    plain = result_pixels(session, generate(session))
    assert bpy.ops.dream.list_add(collection="loras") == {"FINISHED"}
    item = small.dream_models.loras[0]
    assert (item.name, item.weight) == ("Lora/bricks", 1.0)  # the first listed LoRA, at the protocol's default
    with_lora = result_pixels(session, generate(session))
    assert np.abs(with_lora - plain).max() > 1e-3
    item.weight = 0.0
    np.testing.assert_array_equal(result_pixels(session, generate(session)), plain)
    item.weight = -1.0
    assert not np.array_equal(result_pixels(session, generate(session)), with_lora)
    assert bpy.ops.dream.list_remove(collection="loras") == {"FINISHED"} and len(small.dream_models.loras) == 0
    np.testing.assert_array_equal(result_pixels(session, generate(session)), plain)


def test_a_bad_lora_name_is_refused_before_anything_is_made(small, session):
    small.dream_models.loras.add().name = "Lora/nope"
    jobs, images = set(session.jobs), set(bpy.data.images.keys())
    with pytest.raises(RuntimeError, match=r"LoRA 1 \('Lora/nope'\) is not in the backend's models folder; "
                                           "it has: Lora/bricks"):
        bpy.ops.dream.generate_texture()
    assert set(session.jobs) == jobs and set(bpy.data.images.keys()) == images
    small.dream_models.loras[0].name = "tiny"  # a checkpoint is no LoRA
    with pytest.raises(RuntimeError, match="LoRA 1 .'tiny'. is not"):
        bpy.ops.dream.generate_texture()
    assert set(session.jobs) == jobs and set(bpy.data.images.keys()) == images



def test_start_passes_the_models_folder_and_model_types(prefs):
    args = addon("session").backend_model_args
    folder, types, upscalers = prefs.models_dir, prefs.model_types, prefs.upscalers
    try:
        prefs.model_types = "mine=sd2-base, other=sd1/inpaint,"
        assert args(prefs) == ["--models-dir", folder, "--model-type", "mine=sd2-base", "--model-type",
                               "other=sd1/inpaint", f"--upscaler={upscalers}"]
        prefs.models_dir, prefs.model_types, prefs.upscalers = "", "", ""
        assert args(prefs) == []
    finally:
        prefs.models_dir, prefs.model_types, prefs.upscalers = folder, types, upscalers
