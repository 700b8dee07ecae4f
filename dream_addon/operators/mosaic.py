"""Mosaic (photomosaic, hypermosaic zoom) and Enhance Region (Image Editor): tiled jobs of the backend
(docs/techniques.md). Zoom frames go where walk frames go (walk_frames.py)."""

import bpy
import numpy as np

from .. import blender_images, history
from ..job_builder import JobInputError, check_job, image_pixels, resized, sized_to_image, wire_array
from ..preferences import get_preferences
from ..properties.mosaic import SETTINGS
from ..enhance_sources import faces_mask, upscale_after_params
from ..session import SESSION
from ..uv_mask import padded_size, pad_to
from .generate import ExportFrames, ImageEditorOperator, editor_image, prepare, report_input_errors


def settings_of(scene) -> dict:
    """The panel's settings for history (Recall): Scene.dream plus the Mosaic and Enhance groups."""
    return history.snapshot(scene.dream, SETTINGS)


def frames_target(scene, mosaic, obj) -> dict:
    """Where a zoom's frames go, as a walk's target (walk_frames.place reads it)."""
    if mosaic.target == "TEXTURE" and (obj is None or obj.type != "MESH"):
        raise JobInputError("An image-sequence texture needs an active mesh object")
    return {"kind": mosaic.target, "channel": mosaic.channel, "start_frame": mosaic.start_frame,
            "material_target": scene.dream.texture_target}


def cell_prompts(mosaic) -> list | None:
    """The Cell Prompts list without its blank entries; None (every cell takes the Prompt) when empty."""
    texts = [item.text.strip() for item in mosaic.cell_prompts if item.text.strip()]
    if not texts:
        return None
    if not 2 <= len(texts) <= 16:
        raise JobInputError(f"Cell Prompts: give 2 to 16 prompts (blank ones are skipped), not {len(texts)}; "
                            "with none, every cell takes the Prompt")
    return texts


def mosaic_params(scene, params: dict, arrays: dict) -> tuple[dict, dict]:
    """A mosaic job from Scene.dream's parameters (prompt, seed, steps, model) and Scene.dream_mosaic."""
    mosaic = scene.dream_mosaic
    params.update(grid_x=mosaic.grid_x, grid_y=mosaic.grid_y, tile_size=mosaic.tile_size,
                  strength=round(mosaic.strength, 4), color_match=mosaic.color_match, levels=mosaic.levels,
                  zoom_frames=mosaic.zoom_frames, loop=mosaic.loop, fps=mosaic.fps, batch_size=mosaic.batch_size,
                  seamless="", preview_interval=0.0, linear=get_preferences().float_results)
    prompts = cell_prompts(mosaic)
    if prompts:
        params["cell_prompts"] = prompts
    if mosaic.primary == "IMAGE":
        image = mosaic.primary_image
        if image is None:
            raise JobInputError("Choose the Primary Image to cut into cells (or set Primary to Generate)")
        width, height = image.size
        params["width"], params["height"] = padded_size(width), padded_size(height)
        pixels = resized(image_pixels(image), params["height"], params["width"])
        arrays["init_image"] = wire_array(image, pixels)
    return params, arrays


class DREAM_OT_mosaic(bpy.types.Operator):
    bl_idname = "dream.mosaic"
    bl_label = "Make Mosaic"
    bl_description = ("Cut the primary image into a grid and repaint every cell as a tile of the prompt; with "
                      "levels, zoom into a cell that holds the whole mosaic again")
    bl_options = {"REGISTER", "UNDO"}

    @report_input_errors
    def execute(self, context):
        scene, mosaic = context.scene, context.scene.dream_mosaic
        params, arrays = mosaic_params(scene, *prepare(self, context)[1:])
        animated = (mosaic.levels > 1 or mosaic.loop) and mosaic.zoom_frames > 0
        obj = context.active_object
        target = frames_target(scene, mosaic, obj) if animated else {}
        check_job("mosaic", params, arrays, SESSION.welcome)
        image = blender_images.new_result_image(f"Dream mosaic {scene.dream.prompt[:32]}",
                                                mosaic.grid_x * mosaic.tile_size, mosaic.grid_y * mosaic.tile_size,
                                                float_buffer=params["linear"])
        space = context.space_data
        if space is not None and space.type == "IMAGE_EDITOR":
            space.image = image
        SESSION.submit(get_preferences(), params, image.name, arrays,
                       datablocks={"scene": scene, "image": image, "object": obj}, kind="mosaic",
                       operator="dream.mosaic", scene_name=scene.name, settings=settings_of(scene),
                       created=("image",), walk_target=target, total=1)
        return {"FINISHED"}


class DREAM_OT_mosaic_resume(bpy.types.Operator):
    bl_idname = "dream.mosaic_resume"
    bl_label = "Resume Mosaic"
    bl_description = "Finish the last stopped or failed mosaic; the tiles it finished are kept"

    @classmethod
    def poll(cls, context):
        return last_mosaic() is not None

    def execute(self, context):
        job = last_mosaic()
        SESSION.resume(get_preferences(), job.job_id)
        return {"FINISHED"}


class DREAM_OT_mosaic_export(ExportFrames, bpy.types.Operator):
    bl_idname = "dream.mosaic_export"
    bl_label = "Export Zoom"
    bl_description = "Write the last finished mosaic zoom as a GIF, an MP4 or a PNG sequence next to its frames"

    group = "dream_mosaic"
    last_job = staticmethod(lambda: last_zoom())


