"""A tiny random SD 2.x-shaped model, built offline (as tiny_model.py does for SD 1.x).

What makes it SD 2-shaped, at the tiny model's widths: an OpenCLIP-style text encoder (plain
GELU, padding with "!"), linear projections in the UNet's transformers, and v-prediction. The
tests write it in the OpenCLIP single-file layout (``cond_stage_model.model.*``) and load it back.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

SD2_BUILD_VERSION = 1  # bump when the architecture below changes, so stale caches are rebuilt
NAME = "tiny-sd2"


def build_tiny_sd2_components(seed: int = 0):
    """The seeded components of the tiny SD 2-shaped pipeline."""
    import torch
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from .tiny_model import build_tiny_components, build_tokenizer_vocab

    parts = build_tiny_components(seed)
    vocab, merges = build_tokenizer_vocab()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**{**parts["unet"].config, "use_linear_projection": True,
                                   "attention_head_dim": (2, 4)})
    config = parts["text_encoder"].config
    config.hidden_act = "gelu"  # OpenCLIP's (OpenAI CLIP's is quick_gelu)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(config)
    scheduler = EulerDiscreteScheduler.from_config(parts["scheduler"].config, prediction_type="v_prediction")
    return {**parts, "unet": unet, "text_encoder": text_encoder, "scheduler": scheduler,
            "tokenizer": CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77, pad_token="!")}


def build_tiny_sd2_model(out_dir, seed: int = 0) -> Path:
    """Build the tiny SD 2-shaped pipeline and save it as a diffusers folder at ``out_dir`` (atomically)."""
    from diffusers import StableDiffusionPipeline

    out_dir = Path(out_dir)
    pipe = StableDiffusionPipeline(**build_tiny_sd2_components(seed), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    pipe.save_pretrained(tmp, safe_serialization=True)
    (tmp / "dream_tiny.json").write_text(json.dumps({"build_version": SD2_BUILD_VERSION, "seed": seed}))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def ensure_tiny_sd2_model(models_dir=None) -> Path:
    """The folder of the tiny SD 2-shaped model, built first when missing or stale."""
    from .tiny_model import default_models_dir

    path = Path(models_dir or default_models_dir()) / NAME
    try:
        if json.loads((path / "dream_tiny.json").read_text()).get("build_version") == SD2_BUILD_VERSION:
            return path
    except (OSError, ValueError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    return build_tiny_sd2_model(path)
