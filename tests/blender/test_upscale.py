"""Upscale in the Image Editor, against the real backend: the shipped pocket-x4 and a random x2 net the
fixtures serve beside it (prefs.upscalers)."""

import json
import time

import bpy
import numpy as np
import pytest

from tests.blender.helpers import image_editor, pixels


def checker_image(name="checker", width=40, height=24):
    """A byte image of coarse red and white checks, with a dark top-left corner (to see which way is up)."""
    y, x = np.mgrid[0:height, 0:width]
    rgba = np.ones((height, width, 4), np.float32)
    rgba[..., :3] = np.where((((x // 8) + (y // 8)) % 2)[..., None] == 1, (0.9, 0.9, 0.9), (0.8, 0.1, 0.1))
    rgba[-6:, :6, :3] = 0.05  # Blender rows go bottom to top: the last rows are the top
    image = bpy.data.images.new(name, width, height, alpha=True)
    image.pixels.foreach_set(rgba.reshape(-1))
    return image, rgba


def run(session, **kwargs):
    before = set(session.jobs)
    assert bpy.ops.dream.upscale(**kwargs) == {"FINISHED"}
    (job_id,) = set(session.jobs) - before
    return session.wait_for(job_id, 180)


@pytest.fixture
def upscale_scene(scene, session, prefs):
    session.ensure_connected(prefs)
    deadline = time.monotonic() + 60
    while session.welcome is None and time.monotonic() < deadline:  # the upscaler list comes with it
        session.drain(timeout=0.2)
    up = scene.dream_upscale
    up.factor, up.tile_size, up.tile_overlap, up.seamless, up.result_target = 4, 32, 8, "NONE", "NEW"
    return scene


def test_the_welcome_lists_the_upscalers_and_the_menu_shows_them(upscale_scene, session):
    served = {u["name"]: (u["architecture"], u["scale"], u["default"]) for u in session.welcome["upscalers"]}
    assert served == {"pocket-x4": ("SRVGGNetCompact", 4, True), "rand-x2": ("RealESRGAN Compact", 2, False)}
    up = upscale_scene.dream_upscale
    assert up.upscaler == "DEFAULT"
    up.upscaler = "rand-x2"  # a dynamic menu: what it offers is what can be set
    assert up.upscaler == "rand-x2"
    with pytest.raises(TypeError):
        up.upscaler = "not-served"


def test_upscale_makes_a_new_image_of_the_right_size(upscale_scene, session):
    image, rgba = checker_image()
    names, source = set(bpy.data.images.keys()), pixels(image)  # 8-bit: the checks' values rounded
    with image_editor(image):
        job = run(session)
    assert job.state == "done", job.message
    (new,) = set(bpy.data.images.keys()) - names
    result = bpy.data.images[new]
    assert tuple(result.size) == (160, 96) and result.packed_file is not None
    out = pixels(result)
    # The right picture, the right way up: the x4 result reduced by 4 is close to the original.
    reduced = out.reshape(24, 4, 40, 4, 4).mean(axis=(1, 3))
    assert np.abs(reduced[..., :3] - rgba[..., :3]).mean() < 0.05
    assert reduced[-5:, 1:5, :3].max() < 0.15 and reduced[:5, 1:5, 0].min() > 0.6  # the dark corner stays on top
    np.testing.assert_array_equal(pixels(image), source)  # the source is untouched
    entry = upscale_scene.dream_history[-1]
    assert entry.kind == "upscale" and entry.image == result and entry.source == image


def test_every_upscale_setting_changes_the_result(upscale_scene, session):
    image, _ = checker_image("settings", 64, 48)
    image.pixels.foreach_set((pixels(image) * np.random.default_rng(0).uniform(0.7, 1, (48, 64, 4))).reshape(-1)
                             .astype(np.float32))  # detail everywhere: tiles and seams show
    up = upscale_scene.dream_upscale
    results = {}
    changes = (("default", None, None), ("upscaler", "rand-x2", None), ("factor", 2, None),
               ("tile_size", 40, None), ("tile_overlap", 4, None), ("seamless", "XY", None))
    for name, value, _ in changes:
        up.upscaler, up.factor, up.tile_size, up.tile_overlap, up.seamless = "DEFAULT", 4, 32, 8, "NONE"
        if name == "upscaler":
            up.factor = 2  # its scale
        if value is not None:
            setattr(up, name, value)
        with image_editor(image):
            job = run(session)
        assert job.state == "done", (name, job.message)
        results[name] = pixels(job.datablock("image"))
    assert results["factor"].shape == (96, 128, 4) and results["default"].shape == (192, 256, 4)
    for name in results:
        if name != "default" and results[name].shape == results["default"].shape:
            assert not np.array_equal(results[name], results["default"]), name
    assert not np.array_equal(results["upscaler"], results["factor"])  # two x2 results, two nets
    # The target: into the active image, the original kept as a copy.
    up.upscaler, up.factor, up.tile_size, up.tile_overlap, up.seamless, up.result_target = \
        "DEFAULT", 4, 32, 8, "NONE", "REPLACE"
    before = pixels(image)
    with image_editor(image):
        job = run(session)
    assert job.state == "done" and job.datablock("image") == image and tuple(image.size) == (256, 192)
    np.testing.assert_array_equal(pixels(image), results["default"])
    backup = upscale_scene.dream_history[-1].original
    assert backup is not None and tuple(backup.size) == (64, 48)
    np.testing.assert_array_equal(pixels(backup), before)


def test_seamless_from_the_image_follows_its_history_and_the_panel(upscale_scene, session):
    image, _ = checker_image("seams", 32, 32)
    upscale_scene.dream_upscale.seamless = "IMAGE"
    upscale_scene.dream.seamless_x, upscale_scene.dream.seamless_y = True, False
    with image_editor(image):
        job = run(session)
    assert job.params["seamless"] == "x" and job.datablock("image")["dream_seamless"] == "x"
    with image_editor(job.datablock("image")):  # the result remembers its axes, whatever the panel says now
        upscale_scene.dream.seamless_x = False
        upscale_scene.dream_upscale.factor = 2
        again = run(session)
    assert again.params["seamless"] == "x" and tuple(again.datablock("image").size) == (256, 256)


def wait_for_tiles(session, job, count=1):
    deadline = time.monotonic() + 120
    while not (job.stage == "tiles" and job.step >= count):
        assert job.active and time.monotonic() < deadline, job.message
        session.drain(timeout=0.5)


@pytest.mark.parametrize("target", ["NEW", "REPLACE"])
def test_stop_restores_what_the_upscale_touched(upscale_scene, session, target):
    image, _ = checker_image("stop", 256, 256)  # 11 x 11 tiles (cores of 32 - 8): Stop comes long before the end
    rgba = pixels(image)
    upscale_scene.dream_upscale.result_target = target
    names, entries = set(bpy.data.images.keys()), len(upscale_scene.dream_history)
    before = set(session.jobs)
    with image_editor(image):
        assert bpy.ops.dream.upscale() == {"FINISHED"}
    (job_id,) = set(session.jobs) - before
    job = session.jobs[job_id]
    wait_for_tiles(session, job)
    assert job.total == 121
    assert bpy.ops.dream.cancel(job_id=job_id) == {"FINISHED"}
    session.wait_for(job_id, 60)
    assert job.state == "cancelled", job.message
    assert set(bpy.data.images.keys()) == names  # the new image, or the backup, is gone again
    assert tuple(image.size) == (256, 256)
    np.testing.assert_array_equal(pixels(image), rgba)
    assert len(upscale_scene.dream_history) == entries


def test_bad_input_is_refused_before_anything_is_made(upscale_scene, session):
    image, _ = checker_image("bad")
    up = upscale_scene.dream_upscale
    names, jobs = set(bpy.data.images.keys()), set(session.jobs)
    up.factor = 5  # more than pocket-x4's scale
    with image_editor(image), pytest.raises(RuntimeError, match="more than pocket-x4's scale"):
        bpy.ops.dream.upscale()
    up.factor, up.upscaler = 4, "rand-x2"
    with image_editor(image), pytest.raises(RuntimeError, match="more than rand-x2's scale"):
        bpy.ops.dream.upscale()
    up.upscaler, up.tile_size, up.tile_overlap = "DEFAULT", 32, 20
    with image_editor(image), pytest.raises(RuntimeError, match="tile_overlap must be at most half"):
        bpy.ops.dream.upscale()
    assert set(bpy.data.images.keys()) == names and set(session.jobs) == jobs


def test_history_recall_and_rerun(upscale_scene, session):
    image, _ = checker_image("history")
    up = upscale_scene.dream_upscale
    up.factor, up.tile_overlap, up.seamless = 2, 4, "XY"
    with image_editor(image):
        first = run(session)
    assert first.state == "done"
    up.factor, up.tile_overlap, up.seamless = 4, 8, "NONE"
    upscale_scene.dream_history_index = len(upscale_scene.dream_history) - 1
    assert bpy.ops.dream.history_recall() == {"FINISHED"}
    assert (up.factor, up.tile_overlap, up.seamless) == (2, 4, "XY")
    up.factor = 4
    before = set(session.jobs)
    assert bpy.ops.dream.history_rerun() == {"FINISHED"}  # from any editor: the entry knows its image
    (job_id,) = set(session.jobs) - before
    again = session.wait_for(job_id, 120)
    assert again.state == "done" and again.params == first.params
    np.testing.assert_array_equal(pixels(again.datablock("image")), pixels(first.datablock("image")))
    entry = json.loads(upscale_scene.dream_history[-1].settings)
    assert entry["groups"]["dream_upscale"]["factor"] == 2


def test_the_detail_pass_repaints_the_upscale_with_the_panels_prompt(upscale_scene, session):
    """Detail Pass > 0: the upscaler enlarges, then the pocket model img2imgs the tiles (kind detail); the
    result has the same size and differs from the plain upscale; above x4 it is refused before anything is made."""
    image, _ = checker_image(width=64, height=64)
    dream, up = upscale_scene.dream, upscale_scene.dream_upscale
    dream.model, dream.steps, dream.prompt = "pocket", 4, "red checker"
    up.factor = 2
    with image_editor(image):
        plain = run(session)
    up.detail_strength = 0.5
    with image_editor(image):  # the editor shows the new image now: show the original again
        detailed = run(session)
    assert (plain.state, detailed.state) == ("done", "done"), detailed.message
    assert (plain.kind, detailed.kind) == ("upscale", "detail")
    assert detailed.params["enlarge_with"] == "pocket-x4" and detailed.params["prompt"] == "red checker"
    assert (detailed.params["enlarge_tile"], detailed.params["enlarge_overlap"]) == (32, 8)  # the panel's tiling
    a, b = pixels(plain.datablock("image")), pixels(detailed.datablock("image"))
    assert a.shape == b.shape == (128, 128, 4) and np.abs(a - b).mean() > 0.005
    entry = upscale_scene.dream_history[-1]
    assert json.loads(entry.settings)["groups"]["dream_upscale"]["detail_strength"] == 0.5
    names = set(bpy.data.images.keys())
    up.factor = 8  # the detail pass enlarges x4 at most
    with image_editor(image), pytest.raises(RuntimeError, match="at most x4"):
        bpy.ops.dream.upscale()
    assert set(bpy.data.images.keys()) == names
