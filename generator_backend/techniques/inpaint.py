"""Inpainting: repaint inside the mask. A 9-channel UNet reads the mask and the masked image's
latents as extra input channels; a 4-channel one keeps the unmasked latents on the original's
noisy path after every step. The original's pixels are pasted back outside the mask (stages 3-5)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..core import encode_image
from ..encoding import image_tensor
from ..modifiers import feathered
from . import Technique


@dataclass
class InpaintInputs:
    pixel_mask: torch.Tensor  # (H, W), binarised
    latent_mask: torch.Tensor  # (1, 1, h, w)
    masked_latents: torch.Tensor  # the 9-channel UNet's extra input


def inpaint_inputs(c, req, generator) -> InpaintInputs:
    """Pixel mask (binarised at 0.5, as diffusers does), its latent-size version, and the
    masked image's latents (the 9-channel UNet's extra input)."""
    mask = (req.mask >= 0.5).float()
    f = c.vae_scale_factor
    latent_mask = F.interpolate(mask[None, None], size=(req.height // f, req.width // f)).to(c.device, c.dtype)
    # Masked pixels become 0 in the VAE's [-1, 1] range (mid grey), as diffusers feeds them.
    masked_image = torch.where(mask[..., None] < 0.5, req.init_image, torch.full_like(req.init_image, 0.5))
    return InpaintInputs(mask, latent_mask, encode_image(c, masked_image, generator))


def paste_mask(req) -> torch.Tensor:
    """(H, W) weight of the generated pixels when pasting back: 0 keeps the original exactly."""
    return feathered((req.mask >= 0.5).float(), req.feather)


class Inpaint(Technique):
    name = "inpaint"
    fields = ("feather",)
    arrays = ("mask",)

    def request(self, params, arrays):
        values = super().request(params, arrays)
        if "mask" in arrays:
            values["mask"] = image_tensor(arrays["mask"], 1, flip_y=params["input_flip_y"])[..., 0]
        return values

    def applies(self, c, req):
        return req.mask is not None

    def before_noise(self, run):
        if run.image_latents is None and run.c.unet.config.in_channels == 4:
            run.image_latents = encode_image(run.c, run.req.init_image, run.generator)

    def start(self, run):
        run.state[self.name] = inpaint_inputs(run.c, run.req, run.generator)

    def model_channels(self, run, model_input):
        if run.c.unet.config.in_channels != 9:
            return model_input
        inputs, rows = run.state[self.name], model_input.shape[0]
        return torch.cat([model_input, inputs.latent_mask.expand(rows, -1, -1, -1),
                          inputs.masked_latents.expand(rows, -1, -1, -1)], dim=1)

    def after_step(self, run, i):
        if run.c.unet.config.in_channels != 4:
            return
        original = run.image_latents  # keep the unmasked latents on the original's noisy path
        if i < len(run.timesteps) - 1:
            original = run.scheduler.add_noise(run.image_latents, run.noise, run.timesteps[i + 1][None])
        latent_mask = run.state[self.name].latent_mask
        run.latents = (1 - latent_mask) * original + latent_mask * run.latents

    def finish(self, run, image):
        soft = paste_mask(run.req).to(image.device)[..., None]
        original = run.req.init_image.to(image.device)
        return torch.where(soft > 0, original * (1 - soft) + image * soft, original)

    def untouched(self, req):
        return None if req.mask is None else paste_mask(req) == 0


TECHNIQUE = Inpaint()
