"""The datablocks a job writes to, held by identity rather than by name.

``ID.session_uid`` stays the same across renames and undo, and every datablock of a newly
loaded file gets a new one: a job bound this way never writes into another file's
"albedo.png", and follows a scene that is renamed while it runs.

Each bound datablock also carries the job's id as a custom property (``tag``), saved with the file:
a job that waits for its file finds its datablocks again when that file is opened, whatever it was
renamed to or wherever the file was moved.
"""

from __future__ import annotations

import hashlib

import bpy

COLLECTIONS = {"IMAGE": "images", "SCENE": "scenes", "OBJECT": "objects", "MATERIAL": "materials"}


def ref(datablock) -> tuple | None:
    """(collection, session_uid, name) of a datablock, or None."""
    if datablock is None:
        return None
    return COLLECTIONS[datablock.id_type], datablock.session_uid, datablock.name


def resolve(reference):
    """The datablock ``reference`` names, if it still exists in the open file."""
    if not reference:
        return None
    collection, uid, _ = reference
    return next((d for d in getattr(bpy.data, collection) if d.session_uid == uid), None)


def rebind(reference):
    """The same datablock in its file opened again (by name: loading gives it a new session_uid)."""
    if not reference:
        return None
    collection, _, name = reference
    return ref(getattr(bpy.data, collection).get(name))


TAG_PREFIX = "dream_job "


def tag_key(job_id: str) -> str:
    """The custom-property name that marks a datablock as bound to ``job_id`` (within Blender's 63 bytes)."""
    key = TAG_PREFIX + job_id
    return key if len(key.encode()) <= 63 else TAG_PREFIX + hashlib.sha1(job_id.encode()).hexdigest()


def tag_roles(datablock, job_id: str) -> set:
    """The roles ``datablock`` plays for ``job_id`` (one image may be a job's target and its source)."""
    value = datablock.get(tag_key(job_id)) if datablock.library is None else None
    return set(value.split(",")) if isinstance(value, str) else set()


def tag(datablock, job_id: str, role: str):
    try:
        datablock[tag_key(job_id)] = ",".join(sorted(tag_roles(datablock, job_id) | {role}))
    except (TypeError, AttributeError):  # linked from a library: read-only (it is found by name instead)
        pass


def untag(datablock, job_id: str):
    if datablock is not None and tag_key(job_id) in datablock.keys():
        try:
            del datablock[tag_key(job_id)]
        except (TypeError, AttributeError):
            pass


def find_tagged(reference, job_id: str, role: str):
    """The datablock of the open file (never one linked from a library) tagged as ``job_id``'s ``role``, in the
    collection ``reference`` names."""
    if not reference:
        return None
    return next((d for d in getattr(bpy.data, reference[0]) if role in tag_roles(d, job_id)), None)
