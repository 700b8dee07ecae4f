"""Scene settings shown in the Dream panels (Scene.dream)."""

import bpy

from .. import protocol
from ..field_props import enum_args, enum_items, number_args, panel_settings, preset_settings

_FIELDS = protocol.txt2img_fields()
_IMAGE_FIELDS = protocol.inpaint_fields()  # img2img's fields plus feather
_IMAGE_FIELDS["strength"] = protocol.img2img_fields()["strength"]  # one Strength for both: img2img's default
_WALK_FIELDS = protocol.walk_fields()
SCHEDULER_LABELS = {
    "default": ("Model Default", "The scheduler the model ships with"),
    "ddim": ("DDIM", "Denoising Diffusion Implicit Models"),
    "euler": ("Euler", "Euler, Karras et al. 2022"),
    "euler_a": ("Euler Ancestral", "Euler with fresh noise each step"),
    "dpmpp_2m": ("DPM++ 2M", "DPM-Solver++ multistep"),
    "dpmpp_2m_karras": ("DPM++ 2M Karras", "DPM-Solver++ multistep with Karras sigmas"),
    "unipc": ("UniPC", "Unified predictor-corrector"),
    "pndm": ("PNDM", "Pseudo numerical methods"),
}
SCHEDULER_ITEMS = enum_items(protocol.SCHEDULERS, SCHEDULER_LABELS)


def allowed_size(name: str, value: int) -> int:
    """The nearest size the connected backend accepts (its welcome's max_size, multiples of 8)."""
    from ..session import SESSION

    return protocol.common_fields(protocol.max_size_of(SESSION.welcome))[name].nearest(value)


def _size_prop(name):
    spec = _FIELDS[name]
    # get/set snap to what the backend accepts, so the panel cannot express a size it refuses.
    return bpy.props.IntProperty(name=name.capitalize(), default=spec.default, min=int(spec.min), soft_max=2048,
                                 max=8192, step=64, subtype="PIXEL", description=spec.doc,
                                 get=lambda self: allowed_size(name, self.get(name, spec.default)),
                                 set=lambda self, value: self.__setitem__(name, allowed_size(name, value)))


def frames_target():
    """Where a frame sequence (a walk, a mosaic zoom) goes: the settings the Walk and Mosaic panels share."""
    return bpy.props.EnumProperty(name="Frames To", default="SEQUENCER", items=[
        ("SEQUENCER", "Sequencer", "An image strip in the Video Sequencer"),
        ("TEXTURE", "Texture", "An image-sequence texture on the active object's material")])


def frames_channel():
    return bpy.props.IntProperty(name="Channel", default=1, min=1, max=128)


def frames_start():
    return bpy.props.IntProperty(name="Start Frame", default=1)


def frames_export_format():
    return bpy.props.EnumProperty(name="Export", **enum_args(protocol.EXPORT_FIELDS["format"], {
        "gif": ("GIF", ""), "mp4": ("MP4", ""), "png": ("PNG Sequence", "A folder of numbered PNG frames")}))


def model_items(self, context):
    """Models the backend serves (from its welcome); kept in a module list, as Blender requires."""
    from ..session import SESSION

    models = [(m["name"], m.get("base"), m.get("kind"), "") for m in (SESSION.welcome or {}).get("models", [])]
    served = {m[0] for m in models}
    from .models import listed

    models += [(e["name"], e.get("family"), e.get("kind"), e.get("note", "")) for e in listed("checkpoints")
               if e["name"] not in served]  # the models folder's checkpoints
    _MODEL_ITEMS[:] = [(BACKEND_DEFAULT_MODEL, "Backend Default", "The backend's default model")] + [
        (name, model_label(name, base, kind), note) for name, base, kind, note in models
        if name != BACKEND_DEFAULT_MODEL]
    return _MODEL_ITEMS


def model_label(name: str, base, kind) -> str:
    """A model's name with what was detected in it: "dreamshaper (sd1, inpaint)"."""
    detected = [value for value in (base, kind) if value]
    return f"{name} ({', '.join(detected)})" if detected else name


_MODEL_ITEMS = []
# The Model menu's "whatever the backend defaults to" entry (not protocol.DEFAULT_MODEL, the shipped model's
# name): enum identifiers cannot be empty, so it is sent as "".
BACKEND_DEFAULT_MODEL = "DEFAULT"


