"""Sidebar panels (3D View and Image Editor) and the status-bar progress.

Nothing heavy here: draw code reads properties and the session's job list only."""

import bpy

from .. import blender_images
from ..session import SESSION


class DREAM_UL_prompts(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index):
        row = layout.row(align=True)
        row.prop(item, "text", text="", emboss=False)
        row.prop(item, "weight", text="")


class DREAM_UL_images(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index):
        layout.prop(item, "image", text="")


class DREAM_UL_models(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index):
        row = layout.row(align=True)
        row.prop(item, "name", text="")
        row.prop(item, "weight", text="")


class DREAM_UL_loras(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index):
        row = layout.row(align=True)
        row.prop(item, "name", text="")
        row.prop(item, "weight", text="")


class DREAM_UL_history(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index):
        row = layout.row(align=True)
        row.label(text=f"{item.created[11:]} {item.kind}", icon="SEQUENCE" if item.kind == "walk" else "IMAGE_DATA")
        shown = item.image.name if item.image else "(image removed)"
        row.label(text=f"{item.frames} frames: {shown}" if item.kind == "walk" else shown)


def draw_list(layout, props, name, list_class):
    row = layout.row()
    row.template_list(list_class, "", props, name, props, name + "_index", rows=2)
    col = row.column(align=True)
    col.operator("dream.list_add", text="", icon="ADD").collection = name
    col.operator("dream.list_remove", text="", icon="REMOVE").collection = name


def draw_generation(layout, context):
    props = context.scene.dream
    row = layout.row(align=True)
    row.menu("DREAM_MT_presets", text="Presets")
    row.operator("dream.preset_add", text="", icon="ADD")
    row = layout.row(align=True)
    row.prop(props, "prompt", text="")
    if len(props.extra_prompts):
        row.prop(props, "prompt_weight", text="")
    layout.prop(props, "negative_prompt")
    row = layout.row(align=True)
    row.prop(props, "seed")
    row.operator("dream.randomize_seed", text="", icon="FILE_REFRESH")
    row.prop(props, "randomize_seed", text="", icon="MOD_NOISE")
    col = layout.column(align=True)
    col.prop(props, "steps")
    col.prop(props, "guidance")
    col.prop(props, "scheduler")
    row = layout.row(align=True)
    row.prop(props, "model")
    row.operator("dream.rescan_models", text="", icon="FILE_REFRESH")
    layout.label(text="LoRAs")
    draw_list(layout, context.scene.dream_models, "loras", "DREAM_UL_loras")
    row = layout.row(align=True)
    row.prop(props, "width")
    row.prop(props, "height")
    row = layout.row(align=True)
    row.prop(props, "seamless_x", toggle=True)
    row.prop(props, "seamless_y", toggle=True)
    layout.prop(props, "layout")
    layout.prop(props, "preview_interval")
    if context.space_data is None or context.space_data.type == "VIEW_3D":  # where a material is made
        row = layout.row(align=True)
        row.prop(props, "texture_target")
        obj = context.active_object
        if obj is not None and blender_images.replaced_material(obj.active_material) is not None:
            row.operator("dream.restore_material", text="", icon="LOOP_BACK")
    draw_progress(layout)


def draw_progress(layout):
    jobs = SESSION.active_jobs()
    row = layout.row(align=True)
    row.scale_y = 1.4
    row.operator("dream.generate_texture", icon="SHADERFX")
    if jobs:
        row.operator("dream.cancel", text="", icon="CANCEL")
    elif SESSION.jobs:
        last = list(SESSION.jobs.values())[-1]
        layout.label(text=last.progress_text(), icon="ERROR" if last.state == "error" else "CHECKMARK")
        if last.warning:
            layout.label(text=last.warning, icon="INFO")
    layout.label(text=SESSION.status, icon="LINKED" if SESSION.welcome else "UNLINKED")


class DreamPanel:
    bl_region_type = "UI"
    bl_category = "Dream"


class DreamMainPanel(DreamPanel):
    bl_label = "Dream Texture"

    def draw(self, context):
        draw_generation(self.layout, context)


class DreamEnsemblePanel(DreamPanel):
    bl_label = "Prompt Ensemble"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        props = context.scene.dream
        self.layout.label(text="More prompts, each with a weight (negative: steer away)")
        draw_list(self.layout, props, "extra_prompts", "DREAM_UL_prompts")
        if len(props.extra_prompts):
            self.layout.prop(props, "ensemble_mode")


class DreamInfusionPanel(DreamPanel):
    bl_label = "Infusion"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        props = context.scene.dream
        draw_list(self.layout, props, "infusion_images", "DREAM_UL_images")
        if any(item.image for item in props.infusion_images):
            col = self.layout.column(align=True)
            for name in ("infusion_down", "infusion_mid", "infusion_up", "infusion_decay"):
                col.prop(props, name)
            self.layout.prop(props, "infusion_cond_only")


