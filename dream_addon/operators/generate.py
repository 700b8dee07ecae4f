"""Generate, texture selected faces, img2img and inpaint in the image editor, cancel, seed."""


import bpy
import numpy as np

from .. import blender_images, history
from ..field_props import random_seed
from ..client import describe_error
from ..job_builder import (JobInputError, active_image_texture, check_job, image_extension, image_pixels,
                           mask_from_source, scene_params, selected_faces_uv_mask, sized_to_image, walk_params,
                           wire_array)
from ..uv_mask import dilate, pad_to
from ..preferences import get_preferences
from ..protocol import ProtocolError, feather_reach
from ..session import SESSION


def prepare(operator, context):
    """Common start of every generating operator: seed, parameters, arrays."""
    props = context.scene.dream
    if props.randomize_seed:
        props.seed = random_seed()
    return props, *scene_params(props)


def send(operator, context, kind, params, arrays, image=None, datablocks=None, /, **view):
    """Submit the job, bound to the scene, its image and ``datablocks`` (role -> ID) by identity."""
    prefix, name = type(operator).__name__.split("_OT_")  # DREAM_OT_img2img -> dream.img2img
    view.setdefault("operator", f"{prefix.lower()}.{name}")  # Re-run records the entry's own operator
    bound = {"scene": context.scene, "image": image, **(datablocks or {})}
    SESSION.submit(get_preferences(), params, image.name if image is not None else "", arrays, datablocks=bound,
                   kind=kind, scene_name=context.scene.name, settings=history.snapshot(context.scene.dream), **view)
    return {"FINISHED"}


def report_input_errors(execute):
    """Input problems become one clear error report instead of a traceback."""

    def wrapped(self, context):
        try:
            return execute(self, context)
        except JobInputError as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        except ProtocolError as exc:
            self.report({"ERROR"}, describe_error(exc.to_message()))
            return {"CANCELLED"}

    return wrapped


def image_job(operator, context, kind, image, mask=None, rerun=None):
    """img2img or inpainting of ``image``: result to a new image or into it (kept as a backup).

    ``rerun`` is a history entry to run again: from its own start pixels, to where its result went."""
    props, params, arrays = prepare(operator, context)
    width, height = sized_to_image(params, image)
    start = rerun.original if rerun is not None and rerun.original is not None else None
    pixels = image_pixels(start if start is not None else image)
    arrays["init_image"] = pad_to(wire_array(image, pixels), params["height"], params["width"])
    params["strength"] = props.strength
    params["linear"] = image.is_float  # results come back in the image's own encoding
    keep_new = None
    if mask is not None:
        if not mask.any():
            raise JobInputError("The mask is empty: nothing to repaint")
        arrays["mask"] = pad_to(mask.astype(np.uint8) * 255, params["height"], params["width"])
        params["feather"] = props.feather
        # The backend owns the feathered blend; the add-on restores only the pixels it leaves
        # untouched (beyond the feather's reach) from its exact copy of the original.
        keep_new = dilate(mask, feather_reach(props.feather))
    check_job("inpaint" if mask is not None else "img2img", params, arrays, SESSION.welcome)
    backup, backup_name, restore = None, "", None
    replace = start is not None or kind == "faces" or (rerun is None and props.result_target == "REPLACE")
    if replace:
        target, created = image, ("backup",)
        current = image_pixels(image) if start is not None else pixels
        backup = blender_images.new_image_like(image, f"{image.name} (before Dream)", current)
        history.keep_pixels(image, backup)  # earlier entries showing this image keep their pixels
        backup_name = start.name if start is not None else backup.name
        restore = current  # a job that gives no result puts these back, also for a Re-run
    else:
        target, created = blender_images.new_image_like(image, f"Dream {image.name}", pixels), ("image",)
    view = {"operator": rerun.operator} if rerun is not None else {}
    return send(operator, context, "inpaint" if mask is not None else "img2img", params, arrays, target,
                {"backup": backup, "source": image}, created=created, crop=(width, height), mask=keep_new,
                original=pixels, restore=restore, backup_name=backup_name, source_name=image.name,
                repaint_mask=mask, **view)


