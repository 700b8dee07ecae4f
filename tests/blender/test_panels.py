"""Panels draw in background mode through a recording layout: every property they show exists,
every operator they offer is registered, and each shown control is drawn under its condition."""

import bpy
import pytest

from tests.blender.helpers import addon



class RecordingLayout:
    """Stands in for UILayout: checks and records what a draw function puts on screen."""

    def __init__(self, log):
        self.log = log
        self.scale_y = 1.0
        self.active = True

    def _child(self, *args, **kwargs):
        return RecordingLayout(self.log)

    row = column = box = split = _child

    def prop(self, data, name, **kwargs):
        assert name in data.bl_rna.properties, f"{data} has no property {name!r}"
        self.log.append(("prop", name))

    def operator(self, idname, **kwargs):
        category, name = idname.split(".")
        assert hasattr(getattr(bpy.ops, category), name) and getattr(getattr(bpy.ops, category), name).idname()
        self.log.append(("operator", idname))
        return type("OperatorProperties", (), {})()

    def template_list(self, list_type, list_id, data, prop, active_data, active_prop, **kwargs):
        assert hasattr(bpy.types, list_type) and prop in data.bl_rna.properties
        assert active_prop in active_data.bl_rna.properties
        self.log.append(("list", prop))

    def menu(self, menu, **kwargs):
        assert hasattr(bpy.types, menu)
        self.log.append(("menu", menu))

    def label(self, **kwargs):
        self.log.append(("label", kwargs.get("text", "")))

    def progress(self, **kwargs):
        self.log.append(("progress", kwargs.get("text", "")))

    def separator(self, **kwargs):
        pass


def draw(panel_name, context=None):
    log = []
    panel = getattr(bpy.types, panel_name)
    fake = type("Panel", (), {"layout": RecordingLayout(log)})()
    panel.draw(fake, context or bpy.context)
    if hasattr(panel, "draw_header"):
        panel.draw_header(fake, context or bpy.context)
    return log


def shown(log):
    return {name for kind, name in log if kind in ("prop", "list", "operator")}


PANELS = ["VIEW3D_PT_dream", "VIEW3D_PT_dream_faces", "IMAGE_PT_dream", "IMAGE_PT_dream_tools",
          "IMAGE_PT_dream_latent"] + [
    f"{prefix}_PT_dream_{name}" for prefix in ("VIEW3D", "IMAGE")
    for name in ("ensemble", "infusion", "modelensemble", "walk", "queue", "history")] + [
    "SEQUENCER_PT_dream", "SEQUENCER_PT_dream_walk"]


@pytest.mark.parametrize("panel", [p for p in PANELS if not p.endswith("_queue")])
def test_every_panel_draws(scene, panel):
    assert draw(panel)


def test_queue_shows_each_running_job_with_its_cancel(scene, session):
    scene.dream.steps = 200
    bpy.ops.dream.generate_texture()
    job = session.jobs[list(session.jobs)[-1]]
    assert bpy.types.VIEW3D_PT_dream_queue.poll(bpy.context)
    log = draw("VIEW3D_PT_dream_queue")
    assert ("operator", "dream.cancel") in log and any(kind == "progress" for kind, _ in log)
    bpy.ops.dream.cancel(job_id=job.job_id)
    session.wait_for(job.job_id)
    assert job.state == "cancelled" and not bpy.types.VIEW3D_PT_dream_queue.poll(bpy.context)


def test_conditional_controls_appear_with_their_condition(scene):
    props = scene.dream
    assert "prompt_weight" not in shown(draw("VIEW3D_PT_dream"))
    assert "ensemble_mode" not in shown(draw("VIEW3D_PT_dream_ensemble"))
    props.extra_prompts.add().text = "b"
    assert "prompt_weight" in shown(draw("VIEW3D_PT_dream"))
    assert "ensemble_mode" in shown(draw("VIEW3D_PT_dream_ensemble"))
    assert "infusion_mid" not in shown(draw("VIEW3D_PT_dream_infusion"))
    props.infusion_images.add().image = bpy.data.images.new("b", 8, 8)
    assert {"infusion_down", "infusion_mid", "infusion_up", "infusion_decay",
            "infusion_cond_only"} <= shown(draw("VIEW3D_PT_dream_infusion"))
    for source, control in (("IMAGE", "mask_image"), ("RECT", "rect_min"), ("UV", "uv_margin")):
        props.mask_source = source
        assert control in shown(draw("IMAGE_PT_dream_tools"))


def test_every_scene_property_is_drawn_somewhere(scene):
    props = scene.dream
    props.extra_prompts.add()
    props.infusion_images.add().image = bpy.data.images.new("b", 8, 8)
    drawn = set()
    for source in ("ALPHA", "IMAGE", "RECT", "UV"):
        props.mask_source = source
        for panel in PANELS:
            drawn |= shown(draw(panel))
    names = {n for n in type(props).__annotations__ if not n.endswith("_index")}
    assert names <= drawn, names - drawn
    walk = scene.dream_walk
    walk.init_image = bpy.data.images.new("w", 8, 8)
    for kind in ("prompts", "seeds", "random", "circular"):
        walk.kind = kind
        for target in ("SEQUENCER", "TEXTURE"):
            walk.target = target
            drawn |= shown(draw("SEQUENCER_PT_dream_walk"))
    walk_names = {n for n in type(walk).__annotations__ if not n.endswith("_index")}
    assert walk_names <= drawn, walk_names - drawn
    assert set(type(scene.dream_latent).__annotations__) <= shown(draw("IMAGE_PT_dream_latent"))


