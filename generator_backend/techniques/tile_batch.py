"""Tile batches: img2img of several tiles in one UNet batch, each tile with its own init image
(``req.tile_images``), noise and, optionally, prompt (the walk's per-frame noise and embeddings);
generator_backend/tiles.py plans the tiles and assembles them."""

from __future__ import annotations

from ..core import vae_latents
from . import Technique


class TileBatch(Technique):
    name = "tile_batch"

    def applies(self, c, req):
        return req.tile_images is not None

    def schedule(self, run):
        run.strength = run.req.strength

    def before_noise(self, run):
        # The VAE's mode, not a sample: a tile's latents must not depend on the batch it is in.
        c = run.c
        pixels = (run.req.tile_images.permute(0, 3, 1, 2) * 2 - 1).to(c.device, c.dtype)
        run.image_latents = vae_latents(c.vae, pixels) * c.vae.config.scaling_factor

    def start(self, run):
        run.latents = run.scheduler.add_noise(run.image_latents, run.noise, run.timesteps[:1])


TECHNIQUE = TileBatch()
