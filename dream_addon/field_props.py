"""Blender property arguments derived from the protocol's Field table (no bpy: testable without Blender).

The panel's bounds, choices and defaults are the protocol's; only labels are the add-on's own.
"""

import random

from . import protocol

BLENDER_INT_MAX = 2**31 - 1  # Blender's IntProperty is a signed 32-bit int; larger protocol bounds are cut here


def number_args(field: protocol.Field, **overrides) -> dict:
    """IntProperty/FloatProperty keywords (default, min, max, description) from ``field``."""
    args = {"description": field.doc}
    if field.default is not None:
        args["default"] = field.default
    if field.min is not None:
        args["min"] = field.min if field.kind == "float" else int(field.min)
    if field.max is not None:
        args["max"] = field.max if field.kind == "float" else min(int(field.max), BLENDER_INT_MAX)
    args.update(overrides)
    return args


def enum_items(choices, labels: dict) -> list:
    """EnumProperty items, in the protocol's order, labelled from ``labels`` (id -> (name, description))."""
    unknown = sorted(set(labels) - set(choices))
    if unknown:
        raise ValueError(f"labels for {unknown}, which are not among the protocol's choices {list(choices)}")
    return [(c, *labels.get(c, (c.replace("_", " ").title(), ""))) for c in choices]


def enum_args(field: protocol.Field, labels: dict, **overrides) -> dict:
    """EnumProperty keywords (items, default, description) from a choice ``field``."""
    args = {"items": enum_items(field.choices, labels), "default": field.default, "description": field.doc}
    args.update(overrides)
    return args


def random_seed() -> int:
    """A fresh seed the panel's seed property can hold (and the protocol accepts)."""
    return random.randint(0, min(protocol.MAX_SEED, BLENDER_INT_MAX))


# Panel properties that feed a protocol field under another name (the rest are named after their field).
FEEDS = {"seamless_x": "seamless", "seamless_y": "seamless", "prompt_weight": "prompts", "extra_prompts": "prompts",
         "infusion_down": "infusion_weights", "infusion_mid": "infusion_weights", "infusion_up": "infusion_weights",
         "use_model_ensemble": "models", "ensemble_models": "models", "uv_margin": "mask"}
# What a picture is of, not how it is made: recorded in history, left out of presets.
CONTENT_FIELDS = ("prompt", "prompts", "seed", "model", "models")


def job_field_names() -> set:
    """Every parameter name any registered job kind takes."""
    return {name for spec in protocol.JOB_KINDS.values() for name in spec.fields()}


def panel_settings(names) -> tuple:
    """The panel properties among ``names`` that a job reads: history records them and Recall puts them back."""
    fields = job_field_names()
    return tuple(name for name in names if name in fields or name in FEEDS)


def preset_settings(names) -> tuple:
    """The panel settings a texture preset keeps: how it is made, not what of (no prompt, seed or model)."""
    return tuple(name for name in panel_settings(names) if FEEDS.get(name, name) not in CONTENT_FIELDS)
