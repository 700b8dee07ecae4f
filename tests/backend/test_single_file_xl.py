"""SDXL and SD 2.x (OpenCLIP) single files, the shipped CLIP tokenizer, and depth models refused clearly.

Our tiny SDXL model written in the SGM / A1111 layout (CLIP-L ``conditioner.embedders.0.transformer.*``,
OpenCLIP ``conditioner.embedders.1.model.*``) and a tiny SD 2-shaped one in the OpenCLIP layout
(``cond_stage_model.model.*``) load back offline: the same weights and the same pixels as their folders."""

import json

import numpy as np
import pytest
import torch

from dream_addon import protocol
from generator_backend.checkpoint_convert import save_single_file, to_single_file
from generator_backend.core import GenerationRequest, generate
from generator_backend.jobs import Job, JobQueue, JobStore
from generator_backend.model_library import ModelLibrary, read_safetensors_header
from generator_backend.models import ModelLoadError, ModelManager
from generator_backend.runner import Worker
from generator_backend.sdxl import is_xl
from generator_backend.single_file import SingleFileError, load_pipeline
from generator_backend.tiny_sd2 import ensure_tiny_sd2_model
from generator_backend.tiny_xl import ensure_tiny_xl_model

PARTS = ("unet", "vae", "text_encoder", "text_encoder_2")


@pytest.fixture(scope="module")
def folders(models_dir):
    return {"xl": ensure_tiny_xl_model(models_dir, "tiny-xl"), "sd2": ensure_tiny_sd2_model(models_dir)}


@pytest.fixture(scope="module")
def library(tmp_path_factory, folders):
    """A models folder holding the tiny SDXL model as an SGM-layout file and the tiny SD 2 one as an
    OpenCLIP-layout file."""
    root = tmp_path_factory.mktemp("library")
    save_single_file(folders["xl"], root / "xl-file.safetensors")
    save_single_file(folders["sd2"], root / "sd2-file.safetensors", text_layout="openclip")
    return root


@pytest.fixture(scope="module")
def manager(library, folders):
    return ModelManager([f"tiny-xl={folders['xl']}", f"tiny-sd2={folders['sd2']}"], device="cpu",
                        models_dir=library)


def aligned(components):
    """The components with every parameter in a fresh allocation: a weight mmap'd from a folder's safetensors
    sits at an unaligned address, which changes CPU matmul rounding (about 2e-7) though its values are equal."""
    for module in filter(None, (getattr(components, part, None) for part in PARTS)):
        for p in module.parameters():
            p.data = p.data.clone()
    return components


def request(**kw):
    return GenerationRequest(**{"prompt": "red bricks", "negative_prompt": "blue", "seed": 3, "steps": 4,
                                "width": 64, "height": 64, **kw})


def same_weights(a, b, parts):
    for part in parts:
        x, y = getattr(a, part).state_dict(), getattr(b, part).state_dict()
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), part


def test_the_sgm_layout_names_both_text_encoders(library):
    keys = list(read_safetensors_header(library / "xl-file.safetensors"))
    assert any(k.startswith("conditioner.embedders.0.transformer.text_model.encoder.layers.") for k in keys)
    assert "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight" in keys
    assert "conditioner.embedders.1.model.text_projection" in keys
    assert "model.diffusion_model.label_emb.0.0.weight" in keys  # the added (time + pooled) embedding
    assert not any(k.startswith("cond_stage_model.") for k in keys)


def test_an_sdxl_single_file_loads_back_with_the_same_pixels(manager, models_dir):
    single, folder = manager.get("xl-file"), aligned(manager.get("tiny-xl"))
    assert is_xl(single) and single.zero_empty_negative == folder.zero_empty_negative is True
    same_weights(single, folder, PARTS)
    for part in ("tokenizer", "tokenizer_2"):
        assert getattr(single, part)("red bricks", padding="max_length", max_length=77).input_ids == \
            getattr(folder, part)("red bricks", padding="max_length", max_length=77).input_ids
    assert single.tokenizer_2.pad_token == "!"
    for kw in ({}, {"negative_prompt": ""}, {"width": 96, "height": 64, "guidance": 4.0}):
        assert torch.equal(generate(single, request(**kw)), generate(folder, request(**kw))), kw
    built_in = ModelManager(["tiny-xl"], device="cpu", models_dir=models_dir)  # one latent space: ensembles
    assert manager.family("xl-file") == built_in.family("tiny-xl") == "tiny-xl/unet4"


