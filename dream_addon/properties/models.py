"""The models folder's LoRA list on the generate panel (Scene.dream_models); bounds are the protocol's."""

import bpy

from .. import protocol
from ..field_props import number_args


def listed(kind: str) -> list:
    """Entries of one kind ("loras", "checkpoints", ...) in the connected backend's models folder."""
    from ..session import SESSION

    return ((SESSION.welcome or {}).get("library") or {}).get(kind) or []


# The search callback lives in the package module: Blender 4.2 crashes on exit (SIGSEGV, after
# "Installed") when it belongs to this submodule (tests/blender/test_addon.py, extension zip install).
from . import lora_names  # noqa: E402


class DreamLora(bpy.types.PropertyGroup):
    name: bpy.props.StringProperty(name="LoRA", default="", search=lora_names,
                                   description="A LoRA from the backend's models folder (Rescan after adding files)")
    weight: bpy.props.FloatProperty(name="Weight", **number_args(protocol.LORA_TERM_FIELDS["weight"]))


class DreamModelsProperties(bpy.types.PropertyGroup):
    loras: bpy.props.CollectionProperty(type=DreamLora)
    loras_index: bpy.props.IntProperty()


classes = (DreamLora, DreamModelsProperties)
