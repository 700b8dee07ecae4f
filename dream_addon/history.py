"""Generation history, stored in the scene (so it is saved with the .blend): every finished
job with its settings and its own result pixels; Recall puts the settings back, Re-run runs
it again on its own source, Delete frees its images."""

from __future__ import annotations

import base64
import json
import time
import zlib

import bpy
import numpy as np

from .properties import SCENE_SETTINGS


def snapshot(props) -> dict:
    """The panel's settings as plain JSON values (collections as lists of their items' properties)."""
    settings = {}
    for name in SCENE_SETTINGS:
        value = getattr(props, name)
        if isinstance(value, bpy.types.bpy_prop_collection):
            value = [{key: getattr(item, key) for key in type(item).__annotations__} for item in value]
        settings[name] = value
    return settings


def apply(props, settings: dict):
    """Put recorded settings back into the panel."""
    for name in SCENE_SETTINGS:
        if name not in settings:
            continue
        current = getattr(props, name)
        if isinstance(current, bpy.types.bpy_prop_collection):
            current.clear()
            for entry in settings[name]:
                item = current.add()
                for key, value in entry.items():
                    setattr(item, key, value)
            continue
        try:
            setattr(props, name, settings[name])
        except (TypeError, ValueError):  # e.g. a model the backend no longer serves
            pass
    for group, values in settings.get("groups", {}).items():  # other panels' settings (Mosaic, Enhance Region)
        target = getattr(props.id_data, group, None)
        for name, value in values.items() if target is not None else ():
            try:
                setattr(target, name, value)
            except (TypeError, ValueError, AttributeError):
                pass


def record(job):
    """Add a finished job to its scene's history."""
    scene = job.datablock("scene")
    if scene is None:
        return None
    item = scene.dream_history.add()
    item.job_id, item.kind, item.operator = job.job_id, job.kind, job.operator
    item.settings = json.dumps(job.settings)
    item.params = json.dumps(job.params)
    item.image = job.datablock("image")
    if job.kind == "walk":
        from .walk_frames import frames_image

        item.image, item.frames = frames_image(job), len(job.walk_target.get("placed", ()))
    elif job.walk_target.get("placed"):  # a mosaic's zoom: its image is the mosaic, its frames a sequence
        from .walk_frames import frames_image

        item.sequence, item.frames = frames_image(job), len(job.walk_target["placed"])
    if job.backup_name:
        backup = job.datablock("backup")  # a Re-run names the entry's own earlier backup instead
        item.original = backup if backup is not None and backup.name == job.backup_name else \
            bpy.data.images.get(job.backup_name)
    if job.source_name:
        item.source = job.datablock("source") or bpy.data.images.get(job.source_name)
    if job.repaint_mask is not None:
        item.mask = encode_mask(job.repaint_mask)
    item.created = time.strftime("%Y-%m-%d %H:%M:%S")
    scene.dream_history_index = len(scene.dream_history) - 1
    return item


def entries():
    """Every history entry of every scene."""
    return [item for scene in bpy.data.scenes for item in scene.dream_history]


def keep_pixels(image, copy):
    """Entries that show ``image`` keep its pixels as they are now: they point at ``copy`` (the backup a
    Replace makes anyway), so a later job writing into ``image`` changes no earlier entry."""
    for item in entries():
        if item.image == image:
            item.image = copy


def delete(scene, index: int) -> list:
    """Remove one entry; its result and backup images go too unless something else still uses them.
    Returns the names of the images freed."""
    item = scene.dream_history[index]
    images = {img for img in (item.image, item.original) if img is not None}
    scene.dream_history.remove(index)
    scene.dream_history_index = min(scene.dream_history_index, max(len(scene.dream_history) - 1, 0))
    referenced = {img for entry in entries() for img in (entry.image, entry.original, entry.source)}
    freed = []
    for image in images - referenced:
        if image.users - int(image.use_fake_user) <= 0:  # only its fake user kept it: nothing shows it
            freed.append(image.name)
            bpy.data.images.remove(image)
    return freed


def encode_mask(mask: np.ndarray) -> str:
    """A (h, w) bool mask as short text for a string property: shape, then zlib-packed bits."""
    bits = zlib.compress(np.packbits(mask, axis=None).tobytes(), 9)
    return f"{mask.shape[0]}x{mask.shape[1]}:" + base64.b64encode(bits).decode("ascii")


def decode_mask(text: str) -> np.ndarray | None:
    """The mask ``encode_mask`` wrote (None for an empty string)."""
    if not text:
        return None
    shape, data = text.split(":", 1)
    height, width = map(int, shape.split("x"))
    bits = np.frombuffer(zlib.decompress(base64.b64decode(data)), dtype=np.uint8)
    return np.unpackbits(bits, count=height * width).reshape(height, width).astype(bool)
