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


def write_pixels(image, rgba: np.ndarray, *, flipped: bool, final: bool = False):
    """Write an (H, W, 4) array into the image (a datablock or its name); ``flipped`` means
    rows are already bottom-up.

    Previews may be smaller or larger than the image; they are skipped if the size differs.
    The final result is packed into the .blend so it is saved with it.
    """
    if isinstance(image, str):
        image = bpy.data.images.get(image)
    if image is None:  # the user deleted it while generating: the caller decides where the result goes
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


def assign_material(obj, image, name: str, target: str = "NEW_SLOT"):
    """A new material whose base colour is ``image``, on ``obj`` as ``target`` says.

    NEW_SLOT appends a slot (or fills an empty active one) and makes it active, and the faces
    that showed the active slot show the new one (so the result is seen; every material keeps
    its slot); REPLACE_SLOT puts it in the active slot and keeps the material that was there
    (fake user, its name on the new material) so Restore Material can put it back. No user
    material ever loses its last user. Returns the material and the faces it moved.
    """
    material = bpy.data.materials.new(name)
    if bpy.app.version < (5, 0, 0):  # always on from 5.0, where the property is deprecated
        material.use_nodes = True
    nodes = material.node_tree.nodes
    bsdf = next((n for n in nodes if n.type == "BSDF_PRINCIPLED"), None) or nodes.new("ShaderNodeBsdfPrincipled")
    texture = nodes.new("ShaderNodeTexImage")
    texture.image = image
    texture.location = (bsdf.location.x - 350, bsdf.location.y)
    material.node_tree.links.new(texture.outputs["Color"], bsdf.inputs["Base Color"])
    slots, index = obj.material_slots, obj.active_material_index
    old = slots[index].material if index < len(slots) else None
    material[ACTIVE_KEY] = index
    if old is None and index < len(slots):
        slots[index].material, material[SLOT_KEY] = material, "filled"
    elif target == "REPLACE_SLOT" and old is not None:
        material[SLOT_KEY], material[REPLACED_KEY] = "replaced", old.name
        if not old.use_fake_user:
            old.use_fake_user, material[FAKE_USER_KEY] = True, True
        slots[index].material = material
    else:
        obj.data.materials.append(material)
        obj.active_material_index, material[SLOT_KEY] = len(obj.material_slots) - 1, "appended"
        if old is not None:
            faces = np.flatnonzero(face_materials(obj) == index)
            set_face_materials(obj, faces, obj.active_material_index)
            return material, faces
    return material, np.zeros(0, np.int64)


def face_materials(obj) -> np.ndarray:
    """Each face's material slot index (Object or Edit mode)."""
    if obj.mode == "EDIT":
        import bmesh

        return np.array([f.material_index for f in bmesh.from_edit_mesh(obj.data).faces], np.int64)
    indices = np.empty(len(obj.data.polygons), np.int32)
    obj.data.polygons.foreach_get("material_index", indices)
    return indices.astype(np.int64)


def set_face_materials(obj, faces, index: int):
    """Give ``faces`` (indices) the material slot ``index`` (Object or Edit mode)."""
    if obj.mode == "EDIT":
        import bmesh

        bm = bmesh.from_edit_mesh(obj.data)
        bm.faces.ensure_lookup_table()
        for i in faces:
            bm.faces[int(i)].material_index = index
        bmesh.update_edit_mesh(obj.data)
        return
    indices = np.empty(len(obj.data.polygons), np.int32)
    obj.data.polygons.foreach_get("material_index", indices)
    indices[faces[faces < len(indices)]] = index
    obj.data.polygons.foreach_set("material_index", indices)
    obj.data.update()


# Custom properties on a Dream material: how it was placed, which slot was active, what it replaced.
SLOT_KEY, ACTIVE_KEY, REPLACED_KEY, FAKE_USER_KEY = "dream_slot", "dream_active", "dream_replaced", "dream_fake_user"


def replaced_material(material):
    """The user's material that ``material`` replaced in its slot, if it still exists."""
    name = material.get(REPLACED_KEY) if material is not None else None
    return bpy.data.materials.get(name) if name else None


def restore_replaced(slot):
    """Put the replaced material back into ``slot`` (Restore Material); return it."""
    old = replaced_material(slot.material)
    if old is not None:
        if slot.material.get(FAKE_USER_KEY):
            old.use_fake_user = False
        slot.material = old
    return old


def take_back_material(obj, material, faces=()):
    """Undo ``assign_material`` for a job that gave no result, then delete the material."""
    how = material.get(SLOT_KEY, "")
    for index, slot in reversed(list(enumerate(obj.material_slots if obj is not None else ()))):
        if slot.material != material:
            continue
        if how == "replaced":
            restore_replaced(slot)
        elif how == "filled":
            slot.material = None
        else:
            previous = material.get(ACTIVE_KEY, 0)
            set_face_materials(obj, np.asarray(faces, np.int64), previous)
            obj.data.materials.pop(index=index)
            obj.active_material_index = min(previous, max(len(obj.material_slots) - 1, 0))
    if material.users == 0:
        bpy.data.materials.remove(material)


def remove_created(obj, datablocks, faces=()):
    """Delete what a job made for a result that never came (materials first: they use the images)."""
    for datablock in sorted((d for d in datablocks if d is not None), key=lambda d: d.id_type != "MATERIAL"):
        if datablock.id_type == "MATERIAL":
            take_back_material(obj, datablock, faces)
        elif datablock.id_type == "IMAGE":
            bpy.data.images.remove(datablock)


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
