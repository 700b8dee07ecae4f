"""Enhance Region from the selected faces' UV islands, Upscale After, and alpha kept by Upscale, against the
real backend (pocket model, pocket-x4 and the fixtures' random rand-x2 upscaler)."""

import bpy
import numpy as np
import pytest

from tests.blender.helpers import addon, image_editor, pixels, select_only_face
from tests.blender.test_enhance import enhance, picture
from tests.blender.test_latent import pocket_scene  # noqa: F401  (fixture: the pocket model, connected)
from tests.blender.test_upscale import checker_image, run, upscale_scene  # noqa: F401  (fixture)

SIZE = 64


def textured_cube(image, face=1):
    """The default scene's cube, its material showing ``image``, one face selected."""
    cube = bpy.data.objects["Cube"]
    material = bpy.data.materials.new("textured")
    if bpy.app.version < (5, 0, 0):  # 5.x: materials always have nodes (use_nodes is deprecated there)
        material.use_nodes = True
    node = material.node_tree.nodes.new("ShaderNodeTexImage")
    node.image = image
    cube.data.materials.clear()
    cube.data.materials.append(material)
    select_only_face(cube, face)
    return cube


def island(cube, face, width, height):
    """The face's UV bounding box in pixels (x0, y0, x1, y1), rows bottom first: the default cube's faces are
    axis-aligned rectangles in UV space."""
    mesh = cube.data
    poly = mesh.polygons[face]
    uvs = np.array([mesh.uv_layers.active.data[i].uv[:] for i in poly.loop_indices])
    (u0, v0), (u1, v1) = uvs.min(0), uvs.max(0)
    return u0 * width, v0 * height, u1 * width, v1 * height


def centres_within(box, width, height, grow):
    """Pixels whose centres lie in ``box`` grown by ``grow`` pixels on every side."""
    x0, y0, x1, y1 = box
    xs, ys = np.arange(width) + 0.5, np.arange(height) + 0.5
    inside_x = (xs >= x0 - grow) & (xs <= x1 + grow)
    inside_y = (ys >= y0 - grow) & (ys <= y1 + grow)
    return inside_y[:, None] & inside_x[None, :]


@pytest.mark.parametrize("mode", ["OBJECT", "EDIT"])
def test_selected_faces_give_the_mask_of_their_uv_island(pocket_scene, session, mode):
    image = picture("faces", SIZE, SIZE)
    original = pixels(image)
    cube = textured_cube(image, face=1)
    bpy.context.view_layer.objects.active = cube
    if mode == "EDIT":
        bpy.ops.object.mode_set(mode="EDIT")
    try:
        job = enhance(session, image, region="FACES", feather=2.0)
    finally:
        if mode == "EDIT":
            bpy.ops.object.mode_set(mode="OBJECT")
    assert job.state == "done", job.message
    mask = np.asarray(job.arrays["mask"]).reshape(SIZE, SIZE) > 0  # rows bottom first, as Blender's
    box = island(cube, 1, SIZE, SIZE)
    assert (box[2] - box[0]) * (box[3] - box[1]) > 100  # a real island, not a sliver
    np.testing.assert_array_equal(mask & ~centres_within(box, SIZE, SIZE, 1), False)  # nothing beyond a pixel
    np.testing.assert_array_equal(centres_within(box, SIZE, SIZE, -1) & ~mask, False)  # everything within it
    out = pixels(job.datablock("image"))
    np.testing.assert_array_equal(out[~mask], original[~mask])  # outside the island: bit for bit
    inner = centres_within(box, SIZE, SIZE, -3)  # past the feather
    assert np.abs(out[inner] - original[inner])[..., :3].mean() > 0.01


def test_selected_faces_work_when_another_object_is_active(pocket_scene, session):
    """The mesh using the image is found though the camera is active."""
    image = picture("used", SIZE, SIZE)
    cube = textured_cube(image, face=4)
    bpy.context.view_layer.objects.active = bpy.data.objects["Camera"]
    job = enhance(session, image, region="FACES")
    assert job.state == "done", job.message
    mask = np.asarray(job.arrays["mask"]).reshape(SIZE, SIZE) > 0
    box = island(cube, 4, SIZE, SIZE)
    np.testing.assert_array_equal(mask & ~centres_within(box, SIZE, SIZE, 1), False)


