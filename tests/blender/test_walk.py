"""Walks in real bpy: frames onto the Sequencer and into an image-sequence texture, export."""

import os
import time

import bpy
import numpy as np
import pytest

from tests.blender.helpers import addon, run_walk

strips_of, strip_span = addon("walk_frames").strips_of, addon("walk_frames").strip_span


def test_frames_become_a_sequencer_strip(scene, session):
    job = run_walk(scene, session, target="SEQUENCER", channel=3, start_frame=10)
    strip = strips_of(scene.sequence_editor)[job.walk_target["strip"]]
    assert strip.channel == 3 and len(strip.elements) == 6 and strip_span(strip) == (10, 6)
    assert strip.name == f"Dream walk {job.job_id[-6:]}"  # a mosaic's zoom is "Dream mosaic ..."
    assert [e.filename for e in strip.elements] == [f"frame_{i:06d}.png" for i in range(1, 7)]
    assert os.path.isfile(os.path.join(bpy.path.abspath(strip.directory), strip.elements[5].filename))
    assert (scene.frame_start, scene.frame_end, scene.render.fps) == (10, 15, 8)


def render_mean(scene, frame):
    scene.frame_set(frame)
    bpy.ops.render.render()
    result = bpy.data.images["Render Result"]
    path = bpy.app.tempdir + f"render_{frame}.png"
    result.save_render(path)
    image = bpy.data.images.load(path)
    px = np.empty(image.size[0] * image.size[1] * 4, np.float32)
    image.pixels.foreach_get(px)
    return px.reshape(image.size[1], image.size[0], 4)[..., :3]


def frame_pixels(path):
    image = bpy.data.images.load(path, check_existing=False)
    px = np.empty(image.size[0] * image.size[1] * 4, np.float32)
    image.pixels.foreach_get(px)
    return px.reshape(image.size[1], image.size[0], 4)[..., :3]


def test_frames_become_an_image_sequence_texture_that_follows_the_frame(scene, session):
    bpy.ops.wm.read_homefile(use_empty=True)
    scene = bpy.context.scene
    scene.dream.width = scene.dream.height = 64
    bpy.ops.mesh.primitive_plane_add(size=2)
    plane = bpy.context.active_object
    job = run_walk(scene, session, target="TEXTURE", kind="seeds", seeds="1, 50, 99")
    image = bpy.data.images[job.walk_target["image"]]
    assert image.source == "SEQUENCE"
    node = next(n for n in plane.active_material.node_tree.nodes if n.type == "TEX_IMAGE")
    assert node.image == image and node.image_user.frame_duration == 6 and node.image_user.frame_start == 1
    # Render the plane flat-lit through an orthographic camera: each frame shows its own file.
    material = plane.active_material
    tree = material.node_tree
    emission = tree.nodes.new("ShaderNodeEmission")
    tree.links.new(node.outputs["Color"], emission.inputs["Color"])
    output = next(n for n in tree.nodes if n.type == "OUTPUT_MATERIAL")
    tree.links.new(emission.outputs["Emission"], output.inputs["Surface"])
    camera = bpy.data.objects.new("cam", bpy.data.cameras.new("cam"))
    camera.data.type, camera.data.ortho_scale = "ORTHO", 2.0
    camera.location = (0, 0, 3)
    scene.collection.objects.link(camera)
    scene.camera = camera
    scene.render.engine = "CYCLES"
    scene.cycles.samples, scene.cycles.device = 1, "CPU"
    scene.render.resolution_x = scene.render.resolution_y = 64
    scene.view_settings.view_transform = "Standard"
    folder = os.path.dirname(bpy.path.abspath(image.filepath))
    files = [frame_pixels(os.path.join(folder, f"frame_{i:06d}.png")) for i in (1, 6)]
    for frame, own, other in ((1, files[0], files[1]), (6, files[1], files[0])):
        rendered = render_mean(scene, frame)
        assert np.abs(rendered - own).mean() < np.abs(rendered - other).mean()


@pytest.mark.parametrize("fmt, bounce, count", [("gif", True, 10), ("mp4", False, 6)])
def test_export_walk(scene, session, fmt, bounce, count):
    job = run_walk(scene, session)
    scene.dream_walk.export_format, scene.dream_walk.rubber_band = fmt, bounce
    assert bpy.ops.dream.walk_export() == {"FINISHED"}
    deadline = time.monotonic() + 120
    while not job.message.startswith("Exported"):
        assert time.monotonic() < deadline, job.message
        session.drain(timeout=1.0)
    assert f"Exported {count} frames" in job.message
    path = job.message.split(" to ", 1)[1]
    assert path.endswith("." + fmt) and os.path.getsize(path) > 0


def test_cancel_keeps_placed_frames_and_resume_completes_the_strip(scene, session):
    walk = scene.dream_walk
    walk.kind, walk.frames, walk.batch_size, walk.target = "circular", 6, 2, "SEQUENCER"
    scene.dream.steps = 25
    before = set(session.jobs)
    bpy.ops.dream.walk()
    (job_id,) = set(session.jobs) - before
    job = session.jobs[job_id]
    deadline = time.monotonic() + 120
    while not job.walk_target.get("placed"):
        assert job.active and time.monotonic() < deadline, job.message
        session.drain(timeout=1.0)
    bpy.ops.dream.cancel()
    session.wait_for(job_id)
    assert job.state == "cancelled"
    placed = list(job.walk_target["placed"])
    strip = strips_of(scene.sequence_editor)[job.walk_target["strip"]]
    assert 2 <= len(strip.elements) == len(placed) < 6  # finished frames stay on the timeline
    assert bpy.ops.dream.walk_resume() == {"FINISHED"}
    session.wait_for(job_id, 300)
    assert job.state == "done", job.message
    assert len(strip.elements) == 6 and job.walk_target["placed"] == list(range(6))
    assert not bpy.ops.dream.walk_resume.poll()
