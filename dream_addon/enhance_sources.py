"""Enhance Region's third region source (the selected faces' UV islands) and its optional upscale after."""

import numpy as np

from .job_builder import JobInputError, image_extension, selected_faces_uv_mask
from .properties import BACKEND_DEFAULT_UPSCALER, UPSCALE_AFTER_NONE


def uses_image(obj, image) -> bool:
    """Whether an Image Texture node of one of ``obj``'s materials shows ``image``."""
    for slot in obj.material_slots:
        tree = slot.material.node_tree if slot.material is not None else None
        if tree is not None and any(n.type == "TEX_IMAGE" and n.image == image for n in tree.nodes):
            return True
    return False


def image_mesh(context, image):
    """The mesh whose faces pick the region: the active object when it is a mesh using the image, else the one
    mesh using it (a selected one first), else the active mesh object."""
    active = context.view_layer.objects.active
    if active is not None and active.type == "MESH" and uses_image(active, image):
        return active
    users = [o for o in context.view_layer.objects if o.type == "MESH" and uses_image(o, image)]
    chosen = [o for o in users if o.select_get()] or users
    if len(chosen) == 1:
        return chosen[0]
    if active is not None and active.type == "MESH":
        return active
    if chosen:
        raise JobInputError(f"{len(chosen)} meshes use {image.name!r}: make the one whose faces to use active")
    raise JobInputError(f"Selected Faces needs a mesh: no mesh object uses {image.name!r} and the active object "
                        "is not a mesh")


def faces_mask(context, image, width: int, height: int) -> np.ndarray:
    """(h, w) bool, rows bottom to top: the selected faces' UV islands at the image's size (no margin: the
    region is the islands exactly; the feather lies inside them)."""
    obj = image_mesh(context, image)
    mask = selected_faces_uv_mask(obj, width, height, 0, image_extension(obj, image))
    if not mask.any():
        raise JobInputError(f"The selected faces of {obj.name!r} cover no pixel of {image.name!r} (their UVs lie "
                            "outside the image, or are too small)")
    return mask


def upscale_after_params(scene, welcome) -> dict:
    """The enhance job's upscale fields from Upscale After and its Factor; the upscaler's tiling is the Upscale
    panel's Tile Size and Overlap (one memory budget for every upscale)."""
    enhance, upscale = scene.dream_enhance, scene.dream_upscale
    if enhance.upscale_after == UPSCALE_AFTER_NONE:
        return {"scale": 1}
    served = {u["name"]: u for u in (welcome or {}).get("upscalers", [])}
    name = enhance.upscale_after
    if name == BACKEND_DEFAULT_UPSCALER:
        name = next((n for n, u in served.items() if u.get("default")), "")
    if name not in served:
        raise JobInputError(f"The backend serves no upscaler {enhance.upscale_after!r} (Upscale After): choose one "
                            f"of {sorted(served) or 'none; start it with an upscaler'}, or None")
    if enhance.upscale_factor > served[name]["scale"]:
        raise JobInputError(f"Factor {enhance.upscale_factor} is more than {name}'s scale (x{served[name]['scale']})")
    return {"scale": enhance.upscale_factor, "enlarge_with": name, "enlarge_tile": upscale.tile_size,
            "enlarge_overlap": upscale.tile_overlap}