class DREAM_OT_generate_texture(bpy.types.Operator):
    bl_idname = "dream.generate_texture"
    bl_label = "Generate Texture"
    bl_description = ("Generate an image with the backend; in the 3D View it becomes a new material "
                      "on the active object")
    bl_options = {"REGISTER", "UNDO"}

    missing_uvs: bpy.props.EnumProperty(name="Mesh Without UVs", default="SMART", items=[
        ("SMART", "Smart UV Project", "Give a mesh that has no UV map one, by Smart UV Project"),
        ("WARN", "Leave As Is", "Only warn: the texture does not show until the mesh has a UV map")])

    @report_input_errors
    def execute(self, context):
        props, params, arrays = prepare(self, context)
        params["layout"] = props.layout  # text-to-image only: the other kinds start from their image
        params["linear"] = get_preferences().float_results  # byte images hold sRGB values
        check_job("txt2img", params, arrays, SESSION.welcome)
        # Made now so previews show; a job that ends without a result deletes them again.
        image = blender_images.new_result_image(f"Dream {props.prompt[:40]}", params["width"], params["height"],
                                                float_buffer=params["linear"])
        obj = context.active_object
        in_3d_view = context.area is None or context.area.type == "VIEW_3D"
        where, level = f"the image {image.name!r}", "INFO"
        if in_3d_view and obj is not None and obj.type == "MESH" and props.texture_target != "IMAGE_ONLY":
            material, faces = blender_images.assign_material(obj, image, f"Dream {props.prompt[:40]}",
                                                             props.texture_target)
            where = f"the material {material.name!r} on {obj.name!r}"
            if obj.data.uv_layers.active is None:
                where += self.give_uvs(obj)
            self.report({level}, f"The texture goes to {where}")
            return send(self, context, "txt2img", params, arrays, image, {"object": obj, "material": material},
                        created=("image", "material"), moved_faces=faces)
        if in_3d_view and obj is not None and obj.type == "MESH":
            where += " only (Result To: Image Only)"
        elif context.area is not None and context.area.type == "IMAGE_EDITOR":
            context.space_data.image = image
            where += " in this Image Editor"
        else:
            where, level = f"{where} only: {nowhere_reason(context, obj)}", "WARNING"
        self.report({level}, f"The texture goes to {where}")
        return send(self, context, "txt2img", params, arrays, image, created=("image",))

    def give_uvs(self, obj) -> str:
        """Smart UV Project for a mesh without UVs (or a warning); the words for the report."""
        if self.missing_uvs == "WARN":
            self.report({"WARNING"}, f"{obj.name!r} has no UV map: the texture will not show on it until it has one")
            return " (no UV map)"
        blender_images.add_uv_map(obj)
        return ", with a new UV map (Smart UV Project)"


def nowhere_reason(context, obj) -> str:
    """Why a texture went on no object, in words an artist can act on."""
    if context.area is not None and context.area.type == "SEQUENCE_EDITOR":
        return "the Sequencer shows no textures; open the image in an Image Editor, or generate in the 3D View"
    if obj is None:
        return "no object is active; select a mesh to texture it"
    return f"{obj.name!r} is a {obj.type.lower()}, not a mesh; select a mesh to texture it"


class DREAM_OT_texture_selected_faces(bpy.types.Operator):
    bl_idname = "dream.texture_selected_faces"
    bl_label = "Texture Selected Faces"
    bl_description = ("Repaint the UV regions of the selected faces in the active material's image; "
                      "every other pixel stays exactly as it is")
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        obj = context.active_object
        return obj is not None and obj.type == "MESH"

    @report_input_errors
    def execute(self, context):
        obj = context.active_object
        image = active_image_texture(obj)
        if image is None:
            raise JobInputError(f"{obj.name!r} has no image texture in its active material: "
                                "Generate Texture first, or add an Image Texture node")
        mask = selected_faces_uv_mask(obj, *image.size, context.scene.dream.uv_margin, image_extension(obj, image))
        return image_job(self, context, "faces", image, mask=mask)


def editor_image(context):
    space = context.space_data
    return space.image if space is not None and space.type == "IMAGE_EDITOR" else None


class ImageEditorOperator:
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return editor_image(context) is not None


class DREAM_OT_img2img(ImageEditorOperator, bpy.types.Operator):
    bl_idname = "dream.img2img"
    bl_label = "Image to Image"
    bl_description = "Repaint the active image, keeping as much of it as Strength says"

    @report_input_errors
    def execute(self, context):
        return image_job(self, context, "img2img", editor_image(context))


