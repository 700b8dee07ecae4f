"""img2img: start from the init image's latents, noised to a point ``strength`` down the schedule
(stages 2-3), exactly as diffusers' img2img pipeline cuts the schedule and draws its noise."""

from __future__ import annotations

from ..core import encode_image
from ..encoding import as_sent, image_tensor
from . import Technique


class Img2Img(Technique):
    name = "img2img"
    fields = ("strength",)
    arrays = ("init_image",)

    def request(self, params, arrays):
        values = super().request(params, arrays)
        if "init_image" in arrays:
            values["init_image"] = image_tensor(arrays["init_image"], **as_sent(params))
        return values

    def applies(self, c, req):
        # Inpainting at strength 1 starts from pure noise, as diffusers' inpaint pipeline does.
        return req.init_image is not None and (req.mask is None or req.strength < 1.0)

    def schedule(self, run):
        run.strength = run.req.strength

    def before_noise(self, run):
        run.image_latents = encode_image(run.c, run.req.init_image, run.generator)

    def start(self, run):
        run.latents = run.scheduler.add_noise(run.image_latents, run.noise, run.timesteps[:1])


TECHNIQUE = Img2Img()