class DreamPrompt(bpy.types.PropertyGroup):
    text: bpy.props.StringProperty(name="Prompt", default="")
    weight: bpy.props.FloatProperty(name="Weight", **number_args(protocol.PROMPT_TERM_FIELDS["weight"], default=1.0,
                                    description="Weight in the ensemble; negative steers away"))


class DreamBiasImage(bpy.types.PropertyGroup):
    image: bpy.props.PointerProperty(name="Image", type=bpy.types.Image, description="Biasing image for infusion")


BACKEND_DEFAULT_UPSCALER = "DEFAULT"  # the Upscale panel's menu: enum identifiers cannot be empty, sent as ""
_UPSCALER_ITEMS = []


def upscaler_items(self, context):
    """Upscalers the backend serves (from its welcome), with their architecture and scale; kept in a module
    list, as Blender requires."""
    from ..session import SESSION

    served = (SESSION.welcome or {}).get("upscalers", [])
    _UPSCALER_ITEMS[:] = [(BACKEND_DEFAULT_UPSCALER, "Backend Default", "The backend's default upscaler")] + [
        (u["name"], u["name"], f"{u['architecture']}, x{u['scale']}") for u in served]
    return _UPSCALER_ITEMS


UPSCALE_AFTER_NONE = "NONE"  # Enhance Region's "Upscale After" menu: no upscale
_UPSCALE_AFTER_ITEMS = []


def upscale_after_items(self, context):
    """None, then the served upscalers (Enhance Region's Upscale After); here for Blender 4.2 (see models.py)."""
    _UPSCALE_AFTER_ITEMS[:] = [(UPSCALE_AFTER_NONE, "None", "Keep the image's size")] + upscaler_items(self, context)
    return _UPSCALE_AFTER_ITEMS


def lora_names(self, context, edit_text):
    """LoRAs the backend lists (the models folder), with their base family where it was detected."""
    from .models import listed

    return [(e["name"], e.get("family") or "") for e in listed("loras")]


def compatible_models(self, context, edit_text):
    """Models of the same family as the panel's model, as the backend reports them."""
    from ..session import SESSION

    models = (SESSION.welcome or {}).get("models", [])
    chosen = context.scene.dream.model
    if chosen == BACKEND_DEFAULT_MODEL:
        chosen = next((m["name"] for m in models if m["default"]), "")
    family = next((m.get("family") for m in models if m["name"] == chosen), None)
    return [m["name"] for m in models if family is None or m.get("family") in (family, None)]


class DreamEnsembleModel(bpy.types.PropertyGroup):
    name: bpy.props.StringProperty(name="Model", default="", search=compatible_models,
                                   description="A model that shares the panel model's latent space")
    weight: bpy.props.FloatProperty(name="Weight", **number_args(protocol.MODEL_TERM_FIELDS["weight"], default=0.5))


class DreamHistoryItem(bpy.types.PropertyGroup):
    """One finished generation, saved with the .blend."""

    job_id: bpy.props.StringProperty()
    kind: bpy.props.StringProperty()
    operator: bpy.props.StringProperty(description="The operator that made it, for Re-run")
    settings: bpy.props.StringProperty(description="Scene settings as JSON, for Recall")
    params: bpy.props.StringProperty(description="The backend parameters as JSON")
    image: bpy.props.PointerProperty(type=bpy.types.Image)
    original: bpy.props.PointerProperty(type=bpy.types.Image, description="The image as it was, when replaced")
    source: bpy.props.PointerProperty(type=bpy.types.Image, description="The image repainted (img2img, inpaint)")
    mask: bpy.props.StringProperty(description="The repainted pixels (inpaint), packed, for Re-run")
    frames: bpy.props.IntProperty(description="Walks: the number of frames")
    sequence: bpy.props.PointerProperty(type=bpy.types.Image, description="Mosaics: the zoom's frames, a sequence")
    created: bpy.props.StringProperty()


