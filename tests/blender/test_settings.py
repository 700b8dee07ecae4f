"""History, Recall and presets read the panel's settings from the protocol's Field table."""

import json

import bpy

from tests.blender.helpers import addon


def test_scene_settings_are_the_panels_job_inputs():
    props = addon("properties")
    # Exactly the panel properties a job reads: named after a field, or feeding one (field_props.FEEDS).
    assert set(props.SCENE_SETTINGS) == {
        "prompt", "negative_prompt", "seed", "steps", "guidance", "width", "height", "scheduler", "preview_interval",
        "model", "prompt_weight", "extra_prompts", "ensemble_mode", "seamless_x", "seamless_y", "layout",
        "infusion_down", "infusion_mid", "infusion_up", "infusion_decay", "infusion_cond_only",
        "use_model_ensemble", "ensemble_models", "strength", "feather", "uv_margin"}
    assert not {"prompt", "seed", "model", "extra_prompts", "ensemble_models"} & set(props.PRESET_SETTINGS)


def test_snapshot_and_apply_round_trip_every_setting():
    history = addon("history")
    scene = bpy.data.scenes.new("settings")
    dream = scene.dream
    dream.prompt, dream.steps, dream.seamless_x, dream.layout, dream.infusion_decay = "teal tiles", 7, True, "off", 0.5
    dream.extra_prompts.add().text = "grout"
    lora = scene.dream_models.loras.add()
    lora.name, lora.weight = "Lora/bricks", 0.5
    recorded = json.loads(json.dumps(history.snapshot(dream)))
    assert recorded["extra_prompts"] == [{"text": "grout", "weight": 1.0}]
    assert recorded["groups"]["dream_models"] == {"loras": [{"name": "Lora/bricks", "weight": 0.5}]}
    other = bpy.data.scenes.new("other").dream
    history.apply(other, recorded)
    assert json.loads(json.dumps(history.snapshot(other))) == recorded
    assert (other.prompt, other.steps, other.seamless_x, other.layout) == ("teal tiles", 7, True, "off")
    assert [(x.name, x.weight) for x in other.id_data.dream_models.loras] == [("Lora/bricks", 0.5)]


def test_preset_operator_keeps_the_preset_settings():
    ops = addon("operators.history_ops")
    props = addon("properties")
    assert ops.DREAM_OT_preset_add.preset_values == [f"dream.{name}" for name in props.PRESET_SETTINGS]
