"""The Latent Codec panel's settings (Image Editor); bounds and defaults are the protocol's."""

import bpy

from .. import protocol
from ..field_props import number_args

_COMPRESS = protocol.compress_fields()
_DECOMPRESS = protocol.decompress_fields()


class DreamLatentProperties(bpy.types.PropertyGroup):
    bits: bpy.props.IntProperty(name="Bits", **number_args(_COMPRESS["bits"]))
    palette: bpy.props.IntProperty(name="Palette", **number_args(_COMPRESS["palette"]))
    dither: bpy.props.BoolProperty(name="Dither", description=_COMPRESS["dither"].doc,
                                   default=_COMPRESS["dither"].default)
    denoise_steps: bpy.props.IntProperty(name="Denoise Steps", **number_args(_DECOMPRESS["denoise_steps"]))


classes = (DreamLatentProperties,)
