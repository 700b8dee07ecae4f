"""Generate a texture, cancel it, randomise the seed."""

import random

import bpy

from .. import blender_images
from ..preferences import get_preferences
from ..protocol import ProtocolError
from ..session import SESSION, result_params


class DREAM_OT_generate_texture(bpy.types.Operator):
    bl_idname = "dream.generate_texture"
    bl_label = "Generate Texture"
    bl_description = ("Generate an image with the backend; in the 3D View it becomes a new material "
                      "on the active object")
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        props = context.scene.dream
        prefs = get_preferences()
        if props.randomize_seed:
            props.seed = random.randint(0, 2**31 - 1)
        try:
            params = result_params(props)
        except ProtocolError as exc:
            self.report({"ERROR"}, f"Invalid setting: {exc.message}")
            return {"CANCELLED"}
        image = blender_images.new_result_image(f"Dream {props.prompt[:40]}", params["width"], params["height"])
        obj = context.active_object
        in_3d_view = context.area is None or context.area.type == "VIEW_3D"
        if in_3d_view and obj is not None and obj.type == "MESH":
            blender_images.assign_material(obj, image, f"Dream {props.prompt[:40]}")
        elif context.area is not None and context.area.type == "IMAGE_EDITOR":
            context.space_data.image = image
        SESSION.submit(prefs, params, image.name)
        return {"FINISHED"}


class DREAM_OT_cancel(bpy.types.Operator):
    bl_idname = "dream.cancel"
    bl_label = "Cancel"
    bl_description = "Cancel the running and queued generations"

    @classmethod
    def poll(cls, context):
        return bool(SESSION.active_jobs())

    def execute(self, context):
        for job in SESSION.active_jobs():
            SESSION.cancel(job.job_id)
        return {"FINISHED"}


class DREAM_OT_randomize_seed(bpy.types.Operator):
    bl_idname = "dream.randomize_seed"
    bl_label = "Randomise Seed"
    bl_description = "Pick a new random seed"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        context.scene.dream.seed = random.randint(0, 2**31 - 1)
        return {"FINISHED"}


classes = (DREAM_OT_generate_texture, DREAM_OT_cancel, DREAM_OT_randomize_seed)
