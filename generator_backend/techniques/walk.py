"""Latent walks: frames generated together, each with its own starting noise and, for the walks
that move the text, its own conditional embedding (walks.WalkPlan makes them; stages 1 and 3)."""

from __future__ import annotations

from dataclasses import dataclass

from . import Technique


@dataclass(frozen=True)
class WalkSettings:
    """A walk job's validated parameters (protocol.walk_fields)."""

    walk: str
    frames: int
    walk_prompts: tuple
    interpolation: str
    walk_seeds: tuple
    step_size: float
    walk_seed: int
    period: int
    batch_size: int
    fps: int


class Walk(Technique):
    name = "walk"
    fields = ("walk", "frames", "walk_prompts", "interpolation", "walk_seeds", "step_size", "walk_seed", "period",
              "batch_size", "fps")

    def request(self, params, arrays):
        if "walk" not in params:
            return {}
        values = {name: params[name] for name in self.fields}
        values["walk_prompts"] = tuple(params["walk_prompts"] or ())
        values["walk_seeds"] = tuple(params["walk_seeds"] or ())
        return {"walk": WalkSettings(**values)}

    def applies(self, c, req):
        return req.frame_noise is not None

    def conditions(self, run, c):
        embeds = run.req.frame_embeds
        return None if embeds is None else [embeds.to(c.device, c.dtype)]

    def noise(self, run):
        return run.req.frame_noise


TECHNIQUE = Walk()