@pytest.mark.parametrize("problem,message", [
    ("no mesh", "needs a mesh"),
    ("no uv map", "no UV map"),
    ("no face", "No faces"),
])
def test_selected_faces_refuse_clearly_before_anything_is_made(pocket_scene, session, problem, message):
    image = picture("bad faces", SIZE, SIZE)
    cube = bpy.data.objects["Cube"]
    if problem == "no mesh":
        bpy.context.view_layer.objects.active = bpy.data.objects["Camera"]  # and no mesh uses the image
    else:
        textured_cube(image, face=-1 if problem == "no face" else 0)
        bpy.context.view_layer.objects.active = cube
        if problem == "no uv map":
            while cube.data.uv_layers:
                cube.data.uv_layers.remove(cube.data.uv_layers[0])
    pocket_scene.dream_enhance.region = "FACES"
    names, jobs = set(bpy.data.images.keys()), set(session.jobs)
    with image_editor(image), pytest.raises(RuntimeError, match=message):
        bpy.ops.dream.enhance_region()
    assert set(bpy.data.images.keys()) == names and set(session.jobs) == jobs


def test_upscale_after_enhance_gives_the_upscaled_size(pocket_scene, session):
    image = picture("bigger", 60, 44)  # padded to 64 x 48 for the job, cropped back
    enhance_props = pocket_scene.dream_enhance
    items = [item[0] for item in addon("properties").upscale_after_items(enhance_props, bpy.context)]
    assert items[:1] == ["NONE"] and "rand-x2" in items  # the welcome's upscalers
    enhance_props.upscale_after, enhance_props.upscale_factor = "DEFAULT", 4
    pocket_scene.dream_upscale.tile_size, pocket_scene.dream_upscale.tile_overlap = 32, 8
    job = enhance(session, image, cursor=(0.3, 0.6))
    assert job.state == "done", job.message
    assert job.params["enlarge_with"] == "pocket-x4" and job.params["enlarge_tile"] == 32
    result = job.datablock("image")
    assert tuple(result.size) == (240, 176)
    four = pixels(result)
    # The right picture, the right way up: reduced by 4 it is close to the enhanced image at its own size.
    enhance_props.upscale_after = "NONE"
    plain = pixels(enhance(session, image, cursor=(0.3, 0.6)).datablock("image"))
    assert np.abs(four.reshape(44, 4, 60, 4, 4).mean(axis=(1, 3)) - plain)[..., :3].mean() < 0.05
    enhance_props.upscale_after, enhance_props.upscale_factor = "rand-x2", 2  # the menu's choice is used
    two = enhance(session, image, cursor=(0.3, 0.6))
    assert two.state == "done" and tuple(two.datablock("image").size) == (120, 88)
    enhance_props.upscale_factor = 4  # more than rand-x2's scale: refused before anything is made
    names = set(bpy.data.images.keys())
    with image_editor(image), pytest.raises(RuntimeError, match="more than rand-x2's scale"):
        bpy.ops.dream.enhance_region()
    assert set(bpy.data.images.keys()) == names


def test_upscale_keeps_a_transparent_corner_transparent(upscale_scene, session):
    image, rgba = checker_image("alpha", 40, 24)
    rgba[:8, :8, 3] = 0.0  # the bottom-left corner (Blender rows run bottom first)
    image.pixels.foreach_set(rgba.reshape(-1))
    with image_editor(image):
        job = run(session)
    assert job.state == "done", job.message
    alpha = pixels(job.datablock("image"))[..., 3]
    assert alpha.shape == (96, 160)
    assert (alpha[:20, :20] == 0).all()  # away from Lanczos's reach (3 px x 4) the corner stays clear
    assert (alpha[44:] == 1).all() and (alpha[:, 44:] == 1).all()  # and the rest exactly opaque
    opaque, _ = checker_image("opaque", 40, 24)
    with image_editor(opaque):
        job = run(session)
    assert (pixels(job.datablock("image"))[..., 3] == 1).all()