def _protocol():
    return addon("protocol")


def _mirrors():
    """(property group, property, the protocol Field it mirrors, what the panel sets differently and why)."""
    p, props = _protocol(), addon("properties")
    common, image, walk = p.txt2img_fields(), p.inpaint_fields(), p.walk_fields()
    scene, walk_group = props.DreamSceneProperties, props.DreamWalkProperties
    blender_int = {"max": 2**31 - 1}  # Blender ints are signed 32-bit
    return [
        (scene, "seed", common["seed"], blender_int), (scene, "steps", common["steps"], {}),
        (scene, "guidance", common["guidance"], {}), (scene, "scheduler", common["scheduler"], {}),
        (scene, "preview_interval", common["preview_interval"], {}),
        (scene, "ensemble_mode", common["ensemble_mode"], {}), (scene, "layout", common["layout"], {}),
        (scene, "infusion_decay", common["infusion_decay"], {}),
        (scene, "strength", p.img2img_fields()["strength"], {}),  # one Strength for both; img2img's default
        (scene, "feather", image["feather"], {}),
        (scene, "width", common["width"], {"max": 8192}), (scene, "height", common["height"], {"max": 8192}),
        (scene, "prompt_weight", p.PROMPT_TERM_FIELDS["weight"], {"default": 1.0}),  # the protocol's: required
        *[(scene, f"infusion_{group}", p.LAYER_WEIGHT, {"default": default})  # the protocol's: required
          for group, default in (("down", 0.3), ("mid", 0.5), ("up", 0.3))],
        (props.DreamPrompt, "weight", p.PROMPT_TERM_FIELDS["weight"], {"default": 1.0}),
        (props.DreamEnsembleModel, "weight", p.MODEL_TERM_FIELDS["weight"], {"default": 0.5}),
        (props.DreamLora, "weight", p.LORA_TERM_FIELDS["weight"], {}),
        (walk_group, "kind", walk["walk"], {"default": "circular"}),  # the one walk that needs no more input
        (walk_group, "interpolation", walk["interpolation"], {}),
        (walk_group, "step_size", walk["step_size"], {}), (walk_group, "walk_seed", walk["walk_seed"], blender_int),
        (walk_group, "frames", walk["frames"], {}), (walk_group, "fps", walk["fps"], {}),
        (walk_group, "batch_size", walk["batch_size"], {}),
        (walk_group, "export_format", p.EXPORT_FIELDS["format"], {}),
        *[(props.concept.DreamConceptProperties, name, p.teach_fields()[field], {})  # Teach a Concept
          for name, field in (("train_steps", "train_steps"), ("vectors", "vectors"), ("preview_every", "preview_every"),
                              ("learning_rate", "learning_rate"), ("size", "width"))],
        *_mosaic_mirrors(p),
        *[(props.DreamUpscaleProperties, name, p.upscale_fields()[name], {})
          for name in ("factor", "tile_size", "tile_overlap")],
    ]


def _mosaic_mirrors(p):
    """The Mosaic panel's and Enhance Region's rows (dream_addon/properties/mosaic.py)."""
    group = addon("properties").mosaic
    mosaic, enhance = p.mosaic_fields(), p.enhance_fields()
    tile = {"default": 64, "min": 32}  # the panel names a size: the mosaic image is made at grid x tile first
    return [*[(group.DreamMosaicProperties, name, mosaic[name], tile if name == "tile_size" else {})
              for name in ("grid_x", "grid_y", "tile_size", "strength", "levels", "zoom_frames", "fps", "batch_size")],
            (group.DreamMosaicProperties, "export_format", p.EXPORT_FIELDS["format"], {}),
            (group.DreamMosaicProperties, "color_match", mosaic["color_match"], {}),
            (group.DreamEnhanceProperties, "strength", enhance["strength"], {}),
            (group.DreamEnhanceProperties, "feather", enhance["region_feather"], {}),
            (group.DreamEnhanceProperties, "tile_size", enhance["tile_size"], {})]


def test_properties_have_the_protocols_bounds_defaults_and_choices():
    for group, name, field, panel_own in _mirrors():
        rna = group.bl_rna.properties[name]
        expected = {"default": field.default, "min": field.min, "max": field.max, **panel_own}
        if field.kind == "choice":
            assert [i.identifier for i in rna.enum_items] == list(field.choices), name
            assert rna.default == expected["default"], name
            continue
        # Float properties store float32: compare within its precision.
        got = {"default": rna.default, "min": rna.hard_min, "max": rna.hard_max}
        for key, want in expected.items():
            if want is not None:
                assert got[key] == pytest.approx(want, rel=1e-6), f"{name}.{key}: {got[key]} != {want}"


def test_scheduler_items_are_the_protocols_samplers():
    assert [item[0] for item in addon("properties").SCHEDULER_ITEMS] == list(_protocol().SCHEDULERS)
