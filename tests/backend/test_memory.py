"""Memory and precision options (serve flags, generator_backend/memory.py) on the CPU: what can be
checked without a GPU is the plumbing, exactness where an option must not change the maths, and
the fp16-safe VAE (a force_upcast VAE stays fp32 while the rest runs in fp16)."""

import numpy as np
import pytest
import torch

from generator_backend.core import Components, GenerationRequest, generate
from generator_backend.memory import MemoryOptions, configure
from tests.backend.conftest import as_components, load_pipe
from tests.backend.test_sdxl import load_xl

REQ = dict(prompt="red bricks", negative_prompt="blurry", seed=3, steps=3, guidance=7.0, scheduler="euler")


def image(c, size=64):
    return generate(c, GenerationRequest(**REQ, width=size, height=size)).numpy()


def test_serve_flags_make_the_options():
    from generator_backend.cli import build_parser, memory_options

    args = build_parser().parse_args(["serve", "--vae-tiling", "--vae-tile", "256", "--attention-slicing",
                                      "--no-vae-upcast", "--text-encoders-on-cpu"])
    assert memory_options(args) == MemoryOptions(True, 256, True, False, True)
    assert memory_options(build_parser().parse_args(["serve"])) == MemoryOptions()


def test_vae_tiling_is_exact_within_one_tile_and_tiles_above(models_dir):
    c = as_components(load_pipe(models_dir, "tiny"))
    plain_small, plain_large = image(c, 64), image(c, 128)
    configure(c, MemoryOptions(vae_tiling=True, vae_tile=64))
    assert c.vae.use_tiling and c.vae.tile_latent_min_size == 8
    np.testing.assert_array_equal(image(c, 64), plain_small)  # fits one tile: the untiled decode
    tiled = image(c, 128)
    assert tiled.shape == plain_large.shape and np.isfinite(tiled).all()
    assert np.abs(tiled - plain_large).max() > 0  # it did tile (per-tile GroupNorm statistics)


def test_attention_slicing_changes_the_result_only_by_rounding(models_dir):
    _, c = load_xl(models_dir, "tiny-xl")
    plain = image(c)
    configure(c, MemoryOptions(attention_slicing=True))
    np.testing.assert_allclose(image(c), plain, atol=1e-5)  # the same sums, sliced: fp32 rounding only


@pytest.mark.parametrize("upcast", [True, False])
def test_a_force_upcast_vae_stays_fp32_under_fp16(models_dir, upcast):
    """fp16 on the CPU stands in for a GPU's: the UNet and text encoders in half precision, the SDXL
    VAE in fp32 (its activations overflow fp16), and the core casts latents to the VAE's dtype."""
    pipe, _ = load_xl(models_dir, "tiny-xl")
    pipe.to(torch.float16)
    c = configure(Components.from_pipeline(pipe, "cpu", torch.float16), MemoryOptions(vae_upcast=upcast))
    assert c.vae.dtype == (torch.float32 if upcast else torch.float16) and c.unet.dtype == torch.float16
    out = image(c)
    assert out.shape == (64, 64, 3) and np.isfinite(out).all()
    reference = image(load_xl(models_dir, "tiny-xl")[1])
    assert np.abs(out - reference).mean() < 0.02  # fp16 rounding of the same model


def test_text_encoders_stay_on_the_device_on_a_cpu(models_dir):
    c = configure(load_xl(models_dir, "tiny-xl")[1], MemoryOptions(text_encoders_on_cpu=True))
    assert c.text_encoder.device.type == "cpu" and c.text_encoder_2.dtype == torch.float32
