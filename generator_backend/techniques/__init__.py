"""Techniques: plug-ins of the denoising core's stages, one module each, and their registry.

A technique declares the protocol parameters and arrays it owns, builds its part of the core's
request from the validated parameters, says when it applies, and contributes to the stages it
changes (every stage method of ``Technique`` does nothing until overridden). The registry order
is the order of their contributions, which keeps the random draws in diffusers' order.
"""

from __future__ import annotations

from contextlib import nullcontext


class Technique:
    """The stages a technique may change; each default leaves the stage as it is."""

    name = ""
    fields: tuple = ()  # the protocol parameters it owns (their Field entries are the protocol's)
    arrays: tuple = ()  # the protocol arrays it reads

    def request(self, params: dict, arrays: dict) -> dict:
        """Its GenerationRequest values from a job's validated parameters and arrays."""
        return {name: params[name] for name in self.fields if name in params}

    def applies(self, c, req) -> bool:
        return False

    def conditions(self, run, c):
        """1. Conditional embeddings in place of the prompts' (one per frame), or None."""
        return None

    def encoded(self, run):
        """1. After the prompts are encoded: add rows to ``run.encoded``."""

    def schedule(self, run):
        """2. Set ``run.strength`` to start from an image part of the way down the schedule."""

    def prepare(self, run):
        """2. After the timesteps, before any model is changed (the layout pass)."""

    def weights(self, run):
        """A context manager around every stage, from 1 (model weights changed and restored: LoRA)."""
        return nullcontext()

    def context(self, run):
        """A context manager around stages 3-5 (models changed and restored)."""
        return nullcontext()

    def before_noise(self, run):
        """3. Random draws that come before the starting noise (the init image's latents)."""

    def noise(self, run):
        """3. Starting noise in place of the main stream's draw, or None."""
        return None

    def start(self, run):
        """3. After the noise: the starting latents and the denoiser's extra inputs."""

    def model_rows(self, run, model_input, t, i):
        """Denoiser: rows added to the UNet batch before the scheduler scales it."""
        return model_input

    def model_channels(self, run, model_input):
        """Denoiser: channels added to the scaled UNet input."""
        return model_input

    def unet_context(self, run, unet):
        """Denoiser: a context manager around each UNet call (hooks)."""
        return nullcontext()

    def after_step(self, run, i):
        """4. After scheduler step i: change ``run.latents``."""

    def finish(self, run, image):
        """5. The decoded (B, H, W, 3) image, changed (paste back)."""
        return image

    def untouched(self, req):
        """(H, W) bool mask of pixels that are the input's own, or None: the output keeps them
        in the input's encoding."""
        return None


from . import img2img, inpaint, infusion, layout, lora, seamless, tile_batch, walk  # noqa: E402

# Registry order: the order of contributions to each stage (and of the random draws).
TECHNIQUES = (walk.TECHNIQUE, img2img.TECHNIQUE, tile_batch.TECHNIQUE, inpaint.TECHNIQUE, layout.TECHNIQUE,
              infusion.TECHNIQUE, seamless.TECHNIQUE, lora.TECHNIQUE)


def active(c, req) -> list:
    """The registered techniques that apply to ``req`` on model ``c``."""
    return [t for t in TECHNIQUES if t.applies(c, req)]


# The parameters the core reads itself, and those the runner reads (models, delivery, encodings);
# every other protocol parameter belongs to exactly one technique (tests/backend/test_registry.py).
CORE_FIELDS = ("prompt", "negative_prompt", "seed", "steps", "guidance", "width", "height", "scheduler", "prompts",
               "ensemble_mode")
RUNNER_FIELDS = ("model", "models", "offload", "preview_interval", "output_dtype", "flip_y", "linear", "input_linear",
                 "input_flip_y")


def request_from_params(params: dict, arrays: dict):
    """The core's typed request from a job's validated parameters and arrays."""
    from ..core import GenerationRequest, PromptTerm

    values = {name: params[name] for name in CORE_FIELDS if name != "prompts"}
    values["prompts"] = [PromptTerm(t["text"], t["weight"], t["guidance"]) for t in params["prompts"] or []]
    for technique in TECHNIQUES:
        values.update(technique.request(params, arrays))
    return GenerationRequest(**values)


def untouched_pixels(req):
    """The pixels of the job's input that no technique changed, as an (H, W) bool mask, or None."""
    masks = [m for m in (t.untouched(req) for t in TECHNIQUES) if m is not None]
    return masks[0] if masks else None
