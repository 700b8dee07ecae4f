"""The Upscale panel's settings (Image Editor, Scene.dream_upscale); bounds and defaults are the protocol's."""

import bpy

from .. import protocol
from ..field_props import number_args

# The menu's items callback lives in the package module: Blender 4.2 crashes on exit when a property
# callback belongs to a submodule (see models.py).
from . import BACKEND_DEFAULT_UPSCALER, upscaler_items  # noqa: E402

_FIELDS = protocol.upscale_fields()


class DreamUpscaleProperties(bpy.types.PropertyGroup):
    upscaler: bpy.props.EnumProperty(name="Upscaler", items=upscaler_items, description=_FIELDS["upscaler"].doc)
    factor: bpy.props.IntProperty(name="Factor", **number_args(_FIELDS["factor"]))
    tile_size: bpy.props.IntProperty(name="Tile Size", subtype="PIXEL", **number_args(_FIELDS["tile_size"]))
    tile_overlap: bpy.props.IntProperty(name="Overlap", subtype="PIXEL", **number_args(_FIELDS["tile_overlap"]))
    seamless: bpy.props.EnumProperty(name="Seamless", default="IMAGE", items=[
        ("IMAGE", "From Image", "The axes the image was made seamless along (its Dream settings), else the panel's "
                                "Seamless X / Y"),
        ("NONE", "None", "Upscale as a plain image"),
        ("X", "X", "The image tiles left to right"),
        ("Y", "Y", "The image tiles bottom to top"),
        ("XY", "X and Y", "The image tiles both ways")], description=_FIELDS["seamless"].doc)
    detail_strength: bpy.props.FloatProperty(name="Detail Pass", subtype="FACTOR", **number_args(
        protocol.detail_fields()["strength"], default=0.0,
        description="After the upscaler, img2img the result tile by tile at this strength with the Dream panel's "
                    "prompt, model and steps (SD upscale; at most x4); 0 turns the pass off"))
    result_target: bpy.props.EnumProperty(name="Result", default="NEW", items=[
        ("NEW", "New Image", "Put the upscaled image in a new image"),
        ("REPLACE", "Replace", "Write the upscaled image into the active one (the original is kept as a copy)")])


SETTINGS = ("upscaler", "factor", "tile_size", "tile_overlap", "seamless", "detail_strength", "result_target")


classes = (DreamUpscaleProperties,)
