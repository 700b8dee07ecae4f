"""The datablocks a job writes to, held by identity rather than by name.

``ID.session_uid`` stays the same across renames and undo, and every datablock of a newly
loaded file gets a new one: a job bound this way never writes into another file's
"albedo.png", and follows a scene that is renamed while it runs.
"""

from __future__ import annotations

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
