"""Generation history, stored in the scene (so it is saved with the .blend): every finished
job with its settings and result image; Recall puts the settings back."""

from __future__ import annotations

import json
import time

import bpy

SETTINGS = ("prompt", "negative_prompt", "seed", "steps", "guidance", "width", "height", "scheduler",
            "preview_interval", "model", "prompt_weight", "ensemble_mode", "seamless_x", "seamless_y", "layout",
            "strength", "feather", "uv_margin", "infusion_down", "infusion_mid", "infusion_up", "infusion_decay",
            "infusion_cond_only", "use_model_ensemble")


def snapshot(props) -> dict:
    """The panel's settings as plain JSON values."""
    settings = {name: getattr(props, name) for name in SETTINGS}
    settings["extra_prompts"] = [{"text": p.text, "weight": p.weight} for p in props.extra_prompts]
    settings["ensemble_models"] = [{"name": m.name, "weight": m.weight} for m in props.ensemble_models]
    return settings


def apply(props, settings: dict):
    """Put recorded settings back into the panel."""
    for name in SETTINGS:
        if name in settings:
            try:
                setattr(props, name, settings[name])
            except (TypeError, ValueError):  # e.g. a model the backend no longer serves
                pass
    for collection, key in ((props.extra_prompts, "extra_prompts"), (props.ensemble_models, "ensemble_models")):
        if key in settings:
            collection.clear()
            for entry in settings[key]:
                item = collection.add()
                for field, value in entry.items():
                    setattr(item, field, value)


def record(job):
    """Add a finished job to its scene's history."""
    scene = job.datablock("scene")
    if scene is None:
        return None
    item = scene.dream_history.add()
    item.job_id, item.kind, item.operator = job.job_id, job.kind, job.operator
    item.settings = json.dumps(job.settings)
    item.params = json.dumps(job.params)
    item.image = job.datablock("image")
    if job.backup_name:
        item.original = job.datablock("backup")
    item.created = time.strftime("%Y-%m-%d %H:%M:%S")
    scene.dream_history_index = len(scene.dream_history) - 1
    return item
