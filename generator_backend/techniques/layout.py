"""The layout pass (text-to-image): first sample a seamless canvas of half the size, then start
the main pass from it, tiled, encoded by the VAE and noised to the first timestep.

A training step at the last timestep sees √ᾱ_T·x₀ + √(1−ᾱ_T)·ε, and with SD's schedule
√ᾱ_T = 0.068 is not zero ("Common Diffusion Noise Schedules and Sample Steps are Flawed",
Lin et al. 2024). On a large canvas that faint signal carries the lattice of a pattern, and pure
starting noise lets the model read a wrong one (a sheared checker). The main pass starts from
the tiled half-size sample encoded at the full size, as training's x₀ always was, and noised
to the first timestep, as img2img at strength 1 would.
"""

from __future__ import annotations

from dataclasses import replace

from ..core import LAYOUT_STEP_FRACTION, encode_image, generate, stream_seed, tiled
from . import Technique


def uses_layout_pass(c, req) -> bool:
    """Text-to-image only; "auto" turns it on where the canvas is at least twice the model's native
    size both ways, the sizes at which a lattice goes astray."""
    if req.layout == "off" or req.init_image is not None or req.frame_noise is not None:
        return False
    if req.layout == "on":
        return True
    native = c.unet.config.sample_size
    native_h, native_w = (native, native) if isinstance(native, int) else native
    f = c.vae_scale_factor
    return req.height >= 2 * native_h * f and req.width >= 2 * native_w * f


def layout_request(c, req):
    """The layout pass: the same prompts on a seamless canvas of half the size (rounded up to what
    the UNet can downsample), with a noise stream of its own (with the job's seed, torch.randn's
    draws for the half size would be the first values of the main pass's draws, and that
    correlation undid the layout), without infusion (its images have the full size)."""
    f = c.vae_scale_factor
    multiple = 2 ** (len(c.unet.config.block_out_channels) - 1)

    def half(pixels):
        latent = -(-(pixels // f) // 2)
        return -(-latent // multiple) * multiple * f

    return replace(req, width=half(req.width), height=half(req.height), tile_axes="xy", layout="off",
                   steps=max(1, round(req.steps * LAYOUT_STEP_FRACTION)),
                   seed=stream_seed(req.seed, "layout"), infusion_images=[], infusion_weights={})


class Layout(Technique):
    name = "layout"
    fields = ("layout",)

    def applies(self, c, req):
        return uses_layout_pass(c, req)

    def schedule(self, run):
        run.strength = 1.0

    def prepare(self, run):
        """The pass itself, with progress, previews (tiled to the full size) and cancel of its own steps."""
        main_steps = len(run.timesteps)

        def on_layout_step(step, total, latents):
            run.done = total
            if run.on_step is not None:
                run.on_step(step, total + main_steps, tiled(latents, *run.shape[2:]))

        small = generate(run.components, layout_request(run.c, run.req), on_layout_step, run.offload)
        full = tiled(small.permute(2, 0, 1), run.req.height, run.req.width).permute(1, 2, 0)
        run.state[self.name] = encode_image(run.c, full, None)

    def start(self, run):
        run.latents = run.scheduler.add_noise(run.state[self.name], run.noise, run.timesteps[:1])


TECHNIQUE = Layout()
