"""Rules for the add-on code that need no Blender to check."""

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ALLOWED_THIRD_PARTY = {"bpy", "numpy", "addon_utils", "bl_ui", "bl_operators", "mathutils", "bmesh", "gpu", "bpy_extras"}  # Blender ships these
ADDON_FILES = sorted((REPO / "dream_addon").rglob("*.py")) + [REPO / "__init__.py"]


@pytest.mark.parametrize("path", ADDON_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_addon_imports_only_stdlib_numpy_and_blender(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            assert top in sys.stdlib_module_names or top in ALLOWED_THIRD_PARTY, f"{path}: imports {name}"


def test_protocol_client_and_supervisor_import_without_blender():
    # The backend shares these modules; importing them must not need bpy.
    import dream_addon.client
    import dream_addon.protocol
    import dream_addon.supervisor

    assert "bpy" not in sys.modules


def test_field_props_take_the_protocols_bounds_and_refuse_unknown_choices():
    from dream_addon import field_props, protocol

    seed = field_props.number_args(protocol.common_fields()["seed"])
    assert seed == {"default": 0, "min": 0, "max": 2**31 - 1, "description": "Starting-noise seed"}
    steps = field_props.number_args(protocol.common_fields()["steps"], default=3)
    assert (steps["min"], steps["max"], steps["default"]) == (1, 200, 3)
    items = field_props.enum_items(protocol.SCHEDULERS, {"ddim": ("DDIM", "d")})
    assert [i[0] for i in items] == list(protocol.SCHEDULERS) and items[1] == ("ddim", "DDIM", "d")
    with pytest.raises(ValueError, match="'lms'"):
        field_props.enum_items(protocol.SCHEDULERS, {"lms": ("LMS", "")})
    assert 0 <= field_props.random_seed() <= min(protocol.MAX_SEED, 2**31 - 1)


def test_history_and_preset_settings_follow_the_field_table(monkeypatch):
    """A panel property named after a job field is recorded and kept in presets without being listed anywhere;
    UI-only properties are not; presets leave out what a picture is of (prompt, seed, model)."""
    from dream_addon import field_props, protocol

    panel = ["prompt", "seed", "steps", "seamless_x", "extra_prompts", "randomize_seed", "mask_source",
             "texture_target", "uv_margin", "brand_new"]
    assert field_props.panel_settings(panel) == ("prompt", "seed", "steps", "seamless_x", "extra_prompts",
                                                 "uv_margin")
    assert field_props.preset_settings(panel) == ("steps", "seamless_x", "uv_margin")
    # A new job kind's field joins both lists by its name alone.
    spec = protocol.JobKind(lambda max_size=2048: {"brand_new": protocol.Field("int", 1, min=0, max=9)})
    monkeypatch.setitem(protocol.JOB_KINDS, "brand_new_kind", spec)
    assert "brand_new" in field_props.panel_settings(panel) and "brand_new" in field_props.preset_settings(panel)


def test_every_feed_names_a_job_field_or_array():
    from dream_addon import field_props, protocol

    arrays = {name for spec in protocol.JOB_KINDS.values() for name in spec.arrays + spec.optional_arrays}
    for prop, target in field_props.FEEDS.items():
        assert target in field_props.job_field_names() | arrays, (prop, target)
    assert set(field_props.CONTENT_FIELDS) <= field_props.job_field_names()
