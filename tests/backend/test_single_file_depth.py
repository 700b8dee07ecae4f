"""Depth checkpoints: detected and listed, refused with an error naming what is missing (a depth map input)
at submit, before anything is made, and at load."""

import sys

import pytest
import torch
from safetensors.torch import save_file

from generator_backend.checkpoint_convert import UNET_PREFIX, save_single_file
from generator_backend.model_library import ModelLibrary
from generator_backend.single_file import SingleFileError, load_pipeline, load_state_dict
from tests.backend.test_server import connect

SMALL = {"prompt": "red bricks", "steps": 2, "width": 64, "height": 64, "seed": 9, "preview_interval": 0}


@pytest.fixture(scope="module")
def folder(tmp_path_factory, models_dir):
    """A models folder with a depth model (the tiny model's file, its UNet taking 5 channels: latents + depth)
    and a diffusion upscaler (7: latents + a low-resolution image)."""
    root = tmp_path_factory.mktemp("depth")
    save_single_file(models_dir / "tiny", root / "tiny-file.safetensors")
    state = load_state_dict(root / "tiny-file.safetensors")
    weight = state[UNET_PREFIX + "input_blocks.0.0.weight"]
    for name, extra in (("depth-file", 1), ("upscaler-file", 3)):
        state[UNET_PREFIX + "input_blocks.0.0.weight"] = torch.cat([weight, weight[:, :extra]], dim=1)
        save_file(state, str(root / f"{name}.safetensors"))
    return root


@pytest.mark.parametrize("name,kind,why", [("depth-file", "depth", "depth map input"),
                                           ("upscaler-file", "upscaler", "Upscale panel")])
def test_refused_kinds_are_listed_with_why_and_refused_at_load(folder, name, kind, why):
    library = ModelLibrary(folder)
    library.scan()
    listing = {e["name"]: e for e in library.listing()["checkpoints"]}
    assert (listing[name]["kind"], listing[name]["family"]) == (kind, "sd1")
    assert why in listing[name]["note"] and "note" not in listing["tiny-file"]
    with pytest.raises(SingleFileError, match=why):
        load_pipeline(folder / f"{name}.safetensors", torch.float32)


def test_a_depth_model_is_refused_at_submit_naming_the_missing_input(folder, tmp_path):
    from dream_addon.supervisor import BackendProcess

    process = BackendProcess(sys.executable, 0, models=("tiny",), output_dir=tmp_path, device="cpu",
                             max_restarts=0, extra_args=["--models-dir", str(folder)])
    process.start()
    try:
        assert process.wait_ready(120), "\n".join(process.tail)
        conn = connect(process)
        conn.send({"type": "submit", "job_id": "depth-1", "params": dict(SMALL, model="depth-file")})
        message, _ = conn.recv()
        assert message["type"] == "error" and message["field"] == "params.model", message
        assert "depth map input" in message["message"] and message["job_id"] == "depth-1"
        assert "tiny-file" in message["allowed"] and not {"depth-file", "upscaler-file"} & set(message["allowed"])
        conn.send({"type": "status", "job_id": "depth-1"})
        assert conn.recv()[0].get("job") is None  # no job was made
        conn.close()
    finally:
        process.stop()
