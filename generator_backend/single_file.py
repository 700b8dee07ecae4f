"""Single-file checkpoints (A1111 / Civitai layout) loaded offline through diffusers' from_single_file.

The file holds weights only; the configurations come from the folders shipped in
generator_backend/model_configs (sd15, sd2, sdxl) or from the project's own models (pocket, tiny,
tiny-sd2, tiny-xl), chosen by the architecture detected from the tensors. ``.ckpt`` files are read
with a weights-only unpickler and refused when they hold anything but tensors. SD 1.x files carry a
CLIP text encoder (``cond_stage_model.transformer.*``), SD 2.x ones OpenCLIP's
(``cond_stage_model.model.*``) and SDXL ones both (``conditioner.embedders.0.transformer.*`` and
``conditioner.embedders.1.model.*``): an SDXL file loads as a StableDiffusionXLPipeline, the same
Components as an SDXL folder. No checkpoint holds its tokenizer: the shipped CLIP vocabulary
(clip_vocab.py) serves the shipped architectures, unless ``<models dir>/tokenizers/<architecture>``
holds one of the user's own.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .model_library import FAMILIES, KINDS, detect_tensors, refusal

log = logging.getLogger("generator_backend.single_file")

CONFIGS_DIR = Path(__file__).resolve().parent / "model_configs"
SHIPPED = ("sd15", "sd2", "sdxl")
FAMILY_ARCHITECTURE = {"sd1": "sd15", "sd2": "sd2", "sd2-base": "sd2", "sdxl": "sdxl"}
PREDICTION = {"sd2": "v_prediction", "sd2-base": "epsilon", "sd1": "epsilon", "sdxl": "epsilon"}


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
    if architecture == "tiny-sd2":
        from .tiny_sd2 import ensure_tiny_sd2_model

        return ensure_tiny_sd2_model(models_dir)
    if architecture == "tiny-xl":
        from .tiny_xl import ensure_tiny_xl_model

        return ensure_tiny_xl_model(models_dir, "tiny-xl")
    raise SingleFileError(f"no configuration for architecture {architecture!r}")


def tokenizer_folder(architecture: str, config: Path, models_dir=None, subfolder="tokenizer") -> Path | None:
    """A folder holding CLIP tokenizer files: one under ``<models dir>/tokenizers/<architecture>`` (``-2``
    for SDXL's second), else the config folder's own; None when neither has one."""
    candidates = [Path(models_dir) / "tokenizers" / (architecture if subfolder == "tokenizer"
                                                      else f"{architecture}-2")] if models_dir else []
    for folder in candidates + [config / subfolder]:
        if (folder / "tokenizer.json").is_file() or (folder / "vocab.json").is_file():
            return folder
    return None


def load_tokenizer(architecture: str, config: Path, models_dir=None, subfolder="tokenizer"):
    """The CLIP tokenizer of a checkpoint: the user's or the config folder's files, else the shipped
    CLIP vocabulary with the architecture's tokenizer settings (SD 2.x and SDXL's second pad with "!")."""
    from transformers import CLIPTokenizer

    from .clip_vocab import clip_tokenizer

    folder = tokenizer_folder(architecture, config, models_dir, subfolder)
    if folder is not None:
        return CLIPTokenizer.from_pretrained(str(folder))
    settings = config / subfolder / "tokenizer_config.json"
    if not settings.is_file():
        raise SingleFileError(f"no {subfolder} settings for architecture {architecture!r} ({settings})")
    settings = json.loads(settings.read_text())
    return clip_tokenizer(settings.get("pad_token", "<|endoftext|>"), settings.get("model_max_length", 77))


def text_state(state: dict, prefix: str) -> dict:
    """The tensors of one text encoder: diffusers' converter picks the layout from the names it sees, and
    SDXL's two encoders must not be taken for each other where their widths agree (the tiny models)."""
    return {k: v for k, v in state.items() if k.startswith(prefix)}


def load_pipeline(path, dtype, family: str | None = None, kind: str | None = None, models_dir=None):
    """A StableDiffusionPipeline (an SDXL one for SDXL files) from one checkpoint file; ``family``/``kind``
    override what is detected."""
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel

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
    if (why := refusal(kind or found["kind"])) is not None:
        raise SingleFileError(f"{path.name} is {why}")
    if (family == "sdxl") != (found["family"] == "sdxl"):
        raise SingleFileError(f"{path.name} holds a {found['family']} model; it cannot load as {family} (SDXL has "
                              "two text encoders, the other families one)")
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
    parts = _text_parts(state, family, architecture, config, dtype, models_dir)
    scheduler_config = json.loads((config / "scheduler" / "scheduler_config.json").read_text())
    index = json.loads((config / "model_index.json").read_text())
    scheduler_cls = getattr(diffusers, index["scheduler"][1])
    if architecture in SHIPPED or family != found["family"]:
        scheduler_config["prediction_type"] = PREDICTION[family]
    scheduler = scheduler_cls.from_config(scheduler_config)
    del state
    if family == "sdxl":
        pipe = diffusers.StableDiffusionXLPipeline(vae=vae, unet=unet, scheduler=scheduler, add_watermarker=False,
                                                   force_zeros_for_empty_prompt=index.get(
                                                       "force_zeros_for_empty_prompt", True), **parts)
    else:
        pipe = diffusers.StableDiffusionPipeline(vae=vae, unet=unet, scheduler=scheduler, safety_checker=None,
                                                 feature_extractor=None, requires_safety_checker=False, **parts)
    log.info("loaded %s as %s/%s (%s, %d input channels)", path.name, family, kind or found["kind"], architecture,
             channels)
    return pipe, {"family": family, "kind": kind or found["kind"], "architecture": architecture,
                  "prediction_type": scheduler.config.get("prediction_type", "epsilon")}


def _text_parts(state, family, architecture, config, dtype, models_dir) -> dict:
    """The text encoder(s) and tokenizer(s) of a checkpoint, as pipeline keyword arguments."""
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    def encoder(cls, prefix, subfolder):
        return create_diffusers_clip_model_from_ldm(cls, text_state(state, prefix), subfolder=subfolder,
                                                    config=str(config), torch_dtype=dtype, local_files_only=True)

    if family != "sdxl":
        return {"text_encoder": encoder(CLIPTextModel, "cond_stage_model.", "text_encoder"),
                "tokenizer": load_tokenizer(architecture, config, models_dir)}
    return {"text_encoder": encoder(CLIPTextModel, "conditioner.embedders.0.", "text_encoder"),
            "text_encoder_2": encoder(CLIPTextModelWithProjection, "conditioner.embedders.1.", "text_encoder_2"),
            "tokenizer": load_tokenizer(architecture, config, models_dir),
            "tokenizer_2": load_tokenizer(architecture, config, models_dir, "tokenizer_2")}
