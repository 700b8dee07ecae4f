"""Walk frames into Blender as they arrive: an image strip in the Video Sequencer, or an
image-sequence texture on a material. Frames are the backend's files (same machine)."""

from __future__ import annotations

import os

import bpy


def strips_of(editor):
    """Sequencer strips: ``strips`` from Blender 4.4 on, ``sequences`` before (4.2 LTS)."""
    return editor.strips if hasattr(editor, "strips") else editor.sequences


def place(job, message):
    """Put one finished frame where the walk's target says; set the scene's range and fps once."""
    scene = bpy.data.scenes.get(job.scene_name)
    if scene is None:
        return
    target = job.walk_target
    total, path = message["frames"], message["path"]
    job.step, job.total = message["done"], total
    if "placed" not in target:
        scene.render.fps = job.params["fps"]
        scene.frame_start = target["start_frame"]
        scene.frame_end = target["start_frame"] + total - 1
        target["placed"] = []
    if target["kind"] == "SEQUENCER":
        place_in_sequencer(scene, job, path, message["index"])
    else:
        place_in_texture(scene, job, path, total)
    target["placed"].append(message["index"])
    if message["index"] <= min(target["placed"]):
        target["first_path"] = path


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
    obj = bpy.data.objects.get(target.get("object", ""))
    if obj is None or obj.type != "MESH":
        return
    from .blender_images import assign_material

    material = assign_material(obj, image, image.name)
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
        image.name = f"Dream walk {job.job_id[-6:]}"
        target["image"] = image.name
    return image
