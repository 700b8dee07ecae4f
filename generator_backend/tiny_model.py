"""A tiny random Stable-Diffusion-format model, built offline from configs.

No weights can be downloaded here, so tests and the demo use this model: every
component is built from a config with a seed set right before it (the pattern of
diffusers' ``get_dummy_components``), saved with ``save_pretrained`` and loaded
back through the same ``from_pretrained`` path a real model takes. It draws noise,
but it exercises every stage of the real pipeline.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# Words that become single tokens; everything else falls back to byte-level pieces.
TINY_WORDS = (
    "a of the and with texture pattern seamless red green blue yellow orange purple white black brown grey "
    "stripes checker dots bricks waves wood marble scales stone metal rust moss grass sand tiles fabric "
    "light dark thin thick horizontal vertical diagonal"
).split()

BUILD_VERSION = 1  # bump when the architecture below changes, so stale caches are rebuilt


def _bytes_to_unicode():
    """GPT-2/CLIP byte-level alphabet: 256 printable stand-ins for the 256 byte values."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def build_tokenizer_vocab(words=TINY_WORDS):
    """Return (vocab, merges) for a CLIP BPE tokenizer: byte alphabet plus whole-word merges."""
    alphabet = _bytes_to_unicode()
    vocab = {}
    for token in ["<|startoftext|>", "<|endoftext|>", "!"] + alphabet + [c + "</w>" for c in alphabet]:
        vocab.setdefault(token, len(vocab))
    merges = []
    for word in words:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:
            pair = (symbols[0], symbols[1])
            merged = pair[0] + pair[1]
            if pair not in merges:
                merges.append(pair)
            vocab.setdefault(merged, len(vocab))
            symbols = [merged] + symbols[2:]
    return vocab, merges


def build_tiny_components(seed: int = 0, unet_in_channels: int = 4, vae_seed: int | None = None):
    """Build the seeded components of the tiny pipeline (UNet, VAE with factor 8, CLIP text encoder).

    ``unet_in_channels=9`` gives an inpainting-style UNet (latents + mask + masked-image latents)."""
    import torch
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab, merges = build_tokenizer_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=32,
        in_channels=unet_in_channels,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    torch.manual_seed(seed if vae_seed is None else vae_seed)
    vae = tiny_vae()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=2,
        vocab_size=len(vocab),
        max_position_embeddings=77,
    ))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading")
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer,
            "scheduler": scheduler}


def build_tiny_model(out_dir, seed: int = 0, unet_in_channels: int = 4, vae_seed: int | None = None) -> Path:
    """Build the tiny pipeline and save it as a diffusers folder at ``out_dir``."""
    from diffusers import StableDiffusionPipeline

    out_dir = Path(out_dir)
    components = build_tiny_components(seed, unet_in_channels, vae_seed)
    pipe = StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    tmp = out_dir.with_name(out_dir.name + f".tmp{os.getpid()}")
    pipe.save_pretrained(tmp, safe_serialization=True)
    (tmp / "dream_tiny.json").write_text(json.dumps({"build_version": BUILD_VERSION, "seed": seed,
                                                     "unet_in_channels": unet_in_channels}))
    if out_dir.exists():
        import shutil
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)  # atomic: a half-written model is never picked up
    return out_dir


def default_models_dir() -> Path:
    base = os.environ.get("DREAM_MODELS_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dream", "models")
    return Path(base)


TINY_VARIANTS = {"tiny": {"seed": 0}, "tiny-b": {"seed": 1, "vae_seed": 0}, "tiny-inpaint": {"seed": 0, "unet_in_channels": 9}}


def ensure_tiny_model(models_dir=None, name: str = "tiny") -> Path:
    """Return the folder of a tiny model, building it first if it is missing or stale.

    ``tiny`` is the default; ``tiny-b`` has other weights in the same latent space (model
    ensembling); ``tiny-inpaint`` has a 9-channel inpainting UNet."""
    path = Path(models_dir or default_models_dir()) / name
    stamp = path / "dream_tiny.json"
    try:
        if json.loads(stamp.read_text()).get("build_version") == BUILD_VERSION:
            return path
    except (OSError, ValueError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    return build_tiny_model(path, **TINY_VARIANTS[name])


def tiny_vae(**config):
    """The tiny models' VAE, random from the current torch seed: four down blocks give SD's downscale
    factor of 8; no mid-block attention keeps it fast. ``config`` adds to diffusers' defaults."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(8, 8, 16, 16), in_channels=3, out_channels=3,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         latent_channels=4, norm_num_groups=4, layers_per_block=1, mid_block_add_attention=False,
                         **config)
