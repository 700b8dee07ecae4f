"""Inpainting, seamless tiling, infusion and model ensembling in the one core (tiny models)."""

import numpy as np
import pytest
import torch

from generator_backend.core import (Cancelled, GenerationRequest, IncompatibleModels, PromptTerm, encode_image,
                                    generate)
from generator_backend.modifiers import Infusion, seamless
from generator_backend.schedulers import make_scheduler

BASE = dict(prompt="red bricks", negative_prompt="blurry", seed=3, steps=4, guidance=7.0, width=64, height=64,
            scheduler="euler")
BATCH_ATOL = 1e-5  # a different UNet batch size changes fp32 CPU results by ~1e-6


def run(components, **kw):
    return generate(components, GenerationRequest(**{**BASE, **kw})).numpy()


@pytest.fixture(scope="module")
def image():
    return torch.from_numpy(np.random.default_rng(0).random((64, 64, 3), dtype=np.float32))


@pytest.fixture(scope="module")
def mask():
    m = torch.zeros(64, 64)
    m[16:40, 8:48] = 1.0  # white = repaint
    return m


def snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------- inpainting
@pytest.mark.parametrize("scheduler", ["euler", "ddim", "euler_a"])
@pytest.mark.parametrize("strength", [1.0, 0.6])
@pytest.mark.parametrize("model", ["tiny", "tiny-inpaint"])
def test_inpainting_matches_diffusers(request, image, mask, scheduler, strength, model):
    from diffusers import StableDiffusionInpaintPipeline

    from tests.backend.conftest import as_components

    pipe_fixture = "tiny_pipe" if model == "tiny" else "inpaint_pipe"
    base = request.getfixturevalue(pipe_fixture)
    components = as_components(base)
    pipe = StableDiffusionInpaintPipeline(**base.components)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler(scheduler, components.scheduler)
    ref = pipe("red bricks", image=image.permute(2, 0, 1)[None], mask_image=mask[None, None],
               negative_prompt="blurry", height=64, width=64, strength=strength, num_inference_steps=6,
               guidance_scale=7.0, generator=torch.Generator().manual_seed(3), output_type="np").images[0]
    ours = run(components, steps=6, scheduler=scheduler, init_image=image, mask=mask, strength=strength)
    inside = mask.numpy().astype(bool)
    # Inside the mask: the pipeline's pixels. Outside: the original, pasted back exactly.
    np.testing.assert_allclose(ours[inside], ref[inside], atol=1e-5)
    np.testing.assert_array_equal(ours[~inside], image.numpy()[~inside])


def test_inpainting_changes_only_the_mask_and_feathers_softly(components, image, mask):
    hard = run(components, init_image=image, mask=mask)
    soft = run(components, init_image=image, mask=mask, feather=4.0)
    source = image.numpy()
    inside = mask.numpy().astype(bool)
    assert np.abs(hard[inside] - source[inside]).max() > 1e-2
    near = np.zeros_like(inside)
    near[10:46, 2:54] = True  # within the blur radius (3 sigma = 6 px) of the mask
    np.testing.assert_array_equal(soft[~near], source[~near])  # far outside: untouched
    ring = near & ~inside
    assert np.abs(soft[ring] - source[ring]).max() > 0  # the soft edge blends
    np.testing.assert_array_equal(hard[ring], source[ring])


# ----------------------------------------------------------------------------- tiling
def test_vae_decoder_is_roll_equivariant_when_tiled(components):
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    decode = lambda z: components.vae.decode(z, return_dict=False)[0]  # noqa: E731
    with torch.no_grad(), seamless([components.vae], "xy"):
        plain = decode(latents)
        rolled = decode(latents.roll((1, 2), dims=(2, 3)))
    torch.testing.assert_close(rolled, plain.roll((8, 16), dims=(2, 3)), atol=1e-5, rtol=0)
    with torch.no_grad():
        untiled = decode(latents.roll((1, 2), dims=(2, 3)))
    assert (untiled - plain.roll((8, 16), dims=(2, 3))).abs().max() > 1e-3  # without tiling it is not


