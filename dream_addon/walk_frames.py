"""Walk frames into Blender as they arrive: an image strip in the Video Sequencer, or an
image-sequence texture on a material. Frames are the backend's files (same machine)."""

from __future__ import annotations

import os

import bpy


def strips_of(editor):
    """Sequencer strips: ``strips`` from Blender 4.4 on, ``sequences`` before (4.2 LTS)."""
    return editor.strips if hasattr(editor, "strips") else editor.sequences


FRAME_FILE = "frame_{:06d}.png"  # frame k (0-based) is frame_{k+1:06d}.png in the job's folder (docs/protocol.md)


def place(job, message):
    """Put one finished frame where the walk's target says; set the scene's range and fps once.

    Frames the add-on missed (made while it was reconnecting, or while another file was open)
    are placed first, from the job's folder, so the strip stays in order."""
    job.step, job.total = message["done"], message["frames"]
    fill(job, os.path.dirname(message["path"]), message["frames"], message["index"])
    if message["index"] not in job.walk_target.get("placed", ()):
        place_one(job, message["path"], message["index"], message["frames"])


def fill(job, folder: str, total: int, upto: int | None = None):
    """Place the frames from the first one not placed yet up to ``upto`` (default: all)."""
    for index in range(len(job.walk_target.get("placed", ())), total if upto is None else upto):
        path = os.path.join(folder, FRAME_FILE.format(index + 1))
        if os.path.isfile(path):
            place_one(job, path, index, total)


def place_one(job, path, index, total):
    scene = job.datablock("scene")
    if scene is None:
        return
    target = job.walk_target
    if "placed" not in target:
        scene.render.fps = job.params["fps"]
        scene.frame_start = target["start_frame"]
        scene.frame_end = target["start_frame"] + total - 1
        target["placed"] = []
    if target["kind"] == "SEQUENCER":
        place_in_sequencer(scene, job, path, index)
    else:
        place_in_texture(scene, job, path, total)
    target["placed"].append(index)


def place_in_sequencer(scene, job, path, index):
    target = job.walk_target
    editor = scene.sequence_editor or scene.sequence_editor_create()
    strip = strips_of(editor).get(target.get("strip", ""))
    if strip is None:
        strip = strips_of(editor).new_image(f"Dream walk {job.job_id[-6:]}", path, target["channel"],
                                            target["start_frame"], fit_method="FIT")
        target["strip"] = strip.name
        workspace = bpy.context.workspace
        if workspace is not None and getattr(workspace, "sequencer_scene", False) is None:
            workspace.sequencer_scene = scene  # Blender 5.0 shows the sequencer of this scene
    else:
        strip.elements.append(os.path.basename(path))
    strip.directory = os.path.dirname(path) + os.sep


def place_in_texture(scene, job, path, total):
    target = job.walk_target
    if "image" in target:
        return  # the sequence reads each frame file when that frame is shown
    image = bpy.data.images.load(path, check_existing=False)
    image.source = "SEQUENCE"
    image.name = f"Dream walk {job.job_id[-6:]}"
    target["image"] = image.name
    obj = job.datablock("object")
    if obj is None or obj.type != "MESH" or target.get("material_target") == "IMAGE_ONLY":
        image.use_fake_user = True  # no material uses it: kept with the file all the same
        return
    from .blender_images import assign_material

    material, _ = assign_material(obj, image, image.name, target.get("material_target", "NEW_SLOT"))
    node = next(n for n in material.node_tree.nodes if n.type == "TEX_IMAGE")
    user = node.image_user
    user.frame_duration, user.frame_start, user.frame_offset = total, target["start_frame"], 0
    user.use_auto_refresh = True
