"""The Mosaic panel against the real backend (pocket model, 32 px tiles, few steps): the mosaic image,
the zoom's frames where walk frames go, every setting, Stop and Resume, history, refusals."""

import json
import time

import bpy
import numpy as np
import pytest

from tests.blender.helpers import addon, image_editor, pixels
from tests.blender.test_latent import pocket_scene  # noqa: F401  (fixture: the pocket model, connected)


def small_mosaic(scene, **settings):
    mosaic = scene.dream_mosaic
    scene.dream.steps = 4
    values = dict(grid_x=2, grid_y=2, tile_size=32, levels=1, zoom_frames=4, loop=False, primary="GENERATE",
                  target="SEQUENCER", channel=1, start_frame=1, fps=12, batch_size=4, color_match="off",
                  strength=0.3)
    for name, value in {**values, **settings}.items():
        setattr(mosaic, name, value)
    return mosaic


def run_mosaic(session, timeout=300):
    before = set(session.jobs)
    assert bpy.ops.dream.mosaic() == {"FINISHED"}
    (job_id,) = set(session.jobs) - before
    job = session.wait_for(job_id, timeout)
    return job


def strips(scene):
    editor = scene.sequence_editor
    return [] if editor is None else list(addon("walk_frames").strips_of(editor))


def test_a_hypermosaic_makes_its_image_and_zooms_on_the_sequencer(pocket_scene, session):
    small_mosaic(pocket_scene, levels=2, zoom_frames=4, fps=10, start_frame=5, channel=3)
    job = run_mosaic(session)
    assert job.state == "done", job.message
    image = job.datablock("image")
    assert tuple(image.size) == (64, 64) and image.packed_file is not None  # 2 x 2 tiles of 32 px
    assert pixels(image)[..., :3].std() > 0.01
    (strip,) = strips(pocket_scene)
    assert strip.name == f"Dream mosaic {job.job_id[-6:]}"
    start, duration = addon("walk_frames").strip_span(strip)
    assert (strip.channel, start, duration, len(strip.elements)) == (3, 5, 5, 5)  # (levels - 1) x 4 + 1 frames
    assert (pocket_scene.render.fps, pocket_scene.frame_start, pocket_scene.frame_end) == (10, 5, 9)
    entry = pocket_scene.dream_history[-1]
    assert entry.kind == "mosaic" and entry.image == image and entry.frames == 5
    assert entry.sequence is not None and entry.sequence.source == "SEQUENCE"
    assert entry.sequence.name == f"Dream mosaic {job.job_id[-6:]}"
    assert json.loads(entry.settings)["groups"]["dream_mosaic"]["levels"] == 2
    # Recall puts the Mosaic panel back; Re-run makes it again with a new seed.
    small_mosaic(pocket_scene, levels=1, grid_x=3)
    assert bpy.ops.dream.history_recall() == {"FINISHED"}
    assert (pocket_scene.dream_mosaic.levels, pocket_scene.dream_mosaic.grid_x) == (2, 2)
    before, seed = set(session.jobs), pocket_scene.dream.seed
    assert bpy.ops.dream.history_rerun() == {"FINISHED"}
    (rerun,) = set(session.jobs) - before
    again = session.wait_for(rerun, 300)
    assert again.state == "done" and again.kind == "mosaic" and again.params["seed"] != seed
    assert len(strips(pocket_scene)) == 2


def test_zoom_frames_can_go_to_an_image_sequence_texture(pocket_scene, session):
    small_mosaic(pocket_scene, levels=1, loop=True, zoom_frames=3, target="TEXTURE")
    job = run_mosaic(session)
    assert job.state == "done", job.message
    cube = bpy.data.objects["Cube"]
    node = next(n for n in cube.active_material.node_tree.nodes if n.type == "TEX_IMAGE")
    assert node.image.source == "SEQUENCE" and node.image_user.frame_duration == 3  # a loop: levels x 3
    assert node.image.name == f"Dream mosaic {job.job_id[-6:]}"
    assert not strips(pocket_scene)


def result_of(scene, session, **settings):
    small_mosaic(scene, **settings)
    job = run_mosaic(session)
    assert job.state == "done", job.message
    return job, pixels(job.datablock("image"))


