"""Seamless tiling: every model's convolutions wrap around along the tiled axes while the job
runs (stages 3-5); modifiers.seamless restores them on every exit."""

from __future__ import annotations

from ..modifiers import seamless
from . import Technique


class Seamless(Technique):
    name = "seamless"
    fields = ("seamless",)

    def request(self, params, arrays):
        return {"tile_axes": params["seamless"]} if "seamless" in params else {}

    def applies(self, c, req):
        return bool(req.tile_axes)

    def context(self, run):
        return seamless([m.unet for m, _ in run.members] + [run.c.vae], run.req.tile_axes)


TECHNIQUE = Seamless()
