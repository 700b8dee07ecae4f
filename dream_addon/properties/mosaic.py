"""The Mosaic panel's and Enhance Region's settings; bounds and defaults are the protocol's (docs/techniques.md)."""

import bpy

from .. import protocol
from ..field_props import enum_args, number_args
from . import frames_channel, frames_export_format, frames_start, frames_target
from . import upscale_after_items  # a property callback: in the package module (Blender 4.2, see models.py)

_MOSAIC = protocol.mosaic_fields()
_ENHANCE = protocol.enhance_fields()
# The panel names a tile size (the mosaic image is made before the job runs, at grid x tile pixels);
# the protocol's 0 (the model's own size) is for other clients.
_TILE = {"default": 64, "min": 32, "step": 8}


class DreamCellPrompt(bpy.types.PropertyGroup):
    text: bpy.props.StringProperty(name="Prompt", default="", description="A cell's prompt")


class DreamMosaicProperties(bpy.types.PropertyGroup):
    """Photomosaic and hypermosaic (Scene.dream_mosaic); prompt, seed and steps come from Scene.dream."""

    primary: bpy.props.EnumProperty(name="Primary", default="GENERATE", items=[
        ("GENERATE", "Generate", "Generate the primary image from the prompt (at the panel's width x height)"),
        ("IMAGE", "Image", "Cut the chosen image into the grid")])
    primary_image: bpy.props.PointerProperty(name="Primary Image", type=bpy.types.Image,
                                             description="The image cut into cells")
    grid_x: bpy.props.IntProperty(name="Columns", **number_args(_MOSAIC["grid_x"]))
    grid_y: bpy.props.IntProperty(name="Rows", **number_args(_MOSAIC["grid_y"]))
    tile_size: bpy.props.IntProperty(name="Tile Size", subtype="PIXEL", **number_args(_MOSAIC["tile_size"], **_TILE))
    strength: bpy.props.FloatProperty(name="Strength", **number_args(_MOSAIC["strength"]))
    cell_prompts: bpy.props.CollectionProperty(type=DreamCellPrompt, description=_MOSAIC["cell_prompts"].doc)
    cell_prompts_index: bpy.props.IntProperty()
    color_match: bpy.props.EnumProperty(name="Match Colours", **enum_args(_MOSAIC["color_match"], {
        "off": ("Off", "The tiles as painted"), "mean": ("Mean", "Each tile takes its cell's mean colour, keeping its detail"),
        "full": ("Full", "Each tile takes its cell's mean colour and contrast")}))
    levels: bpy.props.IntProperty(name="Levels", **number_args(_MOSAIC["levels"]))
    zoom_frames: bpy.props.IntProperty(name="Zoom Frames", **number_args(_MOSAIC["zoom_frames"]))
    fps: bpy.props.IntProperty(name="FPS", **number_args(_MOSAIC["fps"]))
    loop: bpy.props.BoolProperty(name="Loop", description=_MOSAIC["loop"].doc)
    batch_size: bpy.props.IntProperty(name="Batch", **number_args(_MOSAIC["batch_size"]))
    target: frames_target()
    channel: frames_channel()
    start_frame: frames_start()
    export_format: frames_export_format()
    rubber_band: bpy.props.BoolProperty(name="Rubber Band", description=protocol.EXPORT_FIELDS["rubber_band"].doc)


class DreamEnhanceProperties(bpy.types.PropertyGroup):
    """Enhance Region (Scene.dream_enhance), in the Image Editor."""

    region: bpy.props.EnumProperty(name="Region", default="CURSOR", items=[
        ("CURSOR", "Around 2D Cursor", "A rectangle of the size below, centred on the Image Editor's 2D cursor"),
        ("MASK", "Mask Image", "Where the mask image is white"),
        ("FACES", "Selected Faces", "The UV islands of the selected faces of the mesh using the image (or the "
                                    "active mesh object)")])
    width: bpy.props.IntProperty(name="Width", default=32, min=1, max=protocol.DEFAULT_MAX_SIZE, subtype="PIXEL",
                                 description="Width of the rectangle")
    height: bpy.props.IntProperty(name="Height", default=32, min=1, max=protocol.DEFAULT_MAX_SIZE, subtype="PIXEL",
                                  description="Height of the rectangle")
    mask_image: bpy.props.PointerProperty(name="Mask Image", type=bpy.types.Image,
                                          description="White where the region is")
    strength: bpy.props.FloatProperty(name="Strength", **number_args(_ENHANCE["strength"]))
    feather: bpy.props.FloatProperty(name="Feather", subtype="PIXEL", **number_args(_ENHANCE["region_feather"]))
    tile_size: bpy.props.IntProperty(name="Model Size", subtype="PIXEL", **number_args(
        _ENHANCE["tile_size"], step=8, description="The size the region is scaled to for the model; 0 = the model's own"))
    upscale_after: bpy.props.EnumProperty(name="Upscale After", items=upscale_after_items,
                                          description="Upscale the whole result with this upscaler (tiled as the "
                                                      "Upscale panel's Tile Size and Overlap); None keeps the size")
    upscale_factor: bpy.props.IntProperty(name="Factor", **number_args(
        _ENHANCE["scale"], default=4, min=2, description="Output size over input size after the enhance; at most "
                                                         "the upscaler's scale"))
    result_target: bpy.props.EnumProperty(name="Result", default="NEW", items=[
        ("NEW", "New Image", "Put the result in a new image"),
        ("REPLACE", "Replace", "Write the result into the active image (a copy keeps the original)")])


SETTINGS = {"dream_mosaic": ("primary", "grid_x", "grid_y", "tile_size", "strength", "cell_prompts", "color_match", "levels",
                             "zoom_frames", "fps", "loop", "batch_size", "target", "channel", "start_frame",
                             "export_format", "rubber_band"),
            "dream_enhance": ("region", "width", "height", "strength", "feather", "tile_size", "result_target",
                              "upscale_after", "upscale_factor")}

classes = (DreamCellPrompt, DreamMosaicProperties, DreamEnhanceProperties)