class DREAM_OT_cell_prompts_from_text(bpy.types.Operator):
    bl_idname = "dream.cell_prompts_from_text"
    bl_label = "Cell Prompts from Text"
    bl_description = "Fill the Cell Prompts with the lines of a text (one prompt a line, blank lines skipped)"
    bl_options = {"REGISTER", "UNDO"}
    text: bpy.props.StringProperty(name="Text", description="The Text datablock to read")

    def execute(self, context):
        source = bpy.data.texts.get(self.text)
        if source is None:
            self.report({"ERROR"}, f"No text {self.text!r}: create it in the Text Editor, one prompt a line")
            return {"CANCELLED"}
        lines = [line.body.strip() for line in source.lines if line.body.strip()]
        if not lines:
            self.report({"ERROR"}, f"The text {self.text!r} is empty: write one prompt a line")
            return {"CANCELLED"}
        prompts = context.scene.dream_mosaic.cell_prompts
        prompts.clear()
        for line in lines:
            prompts.add().text = line
        return {"FINISHED"}


def last_zoom():
    """The last finished mosaic that made zoom frames."""
    return next((j for j in reversed(SESSION.jobs.values())
                 if j.kind == "mosaic" and j.state == "done" and j.walk_target.get("placed")), None)


def last_mosaic():
    return next((j for j in reversed(SESSION.jobs.values())
                 if j.kind == "mosaic" and j.state in ("cancelled", "error", "lost")), None)


def cursor_region(enhance, cursor, width: int, height: int) -> tuple:
    """(x, y, w, h) of the rectangle centred on the 2D cursor (u, v), inside the image; y counts rows
    from the top, as the protocol's region does."""
    if enhance.width > width or enhance.height > height:
        raise JobInputError(f"The region ({enhance.width} x {enhance.height} px) is larger than the image "
                            f"({width} x {height} px)")
    u, v = (min(max(c, 0.0), 1.0) for c in cursor)
    x = min(max(round(u * width - enhance.width / 2), 0), width - enhance.width)
    bottom = min(max(round(v * height - enhance.height / 2), 0), height - enhance.height)
    return x, height - bottom - enhance.height, enhance.width, enhance.height


def region_mask(enhance, width: int, height: int) -> np.ndarray:
    """(h, w) bool, rows bottom to top: where the mask image is white."""
    if enhance.mask_image is None:
        raise JobInputError("Choose the Mask Image (white where the region is), or set Region to Around 2D Cursor")
    pixels = resized(image_pixels(enhance.mask_image), height, width)
    mask = pixels[..., :3].mean(-1) > 0.5
    if not mask.any():
        raise JobInputError(f"The mask {enhance.mask_image.name!r} is black everywhere: paint the region white")
    return mask


class DREAM_OT_enhance_region(ImageEditorOperator, bpy.types.Operator):
    bl_idname = "dream.enhance_region"
    bl_label = "Enhance Region"
    bl_description = ("Repaint a region at the model's own size (scaled up, padded), then paste it back with a "
                      "soft edge; every pixel outside stays exactly as it is")

    @report_input_errors
    def execute(self, context):
        return enhance_job(self, context, editor_image(context))


def enhance_job(operator, context, image, region=None):
    """Submit Enhance Region on ``image`` (the editor's, or a history entry's source for Re-run);
    ``region`` (x, y, w, h on the job's canvas) replaces the 2D cursor's: a Re-run's recorded one."""
    scene, enhance = context.scene, context.scene.dream_enhance
    _, params, arrays = prepare(operator, context)
    width, height = sized_to_image(params, image)
    pixels = image_pixels(image)
    arrays["init_image"] = pad_to(wire_array(image, pixels, alpha=True), params["height"], params["width"])
    params.update(strength=round(enhance.strength, 4), region_feather=round(enhance.feather, 4),
                  tile_size=enhance.tile_size, seamless="", linear=image.is_float, preview_interval=0.0)
    if enhance.region == "CURSOR" and region is not None:
        params.update(region_x=region[0], region_y=region[1], region_width=region[2], region_height=region[3])
    elif enhance.region == "CURSOR":
        space = context.space_data
        if space is None or space.type != "IMAGE_EDITOR":
            raise JobInputError("Region From 2D Cursor needs the Image Editor's cursor: run it there, or "
                                "choose Mask or Selected Faces")
        x, y, w, h = cursor_region(enhance, space.cursor_location, width, height)
        # The job's canvas is padded at the top (Blender rows run bottom first): rows shift down by it.
        params.update(region_x=x, region_y=y + params["height"] - height, region_width=w, region_height=h)
    else:
        mask = region_mask(enhance, width, height) if enhance.region == "MASK" else \
            faces_mask(context, image, width, height)
        arrays["mask"] = pad_to(mask.astype(np.uint8) * 255, params["height"], params["width"])
    params.update(upscale_after_params(scene, SESSION.welcome))
    scale = params["scale"]
    check_job("enhance", params, arrays, SESSION.welcome)
    backup, restore = None, None
    if enhance.result_target == "REPLACE":
        target, created = image, ("backup",)
        backup = blender_images.new_image_like(image, f"{image.name} (before Dream)", pixels)
        history.keep_pixels(image, backup)
        restore = pixels
    else:
        target, created = blender_images.new_image_like(image, f"Dream {image.name}", pixels), ("image",)
    SESSION.submit(get_preferences(), params, target.name, arrays,
                   datablocks={"scene": scene, "image": target, "backup": backup, "source": image},
                   kind="enhance", operator="dream.enhance_region", scene_name=scene.name,
                   settings=settings_of(scene), created=created, crop=(width * scale, height * scale),
                   original=pixels,
                   restore=restore, backup_name=backup.name if backup is not None else "",
                   source_name=image.name, total=1)
    return {"FINISHED"}


classes = (DREAM_OT_mosaic, DREAM_OT_mosaic_resume, DREAM_OT_mosaic_export, DREAM_OT_cell_prompts_from_text, DREAM_OT_enhance_region)
