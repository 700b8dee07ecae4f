"""Single-file checkpoints: our own models converted to the A1111 layout load back offline, pixel for pixel."""

import json
import shutil

import pytest
import torch

from generator_backend.checkpoint_convert import save_single_file
from generator_backend.core import GenerationRequest, generate
from generator_backend.model_library import ModelLibrary, detect_tensors, read_safetensors_header
from generator_backend.models import POCKET_DIR, ModelLoadError, ModelManager
from generator_backend.single_file import CONFIGS_DIR, SingleFileError, load_state_dict


@pytest.fixture(scope="module")
def folder(tmp_path_factory, models_dir):
    """A models folder holding the tiny models as single files (and the 9-channel one)."""
    root = tmp_path_factory.mktemp("library")
    save_single_file(models_dir / "tiny", root / "tiny-file.safetensors")
    (root / "inpainting").mkdir()
    save_single_file(models_dir / "tiny-inpaint", root / "inpainting" / "tiny-9.safetensors")
    return root


def request(**kw):
    return GenerationRequest(**{"prompt": "red bricks", "seed": 3, "steps": 4, "width": 64, "height": 64, **kw})


def test_a_converted_tiny_model_loads_back_with_the_same_pixels(folder, models_dir):
    manager = ModelManager(["tiny"], device="cpu", models_dir=folder)
    assert "tiny-file" in manager.sources and manager.sources["tiny-file"].endswith("tiny-file.safetensors")
    single, plain = manager.get("tiny-file"), ModelManager(["tiny"], device="cpu", models_dir=models_dir).get()
    for part in ("unet", "vae", "text_encoder"):
        a, b = getattr(single, part).state_dict(), getattr(plain, part).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    assert torch.equal(generate(single, request()), generate(plain, request()))  # exact: the same weights
    # Same latent space as the folder it came from: ensembling and the latent codec accept them together.
    assert manager.family("tiny-file") == manager.family("tiny")


def test_an_inpainting_single_file_keeps_its_nine_channels(folder, models_dir, inpaint_pipe):
    manager = ModelManager(["tiny"], device="cpu", models_dir=folder)
    entry = manager.library.get("inpainting/tiny-9")
    assert (entry.type, entry.family, entry.kind, entry.architecture) == ("checkpoint", "sd1", "inpaint", "tiny")
    unet = manager.get("inpainting/tiny-9").unet
    assert unet.config.in_channels == 9
    assert all(torch.equal(a, b) for a, b in zip(unet.state_dict().values(), inpaint_pipe.unet.state_dict().values()))


def test_the_listing_detects_from_the_header_only(folder):
    tensors = read_safetensors_header(folder / "tiny-file.safetensors")
    assert detect_tensors(tensors)["type"] == "checkpoint"
    library = ModelLibrary(folder)
    library.scan()
    listing = {e["name"]: e for e in library.listing()["checkpoints"]}
    assert listing["tiny-file"]["family"] == "sd1" and listing["tiny-file"]["kind"] == "txt2img"
    assert listing["tiny-file"]["format"] == "safetensors" and "path" not in listing["tiny-file"]


def test_family_override_changes_the_prediction_type(folder):
    plain = ModelManager(["tiny"], device="cpu", models_dir=folder)
    forced = ModelManager(["tiny"], device="cpu", models_dir=folder, overrides={"tiny-file": ("sd2", None)})
    entry = forced.library.get("tiny-file")
    assert (entry.family, entry.detected_family) == ("sd2", "sd1")
    assert forced.get("tiny-file").scheduler.config.prediction_type == "v_prediction"
    assert plain.get("tiny-file").scheduler.config.prediction_type == "epsilon"
    assert not torch.equal(generate(forced.get("tiny-file"), request()), generate(plain.get("tiny-file"), request()))


