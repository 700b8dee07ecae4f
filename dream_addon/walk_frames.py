"""Walk frames into Blender as they arrive: an image strip in the Video Sequencer, or an
image-sequence texture on a material. Frames are the backend's files (same machine) until the
.blend is saved: then they are copied into a folder beside it and referenced from there."""

from __future__ import annotations

import os
import shutil

import bpy


def strips_of(editor):
    """Sequencer strips: ``strips`` from Blender 4.4 on, ``sequences`` before (4.2 LTS)."""
    return editor.strips if hasattr(editor, "strips") else editor.sequences


FRAME_FILE = "frame_{:06d}.png"  # frame k (0-based) is frame_{k+1:06d}.png in the job's folder (docs/protocol.md)


def frames_name(job) -> str:
    """The name of a job's strip and sequence images: "Dream walk ..." or "Dream mosaic ..." (a zoom)."""
    return f"Dream {job.kind} {job.job_id[-6:]}"


def strip_span(strip) -> tuple[float, int]:
    """(first frame, frames shown) of a strip: ``content_start`` and ``duration`` from Blender 5.2,
    which deprecates ``frame_start`` and ``frame_final_duration`` (removed in 6.0)."""
    if "duration" in strip.bl_rna.properties:
        return strip.content_start, strip.duration
    return strip.frame_start, strip.frame_final_duration


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
    if index <= min(target["placed"]):
        target["first_path"] = path


def place_in_sequencer(scene, job, path, index):
    target = job.walk_target
    editor = scene.sequence_editor or scene.sequence_editor_create()
    strip = strips_of(editor).get(target.get("strip", ""))
    if strip is None:
        strip = strips_of(editor).new_image(frames_name(job), path, target["channel"],
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
    image.name = frames_name(job)
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


def frames_image(job):
    """An image-sequence datablock of a walk's frames (the texture's own one, or a new one for a strip):
    the history entry shows it, and saving copies its files next to the .blend."""
    target = job.walk_target
    image = bpy.data.images.get(target.get("image", ""))
    if image is None and target.get("first_path"):
        image = bpy.data.images.load(target["first_path"], check_existing=False)
        image.source = "SEQUENCE"
        image.name = frames_name(job)
        target["image"] = image.name
    return image


def frames_folder(blend_path: str) -> str:
    """Where a project's walk frames live: a folder beside the .blend, named after it."""
    stem = os.path.splitext(os.path.basename(blend_path))[0]
    return os.path.join(os.path.dirname(blend_path), f"{stem}_dream_frames")


def copy_into_project(directory: str, blend_path: str) -> str:
    """Copy a walk's frame files into the project's frames folder (unless already there); return
    the folder they are in now."""
    source = os.path.realpath(bpy.path.abspath(directory))
    root = os.path.realpath(frames_folder(blend_path))
    if source == root or source.startswith(root + os.sep) or not os.path.isdir(source):
        return source
    destination = os.path.join(root, os.path.basename(source))
    os.makedirs(destination, exist_ok=True)
    for name in os.listdir(source):
        if name.startswith("frame_") and not os.path.exists(os.path.join(destination, name)):
            shutil.copy2(os.path.join(source, name), os.path.join(destination, name))
    return destination


@bpy.app.handlers.persistent
def keep_frames_with_project(filepath, *_):
    """save_pre: the frames of every walk in the history move into the project (Blender writes the
    paths relative to the .blend), so moving the project folder keeps them."""
    if not filepath:
        return
    from .history import entries

    folders = {}
    for item in entries():
        sequence = item.image if item.kind == "walk" else item.sequence  # a mosaic's zoom frames
        if sequence is not None and sequence.source == "SEQUENCE":
            old = os.path.dirname(bpy.path.abspath(sequence.filepath))
            folders[os.path.realpath(old)] = new = copy_into_project(old, filepath)
            sequence.filepath = os.path.join(new, os.path.basename(sequence.filepath))
    for scene in bpy.data.scenes:
        for strip in strips_of(scene.sequence_editor) if scene.sequence_editor else ():
            if strip.type == "IMAGE":
                new = folders.get(os.path.realpath(bpy.path.abspath(strip.directory)))
                if new is not None:
                    strip.directory = new + os.sep