class DreamSceneProperties(bpy.types.PropertyGroup):
    prompt: bpy.props.StringProperty(name="Prompt", default="seamless red bricks texture",
                                     description=_FIELDS["prompt"].doc)
    negative_prompt: bpy.props.StringProperty(name="Negative", default="", description=_FIELDS["negative_prompt"].doc)
    seed: bpy.props.IntProperty(name="Seed", **number_args(_FIELDS["seed"]))
    randomize_seed: bpy.props.BoolProperty(name="Random Seed", default=False,
                                           description="Pick a new seed for every generation")
    steps: bpy.props.IntProperty(name="Steps", **number_args(_FIELDS["steps"]))
    guidance: bpy.props.FloatProperty(name="Guidance", soft_max=20.0, **number_args(_FIELDS["guidance"]))
    width: _size_prop("width")
    height: _size_prop("height")
    scheduler: bpy.props.EnumProperty(name="Sampler", **enum_args(_FIELDS["scheduler"], SCHEDULER_LABELS))
    preview_interval: bpy.props.FloatProperty(name="Preview Every", unit="TIME_ABSOLUTE",
                                              **number_args(_FIELDS["preview_interval"]))
    model: bpy.props.EnumProperty(name="Model", items=model_items, description="Model served by the backend")
    # Prompt ensembling: the prompt above plus these, each with a weight.
    prompt_weight: bpy.props.FloatProperty(name="Weight", **number_args(
        protocol.PROMPT_TERM_FIELDS["weight"], default=1.0, description="Weight of the main prompt in the ensemble"))
    extra_prompts: bpy.props.CollectionProperty(type=DreamPrompt)
    extra_prompts_index: bpy.props.IntProperty()
    ensemble_mode: bpy.props.EnumProperty(name="Combine", **enum_args(_FIELDS["ensemble_mode"], {
        "noise": ("Predictions", "Combine the noise predictions every step"),
        "embedding": ("Embeddings", "Average the text embeddings")}))
    seamless_x: bpy.props.BoolProperty(name="Seamless X", description="Tile seamlessly left to right")
    seamless_y: bpy.props.BoolProperty(name="Seamless Y", description="Tile seamlessly bottom to top")
    layout: bpy.props.EnumProperty(name="Layout Pass", **enum_args(_FIELDS["layout"], {
        "auto": ("Auto", "On where the canvas is at least twice the model's native size both ways"),
        "on": ("On", "Always start from a seamless half-size sample (Generate Texture only)"),
        "off": ("Off", "Start from pure noise")}))
    # Infusion
    infusion_images: bpy.props.CollectionProperty(type=DreamBiasImage)
    infusion_images_index: bpy.props.IntProperty()
    infusion_down: bpy.props.FloatProperty(name="Down Blocks", **number_args(protocol.LAYER_WEIGHT, default=0.3))
    infusion_mid: bpy.props.FloatProperty(name="Mid Block", **number_args(protocol.LAYER_WEIGHT, default=0.5))
    infusion_up: bpy.props.FloatProperty(name="Up Blocks", **number_args(protocol.LAYER_WEIGHT, default=0.3))
    infusion_decay: bpy.props.FloatProperty(name="Decay", **number_args(_FIELDS["infusion_decay"]))
    infusion_cond_only: bpy.props.BoolProperty(name="Conditional Only",
                                               description=_FIELDS["infusion_cond_only"].doc)
    # Model ensembling
    use_model_ensemble: bpy.props.BoolProperty(name="Model Ensemble",
                                               description="Combine the predictions of several models")
    ensemble_models: bpy.props.CollectionProperty(type=DreamEnsembleModel)
    ensemble_models_index: bpy.props.IntProperty()
    # Image tools
    strength: bpy.props.FloatProperty(name="Strength", **number_args(
        _IMAGE_FIELDS["strength"], description="How much of the image is repainted (img2img, inpainting)"))
    feather: bpy.props.FloatProperty(name="Feather", subtype="PIXEL", **number_args(
        _IMAGE_FIELDS["feather"], description="Soft edge when the original is pasted back"))
    uv_margin: bpy.props.IntProperty(name="Seam Margin", default=2, min=0, max=32, subtype="PIXEL",
                                     description="Grow the UV mask by this much against seams")
    mask_source: bpy.props.EnumProperty(name="Mask", default="ALPHA", items=[
        ("ALPHA", "Image Alpha", "Repaint where the image is transparent"),
        ("IMAGE", "Mask Image", "Repaint where the mask image is white"),
        ("RECT", "Rectangle", "Repaint inside a rectangle (a picture frame)"),
        ("UV", "Selected Faces", "Repaint the UV islands of the active mesh's selected faces")])
    mask_image: bpy.props.PointerProperty(name="Mask Image", type=bpy.types.Image)
    rect_min: bpy.props.FloatVectorProperty(name="Rectangle Min", size=2, default=(0.25, 0.25), min=0.0, max=1.0,
                                            subtype="XYZ")
    rect_max: bpy.props.FloatVectorProperty(name="Rectangle Max", size=2, default=(0.75, 0.75), min=0.0, max=1.0,
                                            subtype="XYZ")
    texture_target: bpy.props.EnumProperty(name="Result To", default="NEW_SLOT", items=[
        ("NEW_SLOT", "New Slot", "A new material in a new slot of the active object, made active; "
                                 "every other slot stays as it is"),
        ("REPLACE_SLOT", "Replace Slot", "A new material in the active slot; the old one is kept so "
                                         "Restore Material puts it back"),
        ("IMAGE_ONLY", "Image Only", "Only the image: no material changes")],
        description="Where Generate Texture and walk textures go on the active object")
    result_target: bpy.props.EnumProperty(name="Result", default="NEW", items=[
        ("NEW", "New Image", "Put the result in a new image"),
        ("REPLACE", "Replace", "Write the result into the active image (undo or history keep the original)")])


