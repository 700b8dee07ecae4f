"""Infusion: biasing images ride along as extra rows of the same UNet call, noised with one
shared noise of their own stream; block-output hooks add their averaged features to the
generated rows (modifiers.Infusion)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dream_addon import protocol

from ..core import encode_image, encode_negative, stream_generator
from ..encoding import as_sent, image_tensor
from ..modifiers import Infusion
from . import Technique


@dataclass
class InfusionInputs:
    latents: torch.Tensor  # (N, C, h, w): one row per biasing image
    noise: torch.Tensor  # the same noise for every row
    hooks: Infusion


def infusion_noise(seed: int, shape) -> torch.Tensor:
    """The one noise of every biasing row, (C, h, w), from the job's infusion stream."""
    return torch.randn(shape, generator=stream_generator(seed, "infusion"))


class InfusionTechnique(Technique):
    name = "infusion"
    fields = ("infusion_weights", "infusion_decay", "infusion_cond_only")
    arrays = protocol.INFUSION_ARRAYS

    def request(self, params, arrays):
        values = super().request(params, arrays)
        values["infusion_weights"] = params.get("infusion_weights") or {}
        values["infusion_images"] = [image_tensor(arrays[n], **as_sent(params)) for n in self.arrays if n in arrays]
        return values

    def applies(self, c, req):
        return bool(req.infusion_images) and any(w != 0 for w in req.infusion_weights.values())

    def encoded(self, run):
        """The biasing rows read the negative prompt (encoded here when guidance has none)."""
        count = len(run.req.infusion_images)
        for k, ((m, _), (embeds, terms, negative)) in enumerate(zip(run.members, run.encoded)):
            negative = encode_negative(m, run.req.negative_prompt) if negative is None else negative
            run.encoded[k] = (torch.cat([embeds, negative.expand(count, -1, -1)]), terms, negative)

    def start(self, run):
        c, req = run.c, run.req
        latents = torch.cat([encode_image(c, image, None) for image in req.infusion_images])
        noise = infusion_noise(req.seed, latents.shape[1:])
        targets = slice(req.batch, None) if run.use_cfg and req.infusion_cond_only else slice(None)
        run.state[self.name] = InfusionInputs(latents, noise.to(c.device, c.dtype).expand_as(latents),
                                              Infusion(req.infusion_weights, generated=run.rows, targets=targets))

    def model_rows(self, run, model_input, t, i):
        inputs = run.state[self.name]
        inputs.hooks.scale = run.req.infusion_decay ** i
        return torch.cat([model_input, run.scheduler.add_noise(inputs.latents, inputs.noise, t[None])])

    def unet_context(self, run, unet):
        return run.state[self.name].hooks.attached(unet)


TECHNIQUE = InfusionTechnique()
