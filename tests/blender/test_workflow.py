"""The texture artist's workflow in real bpy against the real backend: UV masks, texture
selected faces, frame-region inpainting, img2img, history, presets and error paths."""

import json
import subprocess
import sys

import bpy
import numpy as np
import pytest

from tests.backend.test_uv_mask import reference
from tests.blender.helpers import addon, generate, image_editor, pixels, select_only_face

job_builder = addon("job_builder")


def face_uv_box(obj, index):
    poly = obj.data.polygons[index]
    uvs = np.array([obj.data.uv_layers.active.uv[i].vector[:] for i in poly.loop_indices])
    return uvs.min(axis=0), uvs.max(axis=0)


def test_uv_mask_of_one_cube_face_in_object_and_edit_mode(scene):
    cube = bpy.data.objects["Cube"]
    select_only_face(cube, 1)
    (u0, v0), (u1, v1) = face_uv_box(cube, 1)
    expected = np.zeros((64, 64), bool)
    expected[round(v0 * 64):round(v1 * 64), round(u0 * 64):round(u1 * 64)] = True
    object_mode = job_builder.selected_faces_uv_mask(cube, 64, 64, margin=0)
    np.testing.assert_array_equal(object_mode, expected)
    bpy.ops.object.mode_set(mode="EDIT")
    try:
        edit_mode = job_builder.selected_faces_uv_mask(cube, 64, 64, margin=0)
    finally:
        bpy.ops.object.mode_set(mode="OBJECT")
    np.testing.assert_array_equal(edit_mode, expected)
    grown = job_builder.selected_faces_uv_mask(cube, 64, 64, margin=2)
    assert grown.sum() > expected.sum() and grown[expected].all()


def test_uv_mask_of_a_concave_ngon(scene):
    outline = [(0.1, 0.1), (0.9, 0.1), (0.9, 0.9), (0.5, 0.3), (0.1, 0.9)]
    mesh = bpy.data.meshes.new("ngon")
    mesh.from_pydata([(x, y, 0) for x, y in outline], [], [list(range(len(outline)))])
    uv = mesh.uv_layers.new()
    for loop in mesh.loops:
        uv.uv[loop.index].vector = outline[loop.vertex_index]
    obj = bpy.data.objects.new("ngon", mesh)
    scene.collection.objects.link(obj)
    mesh.polygons[0].select = True
    np.testing.assert_array_equal(job_builder.selected_faces_uv_mask(obj, 48, 40, margin=0),
                                  reference([outline], 48, 40))


def textured_cube(scene, session, size=64):
    scene.dream.width = scene.dream.height = size
    job = generate(session)
    assert job.state == "done", job.message
    return bpy.data.objects["Cube"], bpy.data.images[job.image_name]


def test_texture_selected_faces_changes_only_their_uv_regions(scene, session):
    cube, image = textured_cube(scene, session)
    before = pixels(image).copy()
    select_only_face(cube, 1)
    scene.dream.prompt, scene.dream.uv_margin, scene.dream.strength = "blue waves", 1, 1.0
    assert bpy.ops.dream.texture_selected_faces() == {"FINISHED"}
    job = session.wait_for(list(session.jobs)[-1])
    assert job.state == "done", job.message
    after = pixels(image)
    mask = job_builder.selected_faces_uv_mask(cube, 64, 64, margin=1)
    np.testing.assert_array_equal(after[~mask], before[~mask])  # every other pixel exactly as it was
    assert np.abs(after[mask] - before[mask]).max() > 1e-3
    entry = scene.dream_history[-1]
    assert entry.kind == "inpaint" and entry.image == image
    np.testing.assert_array_equal(pixels(entry.original), before)  # the original stays recoverable


def photo(name="photo", width=72, height=60, is_float=False):
    """An image of a size that is not a multiple of 8 (the job is padded and cropped)."""
    image = bpy.data.images.new(name, width, height, alpha=True, float_buffer=is_float)
    rng = np.random.default_rng(5)
    values = rng.random((height, width, 4)).astype(np.float32)
    values[..., 3] = 1.0
    if not is_float:
        values = np.round(values * 255) / 255
    image.pixels.foreach_set(values.reshape(-1))
    return image, pixels(image).copy()


