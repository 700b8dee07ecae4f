"""Image datablocks for results: created so they survive save and reopen, written fast."""

from __future__ import annotations

import bpy
import numpy as np


def new_result_image(name: str, width: int, height: int, float_buffer: bool = False):
    """An RGBA image with a fake user and channel-packed alpha: 8-bit sRGB (packed as PNG, about a
    quarter of a float EXR) unless ``float_buffer`` asks for 32-bit linear light."""
    image = bpy.data.images.new(name, width, height, alpha=True, float_buffer=float_buffer)
    # Colour space and alpha mode before any pixel is written: changing them later wipes
    # generated pixels. Float buffers are linear whatever the setting says, and a packed
    # "sRGB" float image is decoded again on load; packed STRAIGHT ones come back premultiplied.
    image.colorspace_settings.name = "Linear Rec.709" if float_buffer else "sRGB"
    image.alpha_mode = "CHANNEL_PACKED"
    image.use_fake_user = True
    return image


def new_image_like(source, name: str, pixels=None):
    """A packed, fake-user image of ``source``'s size, buffer type and colour space, optionally
    filled with ``pixels`` (rows bottom-up): the base for results and for backups of originals."""
    width, height = source.size
    image = bpy.data.images.new(name, width, height, alpha=True, float_buffer=source.is_float)
    image.colorspace_settings.name = source.colorspace_settings.name
    image.alpha_mode = "CHANNEL_PACKED" if source.is_float else source.alpha_mode
    image.use_fake_user = True
    if pixels is not None:
        image.pixels.foreach_set(np.ascontiguousarray(pixels, dtype=np.float32).reshape(-1))
        image.pack()
    return image


def write_pixels(image_name: str, rgba: np.ndarray, *, flipped: bool, final: bool = False):
    """Write an (H, W, 4) array into the image; ``flipped`` means rows are already bottom-up.

    Previews may be smaller or larger than the image; they are skipped if the size differs.
    The final result is packed into the .blend so it is saved with it.
    """
    image = bpy.data.images.get(image_name)
    if image is None:  # the user deleted it while generating: keep the result on disk only
        return False
    height, width = rgba.shape[:2]
    if tuple(image.size) != (width, height):
        if not final:
            return False
        image.scale(width, height)
    if not flipped:
        rgba = rgba[::-1]
    flat = np.ascontiguousarray(rgba, dtype=np.float32).reshape(-1)
    image.pixels.foreach_set(flat)
    if final:
        image.pack()
    image.update()
    return True


def assign_material(obj, image, name: str):
    """A new material whose base colour is ``image``, put in the active slot of ``obj``."""
    material = bpy.data.materials.new(name)
    if bpy.app.version < (5, 0, 0):  # always on from 5.0, where the property is deprecated
        material.use_nodes = True
    nodes = material.node_tree.nodes
    bsdf = next((n for n in nodes if n.type == "BSDF_PRINCIPLED"), None) or nodes.new("ShaderNodeBsdfPrincipled")
    texture = nodes.new("ShaderNodeTexImage")
    texture.image = image
    texture.location = (bsdf.location.x - 350, bsdf.location.y)
    material.node_tree.links.new(texture.outputs["Color"], bsdf.inputs["Base Color"])
    if obj.material_slots and obj.active_material_index < len(obj.material_slots):
        obj.material_slots[obj.active_material_index].material = material
    else:
        obj.data.materials.append(material)
    return material


def add_uv_map(obj):
    """Smart UV Project on every face of ``obj`` (a mesh with no UV map); its mode and face selection stay."""
    mode = obj.mode
    if mode != "OBJECT":
        bpy.ops.object.mode_set(mode="OBJECT")
    polygons = obj.data.polygons
    selected = np.empty(len(polygons), dtype=bool)
    polygons.foreach_get("select", selected)
    bpy.ops.object.mode_set(mode="EDIT")
    bpy.ops.mesh.select_all(action="SELECT")
    bpy.ops.uv.smart_project()
    bpy.ops.object.mode_set(mode="OBJECT")
    polygons.foreach_set("select", selected)
    if mode != "OBJECT":
        bpy.ops.object.mode_set(mode=mode)