def test_every_mosaic_setting_changes_the_result(pocket_scene, session):
    base_job, base = result_of(pocket_scene, session)
    for name, value in (("grid_x", 3), ("grid_y", 3), ("tile_size", 40), ("strength", 0.8),
                        ("color_match", "mean"), ("color_match", "full")):
        job, pixels = result_of(pocket_scene, session, **{name: value})
        assert job.params[name] == value and (pixels.shape != base.shape or not np.array_equal(pixels, base)), name
    primary = bpy.data.images.new("primary", 64, 64)
    primary.pixels.foreach_set(np.tile(np.float32([0.1, 0.3, 0.9, 1.0]), 64 * 64))
    pocket_scene.dream_mosaic.primary_image = primary
    _, pixels = result_of(pocket_scene, session, primary="IMAGE")
    assert pixels[..., 2].mean() > base[..., 2].mean() + 0.1  # a blue primary makes a bluer mosaic
    # Batch size changes how many tiles share a UNet call, not the tiles (within one 8-bit level).
    job, pixels = result_of(pocket_scene, session, batch_size=1)
    assert job.params["batch_size"] == 1 and np.abs(pixels - base).max() <= 1.5 / 255
    # The zoom's settings change its frames.
    spans = {}
    for name, value in (("levels", 2), ("zoom_frames", 3), ("loop", True), ("fps", 6), ("channel", 2),
                        ("start_frame", 7)):
        settings = {"levels": 2, **{name: value}}
        job, _ = result_of(pocket_scene, session, **settings)
        strip = bpy.data.scenes[pocket_scene.name].sequence_editor and strips(pocket_scene)[-1]
        start, duration = addon("walk_frames").strip_span(strip)
        spans[name] = (len(strip.elements), strip.channel, start, pocket_scene.render.fps)
    assert spans["levels"] == (5, 1, 1, 12)
    assert spans["zoom_frames"][0] == 4 and spans["loop"][0] == 8
    assert spans["fps"][3] == 6 and spans["channel"][1] == 2 and spans["start_frame"][2] == 7


def wait_until(session, condition, timeout=120):
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        session.drain(timeout=0.2)
    return condition()


def test_stop_keeps_finished_tiles_and_resume_makes_only_the_missing_ones(pocket_scene, session, prefs):
    import os

    small_mosaic(pocket_scene, grid_x=4, grid_y=4, batch_size=2)
    pocket_scene.dream.steps = 8
    names = set(bpy.data.images.keys())
    before = set(session.jobs)
    assert bpy.ops.dream.mosaic() == {"FINISHED"}
    (job_id,) = set(session.jobs) - before
    job = session.jobs[job_id]
    assert wait_until(session, lambda: job.stage == "tiles" and job.step >= 2)
    assert bpy.ops.dream.cancel() == {"FINISHED"}
    session.wait_for(job_id, 120)
    assert job.state == "cancelled"
    assert set(bpy.data.images.keys()) == names  # the mosaic image it made is gone again
    folder = os.path.join(prefs.output_dir, job_id, "tiles")
    kept = {n: os.stat(os.path.join(folder, n)).st_mtime_ns for n in os.listdir(folder) if n.startswith("tile_")}
    assert 2 <= len(kept) < 16
    assert bpy.ops.dream.mosaic_resume() == {"FINISHED"}
    session.wait_for(job_id, 300)
    assert job.state == "done", job.message
    after = {n: os.stat(os.path.join(folder, n)).st_mtime_ns for n in os.listdir(folder) if n.startswith("tile_")}
    assert len(after) == 16 and all(after[n] == kept[n] for n in kept)  # finished tiles were not made again
    assert tuple(job.datablock("image").size) == (128, 128)


