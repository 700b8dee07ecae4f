"""A tiny random SDXL-architecture model, built offline from configs (as tiny_model.py does for SD).

The shapes follow diffusers' own SDXL pipeline tests (``get_dummy_components``): a UNet with
``addition_embed_type="text_time"`` (6 time ids × 8 + a 32-wide pooled embedding = 80 added
inputs) and cross-attention over both encoders' 32 + 32 states, a ``CLIPTextModel`` and a
``CLIPTextModelWithProjection``, and a VAE with SDXL's scaling factor and ``force_upcast``.
It is saved as a diffusers folder and loaded back through ``StableDiffusionXLPipeline``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .tiny_model import build_tokenizer_vocab, tiny_vae

XL_BUILD_VERSION = 1  # bump when the architecture below changes, so stale caches are rebuilt
TIME_EMBED_DIM = 8
TEXT_DIM = 32  # each encoder's hidden size; the pooled projection has this width too


def build_tiny_xl_components(seed: int = 0, unet_in_channels: int = 4):
    """The seeded components of the tiny SDXL pipeline; ``unet_in_channels=9`` is an inpainting UNet."""
    import torch
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    vocab, merges = build_tokenizer_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    tokenizer_2 = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77, pad_token="!")  # as SDXL's

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=unet_in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED_DIM,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * TIME_EMBED_DIM + TEXT_DIM,
        cross_attention_dim=2 * TEXT_DIM,
        norm_num_groups=8,
    )
    torch.manual_seed(0)  # one VAE for every variant: one latent space (model ensembling)
    vae = tiny_vae(scaling_factor=0.13025, force_upcast=True)  # SDXL's VAE settings
    config = dict(bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                  pad_token_id=vocab["<|endoftext|>"], hidden_size=TEXT_DIM, intermediate_size=37,
                  layer_norm_eps=1e-05, num_attention_heads=4, num_hidden_layers=3, vocab_size=len(vocab),
                  max_position_embeddings=77, projection_dim=TEXT_DIM, hidden_act="gelu")
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**config))
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**config))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading")
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "text_encoder_2": text_encoder_2,
            "tokenizer": tokenizer, "tokenizer_2": tokenizer_2, "scheduler": scheduler}


def build_tiny_xl_model(out_dir, seed: int = 0, unet_in_channels: int = 4) -> Path:
    """Build the tiny SDXL pipeline and save it as a diffusers folder at ``out_dir`` (atomically)."""
    from diffusers import StableDiffusionXLPipeline

    out_dir = Path(out_dir)
    pipe = StableDiffusionXLPipeline(**build_tiny_xl_components(seed, unet_in_channels),
                                     force_zeros_for_empty_prompt=True, add_watermarker=False)
    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    pipe.save_pretrained(tmp, safe_serialization=True)
    (tmp / "dream_tiny.json").write_text(json.dumps({"build_version": XL_BUILD_VERSION, "seed": seed, "xl": True,
                                                     "unet_in_channels": unet_in_channels}))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


TINY_XL_VARIANTS = {"tiny-xl": {"seed": 0}, "tiny-xl-b": {"seed": 1}, "tiny-xl-inpaint": {"seed": 0,
                                                                                          "unet_in_channels": 9}}


def ensure_tiny_xl_model(models_dir, name: str = "tiny-xl") -> Path:
    """The folder of a tiny SDXL model, built first when missing or stale."""
    from .tiny_model import default_models_dir

    path = Path(models_dir or default_models_dir()) / name
    try:
        if json.loads((path / "dream_tiny.json").read_text()).get("build_version") == XL_BUILD_VERSION:
            return path
    except (OSError, ValueError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    return build_tiny_xl_model(path, **TINY_XL_VARIANTS[name])