class DREAM_OT_inpaint(ImageEditorOperator, bpy.types.Operator):
    bl_idname = "dream.inpaint"
    bl_label = "Inpaint"
    bl_description = "Repaint the masked part of the active image; the rest stays exactly as it is"

    @report_input_errors
    def execute(self, context):
        image = editor_image(context)
        mask = mask_from_source(context.scene.dream, image, context.active_object)
        return image_job(self, context, "inpaint", image, mask=mask)


class DREAM_OT_cancel(bpy.types.Operator):
    bl_idname = "dream.cancel"
    bl_label = "Cancel"
    bl_description = "Cancel generations (all running and queued ones, or the one named)"

    job_id: bpy.props.StringProperty(options={"SKIP_SAVE"})

    @classmethod
    def poll(cls, context):
        return bool(SESSION.active_jobs())

    def execute(self, context):
        for job in SESSION.active_jobs():
            if not self.job_id or job.job_id == self.job_id:
                SESSION.cancel(job.job_id)
        return {"FINISHED"}


class DREAM_OT_stop_waiting(bpy.types.Operator):
    bl_idname = "dream.stop_waiting"
    bl_label = "Stop Job of Another File"
    bl_description = ("Stop a job that waits for its file (opened since another one): the backend stops it, "
                      "and its file gets back what the job touched when it is open again")

    job_id: bpy.props.StringProperty(options={"SKIP_SAVE"})

    @classmethod
    def poll(cls, context):
        return any(job.state == "detached" for job in SESSION.jobs.values())

    def execute(self, context):
        job = SESSION.jobs.get(self.job_id)
        if job is None or job.state != "detached":
            self.report({"ERROR"}, f"No job {self.job_id!r} waits for its file")
            return {"CANCELLED"}
        if not SESSION.cancel(job.job_id):
            self.report({"ERROR"}, "Not connected to the backend: Reconnect first, then stop it")
            return {"CANCELLED"}
        return {"FINISHED"}


class DREAM_OT_randomize_seed(bpy.types.Operator):
    bl_idname = "dream.randomize_seed"
    bl_label = "Randomise Seed"
    bl_description = "Pick a new random seed"
    bl_options = {"REGISTER", "UNDO"}

    def execute(self, context):
        context.scene.dream.seed = random_seed()
        return {"FINISHED"}


class DREAM_OT_rect_from_cursor(ImageEditorOperator, bpy.types.Operator):
    bl_idname = "dream.rect_from_cursor"
    bl_label = "Corner from 2D Cursor"
    bl_description = "Put a corner of the inpainting rectangle where the Image Editor's 2D cursor is"

    corner: bpy.props.EnumProperty(items=[("MIN", "Lower Left", ""), ("MAX", "Upper Right", "")])

    def execute(self, context):
        props = context.scene.dream
        u, v = (min(max(c, 0.0), 1.0) for c in context.space_data.cursor_location)
        setattr(props, "rect_min" if self.corner == "MIN" else "rect_max", (u, v))
        return {"FINISHED"}


class DREAM_OT_walk(bpy.types.Operator):
    bl_idname = "dream.walk"
    bl_label = "Generate Walk"
    bl_description = ("Render a latent walk; frames go onto the Sequencer or into an image-sequence texture "
                      "as they finish")
    bl_options = {"REGISTER", "UNDO"}

    @report_input_errors
    def execute(self, context):
        walk = context.scene.dream_walk
        params, arrays = walk_params(context.scene)
        obj = context.active_object
        target = {"kind": walk.target, "channel": walk.channel, "start_frame": walk.start_frame,
                  "material_target": context.scene.dream.texture_target}
        if walk.target == "TEXTURE" and (obj is None or obj.type != "MESH"):
            raise JobInputError("An image-sequence texture needs an active mesh object")
        check_job("walk", params, arrays, SESSION.welcome)
        return send(self, context, "walk", params, arrays, None, {"object": obj}, walk_target=target)


class DREAM_OT_restore_material(bpy.types.Operator):
    bl_idname = "dream.restore_material"
    bl_label = "Restore Material"
    bl_description = "Put back the material that a Dream texture replaced in the active slot"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        obj = context.active_object
        return obj is not None and blender_images.replaced_material(obj.active_material) is not None

    def execute(self, context):
        obj = context.active_object
        old = blender_images.restore_replaced(obj.material_slots[obj.active_material_index])
        self.report({"INFO"}, f"Restored material {old.name!r}")
        return {"FINISHED"}


