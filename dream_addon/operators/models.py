"""Rescan the models folder: files added while the backend runs join the Model menu and the LoRA list."""

import bpy

from ..preferences import get_preferences
from ..session import SESSION


class DREAM_OT_rescan_models(bpy.types.Operator):
    bl_idname = "dream.rescan_models"
    bl_label = "Rescan"
    bl_description = "Read the backend's models folder again: new checkpoints and LoRAs appear without a restart"

    @classmethod
    def poll(cls, context):
        return SESSION.welcome is not None

    def execute(self, context):
        SESSION.rescan(get_preferences().model_types)
        return {"FINISHED"}


classes = (DREAM_OT_rescan_models,)
