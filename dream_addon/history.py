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


# Other panels' settings a job reads, by Scene property: recorded with every entry, put back by Recall.
JOB_GROUPS = {"dream_models": ("loras",)}  # LoRAs join every generation


def plain(props, names) -> dict:
    """``names`` of ``props`` as JSON values (collections as lists of their items' properties)."""
    values = {}
    for name in names:
        value = getattr(props, name)
        if isinstance(value, bpy.types.bpy_prop_collection):
            value = [{key: getattr(item, key) for key in type(item).__annotations__} for item in value]
        values[name] = value
    return values


def put(props, values: dict):
    """Set recorded ``values`` on ``props``; a value it no longer takes (a model gone) is skipped."""
    for name, value in values.items():
        current = getattr(props, name, None)
        if isinstance(current, bpy.types.bpy_prop_collection):
            current.clear()
            for entry in value:
                item = current.add()
                for key, item_value in entry.items():
                    setattr(item, key, item_value)
            continue
        try:
            setattr(props, name, value)
        except (TypeError, ValueError, AttributeError):  # e.g. a model the backend no longer serves
            pass


def snapshot(props, groups=None) -> dict:
    """The panel's settings (Scene.dream) and those of other panels the job reads (``groups``: Scene
    property -> names; JOB_GROUPS always) as plain JSON values."""
    scene = props.id_data
    groups = {**JOB_GROUPS, **(groups or {})}
    return {**plain(props, SCENE_SETTINGS),
            "groups": {group: plain(getattr(scene, group), names) for group, names in groups.items()
                       if getattr(scene, group, None) is not None}}


def apply(props, settings: dict):
    """Put recorded settings back into the panel and the other panels they name."""
    put(props, {name: settings[name] for name in SCENE_SETTINGS if name in settings})
    for group, values in settings.get("groups", {}).items():
        target = getattr(props.id_data, group, None)
        if target is not None:
            put(target, values)


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
