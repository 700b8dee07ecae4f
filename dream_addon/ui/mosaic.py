"""The Mosaic panel (Image Editor and Sequencer) and Enhance Region (Image Editor)."""

import bpy

from .panels import DreamPanel, draw_list


class DREAM_MT_cell_prompt_texts(bpy.types.Menu):
    bl_label = "From Text"

    def draw(self, context):
        if not bpy.data.texts:
            self.layout.label(text="No texts: write one prompt a line in the Text Editor")
        for text in bpy.data.texts:
            self.layout.operator("dream.cell_prompts_from_text", text=text.name).text = text.name


class DREAM_UL_cell_prompts(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index):
        layout.prop(item, "text", text="", emboss=False)


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
        row = layout.row()
        row.label(text="Cell Prompts (in turn, row by row; none: the Prompt)")
        row.menu("DREAM_MT_cell_prompt_texts", text="", icon="TEXT")
        draw_list(layout, mosaic, "cell_prompts", "DREAM_UL_cell_prompts")
        layout.prop(mosaic, "color_match", expand=True)
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
            row = layout.row(align=True)
            row.prop(mosaic, "export_format", text="")
            row.prop(mosaic, "rubber_band", toggle=True)
            row.operator("dream.mosaic_export", text="Export", icon="EXPORT")
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


classes = (DREAM_MT_cell_prompt_texts, DREAM_UL_cell_prompts, IMAGE_PT_dream_enhance, IMAGE_PT_dream_mosaic, SEQUENCER_PT_dream_mosaic)
