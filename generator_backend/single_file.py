"""Single-file checkpoints (A1111 / Civitai layout) loaded offline through diffusers' from_single_file.

The file holds weights only; the configurations come from the folders shipped in
generator_backend/model_configs (sd15, sd2, sdxl) or from the project's own models (pocket, tiny),
chosen by the architecture detected from the tensors. ``.ckpt`` files are read with a weights-only
unpickler and refused when they hold anything but tensors. The tokenizer's vocabulary is not in
any checkpoint and cannot be downloaded here: it is looked for where ``tokenizer_folder`` says.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .model_library import FAMILIES, KINDS, detect_tensors

log = logging.getLogger("generator_backend.single_file")

CONFIGS_DIR = Path(__file__).resolve().parent / "model_configs"
SHIPPED = ("sd15", "sd2", "sdxl")
FAMILY_ARCHITECTURE = {"sd1": "sd15", "sd2": "sd2", "sd2-base": "sd2", "sdxl": "sdxl"}
# Where the CLIP BPE vocabulary of each architecture may already be on this machine.
HUB_TOKENIZERS = {"sd15": [("openai/clip-vit-large-patch14", ""),
                           ("stable-diffusion-v1-5/stable-diffusion-v1-5", "tokenizer")],
                  "sd2": [("stabilityai/stable-diffusion-2-1", "tokenizer")],
                  "sdxl": [("stabilityai/stable-diffusion-xl-base-1.0", "tokenizer")]}


class SingleFileError(Exception):
    """A checkpoint that cannot be loaded, with what to do about it."""


def load_state_dict(path: Path) -> dict:
    """All tensors of a .safetensors file, or of a .ckpt through torch's weights-only unpickler."""
    import torch

    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if path.suffix.lower() != ".ckpt":
        raise SingleFileError(f"{path.name}: only .safetensors and .ckpt checkpoints are loaded")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # an UnpicklingError names the global it refused
        raise SingleFileError(f"{path.name} is a pickle holding more than tensors, so it is refused (loading "
                              f"it could run code: {str(exc).splitlines()[0][:200]}); convert it to "
                              ".safetensors with a tool you trust") from None
    state = data.get("state_dict", data) if isinstance(data, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SingleFileError(f"{path.name} does not hold a state dict of tensors")
    return state


def describe(state: dict) -> dict:
    """detect_tensors on a loaded state dict."""
    return detect_tensors({k: (str(v.dtype), tuple(v.shape)) for k, v in state.items()})


def config_folder(architecture: str, models_dir=None) -> Path:
    """The configuration folder of an architecture (no weights are read from it)."""
    if architecture in SHIPPED:
        return CONFIGS_DIR / architecture
    if architecture == "pocket":
        from .models import POCKET_DIR

        return POCKET_DIR
    if architecture == "tiny":
        from .tiny_model import ensure_tiny_model

        return ensure_tiny_model(models_dir, "tiny")
    raise SingleFileError(f"no configuration for architecture {architecture!r}")


def tokenizer_folder(architecture: str, config: Path, models_dir=None, subfolder="tokenizer") -> Path:
    """A folder holding the CLIP tokenizer files: the config folder's own, one under
    ``<models dir>/tokenizers/<architecture>``, or the Hugging Face cache; else SingleFileError."""
    candidates = [config / subfolder]
    if models_dir:
        candidates.append(Path(models_dir) / "tokenizers" / (architecture if subfolder == "tokenizer"
                                                               else f"{architecture}-2"))
    for folder in candidates:
        if (folder / "tokenizer.json").is_file() or (folder / "vocab.json").is_file():
            return folder
    try:
        from huggingface_hub import try_to_load_from_cache

        for repo, sub in HUB_TOKENIZERS.get(architecture, []):
            found = try_to_load_from_cache(repo, f"{sub}/vocab.json" if sub else "vocab.json")
            if isinstance(found, str):
                return Path(found).parent
    except Exception:
        pass
    where = (Path(models_dir) / "tokenizers" / architecture) if models_dir else "<models dir>/tokenizers/" + \
        architecture
    raise SingleFileError(f"the {architecture} tokenizer's vocabulary (vocab.json and merges.txt) is not on this "
                          f"machine and cannot be downloaded offline: copy the 'tokenizer' folder of any "
                          f"{architecture} diffusers model into {where}")


def load_pipeline(path, dtype, family: str | None = None, kind: str | None = None, models_dir=None):
    """A StableDiffusionPipeline from one checkpoint file; ``family``/``kind`` override what is detected."""
    import diffusers
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel, CLIPTokenizer

    path = Path(path)
    if family is not None and family not in FAMILIES:
        raise SingleFileError(f"family {family!r} is not one of {list(FAMILIES)}")
    if kind is not None and kind not in KINDS:
        raise SingleFileError(f"kind {kind!r} is not one of {list(KINDS)}")
    state = load_state_dict(path)
    found = describe(state)
    if found["type"] != "checkpoint":
        raise SingleFileError(f"{path.name} is not a checkpoint (it looks like a {found['type']})")
    family = family or found["family"]
    if family == "sdxl" or found["family"] == "sdxl":
        raise SingleFileError(f"{path.name} is an SDXL checkpoint: detected, but SDXL models are not run by "
                              "this backend yet")
    architecture = found["architecture"]
    if architecture is None:
        raise SingleFileError(f"{path.name}: no shipped configuration fits its tensors (family {found['family']}, "
                              f"{found.get('in_channels')} input channels)")
    if architecture in SHIPPED and FAMILY_ARCHITECTURE[family] != architecture:
        raise SingleFileError(f"{path.name} holds a {found['family']} model; it cannot load as {family}")
    config = config_folder(architecture, models_dir)
    channels = found["in_channels"]
    unet = UNet2DConditionModel.from_single_file(state, config=str(config), subfolder="unet", local_files_only=True,
                                                 in_channels=channels, torch_dtype=dtype)
    vae = AutoencoderKL.from_single_file(state, config=str(config), subfolder="vae", local_files_only=True,
                                         torch_dtype=dtype)
    text_encoder = create_diffusers_clip_model_from_ldm(CLIPTextModel, state, subfolder="text_encoder",
                                                        config=str(config), torch_dtype=dtype, local_files_only=True)
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_folder(architecture, config, models_dir)))
    scheduler_config = json.loads((config / "scheduler" / "scheduler_config.json").read_text())
    index = json.loads((config / "model_index.json").read_text())
    scheduler_cls = getattr(diffusers, index["scheduler"][1])
    prediction = {"sd2": "v_prediction", "sd2-base": "epsilon", "sd1": "epsilon"}[family]
    if architecture in SHIPPED or family != found["family"]:
        scheduler_config["prediction_type"] = prediction
    scheduler = scheduler_cls.from_config(scheduler_config)
    del state
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    log.info("loaded %s as %s/%s (%s, %d input channels)", path.name, family, kind or found["kind"], architecture,
             channels)
    return pipe, {"family": family, "kind": kind or found["kind"], "architecture": architecture,
                  "prediction_type": scheduler.config.get("prediction_type", "epsilon")}
