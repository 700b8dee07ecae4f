"""Enhance Region in the Image Editor against the real backend (pocket model): pixels outside the region
stay bit for bit, new image or replace with the original kept, every setting, Stop, refusals."""

import bpy
import numpy as np
import pytest

from tests.blender.helpers import image_editor, pixels
from tests.blender.test_artist import editor
from tests.blender.test_latent import pocket_scene  # noqa: F401  (fixture: the pocket model, connected)


def picture(name, width=60, height=44, float_buffer=False):
    """Coarse coloured blocks, a size that is not a multiple of 8 (the job pads it)."""
    y, x = np.mgrid[0:height, 0:width]
    rgba = np.ones((height, width, 4), np.float32)
    rgba[..., 0] = (x // 10) / 6
    rgba[..., 1] = (y // 11) / 4
    rgba[..., 2] = ((x // 10 + y // 11) % 2) * 0.8
    image = bpy.data.images.new(name, width, height, alpha=True, float_buffer=float_buffer)
    image.pixels.foreach_set(rgba.reshape(-1))
    return image


def enhance(session, image, cursor=(0.5, 0.5), **settings):
    scene = bpy.context.scene
    values = dict(region="CURSOR", width=20, height=16, strength=0.6, feather=3.0, tile_size=0, result_target="NEW")
    for name, value in {**values, **settings}.items():
        setattr(scene.dream_enhance, name, value)
    scene.dream.steps = 6
    before = set(session.jobs)
    with image_editor(image) as _:
        bpy.context.window_manager.windows[0].screen.areas[0].spaces.active.cursor_location = cursor
        assert bpy.ops.dream.enhance_region() == {"FINISHED"}
    (job_id,) = set(session.jobs) - before
    return session.wait_for(job_id, 300)


def region_box(width, height, cursor, w, h):
    """The rectangle the operator picks, in Blender rows (bottom first)."""
    x = min(max(round(cursor[0] * width - w / 2), 0), width - w)
    y = min(max(round(cursor[1] * height - h / 2), 0), height - h)
    return x, y, w, h


@pytest.mark.parametrize("float_buffer", [False, True])
def test_pixels_outside_the_region_stay_bit_for_bit(pocket_scene, session, float_buffer):
    image = picture("frame", float_buffer=float_buffer)
    original = pixels(image)
    job = enhance(session, image, cursor=(0.3, 0.6))
    assert job.state == "done", job.message
    result = job.datablock("image")
    assert result != image and tuple(result.size) == (60, 44)
    out = pixels(result)
    x, y, w, h = region_box(60, 44, (0.3, 0.6), 20, 16)
    inside = np.zeros((44, 60), bool)
    inside[y:y + h, x:x + w] = True
    np.testing.assert_array_equal(out[~inside], original[~inside])
    assert np.abs(out[inside] - original[inside])[..., :3].mean() > 0.01
    np.testing.assert_array_equal(pixels(image), original)  # New Image: the source is untouched
    entry = pocket_scene.dream_history[-1]
    assert entry.kind == "enhance" and entry.image == result


def test_replace_keeps_the_original_and_stop_puts_it_back(pocket_scene, session):
    image = picture("replace me")
    original = pixels(image)
    job = enhance(session, image, result_target="REPLACE")
    assert job.state == "done" and job.datablock("image") == image
    backup = bpy.data.images[job.backup_name]
    np.testing.assert_array_equal(pixels(backup), original)
    assert not np.array_equal(pixels(image), original)
    # Stopped before its result: the image it was to replace gets its pixels back.
    now = pixels(image)
    pocket_scene.dream.steps = 40
    before = set(session.jobs)
    with image_editor(image):
        pocket_scene.dream_enhance.result_target = "REPLACE"
        assert bpy.ops.dream.enhance_region() == {"FINISHED"}
    (job_id,) = set(session.jobs) - before
    assert bpy.ops.dream.cancel() == {"FINISHED"}
    stopped = session.wait_for(job_id, 120)
    assert stopped.state == "cancelled"
    np.testing.assert_array_equal(pixels(image), now)
    assert stopped.backup_name not in bpy.data.images  # the backup it made is removed again


def test_every_enhance_setting_changes_the_result(pocket_scene, session):
    image = picture("settings")
    base = pixels(enhance(session, image).datablock("image"))
    mask = bpy.data.images.new("mask", 60, 44)
    m = np.zeros((44, 60, 4), np.float32)
    m[5:20, 30:50] = 1.0
    mask.pixels.foreach_set(m.reshape(-1))
    pocket_scene.dream_enhance.mask_image = mask
    for name, value in (("region", "MASK"), ("width", 30), ("height", 24), ("strength", 0.9), ("feather", 0.0),
                        ("tile_size", 32), ("cursor", (0.2, 0.2))):
        settings = {} if name == "cursor" else {name: value}
        job = enhance(session, image, **({"cursor": value} if name == "cursor" else settings))
        assert job.state == "done", (name, job.message)
        assert not np.array_equal(pixels(job.datablock("image")), base), name
    # Recall restores the Enhance Region settings of an entry.
    pocket_scene.dream_enhance.strength = 0.1
    assert bpy.ops.dream.history_recall() == {"FINISHED"}
    assert pocket_scene.dream_enhance.strength == pytest.approx(0.6)


@pytest.mark.parametrize("settings,message", [
    ({"width": 80}, "larger than the image"),
    ({"region": "MASK"}, "Mask Image"),
    ({"region": "MASK", "black_mask": True}, "black everywhere"),
])
def test_bad_region_input_is_refused_before_anything_is_made(pocket_scene, session, settings, message):
    image = picture("bad")
    settings = dict(settings)
    enhance_props = pocket_scene.dream_enhance
    enhance_props.mask_image = None
    if settings.pop("black_mask", False):
        enhance_props.mask_image = bpy.data.images.new("black", 16, 16)
    for name, value in settings.items():
        setattr(enhance_props, name, value)
    names, jobs = set(bpy.data.images.keys()), set(session.jobs)
    with image_editor(image), pytest.raises(RuntimeError, match=message):
        bpy.ops.dream.enhance_region()
    assert set(bpy.data.images.keys()) == names and set(session.jobs) == jobs


@pytest.mark.parametrize("where", ["VIEW_3D", "IMAGE_EDITOR"])
def test_rerun_enhances_the_entrys_own_image_and_region_from_any_editor(pocket_scene, session, where):
    image = picture("frame")
    original = pixels(image)
    first = enhance(session, image, cursor=(0.3, 0.6))
    assert first.state == "done", first.message
    other = picture("other", 40, 40)
    other_before = pixels(other)
    images = set(bpy.data.images.keys())
    with editor(where, image=other if where == "IMAGE_EDITOR" else None):
        assert bpy.ops.dream.history_rerun() == {"FINISHED"}  # was: the image on show, or a poll traceback
    (job_id,) = [j for j in session.jobs if j != first.job_id and session.jobs[j].kind == "enhance"][-1:]
    rerun = session.wait_for(job_id, 300)
    assert rerun.state == "done", rerun.message
    (made,) = set(bpy.data.images.keys()) - images
    out = pixels(bpy.data.images[made])
    x, y, w, h = region_box(60, 44, (0.3, 0.6), 20, 16)  # the entry's region, not the cursor's now
    inside = np.zeros((44, 60), bool)
    inside[y:y + h, x:x + w] = True
    np.testing.assert_array_equal(out[~inside], original[~inside])
    assert np.abs(out[inside] - original[inside])[..., :3].mean() > 0.01
    assert rerun.params["seed"] != first.params["seed"]
    np.testing.assert_array_equal(pixels(other), other_before)


@pytest.mark.parametrize("operator, message", [("dream.teach_concept", "taught once"),
                                               ("dream.open_latent", "Open Latent reads a file")])
def test_rerun_of_an_entry_that_cannot_run_again_says_what_to_do(pocket_scene, operator, message):
    entry = pocket_scene.dream_history.add()
    entry.kind, entry.operator, entry.settings = operator.split(".")[1], operator, '{"prompt": "recorded"}'
    pocket_scene.dream.prompt, pocket_scene.dream.seed = "mine", 77
    with editor("VIEW_3D"), pytest.raises(RuntimeError, match=message):  # an error report, not a traceback
        bpy.ops.dream.history_rerun()
    assert (pocket_scene.dream.prompt, pocket_scene.dream.seed) == ("mine", 77)  # refused: the panel as it was
