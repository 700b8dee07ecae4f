"""An SDXL single file in Blender: dropped into the models folder, picked from the Model menu after a Rescan,
it generates the pictures of the SDXL folder it was written from; a depth model is refused naming its input."""

import shutil
from pathlib import Path

import bpy
import numpy as np
import pytest

from tests.blender.helpers import addon, generate
from tests.blender.test_models import backend_python, drain_until, result_pixels

WRITE = """
import os, shutil, torch
from pathlib import Path
from safetensors.torch import save_file
from generator_backend.checkpoint_convert import UNET_PREFIX, save_single_file
from generator_backend.single_file import load_state_dict
from generator_backend.tiny_xl import ensure_tiny_xl_model
root = Path({root!r})
shutil.copytree(ensure_tiny_xl_model(os.environ.get("DREAM_MODELS_DIR") or None, "tiny-xl"), root / "tiny-xl")
save_single_file(root / "tiny-xl", root / "xl-dropped.safetensors")
save_single_file(root / "tiny", root / "depth-dropped.safetensors")
state = load_state_dict(root / "depth-dropped.safetensors")
weight = state[UNET_PREFIX + "input_blocks.0.0.weight"]
state[UNET_PREFIX + "input_blocks.0.0.weight"] = torch.cat([weight, weight[:, :1]], dim=1)  # latents + depth
save_file(state, str(root / "depth-dropped.safetensors"))
"""


@pytest.fixture(scope="module")
def dropped(backend, session, prefs):
    """The models folder with the tiny SDXL model as a folder and as an SGM-layout single file, and a depth
    model, listed after a Rescan; all gone again afterwards."""
    root = Path(prefs.models_dir)
    backend_python(WRITE.format(root=str(root)))
    session.ensure_connected(prefs)
    assert drain_until(session, lambda: session.welcome is not None), session.status
    assert bpy.ops.dream.rescan_models() == {"FINISHED"}
    assert drain_until(session, lambda: "xl-dropped" in menu())
    yield root
    shutil.rmtree(root / "tiny-xl")
    for name in ("xl-dropped", "depth-dropped"):
        (root / f"{name}.safetensors").unlink()
    bpy.ops.dream.rescan_models()
    assert drain_until(session, lambda: "xl-dropped" not in menu())


def menu():
    """What the Model menu offers: {name: (label, description)}, from the welcome, as Blender asks for them."""
    scene = bpy.context.scene
    return {item[0]: item[1:] for item in addon("properties").model_items(scene.dream, bpy.context)}


def test_an_sdxl_single_file_is_picked_from_the_menu_and_generates(dropped, scene, session):
    assert menu()["xl-dropped"][0] == "xl-dropped (sdxl, txt2img)"
    scene.dream.seed = 7
    scene.dream.model = "tiny"
    sd = result_pixels(session, generate(session))
    scene.dream.model = "xl-dropped"
    single = result_pixels(session, generate(session))
    scene.dream.model = "tiny-xl"
    folder = result_pixels(session, generate(session))
    # The same weights (bit-identical, tests/backend/test_single_file_xl.py); the folder's are mmap'd at other
    # addresses, which changes CPU matmul rounding by about 2e-7, so the pixels agree within 1e-5, not bit for bit.
    np.testing.assert_allclose(single, folder, atol=1e-5, rtol=0)
    assert np.abs(single - sd).max() > 0.05 and single.std() > 0.01  # an SDXL picture, not the SD model's


def test_a_depth_model_says_what_it_needs_in_the_menu_and_at_generate(dropped, scene, session):
    label, description = menu()["depth-dropped"]
    assert label == "depth-dropped (sd1, depth)" and "depth map" in description
    scene.dream.model = "depth-dropped"
    jobs, images = set(session.jobs), set(bpy.data.images.keys())
    with pytest.raises(RuntimeError, match="The Model 'depth-dropped' is a depth-conditioned model .* the depth "
                                           "map input it needs"):
        bpy.ops.dream.generate_texture()
    assert set(session.jobs) == jobs and set(bpy.data.images.keys()) == images  # nothing was made