def test_an_sdxl_inpainting_single_file_keeps_its_nine_channels(tmp_path, models_dir):
    save_single_file(ensure_tiny_xl_model(models_dir, "tiny-xl-inpaint"), tmp_path / "xl-9.safetensors")
    manager = ModelManager(["tiny-xl-inpaint"], device="cpu", models_dir=models_dir)
    pipe, found = load_pipeline(tmp_path / "xl-9.safetensors", torch.float32, models_dir=models_dir)
    assert (found["family"], found["kind"], pipe.unet.config.in_channels) == ("sdxl", "inpaint", 9)
    same_weights(pipe, manager.get(), PARTS)


def test_the_models_folder_lists_it_as_sdxl(library):
    library_ = ModelLibrary(library)
    library_.scan()
    listing = {e["name"]: e for e in library_.listing()["checkpoints"]}
    assert (listing["xl-file"]["family"], listing["xl-file"]["kind"], listing["xl-file"]["architecture"]) == \
        ("sdxl", "txt2img", "tiny-xl")
    assert (listing["sd2-file"]["family"], listing["sd2-file"]["architecture"]) == ("sd2", "tiny-sd2")


def run_job(manager, tmp_path, kind, model, arrays=None, **params):
    params, arrays = protocol.validate_job(kind, {"prompt": "red bricks", "seed": 5, "steps": 3, "width": 64,
                                                  "height": 64, "model": model, **params}, arrays or {})
    store = JobStore(tmp_path / model)
    job = Job(f"{kind}-{model}", kind, params, arrays)
    Worker(JobQueue(), manager, store).execute(job)
    assert job.state == "done", job.error
    return store.load_image(job.job_id)


@pytest.mark.parametrize("kind", ["txt2img", "img2img"])
def test_txt2img_and_img2img_through_the_runner(manager, tmp_path, kind):
    aligned(manager.get("tiny-xl"))
    arrays = {"init_image": np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8)} \
        if kind == "img2img" else None
    extra = {"strength": 0.6} if kind == "img2img" else {}
    single = run_job(manager, tmp_path, kind, "xl-file", arrays, **extra)
    np.testing.assert_array_equal(single, run_job(manager, tmp_path, kind, "tiny-xl", arrays, **extra))
    assert single.std() > 0.01  # a picture, not a blank


def test_an_sd2_openclip_single_file_loads_back_with_the_same_pixels(manager, library):
    keys = list(read_safetensors_header(library / "sd2-file.safetensors"))
    assert "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight" in keys
    assert not any(k.startswith("cond_stage_model.transformer.") for k in keys)
    single, folder = manager.get("sd2-file"), aligned(manager.get("tiny-sd2"))
    assert single.scheduler.config.prediction_type == "v_prediction"  # the SD 2 family's, detected
    assert single.unet.config.use_linear_projection and single.text_encoder.config.hidden_act == "gelu"
    same_weights(single, folder, PARTS[:3])
    assert single.tokenizer.pad_token == "!"
    assert torch.equal(generate(single, request()), generate(folder, request()))