class DreamModelEnsemblePanel(DreamPanel):
    bl_label = "Model Ensemble"
    bl_options = {"DEFAULT_CLOSED"}

    def draw_header(self, context):
        self.layout.prop(context.scene.dream, "use_model_ensemble", text="")

    def draw(self, context):
        props = context.scene.dream
        self.layout.active = props.use_model_ensemble
        draw_list(self.layout, props, "ensemble_models", "DREAM_UL_models")


class DreamQueuePanel(DreamPanel):
    bl_label = "Queue"

    @classmethod
    def poll(cls, context):
        return bool(SESSION.stoppable_jobs())

    def draw(self, context):
        for job in SESSION.stoppable_jobs():  # with those waiting for their file: they can be stopped too
            row = self.layout.row(align=True)
            row.progress(factor=job.step / max(job.total, 1), type="BAR",
                         text=f"{job.kind}: {job.progress_text()}")
            stop = "dream.stop_waiting" if job.state == "detached" else "dream.cancel"
            row.operator(stop, text="", icon="X").job_id = job.job_id


class DreamHistoryPanel(DreamPanel):
    bl_label = "History"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        scene = context.scene
        self.layout.template_list("DREAM_UL_history", "", scene, "dream_history", scene, "dream_history_index",
                                  rows=3)
        row = self.layout.row(align=True)
        row.operator("dream.history_recall", icon="RECOVER_LAST")
        row.operator("dream.history_rerun", icon="FILE_REFRESH")
        row.operator("dream.history_delete", text="", icon="TRASH")


class VIEW3D_PT_dream(DreamMainPanel, bpy.types.Panel):
    bl_space_type = "VIEW_3D"


class VIEW3D_PT_dream_faces(DreamPanel, bpy.types.Panel):
    bl_space_type = "VIEW_3D"
    bl_label = "Texture Selected Faces"
    bl_parent_id = "VIEW3D_PT_dream"

    def draw(self, context):
        props = context.scene.dream
        col = self.layout.column(align=True)
        col.prop(props, "strength")
        col.prop(props, "uv_margin")
        col.prop(props, "feather")
        self.layout.operator("dream.texture_selected_faces", icon="UV_FACESEL")


class IMAGE_PT_dream(DreamMainPanel, bpy.types.Panel):
    bl_space_type = "IMAGE_EDITOR"


class IMAGE_PT_dream_tools(DreamPanel, bpy.types.Panel):
    bl_space_type = "IMAGE_EDITOR"
    bl_label = "Repaint Active Image"
    bl_parent_id = "IMAGE_PT_dream"

    def draw(self, context):
        props = context.scene.dream
        layout = self.layout
        layout.prop(props, "strength")
        layout.prop(props, "result_target", expand=True)
        layout.operator("dream.img2img", icon="IMAGE")
        layout.separator()
        layout.prop(props, "mask_source")
        if props.mask_source == "IMAGE":
            layout.prop(props, "mask_image")
        elif props.mask_source == "RECT":
            row = layout.row(align=True)
            row.prop(props, "rect_min")
            row.operator("dream.rect_from_cursor", text="", icon="PIVOT_CURSOR").corner = "MIN"
            row = layout.row(align=True)
            row.prop(props, "rect_max")
            row.operator("dream.rect_from_cursor", text="", icon="PIVOT_CURSOR").corner = "MAX"
        elif props.mask_source == "UV":
            layout.prop(props, "uv_margin")
        layout.prop(props, "feather")
        layout.operator("dream.inpaint", icon="BRUSH_DATA")


class IMAGE_PT_dream_latent(DreamPanel, bpy.types.Panel):
    bl_space_type = "IMAGE_EDITOR"
    bl_label = "Latent Codec"
    bl_parent_id = "IMAGE_PT_dream"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        latent, layout = context.scene.dream_latent, self.layout
        row = layout.row(align=True)
        row.prop(latent, "bits")
        row.prop(latent, "palette")
        layout.prop(latent, "dither")
        layout.operator("dream.save_latent", icon="FILE_TICK")
        space = context.space_data
        image = space.image if space is not None and getattr(space, "type", "") == "IMAGE_EDITOR" else None
        if image is not None and image.get("dream_latent"):
            layout.label(text=f"Last saved: {image['dream_latent']}", icon="INFO")
        layout.separator()
        layout.prop(latent, "denoise_steps")
        layout.operator("dream.open_latent", icon="FILE_FOLDER")


class DREAM_UL_concept_images(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index):
        layout.prop(item, "image", text="")


