"""Upscale (Image Editor): the active image through a backend upscaler, tiled; the result goes to a new
image, or replaces the active one with the original kept as a copy (docs/techniques.md, "Upscaling")."""

import json

import bpy

from .. import blender_images, history, protocol
from ..job_builder import JobInputError, check_job, image_pixels, scene_params, wire_array
from ..preferences import get_preferences
from ..properties.upscale import BACKEND_DEFAULT_UPSCALER, SETTINGS as UPSCALE_SETTINGS
from ..session import BLENDER_OUTPUT, SESSION
from .generate import ImageEditorOperator, editor_image, report_input_errors

SEAMLESS_KEY = "dream_seamless"  # on images Dream made: the axes they tile along
DETAIL_MAX_SCALE = protocol.detail_fields()["scale"].max


def image_seamless(scene, image) -> str:
    """The axes ``image`` tiles along: its own record, the history entry that made it, else the panel's."""
    if SEAMLESS_KEY in image:
        return str(image[SEAMLESS_KEY])
    for item in reversed(scene.dream_history):
        if item.image == image:
            return json.loads(item.params or "{}").get("seamless", "")
    props = scene.dream
    return ("x" if props.seamless_x else "") + ("y" if props.seamless_y else "")


def upscale_params(scene, image) -> dict:
    """The upscale job's parameters from the panel, for ``image``."""
    up = scene.dream_upscale
    seamless = image_seamless(scene, image) if up.seamless == "IMAGE" else {"NONE": ""}.get(up.seamless,
                                                                                           up.seamless.lower())
    width, height = image.size
    return {**BLENDER_OUTPUT, "linear": image.is_float, "input_linear": image.is_float, "input_flip_y": True,
            "width": width, "height": height, "seamless": seamless, "factor": up.factor,
            "upscaler": "" if up.upscaler == BACKEND_DEFAULT_UPSCALER else up.upscaler,
            "tile_size": up.tile_size, "tile_overlap": up.tile_overlap}


def detail_params(scene, params, welcome) -> dict:
    """The detail pass of an upscale (kind detail): the upscaler enlarges, then the Dream panel's prompt,
    model and steps img2img it tile by tile at the Upscale panel's Detail Pass strength."""
    if params["factor"] > DETAIL_MAX_SCALE:
        raise JobInputError(f"The detail pass enlarges at most x{DETAIL_MAX_SCALE}: lower the Factor to "
                            f"{DETAIL_MAX_SCALE} or set Detail Pass to 0")
    served = (welcome or {}).get("upscalers", [])
    upscaler = params["upscaler"] or next((u["name"] for u in served if u.get("default")), "")
    scene_part, _ = scene_params(scene.dream)  # no infusion: tiled jobs take none
    fields = protocol.detail_fields()
    return {**{k: v for k, v in scene_part.items() if k in fields and not k.startswith("infusion")},
            **{k: params[k] for k in ("linear", "input_linear", "input_flip_y", "width", "height", "seamless",
                                      "output_dtype", "flip_y")},
            "scale": params["factor"], "enlarge_with": upscaler, "enlarge_tile": params["tile_size"],
            "enlarge_overlap": params["tile_overlap"],
            "strength": round(scene.dream_upscale.detail_strength, 4)}


def check_scale(params, welcome):
    """The factor against the chosen upscaler's scale, as the welcome lists it (the backend checks it too)."""
    served = {u["name"]: u for u in (welcome or {}).get("upscalers", [])}
    name = params["upscaler"] or next((n for n, u in served.items() if u.get("default")), "")
    if name in served and params["factor"] > served[name]["scale"]:
        raise JobInputError(f"Factor {params['factor']} is more than {name}'s scale (x{served[name]['scale']})")


def upscale_job(operator, context, image, rerun=None):
    """Submit the upscale of ``image``; ``rerun``: a history entry run again from its own original."""
    scene = context.scene
    start = rerun.original if rerun is not None and rerun.original is not None else None
    pixels = image_pixels(start if start is not None else image)
    params = upscale_params(scene, start if start is not None else image)
    arrays = {"init_image": wire_array(image, pixels, alpha=True)}  # the upscale keeps alpha
    check_job("upscale", params, arrays, SESSION.welcome)
    kind, job_params = "upscale", params
    if scene.dream_upscale.detail_strength > 0:
        kind, job_params = "detail", detail_params(scene, params, SESSION.welcome)
        check_job("detail", job_params, arrays, SESSION.welcome)
    check_scale(params, SESSION.welcome)
    width, height = params["width"] * params["factor"], params["height"] * params["factor"]
    replace = start is not None or (rerun is None and scene.dream_upscale.result_target == "REPLACE")
    backup, restore = None, None
    if replace:  # the image keeps its size until the result comes; Stop puts its pixels back
        current = image_pixels(image)
        backup = start or blender_images.new_image_like(image, f"{image.name} (before upscale)", current)
        if start is None:
            history.keep_pixels(image, backup)
        target, created, restore = image, (() if start is not None else ("backup",)), current
    else:
        target = blender_images.new_result_image(f"{image.name} x{params['factor']}", width, height,
                                                 float_buffer=image.is_float)
        created = ("image",)
        space = context.space_data
        if space is not None and space.type == "IMAGE_EDITOR":
            space.image = target
    target[SEAMLESS_KEY] = params["seamless"]
    settings = history.snapshot(scene.dream, {"dream_upscale": UPSCALE_SETTINGS})
    SESSION.submit(get_preferences(), job_params, target.name, arrays,
                   datablocks={"scene": scene, "image": target, "backup": backup, "source": image},
                   kind=kind, operator="dream.upscale", scene_name=scene.name, settings=settings,
                   created=created, original=pixels, restore=restore,
                   backup_name=backup.name if backup is not None else "", source_name=image.name, total=1)
    operator.report({"INFO"}, f"Upscaling {image.name!r} to {width}x{height}")
    return {"FINISHED"}


class DREAM_OT_upscale(ImageEditorOperator, bpy.types.Operator):
    bl_idname = "dream.upscale"
    bl_label = "Upscale"
    bl_description = ("Upscale the active image with the backend's upscaler, tile by tile; seamless images "
                      "stay seamless")

    @report_input_errors
    def execute(self, context):
        return upscale_job(self, context, editor_image(context))


def rerun(operator, context, entry):
    """Re-run an upscale entry: its settings, on its own original (or its source image)."""
    history.apply(context.scene.dream, json.loads(entry.settings))
    source = entry.original if entry.original is not None else entry.source
    if source is None:
        raise JobInputError("The image this upscale started from was deleted: nothing to re-run on")
    if entry.original is not None:
        return upscale_job(operator, context, entry.image or source, rerun=entry)
    return upscale_job(operator, context, source)


classes = (DREAM_OT_upscale,)
