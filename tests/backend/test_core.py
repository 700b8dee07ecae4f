"""The denoising core on the tiny model: the stock diffusers pipeline is the oracle."""

import numpy as np
import pytest
import torch

from dream_addon import protocol
from generator_backend.core import GenerationRequest, generate, latent_preview, srgb_to_linear, to_rgba
from generator_backend.schedulers import SCHEDULERS, make_scheduler


def run(components, **kw):
    base = dict(prompt="red bricks", negative_prompt="blurry", seed=3, steps=4, guidance=7.0, width=64, height=96)
    return generate(components, GenerationRequest(**{**base, **kw})).numpy()


def test_scheduler_names_match_protocol():
    assert set(protocol.SCHEDULERS) == set(SCHEDULERS) | {"default"}


@pytest.mark.parametrize("scheduler", protocol.SCHEDULERS)
def test_matches_stable_diffusion_pipeline(components, tiny_pipe, scheduler):
    ours = run(components, scheduler=scheduler)
    tiny_pipe.scheduler = make_scheduler(scheduler, components.scheduler)
    ref = tiny_pipe("red bricks", negative_prompt="blurry", num_inference_steps=4, guidance_scale=7.0, width=64,
                    height=96, generator=torch.Generator().manual_seed(3), output_type="np").images[0]
    assert ours.shape == (96, 64, 3)
    np.testing.assert_array_equal(ours, ref)  # exact: same ops in the same order


def test_no_guidance_matches_pipeline(components, tiny_pipe):
    ours = run(components, guidance=1.0, scheduler="euler")
    tiny_pipe.scheduler = make_scheduler("euler", components.scheduler)
    ref = tiny_pipe("red bricks", negative_prompt="blurry", num_inference_steps=4, guidance_scale=1.0, width=64,
                    height=96, generator=torch.Generator().manual_seed(3), output_type="np").images[0]
    np.testing.assert_array_equal(ours, ref)


def test_same_seed_same_pixels_and_seeds_differ(components):
    a, b, c = run(components, seed=11), run(components, seed=11), run(components, seed=12)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


@pytest.mark.parametrize("change", [{"prompt": "blue waves"}, {"negative_prompt": ""}, {"steps": 5},
                                    {"guidance": 3.0}, {"scheduler": "ddim"}])
def test_every_parameter_changes_the_image(components, change):
    assert np.abs(run(components) - run(components, **change)).max() > 1e-4


def test_each_scheduler_instance_is_fresh(components):
    # DPM++ keeps history in the scheduler; a second job must not see the first one's.
    first = run(components, scheduler="dpmpp_2m")
    run(components, scheduler="dpmpp_2m", seed=99)
    np.testing.assert_array_equal(first, run(components, scheduler="dpmpp_2m"))


def test_step_callback_sees_every_step_and_can_cancel(components):
    from generator_backend.core import Cancelled

    seen = []

    def on_step(step, total, latents):
        seen.append((step, total, tuple(latents.shape)))
        if step == 2:
            raise Cancelled()

    with pytest.raises(Cancelled):
        generate(components, GenerationRequest(prompt="x", steps=6, width=64, height=64), on_step=on_step)
    assert seen == [(1, 6, (1, 4, 8, 8)), (2, 6, (1, 4, 8, 8))]


def test_preview_has_image_size(components):
    latents = torch.randn(1, 4, 12, 8)
    preview = latent_preview(latents, components.vae_scale_factor)
    assert preview.shape == (96, 64, 3) and preview.min() >= 0 and preview.max() <= 1


def test_to_rgba_flip_linear_and_dtypes():
    image = torch.rand(6, 5, 3)
    rgba = to_rgba(image, "float32", flip_y=False)
    assert rgba.shape == (6, 5, 4) and np.all(rgba[..., 3] == 1)
    np.testing.assert_array_equal(rgba[..., :3], image.numpy())
    np.testing.assert_array_equal(to_rgba(image, "float32", flip_y=True), rgba[::-1])
    assert to_rgba(image, "uint8", False).dtype == np.uint8
    np.testing.assert_array_equal(to_rgba(image, "uint8", False)[..., :3], (image.numpy() * 255).round())
    assert to_rgba(image, "float16", False).dtype == np.float16
    lin = to_rgba(torch.tensor([[[0.0, 0.5, 1.0]]]), "float32", False, linear=True)[0, 0]
    np.testing.assert_allclose(lin[:3], [0.0, 0.21404, 1.0], atol=1e-5)  # sRGB 0.5 is 21.4 % linear
    assert srgb_to_linear(torch.tensor([0.04045])).item() == pytest.approx(0.04045 / 12.92)
    x = torch.rand(50, 3, dtype=torch.float64)
    reference = torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)
    torch.testing.assert_close(srgb_to_linear(x), reference, rtol=0, atol=1e-12)


