"""The Latent Codec panel's settings (Image Editor); bounds and defaults are the protocol's."""

import bpy

from .. import protocol

_COMPRESS = protocol.compress_fields()
_DECOMPRESS = protocol.decompress_fields()


class DreamLatentProperties(bpy.types.PropertyGroup):
    bits: bpy.props.IntProperty(name="Bits", description=_COMPRESS["bits"].doc, default=_COMPRESS["bits"].default,
                                min=_COMPRESS["bits"].min, max=_COMPRESS["bits"].max)
    palette: bpy.props.IntProperty(name="Palette", description=_COMPRESS["palette"].doc,
                                   default=_COMPRESS["palette"].default, min=0, max=_COMPRESS["palette"].max)
    dither: bpy.props.BoolProperty(name="Dither", description=_COMPRESS["dither"].doc,
                                   default=_COMPRESS["dither"].default)
    denoise_steps: bpy.props.IntProperty(name="Denoise Steps", description=_DECOMPRESS["denoise_steps"].doc,
                                         default=_DECOMPRESS["denoise_steps"].default,
                                         min=_DECOMPRESS["denoise_steps"].min, max=_DECOMPRESS["denoise_steps"].max)


classes = (DreamLatentProperties,)