@pytest.mark.parametrize("is_float", [False, True])
def test_frame_region_inpainting_pastes_back_exactly(scene, session, is_float):
    image, before = photo(is_float=is_float)
    props = scene.dream
    props.mask_source, props.rect_min, props.rect_max, props.result_target = "RECT", (0.2, 0.3), (0.6, 0.8), "NEW"
    with image_editor(image):
        assert bpy.ops.dream.inpaint() == {"FINISHED"}
    job = session.wait_for(list(session.jobs)[-1])
    assert job.state == "done", job.message
    result = bpy.data.images[job.image_name]
    assert result != image and tuple(result.size) == (72, 60) and result.is_float == is_float
    frame = job_builder.uv_mask.rectangle(72, 60, 0.2, 0.3, 0.6, 0.8)
    got = pixels(result)
    np.testing.assert_array_equal(got[~frame], before[~frame])
    assert np.abs(got[frame] - before[frame]).max() > 1e-3
    np.testing.assert_array_equal(pixels(image), before)  # NEW leaves the source alone


def test_img2img_replace_keeps_a_backup_and_history(scene, session):
    image, before = photo("replace-me")
    scene.dream.result_target, scene.dream.strength = "REPLACE", 0.5
    with image_editor(image):
        assert bpy.ops.dream.img2img() == {"FINISHED"}
    job = session.wait_for(list(session.jobs)[-1])
    assert job.state == "done" and job.image_name == image.name, job.message
    assert np.abs(pixels(image) - before).max() > 1e-3
    entry = scene.dream_history[-1]
    assert entry.kind == "img2img" and entry.operator == "dream.img2img"
    np.testing.assert_array_equal(pixels(entry.original), before)


def test_mask_sources(scene):
    image, _ = photo("alpha")
    values = pixels(image)
    values[10:20, 5:15, 3] = 0.0
    image.pixels.foreach_set(values.reshape(-1))
    props = scene.dream
    props.mask_source = "ALPHA"
    alpha_mask = job_builder.mask_from_source(props, image, None)
    assert alpha_mask.sum() == 100 and alpha_mask[10:20, 5:15].all()
    mask_image = bpy.data.images.new("mask", 72, 60)
    white = np.zeros((60, 72, 4), np.float32)
    white[:30, :36] = 1.0
    mask_image.pixels.foreach_set(white.reshape(-1))
    props.mask_source, props.mask_image = "IMAGE", mask_image
    assert job_builder.mask_from_source(props, image, None).sum() == 30 * 36
    props.mask_image = bpy.data.images.new("small", 8, 8)
    with pytest.raises(job_builder.JobInputError, match="same size"):
        job_builder.mask_from_source(props, image, None)


def test_ensemble_and_infusion_panels_send_what_they_show(scene, session):
    props = scene.dream
    extra = props.extra_prompts.add()
    extra.text, extra.weight = "blue waves", -0.25
    props.prompt_weight = 0.75
    bias, _ = photo("bias", 64, 64)
    props.infusion_images.add().image = bias
    props.infusion_mid, props.infusion_decay = 0.4, 0.9
    job = generate(session)
    assert job.state == "done", job.message
    prefs = bpy.context.preferences.addons[addon("preferences").ADDON_PACKAGE].preferences
    received = json.load(open(f"{prefs.output_dir}/{job.job_id}/result.json"))["params"]  # as the backend got it
    assert received["prompts"] == [{"text": props.prompt, "weight": 0.75, "guidance": None},
                                   {"text": "blue waves", "weight": -0.25, "guidance": None}]
    assert received["infusion_weights"] == {"down": pytest.approx(0.3), "mid": pytest.approx(0.4),
                                            "up": pytest.approx(0.3)}
    assert received["infusion_decay"] == pytest.approx(0.9)


def test_model_ensemble_panel_lists_only_compatible_models(scene, session):
    compatible = addon("properties").compatible_models
    assert compatible(None, bpy.context, "") == ["tiny", "tiny-b"]  # tiny-inpaint has another latent space
    props = scene.dream
    props.use_model_ensemble = True
    for name in ("tiny", "tiny-b"):
        props.ensemble_models.add().name = name
    job = generate(session)
    assert job.state == "done" and job.params["models"] == [{"name": "tiny", "weight": 0.5},
                                                            {"name": "tiny-b", "weight": 0.5}]


