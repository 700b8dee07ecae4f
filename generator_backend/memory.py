"""Memory and precision options of loaded models (``serve`` flags): applied once, at load.

- fp16 on a GPU, fp32 on the CPU (ModelManager.dtype); a VAE whose config says
  ``force_upcast`` (SDXL's overflows in fp16) stays in fp32, and the core casts latents to the
  VAE's dtype around it (core.encode_image / core.decode), diffusers' fp16-safe VAE fix;
- VAE tiling: textures larger than ``vae_tile`` pixels are decoded and encoded in overlapping
  tiles (diffusers' ``enable_tiling``), so VAE memory stays bounded. Each tile normalises with its
  own GroupNorm statistics, so colours shift a little from tile to tile (measured in
  tests/backend/test_memory.py); an image that fits one tile is decoded exactly as without;
- attention slicing: attention computed in slices (less memory, slower); without it
  diffusers' default processor runs PyTorch's scaled-dot-product attention (SDPA);
- text encoders on the CPU: they run once per job, so they need not hold device memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MemoryOptions:
    vae_tiling: bool = False
    vae_tile: int = 512  # pixels: the tile side (the VAE's own sample_size is often far smaller)
    attention_slicing: bool = False
    vae_upcast: bool = True  # keep a force_upcast VAE in fp32 when the model runs in fp16
    text_encoders_on_cpu: bool = False


def configure(c, options: MemoryOptions):
    """Apply ``options`` to the Components ``c`` (in place) and return it."""
    if options.vae_upcast and c.dtype == torch.float16 and getattr(c.vae.config, "force_upcast", False):
        c.vae.to(dtype=torch.float32)
    if options.vae_tiling:
        c.vae.enable_tiling()
        c.vae.tile_sample_min_size = options.vae_tile
        c.vae.tile_latent_min_size = options.vae_tile // c.vae_scale_factor
        if hasattr(c.vae, "spatial_scale_factor"):  # AutoencoderTiny sets 2**out_channels (8) whatever its depth
            c.vae.spatial_scale_factor = c.vae_scale_factor
    if options.attention_slicing:
        c.unet.set_attention_slice("auto")
    if options.text_encoders_on_cpu and c.device.type != "cpu":
        for encoder in (c.text_encoder, c.text_encoder_2):
            if encoder is not None:
                encoder.to("cpu", dtype=torch.float32)
    return c