class IMAGE_PT_dream_concept(DreamPanel, bpy.types.Panel):
    bl_space_type = "IMAGE_EDITOR"
    bl_label = "Teach a Concept"
    bl_parent_id = "IMAGE_PT_dream"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        concept, layout = context.scene.dream_concept, self.layout
        layout.prop(concept, "word")
        row = layout.row()
        row.template_list("DREAM_UL_concept_images", "", concept, "images", concept, "images_index", rows=3)
        col = row.column(align=True)
        col.operator("dream.concept_add_image", text="", icon="ADD")
        col.operator("dream.concept_remove_image", text="", icon="REMOVE")
        col.operator("dream.concept_add_files", text="", icon="FILE_FOLDER")
        col = layout.column(align=True)
        for name in ("initializer", "train_steps", "size", "preview_every", "vectors", "learning_rate"):
            col.prop(concept, name)
        row = layout.row(align=True)
        row.operator("dream.teach_concept", icon="SHADERFX")
        row.operator("dream.teach_resume", text="", icon="PLAY")
        layout.operator("dream.concept_use_word", icon="ADD")


class IMAGE_PT_dream_upscale(DreamPanel, bpy.types.Panel):
    bl_space_type = "IMAGE_EDITOR"
    bl_label = "Upscale"
    bl_parent_id = "IMAGE_PT_dream"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        up, layout = context.scene.dream_upscale, self.layout
        layout.prop(up, "upscaler")
        layout.prop(up, "factor")
        row = layout.row(align=True)
        row.prop(up, "tile_size")
        row.prop(up, "tile_overlap")
        layout.prop(up, "seamless")
        layout.prop(up, "detail_strength")
        layout.prop(up, "result_target", expand=True)
        layout.operator("dream.upscale", icon="FULLSCREEN_ENTER")


def sub_panels(prefix, space, parent):
    """The ensemble, infusion, model, queue and history panels, under ``parent`` in ``space``."""
    made = []
    for base in (DreamEnsemblePanel, DreamInfusionPanel, DreamModelEnsemblePanel, DreamWalkPanel,
                 DreamQueuePanel, DreamHistoryPanel):
        name = f"{prefix}_PT_dream_{base.__name__[5:-5].lower()}"
        made.append(type(name, (base, bpy.types.Panel), {"bl_space_type": space, "bl_parent_id": parent,
                                                         "bl_idname": name}))
    return tuple(made)


class DREAM_UL_walk_prompts(bpy.types.UIList):
    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index):
        layout.prop(item, "text", text="", emboss=False)


class DreamWalkPanel(DreamPanel):
    bl_label = "Walk"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        walk = context.scene.dream_walk
        layout = self.layout
        layout.prop(walk, "kind")
        if walk.kind == "prompts":
            layout.label(text="From the panel prompt through:")
            row = layout.row()
            row.template_list("DREAM_UL_walk_prompts", "", walk, "prompts", walk, "prompts_index", rows=2)
            col = row.column(align=True)
            col.operator("dream.list_add", text="", icon="ADD").collection = "walk_prompts"
            col.operator("dream.list_remove", text="", icon="REMOVE").collection = "walk_prompts"
            layout.prop(walk, "interpolation")
        elif walk.kind == "seeds":
            layout.prop(walk, "seeds")
        elif walk.kind in ("random", "direction"):
            row = layout.row(align=True)
            row.prop(walk, "step_size")
            row.prop(walk, "walk_seed")
        col = layout.column(align=True)
        for name in ("frames", "fps", "batch_size"):
            col.prop(walk, name)
        layout.prop(walk, "init_image")
        if walk.init_image is not None:
            layout.prop(context.scene.dream, "strength")
        layout.prop(walk, "target", expand=True)
        if walk.target == "SEQUENCER":
            layout.prop(walk, "channel")
        else:
            layout.prop(context.scene.dream, "texture_target")
        layout.prop(walk, "start_frame")
        row = layout.row(align=True)
        row.operator("dream.walk", icon="SEQUENCE")
        row.operator("dream.walk_resume", text="", icon="PLAY")
        row = layout.row(align=True)
        row.prop(walk, "export_format", text="")
        row.prop(walk, "rubber_band", toggle=True)
        row.operator("dream.walk_export", text="Export", icon="EXPORT")


class SEQUENCER_PT_dream(DreamMainPanel, bpy.types.Panel):
    bl_space_type = "SEQUENCE_EDITOR"


def draw_status_bar(self, context):
    jobs = SESSION.active_jobs()
    if jobs:
        job = jobs[0]
        self.layout.progress(factor=job.step / max(job.total, 1), type="RING",
                             text=f"Dream: {job.progress_text()}")


classes = ((DREAM_UL_prompts, DREAM_UL_images, DREAM_UL_models, DREAM_UL_loras, DREAM_UL_history, VIEW3D_PT_dream,
            VIEW3D_PT_dream_faces) + sub_panels("VIEW3D", "VIEW_3D", "VIEW3D_PT_dream")
           + (IMAGE_PT_dream, IMAGE_PT_dream_tools, IMAGE_PT_dream_latent, DREAM_UL_concept_images,
              IMAGE_PT_dream_concept, IMAGE_PT_dream_upscale) + sub_panels("IMAGE", "IMAGE_EDITOR", "IMAGE_PT_dream")
           + (DREAM_UL_walk_prompts, SEQUENCER_PT_dream)
           + sub_panels("SEQUENCER", "SEQUENCE_EDITOR", "SEQUENCER_PT_dream"))