def test_history_recall_rerun_and_survival_in_a_new_process(scene, session, tmp_path):
    scene.dream.prompt, scene.dream.seed, scene.dream.steps = "mossy stones", 123, 4
    first = generate(session)
    scene.dream.prompt, scene.dream.seed = "something else", 5
    assert bpy.ops.dream.history_recall() == {"FINISHED"}
    assert (scene.dream.prompt, scene.dream.seed, scene.dream.steps) == ("mossy stones", 123, 4)
    before = set(session.jobs)
    assert bpy.ops.dream.history_rerun() == {"FINISHED"}
    (rerun_id,) = set(session.jobs) - before
    rerun = session.wait_for(rerun_id)
    assert rerun.state == "done" and rerun.params["prompt"] == "mossy stones" and rerun.params["seed"] != 123
    assert len(scene.dream_history) == 2 and scene.dream_history[0].job_id == first.job_id
    blend = tmp_path / "history.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(blend))
    script = f"""
import sys, json
sys.path.insert(0, {str(addon('session').__file__.rsplit('/dream_addon', 1)[0] + '/scripts')!r})
import blender_session, bpy
blender_session.install_dev()
bpy.ops.wm.open_mainfile(filepath={str(blend)!r})
scene = bpy.context.scene
entry = scene.dream_history[0]
print("HISTORY", len(scene.dream_history), json.loads(entry.settings)["prompt"], entry.image.size[0],
      entry.image.packed_file is not None)
scene.dream.prompt = "changed"
scene.dream_history_index = 0
bpy.ops.dream.history_recall()
print("RECALLED", scene.dream.prompt)
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "HISTORY 2 mossy stones 64 True" in run.stdout and "RECALLED mossy stones" in run.stdout


def test_presets_store_and_apply_settings(scene):
    scene.dream.steps, scene.dream.seamless_x = 33, True
    assert bpy.ops.dream.preset_add(name="Tileable 33") == {"FINISHED"}
    scene.dream.steps, scene.dream.seamless_x = 5, False
    (path,) = [f"{folder}/{name}" for folder in bpy.utils.preset_paths("dream/texture")
               for name in __import__("os").listdir(folder) if name.lower() == "tileable_33.py"]
    assert bpy.ops.script.execute_preset(filepath=path, menu_idname="DREAM_MT_presets") == {"FINISHED"}
    assert scene.dream.steps == 33 and scene.dream.seamless_x


def test_error_paths(scene, session):
    assert not bpy.ops.dream.history_recall.poll()  # a new scene has no history
    cube = bpy.data.objects["Cube"]
    bpy.context.view_layer.objects.active = None
    assert not bpy.ops.dream.texture_selected_faces.poll()
    bpy.context.view_layer.objects.active = cube
    with pytest.raises(RuntimeError, match="no image texture"):
        bpy.ops.dream.texture_selected_faces()
    cube, image = textured_cube(scene, session)
    select_only_face(cube, -1)
    with pytest.raises(RuntimeError, match="No faces"):
        bpy.ops.dream.texture_selected_faces()
    cube.data.uv_layers.remove(cube.data.uv_layers[0])
    with pytest.raises(RuntimeError, match="no UV map"):
        bpy.ops.dream.texture_selected_faces()
    assert not bpy.ops.dream.img2img.poll() and not bpy.ops.dream.inpaint.poll()  # no image editor image
    photo_image, _ = photo("empty-mask")
    scene.dream.mask_source, scene.dream.rect_min, scene.dream.rect_max = "RECT", (0.5, 0.5), (0.5, 0.5)
    with image_editor(photo_image), pytest.raises(RuntimeError, match="mask is empty"):
        bpy.ops.dream.inpaint()
    scene.dream.use_model_ensemble = True
    with pytest.raises(RuntimeError, match="at least two models"):
        bpy.ops.dream.generate_texture()


def test_rectangle_corners_from_the_2d_cursor(scene):
    image, _ = photo("frame")
    with image_editor(image):
        space = bpy.context.window_manager.windows[0].screen.areas[0].spaces.active
        space.cursor_location = (0.1, 0.2)
        assert bpy.ops.dream.rect_from_cursor(corner="MIN") == {"FINISHED"}
        space.cursor_location = (0.7, 1.5)
        assert bpy.ops.dream.rect_from_cursor(corner="MAX") == {"FINISHED"}
    assert tuple(scene.dream.rect_min) == pytest.approx((0.1, 0.2))
    assert tuple(scene.dream.rect_max) == pytest.approx((0.7, 1.0))  # clamped to the image
    assert not bpy.ops.dream.rect_from_cursor.poll()  # outside an image editor


@pytest.mark.parametrize("collection", ["extra_prompts", "infusion_images", "ensemble_models"])
def test_list_add_and_remove(scene, collection):
    items = getattr(scene.dream, collection)
    assert bpy.ops.dream.list_add(collection=collection) == {"FINISHED"}
    assert bpy.ops.dream.list_add(collection=collection) == {"FINISHED"}
    assert len(items) == 2 and getattr(scene.dream, collection + "_index") == 1
    if collection == "ensemble_models":  # filled with served models in order
        assert [m.name for m in items] == ["tiny", "tiny-b"]
    assert bpy.ops.dream.list_remove(collection=collection) == {"FINISHED"}
    assert len(items) == 1