def test_vae_encoder_and_unet_are_roll_equivariant_when_tiled(components):
    pixels = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad(), seamless([components.vae, components.unet], "xy"):
        encoded = components.vae.encode(pixels).latent_dist.mode()
        rolled = components.vae.encode(pixels.roll(16, dims=3)).latent_dist.mode()
        torch.testing.assert_close(rolled, encoded.roll(2, dims=3), atol=1e-5, rtol=0)
        emb = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(2))
        x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3))
        out = components.unet(x, 10, encoder_hidden_states=emb).sample
        out_rolled = components.unet(x.roll(2, dims=2), 10, encoder_hidden_states=emb).sample
    torch.testing.assert_close(out_rolled, out.roll(2, dims=2), atol=1e-5, rtol=0)


def test_one_axis_wraps_only_that_axis(components):
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), seamless([components.vae], "x"):
        plain = components.vae.decode(latents).sample
        along_x = components.vae.decode(latents.roll(1, dims=3)).sample
        along_y = components.vae.decode(latents.roll(1, dims=2)).sample
    torch.testing.assert_close(along_x, plain.roll(8, dims=3), atol=1e-5, rtol=0)
    assert (along_y - plain.roll(8, dims=2)).abs().max() > 1e-3


def test_tiled_generation_restores_the_models(components, image):
    before_unet, before_vae = snapshot(components.unet), snapshot(components.vae)
    plain = run(components)
    tiled = run(components, tile_axes="xy", init_image=image, strength=0.8)
    assert np.abs(tiled - run(components, init_image=image, strength=0.8)).max() > 1e-4
    np.testing.assert_array_equal(run(components), plain)  # padding restored
    for k, v in snapshot(components.unet).items():
        assert torch.equal(v, before_unet[k])
    assert all(torch.equal(v, before_vae[k]) for k, v in snapshot(components.vae).items())
    assert not any(m._forward_pre_hooks for m in components.vae.modules())
    assert {m.padding_mode for m in [*components.unet.modules(), *components.vae.modules()]
            if isinstance(m, torch.nn.Conv2d)} == {"zeros"}


def test_hooks_are_removed_when_a_job_is_cancelled(components, image):
    def cancel(step, total, latents):
        raise Cancelled()

    request = GenerationRequest(**{**BASE, "tile_axes": "xy", "infusion_images": [image],
                                   "infusion_weights": {"mid": 1.0}})
    with pytest.raises(Cancelled):
        generate(components, request, on_step=cancel)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in components.unet.modules())
    assert not any(m._forward_pre_hooks for m in components.vae.modules())
    assert {m.padding_mode for m in [*components.unet.modules(), *components.vae.modules()]
            if isinstance(m, torch.nn.Conv2d)} == {"zeros"}
    np.testing.assert_array_equal(run(components), run(components))


# ----------------------------------------------------------------------------- infusion
ALL_LAYERS = {"down0": 0.3, "down1": 0.3, "mid": 0.5, "up0": 0.3, "up1": 0.3}


def test_infusion_with_zero_weights_is_plain_and_adds_no_rows(components, image):
    calls = []
    hook = components.unet.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    try:
        out = run(components, infusion_images=[image], infusion_weights={k: 0.0 for k in ALL_LAYERS})
    finally:
        hook.remove()
    np.testing.assert_array_equal(out, run(components))
    assert calls == [2] * 4


