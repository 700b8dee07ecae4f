"""Manual check (about 6 GB of memory, a few minutes on 2 cores): a full-size SD 1.5 single file loads offline.

Builds random-weight SD 1.5 components from the shipped config (generator_backend/model_configs/sd15),
writes them in the A1111 single-file layout (fp16, ~2 GB) with checkpoint_convert, lists the file
(header only), then loads it with single_file.load_pipeline and checks that every tensor is the file's, exactly.
The tokenizer is the shipped CLIP vocabulary (clip_vocab.py), checked to be 49408 tokens. Usage: .venv/bin/python scripts/check_sd15_single_file.py
"""

from __future__ import annotations

import gc
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main():
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import load_file, save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from generator_backend.checkpoint_convert import (CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX, to_single_file, unet_key,
                                                      vae_key)
    from generator_backend.model_library import ModelLibrary
    from generator_backend.single_file import CONFIGS_DIR, load_pipeline

    config = CONFIGS_DIR / "sd15"
    with tempfile.TemporaryDirectory() as tmp:
        folder, state, t0 = Path(tmp), {}, time.perf_counter()
        torch.manual_seed(0)
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config / "unet"))
        up = list(unet.config.up_block_types)
        for k, v in unet.state_dict().items():
            state[UNET_PREFIX + unet_key(k, unet.config.layers_per_block, lambda i: "CrossAttn" in up[i])] = v.half()
        del unet
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(config / "vae"))
        for k, v in vae.state_dict().items():
            name = vae_key(k, len(vae.config.up_block_types))
            state[VAE_PREFIX + name] = (v[:, :, None, None] if ".mid.attn_1." in name and v.dim() == 2 else v).half()
        del vae
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(config / "text_encoder"))
        for k, v in text.state_dict().items():
            state[CLIP_PREFIX + k.removeprefix("text_model.")] = v.half()
        del text
        gc.collect()
        path = folder / "sd15-random.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        del state
        gc.collect()
        print(f"wrote {path.stat().st_size / 2**30:.2f} GiB in {time.perf_counter() - t0:.0f} s")
        entry = ModelLibrary(folder).scan()["sd15-random"]
        print("listed:", entry.type, entry.family, entry.kind, entry.architecture)
        assert (entry.type, entry.family, entry.kind, entry.architecture) == ("checkpoint", "sd1", "txt2img", "sd15")
        t0 = time.perf_counter()
        pipe, info = load_pipeline(path, torch.float16, models_dir=folder)
        print(f"loaded in {time.perf_counter() - t0:.0f} s:", info)
        assert len(pipe.tokenizer) == 49408, len(pipe.tokenizer)  # CLIP's own vocabulary, offline
        saved = load_file(str(path))
        again = to_single_file(pipe.unet, pipe.vae, pipe.text_encoder)  # the loaded modules, in the file's names
        missing = sorted(set(saved) - set(again))
        assert not missing, missing[:5]
        differ = [k for k in saved if not torch.equal(saved[k], again[k])]
        assert not differ, differ[:5]
        print(f"all {len(saved)} tensors of the file are the loaded model's, exactly")
        print("OK: the shipped sd15 configuration loads a full-size single file offline")


if __name__ == "__main__":
    main()
