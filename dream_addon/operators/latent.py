"""Save as Latent… and Open Latent… (Image Editor): images stored as palettised latents
(the latent image codec, docs/techniques.md). The backend encodes and decodes; the add-on only
reads a file's header (its size) and moves its bytes."""

import os

import bpy

from .. import blender_images, history
from ..job_builder import JobInputError, check_job, image_pixels, wire_array
from ..latent_format import MAX_FILE_BYTES, CodecError, read_header, to_rows
from ..preferences import get_preferences
from ..properties import BACKEND_DEFAULT_MODEL
from ..session import BLENDER_OUTPUT, SESSION
from .generate import ImageEditorOperator, editor_image, report_input_errors


def codec_params(context, **params):
    """What every codec job takes from the panel: the model and Blender's pixel encoding."""
    model = context.scene.dream.model
    return {**BLENDER_OUTPUT, "model": "" if model == BACKEND_DEFAULT_MODEL else model, **params}


class DREAM_OT_save_latent(ImageEditorOperator, bpy.types.Operator):
    bl_idname = "dream.save_latent"
    bl_label = "Save as Latent…"
    bl_description = "Store the image as a palettised latent of the model's VAE (.dlat), a small file"

    filepath: bpy.props.StringProperty(subtype="FILE_PATH")
    filter_glob: bpy.props.StringProperty(default="*.dlat", options={"HIDDEN"})

    def invoke(self, context, event):
        if not self.filepath:
            self.filepath = bpy.path.clean_name(editor_image(context).name) + ".dlat"
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    @report_input_errors
    def execute(self, context):
        image, latent = editor_image(context), context.scene.dream_latent
        path = bpy.path.ensure_ext(bpy.path.abspath(self.filepath), ".dlat")
        if not os.path.isdir(os.path.dirname(path) or "."):
            raise JobInputError(f"The folder of {path!r} does not exist")
        width, height = image.size
        props = context.scene.dream
        params = codec_params(context, width=width, height=height, input_linear=True, input_flip_y=True,
                              bits=latent.bits, palette=latent.palette, dither=latent.dither,
                              seamless=("x" if props.seamless_x else "") + ("y" if props.seamless_y else ""))
        if params["palette"] == 1:
            raise JobInputError("Palette 1 says nothing: use 0 (no palette) or 2..256 colours")
        arrays = {"init_image": wire_array(image, image_pixels(image))}
        check_job("compress", params, arrays, SESSION.welcome)  # the backend's limits, before anything is sent
        SESSION.submit(get_preferences(), params, "", arrays, datablocks={"scene": context.scene, "source": image},
                       kind="compress", operator="dream.save_latent", scene_name=context.scene.name,
                       latent_path=path, total=1)
        return {"FINISHED"}


class DREAM_OT_open_latent(bpy.types.Operator):
    bl_idname = "dream.open_latent"
    bl_label = "Open Latent…"
    bl_description = "Decode a latent file (.dlat) into a new packed image"
    bl_options = {"REGISTER", "UNDO"}

    filepath: bpy.props.StringProperty(subtype="FILE_PATH")
    filter_glob: bpy.props.StringProperty(default="*.dlat", options={"HIDDEN"})

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    @report_input_errors
    def execute(self, context):
        path = bpy.path.abspath(self.filepath)
        try:
            if os.path.getsize(path) > MAX_FILE_BYTES:
                raise JobInputError(f"{path!r} is larger than a latent file can be ({MAX_FILE_BYTES} bytes)")
            with open(path, "rb") as f:
                data = f.read()
            header, _ = read_header(data)  # before any image is made: a bad file says so now
        except OSError as exc:
            raise JobInputError(f"Cannot read {path!r}: {exc.strerror}") from None
        except CodecError as exc:
            raise JobInputError(f"{os.path.basename(path)}: {exc}") from None
        steps = context.scene.dream_latent.denoise_steps
        image = blender_images.new_result_image(os.path.splitext(os.path.basename(path))[0],
                                                header["width"], header["height"])
        space = context.space_data
        if space is not None and space.type == "IMAGE_EDITOR":
            space.image = image
        # The file's own model unless the panel names one: a file made with another VAE is refused.
        params = codec_params(context, latent_bytes=len(data), denoise_steps=steps, linear=False)  # a byte image
        SESSION.submit(get_preferences(), params, image.name, {"latent_file": to_rows(data)},
                       datablocks={"scene": context.scene, "image": image}, kind="decompress",
                       operator="dream.open_latent", scene_name=context.scene.name, created=("image",),
                       settings=history.snapshot(context.scene.dream), total=max(steps, 1), latent_path=path)
        return {"FINISHED"}


def save_latent_result(job, message, arrays):
    """A compress job's result: its file written where the artist asked, and its size shown."""
    from ..latent_format import from_rows

    data = from_rows(arrays["latent_file"], message["latent_bytes"])
    try:
        with open(job.latent_path, "wb") as f:
            f.write(data)
    except OSError as exc:  # the file is still in the backend's output folder
        return "error", f"Cannot write {job.latent_path!r}: {exc.strerror} (the file is in {message['path']})"
    source = job.datablock("source")
    if source is not None:
        source["dream_latent"] = f"{os.path.basename(job.latent_path)}: {len(data)} bytes"
    return "done", f"Saved {len(data):,} bytes to {job.latent_path}"


classes = (DREAM_OT_save_latent, DREAM_OT_open_latent)
