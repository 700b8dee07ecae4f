"""History (Recall, Re-run with a new seed) and presets of texture settings."""

import json

import bpy
from bl_operators.presets import AddPresetBase

from .. import history
from ..field_props import random_seed
from ..job_builder import JobInputError
from . import upscale
from ..properties import PRESET_SETTINGS
from .generate import image_job, report_input_errors
from .mosaic import enhance_job


class HistoryOperator:
    index: bpy.props.IntProperty(default=-1, options={"SKIP_SAVE"}, description="History entry; -1 = the active one")

    @classmethod
    def poll(cls, context):
        return context.scene is not None and len(context.scene.dream_history) > 0

    def entry(self, context):
        items = context.scene.dream_history
        index = self.index if self.index >= 0 else context.scene.dream_history_index
        return items[min(index, len(items) - 1)]


class DREAM_OT_history_recall(HistoryOperator, bpy.types.Operator):
    bl_idname = "dream.history_recall"
    bl_label = "Recall Settings"
    bl_description = "Put this generation's settings back into the panel"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        history.apply(context.scene.dream, json.loads(self.entry(context).settings))
        return {"FINISHED"}


class DREAM_OT_history_rerun(HistoryOperator, bpy.types.Operator):
    bl_idname = "dream.history_rerun"
    bl_label = "Re-run with New Seed"
    bl_description = "Recall this generation's settings, pick a new seed and run it again"
    bl_options = {"REGISTER", "UNDO"}

    @report_input_errors
    def execute(self, context):
        entry = self.entry(context)
        if entry.operator == "dream.upscale":  # its own settings, on its own original (with its detail pass)
            return upscale.rerun(self, context, entry)
        if entry.operator in NO_RERUN:  # refused before the panel's settings and seed change
            raise JobInputError(NO_RERUN[entry.operator])
        own_source = entry.kind in ("img2img", "inpaint") or entry.operator == "dream.enhance_region"
        if own_source and entry.source is None:
            raise JobInputError("The image this generation repainted was deleted: nothing to re-run on")
        category, name = entry.operator.split(".")
        operator = getattr(getattr(bpy.ops, category), name)
        if not own_source and not operator.poll():
            raise JobInputError(f"{operator.get_rna_type().name} cannot run here: re-run it from its own panel")
        props = context.scene.dream
        history.apply(props, json.loads(entry.settings))
        props.seed = random_seed()
        if entry.kind in ("img2img", "inpaint"):  # on the entry's own source, from any editor
            mask = history.decode_mask(entry.mask)
            if mask is not None and mask.shape != tuple(entry.source.size)[::-1]:
                raise JobInputError(f"{entry.source.name!r} was resized since: its mask no longer fits")
            kind = "faces" if entry.operator == "dream.texture_selected_faces" else entry.kind
            return image_job(self, context, kind, entry.source, mask=mask, rerun=entry)
        if entry.operator == "dream.enhance_region":  # on the entry's own source, from any editor
            recorded = json.loads(entry.params or "{}")
            region = tuple(recorded.get(k, 0) for k in ("region_x", "region_y", "region_width", "region_height"))
            return enhance_job(self, context, entry.source, region if region[2] else None)
        return operator("EXEC_DEFAULT")


# Entries whose Re-run cannot make sense: what to do instead.
NO_RERUN = {
    "dream.teach_concept": "A taught word is taught once: type a new Word in Teach a Concept and press Teach "
                           "(Recall fills in the other settings)",
    "dream.save_latent": "Save as Latent writes a file you choose: use Save as Latent in the Image Editor again",
    "dream.open_latent": "Open Latent reads a file you choose: use Open Latent in the Image Editor again",
}


class DREAM_OT_history_delete(HistoryOperator, bpy.types.Operator):
    bl_idname = "dream.history_delete"
    bl_label = "Delete Entry"
    bl_description = "Remove this generation from the history, and its images unless something else uses them"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        items = context.scene.dream_history
        index = min(self.index if self.index >= 0 else context.scene.dream_history_index, len(items) - 1)
        freed = history.delete(context.scene, index)
        self.report({"INFO"}, f"Deleted the entry; freed {len(freed)} image(s)" if freed else "Deleted the entry")
        return {"FINISHED"}


PRESET_SUBDIR = "dream/texture"


class DREAM_MT_presets(bpy.types.Menu):
    bl_label = "Texture Presets"
    preset_subdir = PRESET_SUBDIR
    preset_operator = "script.execute_preset"
    draw = bpy.types.Menu.draw_preset


class DREAM_OT_preset_add(AddPresetBase, bpy.types.Operator):
    bl_idname = "dream.preset_add"
    bl_label = "Add Texture Preset"
    preset_menu = "DREAM_MT_presets"
    preset_subdir = PRESET_SUBDIR
    preset_defines = ["dream = bpy.context.scene.dream"]
    preset_values = [f"dream.{name}" for name in PRESET_SETTINGS]


classes = (DREAM_OT_history_recall, DREAM_OT_history_rerun, DREAM_OT_history_delete, DREAM_MT_presets, DREAM_OT_preset_add)
