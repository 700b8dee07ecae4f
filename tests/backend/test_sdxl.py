"""SDXL in the core, on tiny SDXL models built from configs: diffusers' SDXL pipelines are the oracle,
and every technique runs on it."""

import numpy as np
import pytest
import torch

from dream_addon import protocol
from generator_backend.core import GenerationRequest, PromptTerm, generate
from generator_backend.schedulers import make_scheduler
from generator_backend.sdxl import is_xl, native_size, pack, unpack
from tests.backend.test_walks import frames, walk_params

BASE = dict(prompt="red bricks", negative_prompt="blurry", seed=3, steps=4, guidance=7.0, width=64, height=96,
            scheduler="euler")
BATCH_ATOL = 1e-5  # a different UNet batch composition changes fp32 CPU results by ~1e-6 (notes/diffusers-facts)


def run(components, **kw):
    return generate(components, GenerationRequest(**{**BASE, **kw})).numpy()


def load_xl(models_dir, name):
    import torch
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import logging

    from generator_backend.core import Components
    from generator_backend.tiny_xl import ensure_tiny_xl_model

    logging.disable_progress_bar()
    pipe = StableDiffusionXLPipeline.from_pretrained(ensure_tiny_xl_model(models_dir, name))
    pipe.set_progress_bar_config(disable=True)
    return pipe, Components.from_pipeline(pipe, "cpu", torch.float32)


@pytest.fixture(scope="module")
def xl(models_dir):
    return load_xl(models_dir, "tiny-xl")


@pytest.fixture(scope="module")
def xl_b(models_dir):
    return load_xl(models_dir, "tiny-xl-b")[1]


@pytest.fixture(scope="module")
def xl_inpaint(models_dir):
    return load_xl(models_dir, "tiny-xl-inpaint")


@pytest.fixture(scope="module")
def image():
    return torch.from_numpy(np.random.default_rng(0).random((96, 64, 3), dtype=np.float32))


@pytest.fixture(scope="module")
def mask():
    m = torch.zeros(96, 64)
    m[16:56, 8:48] = 1.0  # white = repaint
    return m


def generator():
    return torch.Generator().manual_seed(3)


