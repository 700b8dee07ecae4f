"""The Mosaic panel (Image Editor and Sequencer) and Enhance Region (Image Editor)."""

import bpy

from .panels import DreamPanel


class DreamMosaicPanel(DreamPanel):
    bl_label = "Mosaic"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        mosaic, layout = context.scene.dream_mosaic, self.layout
        layout.prop(mosaic, "primary", expand=True)
        if mosaic.primary == "IMAGE":
            layout.prop(mosaic, "primary_image")
        row = layout.row(align=True)
        row.prop(mosaic, "grid_x")
        row.prop(mosaic, "grid_y")
        col = layout.column(align=True)
        for name in ("tile_size", "strength", "batch_size"):
            col.prop(mosaic, name)
        layout.prop(mosaic, "color_match")
        layout.prop(mosaic, "levels")
        if mosaic.levels > 1 or mosaic.loop:
            col = layout.column(align=True)
            col.prop(mosaic, "zoom_frames")
            col.prop(mosaic, "fps")
            layout.prop(mosaic, "loop")
            layout.prop(mosaic, "target", expand=True)
            if mosaic.target == "SEQUENCER":
                layout.prop(mosaic, "channel")
            else:
                layout.prop(context.scene.dream, "texture_target")
            layout.prop(mosaic, "start_frame")
        else:
            layout.prop(mosaic, "loop")
        row = layout.row(align=True)
        row.operator("dream.mosaic", icon="MESH_GRID")
        row.operator("dream.mosaic_resume", text="", icon="PLAY")


class IMAGE_PT_dream_enhance(DreamPanel, bpy.types.Panel):
    bl_space_type = "IMAGE_EDITOR"
    bl_label = "Enhance Region"
    bl_parent_id = "IMAGE_PT_dream"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        enhance, layout = context.scene.dream_enhance, self.layout
        layout.prop(enhance, "region")
        if enhance.region == "CURSOR":
            row = layout.row(align=True)
            row.prop(enhance, "width")
            row.prop(enhance, "height")
        elif enhance.region == "MASK":
            layout.prop(enhance, "mask_image")
        col = layout.column(align=True)
        for name in ("strength", "feather", "tile_size"):
            col.prop(enhance, name)
        row = layout.row(align=True)
        row.prop(enhance, "upscale_after")
        if enhance.upscale_after != "NONE":
            row.prop(enhance, "upscale_factor")
        layout.prop(enhance, "result_target", expand=True)
        layout.operator("dream.enhance_region", icon="ZOOM_IN")


class IMAGE_PT_dream_mosaic(DreamMosaicPanel, bpy.types.Panel):
    bl_space_type = "IMAGE_EDITOR"
    bl_parent_id = "IMAGE_PT_dream"


class SEQUENCER_PT_dream_mosaic(DreamMosaicPanel, bpy.types.Panel):
    bl_space_type = "SEQUENCE_EDITOR"
    bl_parent_id = "SEQUENCER_PT_dream"


classes = (IMAGE_PT_dream_enhance, IMAGE_PT_dream_mosaic, SEQUENCER_PT_dream_mosaic)