def test_the_openclip_layout_round_trips_through_diffusers_converter(folders):
    """Our writer is the inverse of diffusers' convert_open_clip_checkpoint, q/k/v packing included."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextModelWithProjection

    encoder = CLIPTextModelWithProjection.from_pretrained(folders["xl"], subfolder="text_encoder_2")
    from generator_backend.checkpoint_convert import XL_OPENCLIP_PREFIX, openclip_state

    back = convert_open_clip_checkpoint(encoder, openclip_state(encoder, XL_OPENCLIP_PREFIX), XL_OPENCLIP_PREFIX)
    state = encoder.state_dict()
    assert set(back) == set(state) - {"text_model.embeddings.position_ids"}
    assert all(torch.equal(back[k], state[k]) for k in back)


def test_sdxl_and_sd_files_cannot_be_loaded_as_each_other(library):
    with pytest.raises(SingleFileError, match="cannot load as sd1"):
        load_pipeline(library / "xl-file.safetensors", torch.float32, family="sd1")
    with pytest.raises(SingleFileError, match="cannot load as sdxl"):
        load_pipeline(library / "sd2-file.safetensors", torch.float32, family="sdxl")


def test_a_bad_text_layout_is_refused(folders):
    with pytest.raises(ValueError, match="text_layout"):
        to_single_file(None, None, None, text_layout="t5")


def test_a_real_depth_sd2_text_encoder_loads_beside_openclip_s_unused_last_block(tmp_path):
    """Real SD 2.x files hold all 24 OpenCLIP blocks and a text projection; SD 2 conditions on the
    penultimate, so the shipped config has 23 layers: the 23 load exactly, block 23 and the projection
    are left out. At SD 2's depth, at a narrow width. (Extra keys are dropped by diffusers whatever their
    names, so this checks that they do not disturb the 23 layers, not which list drops them.)"""
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextConfig, CLIPTextModel

    from generator_backend.checkpoint_convert import OPENCLIP_PREFIX, openclip_state
    from generator_backend.single_file import CONFIGS_DIR, text_state

    settings = json.loads((CONFIGS_DIR / "sd2" / "text_encoder" / "config.json").read_text())
    settings.update(hidden_size=64, intermediate_size=128, num_attention_heads=4)
    assert settings["num_hidden_layers"] == 23
    config = CLIPTextConfig(**settings)
    (tmp_path / "text_encoder").mkdir()
    config.save_pretrained(tmp_path / "text_encoder")
    torch.manual_seed(0)
    encoder = CLIPTextModel(config)
    state = openclip_state(encoder, OPENCLIP_PREFIX)
    block = f"{OPENCLIP_PREFIX}transformer.resblocks."
    state.update({k.replace(block + "22.", block + "23."): v + 1 for k, v in state.items()
                  if k.startswith(block + "22.")})  # the 24th block, unused
    state["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(1)  # other models' tensors are skipped
    loaded = create_diffusers_clip_model_from_ldm(CLIPTextModel, text_state(state, "cond_stage_model."),
                                                  subfolder="text_encoder", config=str(tmp_path),
                                                  local_files_only=True)
    a, b = loaded.state_dict(), encoder.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("architecture", ["sd2", "sdxl"])
def test_the_real_architectures_round_trip_through_diffusers_readers(architecture):
    """At full size, on the meta device: every tensor our writer names for the shipped SD 2 / SDXL configs
    (SDXL's 10-deep transformers, OpenCLIP bigG) comes back through diffusers' converters to the module's
    own name and shape, so real files, which those converters read, are in the layout we test with."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (convert_ldm_clip_checkpoint, convert_ldm_unet_checkpoint,
                                                     convert_ldm_vae_checkpoint, convert_open_clip_checkpoint)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from generator_backend.checkpoint_convert import OPENCLIP_PREFIX, XL_OPENCLIP_PREFIX
    from generator_backend.single_file import CONFIGS_DIR, text_state

    config = CONFIGS_DIR / architecture
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config / "unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config / "vae"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(config / "text_encoder"))
        text_2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(config / "text_encoder_2")) \
            if architecture == "sdxl" else None
    state = to_single_file(unet, vae, text, text_2, "openclip" if architecture == "sd2" else "clip")
    if architecture == "sdxl":
        back = {"unet": convert_ldm_unet_checkpoint(state, dict(unet.config)),
                "text": {k.removeprefix("text_model."): v for k, v in
                         convert_ldm_clip_checkpoint(text_state(state, "conditioner.embedders.0.")).items()},
                "text_2": convert_open_clip_checkpoint(text_2, text_state(state, "conditioner.embedders.1."),
                                                       XL_OPENCLIP_PREFIX)}
    else:
        back = {"unet": convert_ldm_unet_checkpoint(state, dict(unet.config)),
                "text": {k.removeprefix("text_model."): v for k, v in convert_open_clip_checkpoint(
                    text, text_state(state, "cond_stage_model."), OPENCLIP_PREFIX).items()}}
    back["vae"] = convert_ldm_vae_checkpoint(state, dict(vae.config))
    for part, module in (("unet", unet), ("vae", vae), ("text", text), ("text_2", text_2)):
        if module is None:
            continue
        own = {k: v for k, v in module.state_dict().items() if not k.endswith("position_ids")}
        assert set(back[part]) == set(own), (part, sorted(set(back[part]) ^ set(own))[:4])
        assert all(back[part][k].shape == own[k].shape for k in own), part
