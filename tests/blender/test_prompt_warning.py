"""Words of the prompt the model ignores reach the artist: the backend's warning event is kept on
the job, drawn in the panel under the job's status, and reported to Blender's status bar and Info log."""

import time

import bpy

from tests.blender.helpers import generate
from tests.blender.test_panels import draw


def test_words_the_pocket_model_ignores_are_shown_and_reported(scene, session, capfd):
    deadline = time.monotonic() + 60
    while not session.welcome and time.monotonic() < deadline:  # the model list comes with the welcome
        session.drain(timeout=0.2)
    props = scene.dream
    props.model, props.prompt, props.steps = "pocket", "a photo of a cat", 2
    job = generate(session)
    assert job.state == "done", job.message
    assert job.warning == "Model 'pocket' does not know, and ignores: photo, of, cat"
    assert ("label", job.warning) in draw("VIEW3D_PT_dream")
    # An operator's report: in the UI the status bar and Info log show it, in background mode it prints.
    assert f"Warning: Dream: {job.warning}" in capfd.readouterr().out
    # A prompt in the model's own words gives no warning.
    props.prompt = "seamless thick blue bricks texture"
    job = generate(session)
    assert job.state == "done" and job.warning == ""
    assert not any(kind == "label" and "does not know" in text for kind, text in draw("VIEW3D_PT_dream"))
