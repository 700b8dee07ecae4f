"""Teach a Concept in the Image Editor, against the real backend (tiny model): images of the .blend and
files, progress and previews into an image, cancel and resume, and the word used in a prompt."""

import os
import time

import bpy
import numpy as np
import pytest

from tests.blender.helpers import addon, generate, image_editor, pixels

SIZE = 64


def teal_image(name, seed, float_buffer=False, size=96):
    """A teal texture (a colour the tiny model has no word for), at a size the panel must resize."""
    rng = np.random.default_rng(seed)
    rgba = np.ones((size, size, 4), np.float32)
    rgba[..., :3] = np.clip(np.array([0.0, 0.5, 0.5]) + rng.normal(0, 0.05, (size, size, 3)), 0, 1)
    image = bpy.data.images.new(name, size, size, alpha=True, float_buffer=float_buffer)
    image.pixels.foreach_set(rgba.reshape(-1))
    return image


@pytest.fixture
def word(prefs):
    """A word of this run; its embedding file is removed from the backend's models folder afterwards."""
    name = f"tealtest{os.getpid()}{time.monotonic_ns() % 100000}"
    yield name
    path = os.path.join(prefs.models_dir, "embeddings", f"{name}.safetensors")
    if os.path.exists(path):
        os.remove(path)


@pytest.fixture
def concept(scene, word, tmp_path):
    """The panel filled the way an artist does: the editor's image, two more of the .blend, one file."""
    settings = scene.dream_concept
    settings.word, settings.size, settings.train_steps, settings.preview_every = word, SIZE, 4, 2
    first = teal_image("teal a", 1)
    with image_editor(first):
        assert bpy.ops.dream.concept_add_image() == {"FINISHED"}
    for name, seed, is_float in (("teal b", 2, False), ("teal c", 3, True)):
        settings.images.add().image = teal_image(name, seed, is_float)
    saved = teal_image("teal d", 4)
    saved.filepath_raw = str(tmp_path / "teal_d.png")
    saved.file_format = "PNG"
    saved.save()
    assert bpy.ops.dream.concept_add_files(directory=str(tmp_path), files=[{"name": "teal_d.png"}]) == {"FINISHED"}
    return settings


def teach(session, timeout=300):
    before = set(session.jobs)
    assert bpy.ops.dream.teach_concept() == {"FINISHED"}
    (job_id,) = set(session.jobs) - before
    return session.wait_for(job_id, timeout)


def test_panel_defaults_are_the_protocols(scene):
    protocol = addon("protocol")
    fields, settings = protocol.teach_fields(), scene.dream_concept
    assert (settings.train_steps, settings.vectors, settings.preview_every, settings.initializer, settings.size) == (
        fields["train_steps"].default, fields["vectors"].default, fields["preview_every"].default,
        fields["initializer"].default, fields["width"].default)
    assert abs(settings.learning_rate - fields["learning_rate"].default) < 1e-7


def test_teach_a_concept_then_use_the_word(scene, session, concept, word, prefs):
    assert [item.image.name for item in concept.images][:3] == ["teal a", "teal b", "teal c"]
    assert len(concept.images) == 4 and concept.images[3].image.filepath.endswith("teal_d.png")
    job = teach(session)
    assert job.state == "done", job.message
    assert word in job.message and job.previews >= 1
    preview = bpy.data.images[f"Concept {word}"]
    assert tuple(preview.size) == (SIZE, SIZE) and pixels(preview)[..., :3].std() > 0.01
    path = os.path.join(prefs.models_dir, "embeddings", f"{word}.safetensors")  # the backend's --models-dir
    assert os.path.exists(path)
    assert scene.dream_history[-1].kind == "teach_concept"
    # The word in a prompt: no "unknown word" warning, and it changes the picture.
    scene.dream.prompt = "red"
    plain = generate(session)
    assert plain.state == "done", plain.message
    before = pixels(bpy.data.images[plain.image_name]).copy()
    assert bpy.ops.dream.concept_use_word() == {"FINISHED"}
    assert scene.dream.prompt == f"red {word}"
    used = generate(session)
    assert used.state == "done" and not used.warning, (used.message, used.warning)
    assert np.abs(pixels(bpy.data.images[used.image_name]) - before).max() > 1e-3


def test_cancel_then_resume_teaching(scene, session, concept):
    concept.train_steps, concept.preview_every = 80, 0
    concept.initializer = "red"  # a given one: choosing one from the images is the test above's
    before = set(session.jobs)
    assert bpy.ops.dream.teach_concept() == {"FINISHED"}
    (job_id,) = set(session.jobs) - before
    job = session.jobs[job_id]
    deadline = time.monotonic() + 120
    while not (job.state == "running" and job.stage == "teach" and job.step >= 5) and time.monotonic() < deadline:
        session.drain(timeout=0.2)
    assert job.stage == "teach", job.message
    assert bpy.ops.dream.cancel() == {"FINISHED"}
    session.wait_for(job_id, 60)
    assert job.state == "cancelled", job.message
    stopped = job.step
    assert bpy.ops.dream.teach_resume() == {"FINISHED"}
    steps = []
    deadline = time.monotonic() + 300
    while job.active and time.monotonic() < deadline:
        session.drain(timeout=0.2)
        if job.stage == "teach" and job.state == "running":
            steps.append(job.step)
    assert job.state == "done", job.message
    fresh = [s for s in steps if s != stopped]  # the first ones may still show the step it stopped at
    assert fresh and min(fresh) > stopped  # it went on from the checkpoint (from the start: 1, 2, ...)


def test_teaching_never_writes_into_the_users_image_and_stop_removes_the_preview_it_made(scene, session, concept):
    concept.train_steps, concept.preview_every, concept.initializer = 80, 1, "red"
    mine = bpy.data.images.new(f"Concept {concept.word}", SIZE, SIZE)  # the user's own, with that name
    mine.pixels.foreach_set(np.full(SIZE * SIZE * 4, 0.9, np.float32))
    theirs, images = pixels(mine).copy(), set(bpy.data.images.keys())
    before = set(session.jobs)
    assert bpy.ops.dream.teach_concept() == {"FINISHED"}
    (job_id,) = set(session.jobs) - before
    job = session.jobs[job_id]
    deadline = time.monotonic() + 120
    while job.previews < 1 and job.active and time.monotonic() < deadline:
        session.drain(timeout=0.2)
    assert job.previews >= 1 and job.image_name != mine.name, job.message
    np.testing.assert_array_equal(pixels(mine), theirs)
    assert bpy.ops.dream.cancel() == {"FINISHED"}
    session.wait_for(job_id, 60)
    assert job.state == "cancelled", job.message
    assert set(bpy.data.images.keys()) == images  # the preview it made is gone again; the user's stays
    np.testing.assert_array_equal(pixels(mine), theirs)


@pytest.mark.parametrize("change, message", [
    ({"word": "two words"}, "no spaces"),
    ({"images": 2}, "Pick 3 to 10 images"),
])
def test_bad_input_is_refused_before_anything_is_sent(scene, session, concept, change, message):
    if "word" in change:
        concept.word = change["word"]
    else:
        while len(concept.images) > change["images"]:
            concept.images.remove(len(concept.images) - 1)
    jobs = set(session.jobs)
    with pytest.raises(RuntimeError, match=message):
        bpy.ops.dream.teach_concept()
    assert set(session.jobs) == jobs
