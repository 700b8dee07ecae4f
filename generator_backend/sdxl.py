"""SDXL in the core: two text encoders, pooled embeddings and added time ids.

An SDXL model conditions its UNet on the penultimate hidden states of two CLIP text encoders,
concatenated (``CLIPTextModel`` + ``CLIPTextModelWithProjection``), plus the second encoder's
pooled projection and six "time ids" (original size, crop corner, target size) through
``added_cond_kwargs``, as diffusers' ``StableDiffusionXLPipeline`` does.

The core keeps one tensor per prompt for every model, so that ensembles, walks (interpolation
of embeddings) and infusion rows treat SD and SDXL alike: an SDXL prompt's tensor is its
(1, 77, D) token states with the pooled vector as one more row, zero-padded to D
(``pack``); the denoiser splits it again (``unet_inputs``). Interpolating or averaging the
tensor interpolates both parts, the way diffusers' embedding-level tricks treat them.
"""

from __future__ import annotations

import torch
from diffusers.loaders.textual_inversion import TextualInversionLoaderMixin


def is_xl(c) -> bool:
    """An SDXL-architecture model: its UNet takes text and time embeddings as added conditions."""
    return getattr(c.unet.config, "addition_embed_type", None) == "text_time"


def pooled_dim(c) -> int:
    """The pooled text embedding's width (the second encoder's projection)."""
    return c.text_encoder_2.config.projection_dim


def pack(states: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """(1, T, D) token states and (1, P) pooled, P <= D, as one (1, T + 1, D) tensor."""
    row = torch.zeros(states.shape[0], 1, states.shape[2], dtype=states.dtype, device=states.device)
    row[:, 0, :pooled.shape[1]] = pooled
    return torch.cat([states, row], dim=1)


def unpack(packed: torch.Tensor, pooled_width: int):
    """(token states, pooled) of a packed batch of rows."""
    return packed[:, :-1].contiguous(), packed[:, -1, :pooled_width].contiguous()


def _encoded(tokenizer, encoder, text: str):
    text = TextualInversionLoaderMixin._maybe_convert_prompt(None, text, tokenizer)  # uses no state
    ids = tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return encoder(ids.to(encoder.device), output_hidden_states=True)


def encode_prompt_xl(c, text: str) -> torch.Tensor:
    """Both encoders' penultimate states, concatenated, and the second's pooled projection, packed."""
    first = _encoded(c.tokenizer, c.text_encoder, text)
    second = _encoded(c.tokenizer_2, c.text_encoder_2, text)
    states = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)
    dtype = c.text_encoder_2.dtype
    return pack(states.to(dtype), second[0].to(dtype)).to(c.device, c.dtype)


def zero_negative(c, text: str) -> bool:
    """An empty negative prompt is all zeros for models that ask for it (SDXL base:
    ``force_zeros_for_empty_prompt``), as diffusers does when no negative prompt is given."""
    return is_xl(c) and c.zero_empty_negative and text == ""


def time_ids(req, rows: int, dtype, device) -> torch.Tensor:
    """(rows, 6): original size, crop top-left, target size (SDXL's micro-conditioning); the
    original and target sizes are the canvas, the crop corner (0, 0), diffusers' defaults."""
    ids = [req.height, req.width, 0, 0, req.height, req.width]
    return torch.tensor([ids], dtype=dtype).to(device).expand(rows, -1)


def unet_inputs(c, embeds: torch.Tensor, req) -> dict:
    """The UNet's conditioning keyword arguments for a batch of prompt rows of model ``c``."""
    if not is_xl(c):
        return {"encoder_hidden_states": embeds}
    states, pooled = unpack(embeds, pooled_dim(c))
    return {"encoder_hidden_states": states,
            "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids(req, embeds.shape[0], embeds.dtype,
                                                                              embeds.device)}}


def native_size(c) -> int:
    """The side in pixels the model was trained at (SD 1.x 512, SDXL 1024): the UNet's sample size
    times the VAE's scale."""
    size = c.unet.config.sample_size
    return (size if isinstance(size, int) else size[0]) * c.vae_scale_factor