def test_linear_to_srgb_inverts_srgb_to_linear():
    from generator_backend.core import linear_to_srgb

    x = torch.linspace(0, 1, 1001, dtype=torch.float64)
    torch.testing.assert_close(linear_to_srgb(srgb_to_linear(x)), x, rtol=0, atol=1e-12)


# ------------------------------------------------------------------ layout pass
def test_layout_pass_off_and_auto_below_twice_native_size_equal_plain(components):
    from generator_backend.core import uses_layout_pass

    native = components.unet.config.sample_size * components.vae_scale_factor
    assert not uses_layout_pass(components, GenerationRequest(width=64, height=96, layout="auto")) and 96 < 2 * native
    plain = run(components)
    np.testing.assert_array_equal(run(components, layout="off"), plain)
    np.testing.assert_array_equal(run(components, layout="auto"), plain)
    assert uses_layout_pass(components, GenerationRequest(width=2 * native, height=2 * native, layout="auto"))
    assert not uses_layout_pass(components, GenerationRequest(width=2 * native, height=native, layout="auto"))


def test_tiled_repeats_and_crops():
    from generator_backend.core import tiled

    small = torch.arange(2 * 3 * 4.0).reshape(1, 2, 3, 4)
    big = tiled(small, 5, 10)
    assert big.shape == (1, 2, 5, 10)
    assert torch.equal(big[..., :3, :4], small) and torch.equal(big[..., 3:, 4:8], small[..., :2, :])
    assert torch.equal(big[..., :, 8:], big[..., :, :2])


def test_layout_pass_starts_from_the_tiled_seamless_half_size_sample(components):
    """The first part of the progress is the layout pass, at half size, seamless and with half the
    steps; its image, tiled and encoded, is where the main pass starts (noised to the first timestep)."""
    from generator_backend.core import encode_image, encode_prompt, layout_request, tiled

    req = GenerationRequest(prompt="red bricks", negative_prompt="blurry", seed=3, steps=4, guidance=7.0, width=64,
                            height=96, scheduler="euler", layout="on")
    small = layout_request(components, req)
    assert (small.width, small.height, small.tile_axes, small.layout, small.steps) == (32, 48, "xy", "off", 2)
    assert small.seed != req.seed  # its own noise: not a prefix of the main pass's draws
    seen = []
    image = generate(components, req, on_step=lambda step, total, latents: seen.append((step, total, latents)))
    assert [(step, total) for step, total, _ in seen] == [(i, 6) for i in range(1, 7)]
    assert all(latents.shape == (1, 4, 96 // components.vae_scale_factor, 64 // components.vae_scale_factor)
               for _, _, latents in seen)  # previews keep the job's size
    half_steps = []
    half_image = generate(components, small, on_step=lambda step, total, latents: half_steps.append(latents))
    torch.testing.assert_close(seen[1][2], tiled(half_steps[-1], *seen[1][2].shape[2:]), rtol=0, atol=0)
    # The main pass's first step from that start, by hand: the same as the job's third callback.
    start = encode_image(components, tiled(half_image.permute(2, 0, 1), 96, 64).permute(1, 2, 0), None)
    scheduler = make_scheduler("euler", components.scheduler)
    scheduler.set_timesteps(4)
    t = scheduler.timesteps[0]
    noise = torch.randn(start.shape, generator=torch.Generator().manual_seed(3))
    x = scheduler.add_noise(start, noise, t[None])
    embeds = torch.cat([encode_prompt(components, "blurry"), encode_prompt(components, "red bricks")])
    out = components.unet(scheduler.scale_model_input(torch.cat([x] * 2), t), t, encoder_hidden_states=embeds).sample
    uncond, cond = out.chunk(2)
    first = scheduler.step(uncond + 7.0 * (cond - uncond), t, x).prev_sample
    torch.testing.assert_close(seen[2][2], first, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(image.numpy(), run(components, scheduler="euler", layout="on"))  # same seed
    assert np.abs(image.numpy() - run(components, scheduler="euler")).max() > 1e-3


def test_layout_pass_can_be_cancelled_and_ignores_full_size_infusion(components):
    from generator_backend.core import Cancelled

    def stop_at_2(step, total, latents):
        if step == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        generate(components, GenerationRequest(prompt="red", steps=4, width=64, height=64, layout="on"), stop_at_2)
    bias = torch.rand(64, 64, 3)
    out = run(components, width=64, height=64, layout="on", infusion_images=[bias], infusion_weights={"mid": 1.0})
    assert out.shape == (64, 64, 3)