@pytest.mark.parametrize("settings,message", [
    ({"primary": "IMAGE"}, "Primary Image"),
    ({"levels": 2, "grid_x": 1, "grid_y": 1}, "two cells"),
    ({"levels": 2, "target": "TEXTURE"}, "active mesh"),
    ({"prompt": " "}, "Prompt is empty"),
    ({"infusion": True}, "infusion"),
    ({"grid_x": 16, "grid_y": 16, "tile_size": 1024}, "longer than 8192"),  # was a 16384² image, then refused
])
def test_bad_mosaic_input_is_refused_before_anything_is_made(pocket_scene, session, settings, message):
    settings = dict(settings)
    if settings.pop("prompt", None):
        pocket_scene.dream.prompt = " "
    if settings.pop("infusion", False):
        pocket_scene.dream.infusion_images.add().image = bpy.data.images.new("bias", 8, 8)
    if settings.get("target") == "TEXTURE":
        bpy.context.view_layer.objects.active = None
    small_mosaic(pocket_scene, **settings)
    pocket_scene.dream_mosaic.primary_image = None
    names, jobs = set(bpy.data.images.keys()), set(session.jobs)
    with pytest.raises(RuntimeError, match=message):
        bpy.ops.dream.mosaic()
    assert set(bpy.data.images.keys()) == names and set(session.jobs) == jobs and not strips(pocket_scene)


def test_the_mosaic_panel_is_in_the_image_editor_and_the_sequencer(pocket_scene):
    assert hasattr(bpy.types, "IMAGE_PT_dream_mosaic") and hasattr(bpy.types, "SEQUENCER_PT_dream_mosaic")
    image = bpy.data.images.new("shown", 8, 8)
    with image_editor(image):
        assert bpy.ops.dream.mosaic.poll()


def test_saving_the_project_copies_the_zoom_frames_beside_it(pocket_scene, session, tmp_path):
    import os

    small_mosaic(pocket_scene, levels=2, zoom_frames=2)
    job = run_mosaic(session)
    assert job.state == "done", job.message
    (strip,) = strips(pocket_scene)
    backend_folder = os.path.realpath(bpy.path.abspath(strip.directory))
    project = tmp_path / "project"
    project.mkdir()
    bpy.ops.wm.save_as_mainfile(filepath=str(project / "shot.blend"))
    folder = os.path.realpath(bpy.path.abspath(strip.directory))
    assert folder != backend_folder and folder.startswith(os.path.realpath(project / "shot_dream_frames"))
    assert sorted(n for n in os.listdir(folder) if n.startswith("frame_")) == [f"frame_{i:06d}.png" for i in (1, 2, 3)]
    sequence = pocket_scene.dream_history[-1].sequence
    assert os.path.realpath(os.path.dirname(bpy.path.abspath(sequence.filepath))) == folder


def set_cell_prompts(mosaic, texts):
    mosaic.cell_prompts.clear()
    for text in texts:
        mosaic.cell_prompts.add().text = text


def test_cell_prompts_go_to_the_cells_in_turn_and_into_history(pocket_scene, session):
    primary = bpy.data.images.new("primary", 64, 64)
    primary.pixels.foreach_set(np.tile(np.float32([0.6, 0.4, 0.3, 1.0]), 64 * 64))
    pocket_scene.dream_mosaic.primary_image = primary
    pocket_scene.dream.prompt = "red bricks"
    set_cell_prompts(pocket_scene.dream_mosaic, [])
    plain_job, plain = result_of(pocket_scene, session, primary="IMAGE", strength=0.8)
    assert "cell_prompts" not in plain_job.params
    set_cell_prompts(pocket_scene.dream_mosaic, ["red bricks", "  ", "blue dots"])  # blank lines are skipped
    job, cells = result_of(pocket_scene, session, primary="IMAGE", strength=0.8)
    assert job.params["cell_prompts"] == ["red bricks", "blue dots"]
    # 2 x 2 cells, prompts in turn row by row: the left column is the Prompt's, the right one "blue dots".
    left, right = (slice(None), slice(0, 32)), (slice(None), slice(32, 64))
    assert np.abs(cells[left] - plain[left]).max() <= 1.5 / 255  # the same prompt (batches differ by ~1e-6)
    assert np.abs(cells[right] - plain[right]).mean() > 0.02
    entry = pocket_scene.dream_history[-1]
    assert json.loads(entry.settings)["groups"]["dream_mosaic"]["cell_prompts"] == [
        {"text": "red bricks"}, {"text": "  "}, {"text": "blue dots"}]
    set_cell_prompts(pocket_scene.dream_mosaic, ["other"])
    assert bpy.ops.dream.history_recall() == {"FINISHED"}
    assert [c.text for c in pocket_scene.dream_mosaic.cell_prompts] == ["red bricks", "  ", "blue dots"]
    set_cell_prompts(pocket_scene.dream_mosaic, ["only one", ""])
    jobs = set(session.jobs)
    with pytest.raises(RuntimeError, match="Cell Prompts: give 2 to 16"):
        bpy.ops.dream.mosaic()
    assert set(session.jobs) == jobs