def test_tiny_xl_is_sdxl_shaped(xl):
    pipe, c = xl
    assert is_xl(c) and c.text_encoder_2 is not None and c.zero_empty_negative
    assert type(c.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert c.unet.config.cross_attention_dim == c.text_encoder.config.hidden_size + c.text_encoder_2.config.hidden_size
    assert native_size(c) == 256 and c.vae.config.scaling_factor == 0.13025 and c.vae.config.force_upcast


def test_pack_unpack_round_trip():
    states, pooled = torch.randn(3, 77, 64), torch.randn(3, 32)
    packed = pack(states, pooled)
    assert packed.shape == (3, 78, 64)
    back_states, back_pooled = unpack(packed, 32)
    assert torch.equal(back_states, states) and torch.equal(back_pooled, pooled)


@pytest.mark.parametrize("scheduler", ["euler", "ddim", "dpmpp_2m", "euler_a"])
@pytest.mark.parametrize("negative", ["blurry", ""])
def test_matches_stable_diffusion_xl_pipeline(xl, scheduler, negative):
    """Exact. An empty negative prompt is zeros (force_zeros_for_empty_prompt), as the pipeline
    makes it when it is given none."""
    pipe, c = xl
    ours = run(c, scheduler=scheduler, negative_prompt=negative)
    pipe.scheduler = make_scheduler(scheduler, c.scheduler)
    ref = pipe("red bricks", num_inference_steps=4, guidance_scale=7.0, width=64, height=96, generator=generator(),
               output_type="np", **({"negative_prompt": negative} if negative else {})).images[0]
    assert ours.shape == (96, 64, 3)
    np.testing.assert_array_equal(ours, ref)


def test_no_guidance_matches_pipeline(xl):
    pipe, c = xl
    pipe.scheduler = make_scheduler("euler", c.scheduler)
    ref = pipe("red bricks", num_inference_steps=4, guidance_scale=1.0, width=64, height=96, generator=generator(),
               output_type="np").images[0]
    np.testing.assert_array_equal(run(c, guidance=1.0), ref)


@pytest.mark.parametrize("change", [{"prompt": "blue waves"}, {"negative_prompt": "dark"}, {"guidance": 3.0},
                                    {"seed": 4}])
def test_every_parameter_changes_the_image(xl, change):
    c = xl[1]
    base, changed = run(c, width=96, height=96), run(c, **{"width": 96, "height": 96, **change})
    assert np.abs(base - changed).max() > 1e-4


def test_time_ids_reach_the_unet(xl):
    """The micro-conditioning is read: another canvas size changes the added time ids' embedding."""
    from generator_backend.sdxl import time_ids

    c = xl[1]
    a = c.unet.add_time_proj(time_ids(GenerationRequest(width=64, height=96), 1, torch.float32, "cpu").flatten())
    b = c.unet.add_time_proj(time_ids(GenerationRequest(width=96, height=64), 1, torch.float32, "cpu").flatten())
    assert (a - b).abs().max() > 1e-3


@pytest.mark.parametrize("scheduler", ["euler", "ddim", "euler_a"])
@pytest.mark.parametrize("strength", [0.3, 0.75, 1.0])
def test_img2img_matches_stable_diffusion_xl_img2img_pipeline(xl, image, scheduler, strength):
    from diffusers import StableDiffusionXLImg2ImgPipeline

    pipe, c = xl
    img2img = StableDiffusionXLImg2ImgPipeline(**pipe.components, requires_aesthetics_score=False)
    img2img.set_progress_bar_config(disable=True)
    img2img.scheduler = make_scheduler(scheduler, c.scheduler)
    ref = img2img("red bricks", image=image.permute(2, 0, 1)[None], strength=strength, negative_prompt="blurry",
                  num_inference_steps=10, guidance_scale=7.0, generator=generator(), output_type="np").images[0]
    ours = run(c, steps=10, scheduler=scheduler, init_image=image, strength=strength)
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("scheduler", ["euler", "ddim"])
@pytest.mark.parametrize("strength", [1.0, 0.6])
@pytest.mark.parametrize("model", ["tiny-xl", "tiny-xl-inpaint"])
def test_inpainting_matches_stable_diffusion_xl_inpaint_pipeline(request, image, mask, scheduler, strength, model):
    """Inside the mask the pipeline's pixels; outside, the original pasted back exactly (the
    pipeline leaves the VAE's round trip there)."""
    from diffusers import StableDiffusionXLInpaintPipeline

    pipe, c = request.getfixturevalue("xl" if model == "tiny-xl" else "xl_inpaint")
    inpaint = StableDiffusionXLInpaintPipeline(**pipe.components, requires_aesthetics_score=False)
    inpaint.set_progress_bar_config(disable=True)
    inpaint.scheduler = make_scheduler(scheduler, c.scheduler)
    ref = inpaint("red bricks", image=image.permute(2, 0, 1)[None], mask_image=mask[None, None],
                  negative_prompt="blurry", height=96, width=64, strength=strength, num_inference_steps=6,
                  guidance_scale=7.0, generator=generator(), output_type="np").images[0]
    ours = run(c, steps=6, scheduler=scheduler, init_image=image, mask=mask, strength=strength)
    inside = mask.numpy().astype(bool)
    np.testing.assert_array_equal(ours[inside], ref[inside])
    np.testing.assert_array_equal(ours[~inside], image.numpy()[~inside])


# ------------------------------------------------------------------ techniques on SDXL
def test_prompt_ensembles(xl):
    c = xl[1]
    plain = run(c)
    np.testing.assert_array_equal(run(c, prompt="", prompts=[PromptTerm("red bricks", 1.0)]), plain)
    np.testing.assert_allclose(run(c, prompt="", prompts=[PromptTerm("red bricks", 1.0), PromptTerm("blue waves", 0.0)]),
                               plain, atol=BATCH_ATOL)
    mixed = run(c, prompt="", prompts=[PromptTerm("red bricks", 0.5), PromptTerm("blue waves", 0.5)])
    averaged = run(c, prompt="", prompts=[PromptTerm("red bricks", 0.5), PromptTerm("blue waves", 0.5)],
                   ensemble_mode="embedding")
    assert np.abs(mixed - plain).max() > 1e-4 and np.abs(averaged - mixed).max() > 1e-4


def test_seamless_tiling_is_roll_equivariant(xl):
    """With every convolution wrapped, rolling the starting noise by whole UNet cells rolls the image
    by the same pixels: the texture has no seam."""
    c = xl[1]
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    req = dict(width=64, height=64, tile_axes="xy")
    a = run(c, frame_noise=noise, **req)[0]
    b = run(c, frame_noise=torch.roll(noise, shifts=(2, 4), dims=(2, 3)), **req)[0]
    np.testing.assert_allclose(np.roll(a, shift=(16, 32), axis=(0, 1)), b, atol=1e-4)
    untiled = run(c, frame_noise=torch.roll(noise, shifts=(2, 4), dims=(2, 3)), width=64, height=64)[0]
    assert np.abs(np.roll(a, shift=(16, 32), axis=(0, 1)) - untiled).max() > 1e-3


def test_infusion(xl, image):
    c = xl[1]
    layers = {"down0": 0.3, "down1": 0.3, "mid": 0.5, "up0": 0.3, "up1": 0.3}
    np.testing.assert_array_equal(run(c, infusion_images=[image], infusion_weights={k: 0.0 for k in layers}), run(c))
    one = run(c, infusion_images=[image], infusion_weights=layers)
    assert np.abs(one - run(c)).max() > 1e-3
    np.testing.assert_allclose(run(c, infusion_images=[image] * 2, infusion_weights=layers), one, atol=BATCH_ATOL)


def test_model_ensemble_within_the_family(xl, xl_b):
    c = xl[1]
    a, b = run(c), run(xl_b)
    assert np.abs(a - b).max() > 1e-3
    np.testing.assert_array_equal(run([(c, 1.0), (xl_b, 0.0)]), a)
    np.testing.assert_array_equal(run([(c, 0.0), (xl_b, 1.0)]), b)
    mixed = run([(c, 0.5), (xl_b, 0.5)])
    assert np.abs(mixed - a).max() > 1e-4 and np.abs(mixed - b).max() > 1e-4


def test_sd_and_sdxl_latent_spaces_are_not_ensembled(xl, components):
    from generator_backend.core import IncompatibleModels

    with pytest.raises(IncompatibleModels, match="latent space"):
        run([(xl[1], 0.5), (components, 0.5)])


@pytest.mark.parametrize("walk, extra", [
    ("prompts", {"prompt": "", "walk_prompts": ["red bricks", "blue waves"]}),
    ("circular", {}), ("random", {}),
])
def test_walks_batch_like_single_frames(xl, walk, extra):
    c = xl[1]
    params = walk_params(walk=walk, frames=4, step_size=0.5, **extra)
    batched = frames(c, params, [0, 1, 2, 3])
    np.testing.assert_allclose(batched, frames(c, params, [0, 1, 2, 3], batch=False), atol=BATCH_ATOL)
    prompt = extra.get("walk_prompts", ["red bricks"])[0]
    plain = generate(c, GenerationRequest(prompt=prompt, seed=7, steps=3, width=64, height=64,
                                          scheduler="euler")).numpy()
    np.testing.assert_allclose(batched[0], plain, atol=BATCH_ATOL)
    assert all(np.abs(batched[i + 1] - batched[i]).mean() > 1e-5 for i in range(3))


def test_layout_pass_runs_at_twice_the_native_size(xl):
    from generator_backend.core import uses_layout_pass

    c = xl[1]
    assert uses_layout_pass(c, GenerationRequest(width=512, height=512, layout="auto"))
    out = run(c, width=512, height=512, steps=2, layout="on")
    assert out.shape == (512, 512, 3) and np.isfinite(out).all()


def test_the_manager_loads_tiny_xl_with_its_family(models_dir):
    from generator_backend.models import ModelManager

    manager = ModelManager(["tiny-xl", "tiny"], device="cpu", models_dir=models_dir)
    assert is_xl(manager.get("tiny-xl")) and not is_xl(manager.get("tiny"))
    assert manager.family("tiny-xl") == "tiny-xl/unet4" != manager.family("tiny")
    assert manager.native_size("tiny-xl") == native_size(manager.get("tiny-xl")) == 256
    assert protocol.validate_params({"prompt": "x", "model": "tiny-xl"}, protocol.txt2img_fields())["model"]
