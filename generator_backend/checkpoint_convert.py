"""Diffusers folders to the single-file (A1111 / original LDM) checkpoint layout, and LoRAs to kohya's keys.

The inverse of diffusers' ``convert_ldm_*_checkpoint``: SD 1.x-shaped models (a CLIP text encoder,
``cond_stage_model.transformer.*``), SD 2.x's OpenCLIP layout (``cond_stage_model.model.*``) and
SDXL's SGM layout (CLIP-L ``conditioner.embedders.0.transformer.*``, OpenCLIP bigG
``conditioner.embedders.1.model.*``). The tests and benchmarks turn the project's own models into
the files people download, then load them back through ``from_single_file``. Any number of
blocks and layers per block.
"""

from __future__ import annotations

import json
import re

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."
OPENCLIP_PREFIX = "cond_stage_model.model."  # SD 2.x
XL_CLIP_PREFIX = "conditioner.embedders.0.transformer.text_model."  # SDXL's CLIP-L
XL_OPENCLIP_PREFIX = "conditioner.embedders.1.model."  # SDXL's OpenCLIP bigG
TEXT_LAYOUTS = ("clip", "openclip")
_OPENCLIP_FIXED = {"embeddings.position_embedding.weight": "positional_embedding",
                   "embeddings.token_embedding.weight": "token_embedding.weight",
                   "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"}
_OPENCLIP_LAYER = (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj"),
                   ("self_attn.out_proj", "attn.out_proj"))

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


def openclip_state(text_encoder, prefix: str) -> dict:
    """A transformers CLIP text encoder in OpenCLIP's names: q/k/v packed into ``attn.in_proj_*``,
    ``text_projection`` stored as the matrix x is multiplied by (the transpose of the Linear's)."""
    import torch

    state = {k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()}
    width = text_encoder.config.hidden_size
    out = {}
    for key, value in state.items():
        if key in _OPENCLIP_FIXED:
            out[prefix + _OPENCLIP_FIXED[key]] = value
        elif key == "text_projection.weight":
            out[prefix + "text_projection"] = value.T
        elif (m := re.match(r"encoder\.layers\.(\d+)\.(.*)", key)):
            layer, rest = f"{prefix}transformer.resblocks.{m[1]}.", m[2]
            q = re.match(r"self_attn\.q_proj\.(weight|bias)$", rest)
            if q:
                parts = [state[f"encoder.layers.{m[1]}.self_attn.{n}_proj.{q[1]}"] for n in "qkv"]
                out[layer + f"attn.in_proj_{q[1]}"] = torch.cat(parts)
            elif not re.match(r"self_attn\.[kv]_proj\.", rest):
                for new, old in _OPENCLIP_LAYER:
                    rest = rest.replace(new + ".", old + ".")
                out[layer + rest] = value
        elif key != "embeddings.position_ids":
            raise KeyError(f"no OpenCLIP name for text encoder parameter {key}")
    if prefix == OPENCLIP_PREFIX and prefix + "text_projection" not in out:
        # SD 2.x files carry OpenCLIP's projection too, unused by the UNet (diffusers skips it).
        out[prefix + "text_projection"] = torch.eye(width)
    return out


def to_single_file(unet, vae, text_encoder, text_encoder_2=None, text_layout="clip") -> dict:
    """The state dict of one single-file checkpoint: UNet, VAE and the text encoder(s), in the A1111
    layout (``text_layout`` "clip": SD 1.x, "openclip": SD 2.x), or SDXL's when ``text_encoder_2`` is given."""
    if text_layout not in TEXT_LAYOUTS:
        raise ValueError(f"text_layout {text_layout!r} is not one of {list(TEXT_LAYOUTS)}")
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
    if text_encoder_2 is not None:
        out.update(openclip_state(text_encoder_2, XL_OPENCLIP_PREFIX))
    if text_layout == "openclip" and text_encoder_2 is None:
        out.update(openclip_state(text_encoder, OPENCLIP_PREFIX))
    else:
        clip_prefix = XL_CLIP_PREFIX if text_encoder_2 is not None else CLIP_PREFIX
        for key, value in text_encoder.state_dict().items():
            out[clip_prefix + key.removeprefix("text_model.")] = value
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


def save_single_file(folder, path, dtype=None, text_layout="clip"):
    """Write the diffusers folder ``folder`` as one single-file ``.safetensors`` at ``path`` (an SDXL
    folder, one with ``text_encoder_2``, in SDXL's layout; else ``text_layout`` picks SD 1.x's or 2.x's)."""
    from pathlib import Path

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    kind = json.loads((Path(folder) / "vae" / "config.json").read_text())["_class_name"]
    if kind != "AutoencoderKL":  # loaded as one, a tiny VAE fails deep in accelerate ("meta tensor")
        raise ValueError(f"save_single_file: {folder}'s VAE is an {kind}; the single-file layout holds an "
                         "AutoencoderKL only")
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
    text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(folder, subfolder="text_encoder_2") \
        if (Path(folder) / "text_encoder_2").is_dir() else None
    state = to_single_file(unet, vae, text_encoder, text_encoder_2, text_layout)
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