def test_a_weights_only_ckpt_loads_and_a_pickle_with_code_is_refused(folder, tmp_path, models_dir):
    state = load_state_dict(folder / "tiny-file.safetensors")
    torch.save({"state_dict": state}, tmp_path / "plain.ckpt")
    manager = ModelManager(["tiny"], device="cpu", models_dir=tmp_path)
    assert torch.equal(generate(manager.get("plain"), request()),
                       generate(ModelManager(["tiny"], device="cpu", models_dir=models_dir).get(), request()))

    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"state_dict": state, "x": Payload()}, tmp_path / "evil.ckpt")
    manager.rescan()
    with pytest.raises(ModelLoadError, match="refused"):
        manager.get("evil")
    assert not marker.exists()  # the unpickler never called open()


def test_a_lora_is_not_a_checkpoint(tmp_path):
    from safetensors.torch import save_file

    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 32)},
              str(tmp_path / "x.safetensors"))
    with pytest.raises(SingleFileError, match="not a checkpoint"):
        from generator_backend.single_file import load_pipeline
        load_pipeline(tmp_path / "x.safetensors", torch.float32)


def test_pocket_converts_and_loads_back(tmp_path):
    save_single_file(POCKET_DIR, tmp_path / "pocket-file.safetensors")
    manager = ModelManager(["pocket"], device="cpu", models_dir=tmp_path)
    assert manager.library.get("pocket-file").architecture == "pocket"
    assert torch.equal(generate(manager.get("pocket-file"), request()), generate(manager.get("pocket"), request()))


def test_a_model_with_a_tiny_vae_is_refused_by_name(tmp_path):
    """The single-file layout has an AutoencoderKL's keys only (a distilled pocket model has a tiny VAE)."""
    from generator_backend.pocket_train import build_tiny_vae

    folder = tmp_path / "distilled"
    shutil.copytree(POCKET_DIR, folder, ignore=shutil.ignore_patterns("vae"))
    build_tiny_vae(0).save_pretrained(folder / "vae")
    with pytest.raises(ValueError, match="VAE is an AutoencoderTiny; the single-file layout holds an AutoencoderKL"):
        save_single_file(folder, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("architecture,family", [("sd15", "sd1"), ("sd2", "sd2"), ("sdxl", "sdxl")])
def test_the_shipped_configurations_match_the_real_architectures(tmp_path, architecture, family):
    """Each shipped config folder builds (on the meta device) the parameter count of the real model,
    and a header with its tensors' names and shapes is detected as that family and architecture."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from generator_backend.checkpoint_convert import UNET_PREFIX, unet_key

    config = CONFIGS_DIR / architecture
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config / "vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(config / "text_encoder"))
    millions = [round(sum(p.numel() for p in m.parameters()) / 1e6, 2) for m in (unet, vae, text)]
    assert millions == {"sd15": [859.52, 83.65, 123.06], "sd2": [865.91, 83.65, 340.39],
                        "sdxl": [2567.46, 83.65, 123.06]}[architecture]
    up = list(unet.config.up_block_types)
    tensors = {UNET_PREFIX + unet_key(k, unet.config.layers_per_block, lambda i: "CrossAttn" in up[i]):
               ("F32", tuple(p.shape)) for k, p in unet.state_dict().items()}
    tensors[{"sd1": "cond_stage_model.transformer.text_model.final_layer_norm.weight",
             "sd2": "cond_stage_model.model.ln_final.weight",
             "sdxl": "conditioner.embedders.1.model.ln_final.weight"}[family]] = ("F32", (1,))
    found = detect_tensors(tensors)
    assert (found["type"], found["family"], found["kind"], found["architecture"]) == \
        ("checkpoint", family, "txt2img", architecture)
    header = json.dumps({k: {"dtype": d, "shape": list(s), "data_offsets": [0, 0]} for k, (d, s) in tensors.items()})
    path = tmp_path / f"{architecture}.safetensors"  # a header alone: the listing reads nothing else
    path.write_bytes(len(header).to_bytes(8, "little") + header.encode())
    entry = ModelLibrary(tmp_path).scan()[architecture]
    assert (entry.family, entry.kind, entry.architecture) == (family, "txt2img", architecture)