def test_infusion_invariants(components, image):
    other = torch.flip(image, dims=(0,))
    one = run(components, infusion_images=[image], infusion_weights=ALL_LAYERS)
    assert np.abs(one - run(components)).max() > 1e-3  # a non-zero weight changes the output
    three = run(components, infusion_images=[image] * 3, infusion_weights=ALL_LAYERS)
    np.testing.assert_allclose(three, one, atol=BATCH_ATOL)
    ab = run(components, infusion_images=[image, other], infusion_weights=ALL_LAYERS)
    ba = run(components, infusion_images=[other, image], infusion_weights=ALL_LAYERS)
    np.testing.assert_allclose(ab, ba, atol=BATCH_ATOL)
    decayed = run(components, infusion_images=[image], infusion_weights=ALL_LAYERS, infusion_decay=0.5)
    cond_only = run(components, infusion_images=[image], infusion_weights=ALL_LAYERS, infusion_cond_only=True)
    assert np.abs(decayed - one).max() > 1e-4 and np.abs(cond_only - one).max() > 1e-4


def test_infusion_never_modifies_the_biasing_rows(components, image):
    """Block outputs of the biasing row equal those of the same row run without infusion."""
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    emb = torch.randn(3, 77, 32, generator=torch.Generator().manual_seed(1))
    seen = []
    probe = components.unet.up_blocks[1].register_forward_hook(lambda m, a, out: seen.append(out.clone()))
    infusion = Infusion(ALL_LAYERS, generated=2)
    try:
        with torch.no_grad():
            with infusion.attached(components.unet):
                infused = components.unet(x, 10, encoder_hidden_states=emb).sample
            plain = components.unet(x, 10, encoder_hidden_states=emb).sample
            alone = components.unet(x[2:], 10, encoder_hidden_states=emb[2:]).sample
    finally:
        probe.remove()
    infused_blocks, plain_blocks, alone_blocks = seen
    # The probe runs before the infusion hook of the same block: it sees what earlier blocks made.
    assert (infused_blocks[:2] - plain_blocks[:2]).abs().max() > 1e-3  # the generated rows were infused
    torch.testing.assert_close(infused_blocks[2:], alone_blocks, atol=BATCH_ATOL, rtol=0)
    torch.testing.assert_close(infused[2:], alone, atol=BATCH_ATOL, rtol=0)
    assert (infused[:2] - plain[:2]).abs().max() > 1e-3


# ----------------------------------------------------------------------------- model ensembling
def test_model_ensemble_invariants(components, components_b):
    a, b = run(components), run(components_b)
    assert np.abs(a - b).max() > 1e-3
    np.testing.assert_array_equal(run([(components, 1.0), (components_b, 0.0)]), a)
    np.testing.assert_array_equal(run([(components, 0.0), (components_b, 1.0)]), b)
    np.testing.assert_array_equal(run([(components, 0.5), (components, 0.5)]), a)
    mixed = run([(components, 0.5), (components_b, 0.5)])
    assert np.abs(mixed - a).max() > 1e-4 and np.abs(mixed - b).max() > 1e-4
    sequential = generate([(components, 0.5), (components_b, 0.5)], GenerationRequest(**BASE), offload=True)
    np.testing.assert_array_equal(sequential.numpy(), mixed)


def test_incompatible_models_are_refused(components, inpaint_pipe):
    from tests.backend.conftest import as_components

    with pytest.raises(IncompatibleModels, match="latent space"):
        run([(components, 0.5), (as_components(inpaint_pipe), 0.5)])


# ----------------------------------------------------------------------------- combinations
def test_ensembling_inpainting_and_tiling_together(components, image, mask):
    out = run(components, prompts=[PromptTerm("red bricks", 0.6), PromptTerm("blue waves", 0.4)],
              init_image=image, mask=mask, tile_axes="xy")
    inside = mask.numpy().astype(bool)
    np.testing.assert_array_equal(out[~inside], image.numpy()[~inside])
    plain_inpaint = run(components, init_image=image, mask=mask)
    assert np.abs(out[inside] - plain_inpaint[inside]).max() > 1e-4


def test_infusion_with_img2img(components, image):
    other = torch.flip(image, dims=(1,))
    out = run(components, init_image=image, strength=0.7, infusion_images=[other], infusion_weights={"mid": 1.0})
    assert np.abs(out - run(components, init_image=image, strength=0.7)).max() > 1e-4
    assert encode_image(components, image, None).shape == (1, 4, 8, 8)
