"""Seeded random LoRAs for a model, made here with peft (tests and benchmarks: nothing is downloaded).

``build_lora`` adds a peft LoRA to copies of a model's UNet (and optionally text encoder), fills
its up-projections with seeded noise (peft starts them at zero, which would change nothing) and
saves it as diffusers' training scripts do (``unet.<module>.lora_A.weight``), or in kohya's layout.
"""

from __future__ import annotations

import copy
from pathlib import Path

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def _with_random_lora(module, targets, rank: int, seed: int, scale: float):
    import torch
    from peft import LoraConfig, get_peft_model_state_dict

    module = copy.deepcopy(module)
    module.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(targets), init_lora_weights="gaussian"))
    generator = torch.Generator().manual_seed(seed)
    for name, param in module.named_parameters():
        if "lora_" in name:
            param.data = torch.randn(param.shape, generator=generator) * (scale if "lora_B" in name else 1.0)
    return {k: v.detach().clone().contiguous() for k, v in get_peft_model_state_dict(module).items()}


def build_lora(components, path, seed: int = 0, rank: int = 4, scale: float = 0.05, text_encoder: bool = False,
               kohya: bool = False, unet: bool = True) -> Path:
    """Write a random LoRA for ``components`` (a Components) to ``path`` (.safetensors)."""
    from safetensors.torch import save_file

    from .checkpoint_convert import peft_to_kohya

    state = {f"unet.{k}": v for k, v in _with_random_lora(components.unet, UNET_TARGETS, rank, seed, scale).items()
             } if unet else {}
    if text_encoder:
        text = _with_random_lora(components.text_encoder, TEXT_TARGETS, rank, seed + 1, scale)
        state.update({f"text_encoder.{k}": v for k, v in text.items()})
    if kohya:
        state = peft_to_kohya(state)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path
