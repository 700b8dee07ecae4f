"""Scene settings shown in the Dream panels (Scene.dream)."""

import bpy

from .. import protocol

_FIELDS = protocol.txt2img_fields()
SCHEDULER_ITEMS = [
    ("default", "Model Default", "The scheduler the model ships with"),
    ("ddim", "DDIM", "Denoising Diffusion Implicit Models"),
    ("euler", "Euler", "Euler, Karras et al. 2022"),
    ("euler_a", "Euler Ancestral", "Euler with fresh noise each step"),
    ("dpmpp_2m", "DPM++ 2M", "DPM-Solver++ multistep"),
    ("dpmpp_2m_karras", "DPM++ 2M Karras", "DPM-Solver++ multistep with Karras sigmas"),
    ("unipc", "UniPC", "Unified predictor-corrector"),
    ("pndm", "PNDM", "Pseudo numerical methods"),
]
assert [i[0] for i in SCHEDULER_ITEMS] == list(protocol.SCHEDULERS)


def _size_prop(name):
    spec = _FIELDS[name]
    return bpy.props.IntProperty(name=name.capitalize(), default=512, min=int(spec.min), soft_max=2048,
                                 max=8192, step=64, subtype="PIXEL", description=spec.doc)


class DreamSceneProperties(bpy.types.PropertyGroup):
    prompt: bpy.props.StringProperty(name="Prompt", default="seamless red bricks texture",
                                     description=_FIELDS["prompt"].doc)
    negative_prompt: bpy.props.StringProperty(name="Negative", default="", description=_FIELDS["negative_prompt"].doc)
    seed: bpy.props.IntProperty(name="Seed", default=0, min=0, max=2**31 - 1, description=_FIELDS["seed"].doc)
    randomize_seed: bpy.props.BoolProperty(name="Random Seed", default=False,
                                           description="Pick a new seed for every generation")
    steps: bpy.props.IntProperty(name="Steps", default=20, min=1, max=int(_FIELDS["steps"].max),
                                 description=_FIELDS["steps"].doc)
    guidance: bpy.props.FloatProperty(name="Guidance", default=7.5, min=0.0, max=_FIELDS["guidance"].max,
                                      soft_max=20.0, description=_FIELDS["guidance"].doc)
    width: _size_prop("width")
    height: _size_prop("height")
    scheduler: bpy.props.EnumProperty(name="Sampler", items=SCHEDULER_ITEMS, default="default")
    preview_interval: bpy.props.FloatProperty(name="Preview Every", default=0.5, min=0.0, max=60.0, unit="TIME_ABSOLUTE",
                                              description=_FIELDS["preview_interval"].doc)


classes = (DreamSceneProperties,)
