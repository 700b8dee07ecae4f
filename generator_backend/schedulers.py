"""Sampler names offered over the protocol, mapped to diffusers schedulers."""

from __future__ import annotations

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)

# name -> (class, config overrides). "default" keeps the model's own scheduler.
SCHEDULERS = {
    "ddim": (DDIMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "use_karras_sigmas": False}),
    "dpmpp_2m_karras": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    "unipc": (UniPCMultistepScheduler, {}),
    "pndm": (PNDMScheduler, {}),
}


def make_scheduler(name: str, base):
    """A fresh scheduler for one job, built from the model's scheduler config."""
    if name == "default":
        return type(base).from_config(base.config)
    cls, overrides = SCHEDULERS[name]
    return cls.from_config(base.config, **overrides)