class ExportFrames:
    """An Export button's operator (walks, mosaic zooms): ``last_job()`` is the job whose frames it
    exports, ``group`` the Scene property with the panel's export_format, rubber_band and fps. A mixin, not a base
    operator: with the zoom's operator a subclass of the registered walk one, the walk's poll failed."""

    @classmethod
    def poll(cls, context):
        return cls.last_job() is not None

    def execute(self, context):
        props = getattr(context.scene, self.group)
        SESSION.export(self.last_job().job_id, {"format": props.export_format, "rubber_band": props.rubber_band,
                                                "fps": props.fps})
        return {"FINISHED"}


class DREAM_OT_walk_export(ExportFrames, bpy.types.Operator):
    bl_idname = "dream.walk_export"
    bl_label = "Export Walk"
    bl_description = "Write the last finished walk as a GIF, an MP4 or a PNG sequence next to its frames"

    group = "dream_walk"
    last_job = staticmethod(lambda: last_walk())


class DREAM_OT_walk_resume(bpy.types.Operator):
    bl_idname = "dream.walk_resume"
    bl_label = "Resume Walk"
    bl_description = "Finish the last cancelled or failed walk; frames already made are kept"

    @classmethod
    def poll(cls, context):
        return last_walk(("cancelled", "error", "lost")) is not None

    def execute(self, context):
        SESSION.resume(get_preferences(), last_walk(("cancelled", "error", "lost")).job_id)
        return {"FINISHED"}


def last_walk(states=("done",)):
    return next((j for j in reversed(SESSION.jobs.values()) if j.kind == "walk" and j.state in states), None)


LISTS = [("extra_prompts", "Prompts", ""), ("infusion_images", "Biasing Images", ""),
         ("ensemble_models", "Models", ""), ("walk_prompts", "Walk Prompts", ""), ("loras", "LoRAs", ""),
         ("cell_prompts", "Cell Prompts", "")]


def owner(context, collection):
    """The property group holding a list: walk prompts live in Scene.dream_walk."""
    if collection == "walk_prompts":
        return context.scene.dream_walk, "prompts"
    if collection == "loras":
        return context.scene.dream_models, "loras"
    if collection == "cell_prompts":
        return context.scene.dream_mosaic, "cell_prompts"
    return context.scene.dream, collection


class DREAM_OT_list_add(bpy.types.Operator):
    bl_idname = "dream.list_add"
    bl_label = "Add"
    bl_options = {"REGISTER", "UNDO"}
    collection: bpy.props.EnumProperty(items=LISTS)

    def execute(self, context):
        props, name = owner(context, self.collection)
        item = getattr(props, name).add()
        if self.collection == "ensemble_models" and SESSION.welcome:
            names = [m["name"] for m in SESSION.welcome["models"]]
            item.name = names[min(len(props.ensemble_models) - 1, len(names) - 1)]
        if self.collection == "loras" and SESSION.welcome:  # the first LoRA the models folder lists
            item.name = next((e["name"] for e in (SESSION.welcome.get("library") or {}).get("loras") or []), "")
        setattr(props, name + "_index", len(getattr(props, name)) - 1)
        return {"FINISHED"}


class DREAM_OT_list_remove(bpy.types.Operator):
    bl_idname = "dream.list_remove"
    bl_label = "Remove"
    bl_options = {"REGISTER", "UNDO"}
    collection: bpy.props.EnumProperty(items=LISTS)

    @classmethod
    def poll(cls, context):
        return context.scene is not None

    def execute(self, context):
        props, name = owner(context, self.collection)
        items, index = getattr(props, name), getattr(props, name + "_index")
        if 0 <= index < len(items):
            items.remove(index)
            setattr(props, name + "_index", max(0, index - 1))
        return {"FINISHED"}


classes = (DREAM_OT_generate_texture, DREAM_OT_texture_selected_faces, DREAM_OT_img2img, DREAM_OT_inpaint,
           DREAM_OT_cancel, DREAM_OT_stop_waiting, DREAM_OT_randomize_seed, DREAM_OT_rect_from_cursor, DREAM_OT_walk,
           DREAM_OT_restore_material,
           DREAM_OT_walk_export, DREAM_OT_walk_resume, DREAM_OT_list_add, DREAM_OT_list_remove)