# The settings a job reads, by the protocol's field names: history, Recall and presets follow the Field table.
SCENE_SETTINGS = panel_settings(DreamSceneProperties.__annotations__)
PRESET_SETTINGS = preset_settings(DreamSceneProperties.__annotations__)


class DreamWalkPrompt(bpy.types.PropertyGroup):
    text: bpy.props.StringProperty(name="Prompt", default="")


class DreamWalkProperties(bpy.types.PropertyGroup):
    """Settings of a latent walk (Scene.dream_walk); the generation settings come from Scene.dream."""

    # The panel opens on the circular walk (the protocol's default is "prompts"): it needs no further input.
    kind: bpy.props.EnumProperty(name="Walk", **enum_args(_WALK_FIELDS["walk"], {
        "prompts": ("Prompts", "Move from the panel prompt through the prompts below"),
        "seeds": ("Seeds", "Move the starting noise from seed to seed"),
        "random": ("Random", "A random walk of the text embedding"),
        "direction": ("Direction", "Move the text embedding along one random direction"),
        "circular": ("Circular", "A seamless loop of the starting noise")}, default="circular"))
    prompts: bpy.props.CollectionProperty(type=DreamWalkPrompt)
    prompts_index: bpy.props.IntProperty()
    interpolation: bpy.props.EnumProperty(name="Interpolation", **enum_args(_WALK_FIELDS["interpolation"], {
        "slerp": ("Slerp", "Spherical: keeps the embedding's length"), "lerp": ("Lerp", "Straight line")}))
    seeds: bpy.props.StringProperty(name="Seeds", default="1, 2, 3", description="Seeds, separated by commas")
    step_size: bpy.props.FloatProperty(name="Step", **number_args(_WALK_FIELDS["step_size"]))
    walk_seed: bpy.props.IntProperty(name="Walk Seed", **number_args(_WALK_FIELDS["walk_seed"]))
    frames: bpy.props.IntProperty(name="Frames", **number_args(_WALK_FIELDS["frames"]))
    fps: bpy.props.IntProperty(name="FPS", **number_args(_WALK_FIELDS["fps"]))
    batch_size: bpy.props.IntProperty(name="Batch", **number_args(_WALK_FIELDS["batch_size"]))
    init_image: bpy.props.PointerProperty(name="Init Image", type=bpy.types.Image,
                                          description="Optional: every frame is img2img of this image")
    target: frames_target()
    channel: frames_channel()
    start_frame: frames_start()
    export_format: frames_export_format()
    rubber_band: bpy.props.BoolProperty(name="Rubber Band", description="Forward, then back (2n - 2 frames)")


from .latent import DreamLatentProperties  # noqa: E402  (the Latent Codec panel)
from .concept import classes as concept_classes  # noqa: E402  (the Teach a Concept panel)
from .models import DreamLora, DreamModelsProperties  # noqa: E402  (the models folder: LoRAs)
from .mosaic import classes as mosaic_classes  # noqa: E402  (the Mosaic panel, Enhance Region)
from .upscale import DreamUpscaleProperties  # noqa: E402  (the Upscale panel)

classes = mosaic_classes + (DreamLora, DreamModelsProperties, DreamLatentProperties, DreamUpscaleProperties,
                            DreamPrompt, DreamBiasImage, DreamEnsembleModel, DreamHistoryItem, DreamSceneProperties,
                            DreamWalkPrompt, DreamWalkProperties) + concept_classes
