"""Diffusers folders to the single-file (A1111 / original LDM) checkpoint layout, and LoRAs to kohya's keys.

The inverse of diffusers' ``convert_ldm_*_checkpoint`` for SD 1.x-shaped models (a CLIP text
encoder): the tests and benchmarks turn the project's own models into the files people download,
then load them back through ``from_single_file``. Any number of blocks and layers per block.
"""

from __future__ import annotations

import re

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."

_UNET_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
                ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))
_UNET_FIXED = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
               "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
               "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}  # SDXL
_VAE_ATTN = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))


def _resnet(rest: str) -> str:
    for new, old in _UNET_RESNET:
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    return rest


def unet_key(key: str, layers_per_block: int, has_up_attention) -> str:
    """One diffusers UNet parameter name in the LDM layout (without the prefix)."""
    n = layers_per_block + 1
    for new, old in _UNET_FIXED.items():
        if key.startswith(new + "."):
            return old + key[len(new):]
    m = re.match(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.*)", key)
    if m:
        i, part, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        if part == "downsamplers":
            return f"input_blocks.{i * n + layers_per_block + 1}.0.op.{rest.removeprefix('conv.')}"
        return f"input_blocks.{i * n + j + 1}.{0 if part == 'resnets' else 1}." + (
            _resnet(rest) if part == "resnets" else rest)
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key)
    if m:
        part, j, rest = m[1], int(m[2]), m[3]
        return f"middle_block.{2 * j if part == 'resnets' else 1}." + (_resnet(rest) if part == "resnets" else rest)
    m = re.match(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.(.*)", key)
    if m:
        i, part, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        if part == "upsamplers":
            return f"output_blocks.{i * n + layers_per_block}.{2 if has_up_attention(i) else 1}.{rest}"
        return f"output_blocks.{i * n + j}.{0 if part == 'resnets' else 1}." + (
            _resnet(rest) if part == "resnets" else rest)
    raise KeyError(f"no LDM name for UNet parameter {key}")


def vae_key(key: str, up_blocks: int) -> str:
    """One diffusers VAE parameter name in the LDM layout (without the prefix)."""
    key = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
    m = re.match(r"encoder\.down_blocks\.(\d+)\.(resnets|downsamplers)\.(\d+)\.(.*)", key)
    if m:
        i, part, j, rest = m[1], m[2], m[3], m[4]
        return f"encoder.down.{i}." + (f"block.{j}.{rest}" if part == "resnets" else f"downsample.{rest}")
    m = re.match(r"decoder\.up_blocks\.(\d+)\.(resnets|upsamplers)\.(\d+)\.(.*)", key)
    if m:
        i, part, j, rest = up_blocks - 1 - int(m[1]), m[2], m[3], m[4]
        return f"decoder.up.{i}." + (f"block.{j}.{rest}" if part == "resnets" else f"upsample.{rest}")
    m = re.match(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.*)", key)
    if m:
        side, part, j, rest = m[1], m[2], int(m[3]), m[4]
        if part == "resnets":
            return f"{side}.mid.block_{j + 1}.{rest}"
        for new, old in _VAE_ATTN:
            if rest.startswith(new + "."):
                return f"{side}.mid.attn_1.{old}{rest[len(new):]}"
    return key


def to_single_file(unet, vae, text_encoder) -> dict:
    """The state dict of one A1111-layout checkpoint (UNet, VAE and CLIP text encoder)."""
    cfg = unet.config
    lpb = cfg.layers_per_block
    up_types = list(cfg.up_block_types)
    out = {}
    for key, value in unet.state_dict().items():
        out[UNET_PREFIX + unet_key(key, lpb, lambda i: "CrossAttn" in up_types[i])] = value
    for key, value in vae.state_dict().items():
        name = vae_key(key, len(vae.config.up_block_types))
        if ".mid.attn_1." in name and value.dim() == 2:
            value = value[:, :, None, None]  # LDM's attention projections are 1x1 convolutions
        out[VAE_PREFIX + name] = value
    for key, value in text_encoder.state_dict().items():
        out[CLIP_PREFIX + key.removeprefix("text_model.")] = value
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


def save_single_file(folder, path, dtype=None):
    """Write the diffusers folder ``folder`` as one single-file ``.safetensors`` at ``path``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
    state = to_single_file(unet, vae, text_encoder)
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    save_file(state, str(path))
    return path


def peft_to_kohya(state: dict) -> dict:
    """A diffusers/peft LoRA state dict (``unet.<module>.lora_A.weight``, ``text_encoder.<module>...``) in
    kohya's layout (``lora_unet_<module_with_underscores>.lora_down.weight``, ``lora_te_text_model_...``,
    ``.alpha``)."""
    out = {}
    for key, value in state.items():
        m = re.match(r"(unet|text_encoder)\.(.*)\.lora_(A|B)\.weight$", key)
        if not m:
            raise KeyError(f"not a peft LoRA weight: {key}")
        module = m[2].removeprefix("text_model.").replace(".", "_")
        module = ("lora_unet_" if m[1] == "unet" else "lora_te_text_model_") + module
        out[f"{module}.lora_{'down' if m[3] == 'A' else 'up'}.weight"] = value
        if m[3] == "A":
            out[f"{module}.alpha"] = value.new_tensor(float(value.shape[0]))  # alpha = rank: scale 1
    return out