@pytest.mark.parametrize("fmt, bounce, count", [("gif", False, 5), ("mp4", True, 8), ("png", True, 8)])
def test_export_writes_the_zoom_with_its_frame_count(pocket_scene, session, fmt, bounce, count):
    import os

    small_mosaic(pocket_scene, levels=2, zoom_frames=4, export_format=fmt, rubber_band=bounce)
    job = run_mosaic(session)
    assert job.state == "done", job.message
    assert bpy.ops.dream.mosaic_export() == {"FINISHED"}
    deadline = time.monotonic() + 120
    while not job.message.startswith("Exported"):
        assert time.monotonic() < deadline, job.message
        session.drain(timeout=0.5)
    path = job.message.split(" to ", 1)[1]
    assert f"Exported {count} frames" in job.message  # 5 frames; the rubber band adds 5 - 2 going back
    if fmt == "png":
        assert path.endswith("zoom_bounce_png")
        assert sorted(os.listdir(path)) == [f"frame_{k:06d}.png" for k in range(1, count + 1)]
        first, last = (bpy.data.images.load(os.path.join(path, f"frame_{k:06d}.png")) for k in (2, count))
        np.testing.assert_array_equal(pixels(first), pixels(last))  # the band comes back through frame 2
    else:
        assert os.path.basename(path) == f"zoom{'_bounce' if bounce else ''}.{fmt}"
        clip = bpy.data.movieclips.load(path)
        assert clip.frame_duration == count and tuple(clip.size) == (88, 88)  # 64 x √2, in multiples of 8


def test_cell_prompts_come_from_a_text_one_a_line(pocket_scene):
    mosaic = pocket_scene.dream_mosaic
    set_cell_prompts(mosaic, ["old"])
    text = bpy.data.texts.new("cells")
    text.write("red bricks\n\n  blue dots  \n   \ngreen waves\n")
    assert bpy.ops.dream.cell_prompts_from_text(text="cells") == {"FINISHED"}
    assert [c.text for c in mosaic.cell_prompts] == ["red bricks", "blue dots", "green waves"]
    empty = bpy.data.texts.new("empty")
    for name, message in (("empty", "is empty"), ("missing", "No text 'missing'")):
        with pytest.raises(RuntimeError, match=message):
            bpy.ops.dream.cell_prompts_from_text(text=name)
    assert len(mosaic.cell_prompts) == 3 and empty.name == "empty"  # a refusal changes nothing


def test_the_mosaic_panel_draws_every_setting(pocket_scene):
    from tests.blender.test_panels import draw, shown

    mosaic = pocket_scene.dream_mosaic
    mosaic.cell_prompts.add()
    drawn = set()
    for primary in ("GENERATE", "IMAGE"):
        for levels, target in ((1, "SEQUENCER"), (2, "SEQUENCER"), (2, "TEXTURE")):
            mosaic.primary, mosaic.levels, mosaic.target = primary, levels, target
            for panel in ("IMAGE_PT_dream_mosaic", "SEQUENCER_PT_dream_mosaic"):
                log = draw(panel)
                drawn |= shown(log)
    names = {n for n in type(mosaic).__annotations__ if not n.endswith("_index")}
    assert names <= drawn, names - drawn
    assert {"dream.mosaic_export", "dream.mosaic_resume", "cell_prompts"} <= drawn
    assert ("menu", "DREAM_MT_cell_prompt_texts") in log
    bpy.data.texts.new("cells")
    menu = bpy.types.DREAM_MT_cell_prompt_texts
    log = []
    from tests.blender.test_panels import RecordingLayout

    menu.draw(type("Menu", (), {"layout": RecordingLayout(log)})(), bpy.context)
    assert ("operator", "dream.cell_prompts_from_text") in log
