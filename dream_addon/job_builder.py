"""Scene settings and Blender images turned into backend jobs (runs on the main thread)."""

from __future__ import annotations

import numpy as np

from . import protocol, uv_mask
from .properties import BACKEND_DEFAULT_MODEL
from .session import BLENDER_OUTPUT


class JobInputError(Exception):
    """Something the user must fix before a job can be sent; the message says what."""


def image_pixels(image) -> np.ndarray:
    """(h, w, 4) float32 pixels, rows bottom to top, as Blender holds them."""
    width, height = image.size
    if width == 0 or height == 0:
        raise JobInputError(f"Image {image.name!r} has no pixels")
    flat = np.empty(width * height * 4, dtype=np.float32)
    image.pixels.foreach_get(flat)
    return flat.reshape(height, width, 4)


def wire_array(image, pixels: np.ndarray, alpha: bool = False) -> np.ndarray:
    """What goes on the wire for an input image: float images as linear float32, byte images
    as their exact sRGB bytes (uint8 arrays are always sRGB to the backend); ``alpha``: RGBA (kinds that keep it)."""
    channels = 4 if alpha else 3
    if image.is_float:
        return np.ascontiguousarray(pixels[..., :channels])
    return np.round(pixels[..., :channels] * 255).astype(np.uint8)


def resized(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize (biasing images only need to match the job's size)."""
    if array.shape[:2] == (height, width):
        return array
    rows = (np.arange(height) * array.shape[0] // height)
    cols = (np.arange(width) * array.shape[1] // width)
    return array[rows][:, cols]


def scene_params(props) -> tuple[dict, dict]:
    """The parameters and arrays every kind of job takes from the Dream panel."""
    if not props.prompt.strip():
        raise JobInputError("The Prompt is empty: type what to generate (spaces alone say nothing)")
    for i, extra in enumerate(props.extra_prompts):
        if not extra.text.strip():
            raise JobInputError(f"Prompt {i + 2} of the ensemble is empty: type it or remove it")
    params = {
        "negative_prompt": props.negative_prompt, "seed": props.seed, "steps": props.steps,
        "guidance": round(props.guidance, 4), "width": props.width, "height": props.height,
        "scheduler": props.scheduler, "preview_interval": props.preview_interval,
        "model": "" if props.model == BACKEND_DEFAULT_MODEL else props.model,
        "seamless": ("x" if props.seamless_x else "") + ("y" if props.seamless_y else ""),
        **BLENDER_OUTPUT, "input_linear": True, "input_flip_y": True,
    }
    if len(props.extra_prompts):
        params["prompts"] = [{"text": props.prompt, "weight": props.prompt_weight}] + [
            {"text": p.text, "weight": p.weight} for p in props.extra_prompts]
        params["ensemble_mode"] = props.ensemble_mode
    else:
        params["prompt"] = props.prompt
    arrays = {}
    images = [item.image for item in props.infusion_images if item.image is not None]
    if images:
        if len(images) > protocol.MAX_INFUSION_IMAGES:
            raise JobInputError(f"At most {protocol.MAX_INFUSION_IMAGES} biasing images")
        params["infusion_weights"] = {"down": props.infusion_down, "mid": props.infusion_mid, "up": props.infusion_up}
        params["infusion_decay"] = props.infusion_decay
        params["infusion_cond_only"] = props.infusion_cond_only
        for i, image in enumerate(images):
            arrays[f"infusion_{i}"] = wire_array(image, resized(image_pixels(image), props.height, props.width))
    if props.use_model_ensemble:
        if len(props.ensemble_models) < 2:
            raise JobInputError("A model ensemble needs at least two models")
        params["models"] = [{"name": m.name, "weight": m.weight} for m in props.ensemble_models]
    for where, name in [("The Model", params["model"])] + [(f"Ensemble model {i + 1}", m["name"])
                                                            for i, m in enumerate(params.get("models") or [])]:
        check_model_runs(name, where)
    params.update(lora_params(props.id_data))
    return params, arrays


def check_model_runs(name: str, where: str = "The Model"):
    """A models-folder checkpoint the backend lists with a kind no job can run (a depth model) is refused
    here, saying what it needs, before anything is made."""
    from .properties.models import listed

    for entry in listed("checkpoints"):
        if entry["name"] == name and entry.get("kind") in protocol.REFUSED_KINDS:
            raise JobInputError(f"{where} {name!r} is {protocol.REFUSED_KINDS[entry['kind']]}")


def lora_params(scene) -> dict:
    """The generate panel's LoRA list as params.loras, every name checked against the backend's listing."""
    from .session import SESSION

    models = getattr(scene, "dream_models", None)
    loras = list(models.loras) if models is not None else []
    if not loras:
        return {}
    listed = [e["name"] for e in ((SESSION.welcome or {}).get("library") or {}).get("loras") or []]
    for i, item in enumerate(loras):
        if item.name not in listed:
            raise JobInputError(f"LoRA {i + 1} ({item.name or 'no name'!r}) is not in the backend's models folder"
                                + (f"; it has: {', '.join(listed)}" if listed else ": it lists no LoRAs (set the "
                                   "Models Folder in the preferences, add files, then Rescan)"))
    return {"loras": [{"name": item.name, "weight": round(item.weight, 4)} for item in loras]}


def check_job(kind: str, params: dict, arrays: dict, welcome=None):
    """The backend's own checks, run here before anything is created; a ProtocolError names the field."""
    protocol.validate_job(kind, params, arrays, protocol.max_size_of(welcome))


def sized_to_image(params: dict, image) -> tuple[int, int]:
    """Set the job size from an image (padded up to multiples of 8); return the image's (w, h).

    An image the backend cannot take is refused here, before anything is made or sent."""
    from .session import SESSION

    width, height = image.size
    params["width"], params["height"] = uv_mask.padded_size(width), uv_mask.padded_size(height)
    largest = ((SESSION.welcome or {}).get("capabilities") or {}).get("max_size")
    if largest and max(params["width"], params["height"]) > largest:
        raise JobInputError(f"Image {image.name!r} is {width} × {height} px; the backend takes at most {largest} px "
                            "per side. Scale it down (Image > Resize) or start the backend with a larger --max-size")
    return width, height


def active_image_texture(obj):
    """The image of the active material's active (or first) Image Texture node."""
    material = obj.active_material if obj is not None else None
    if material is None or material.node_tree is None:
        return None
    nodes = material.node_tree.nodes
    node = nodes.active if nodes.active is not None and nodes.active.type == "TEX_IMAGE" else next(
        (n for n in nodes if n.type == "TEX_IMAGE" and n.image is not None), None)
    return node.image if node is not None else None


def image_extension(obj, image) -> str:
    """How ``obj``'s active material shows ``image`` outside UV 0..1 (its Image Texture node's
    extension; REPEAT, Blender's default, when no node shows it)."""
    material = obj.active_material if obj is not None else None
    nodes = material.node_tree.nodes if material is not None and material.node_tree is not None else ()
    return next((n.extension for n in nodes if n.type == "TEX_IMAGE" and n.image == image), "REPEAT")


def selected_faces_uv_mask(obj, width: int, height: int, margin: int, extension: str = "REPEAT") -> np.ndarray:
    """The selected faces' UV polygons rasterised at the image size (rows bottom-up), wrapped as the
    texture's ``extension`` shows them, grown by ``margin`` pixels. Works in Edit and Object mode."""
    mesh = obj.data
    if obj.mode == "EDIT":
        import bmesh

        bm = bmesh.from_edit_mesh(mesh)
        layer = bm.loops.layers.uv.active
        if layer is None:
            raise JobInputError(f"{obj.name!r} has no UV map")
        faces = [f for f in bm.faces if f.select]
        totals = np.array([len(f.loops) for f in faces], dtype=np.int64)
        uvs = np.array([tuple(loop[layer].uv) for f in faces for loop in f.loops], dtype=np.float64).reshape(-1, 2)
    else:
        if mesh.uv_layers.active is None:
            raise JobInputError(f"{obj.name!r} has no UV map")
        n = len(mesh.polygons)
        select = np.empty(n, dtype=bool)
        mesh.polygons.foreach_get("select", select)
        starts, counts = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
        mesh.polygons.foreach_get("loop_start", starts)
        mesh.polygons.foreach_get("loop_total", counts)
        all_uvs = np.empty(len(mesh.loops) * 2, dtype=np.float64)
        mesh.uv_layers.active.uv.foreach_get("vector", all_uvs)
        all_uvs = all_uvs.reshape(-1, 2)
        totals = counts[select]
        index = uv_mask._loop_indices(starts[select], totals) if len(totals) else np.zeros(0, np.int64)
        uvs = all_uvs[index]
    if len(totals) == 0:
        raise JobInputError(f"No faces of {obj.name!r} are selected")
    mask = uv_mask.rasterize_polygons(uvs, np.cumsum(totals) - totals, totals, width, height, extension)
    return uv_mask.dilate(mask, margin)


def mask_from_source(props, image, obj) -> np.ndarray:
    """The inpainting mask (h, w) bool, rows bottom-up, from the chosen source."""
    width, height = image.size
    if props.mask_source == "ALPHA":
        if image.alpha_mode == "NONE":
            raise JobInputError(f"Image {image.name!r} has no alpha channel")
        return image_pixels(image)[..., 3] < 0.5
    if props.mask_source == "IMAGE":
        if props.mask_image is None:
            raise JobInputError("Choose a mask image (white = repaint)")
        if tuple(props.mask_image.size) != (width, height):
            raise JobInputError(f"The mask image is {tuple(props.mask_image.size)}, the image {(width, height)}: "
                                "they must be the same size")
        return image_pixels(props.mask_image)[..., :3].mean(axis=-1) >= 0.5
    if props.mask_source == "RECT":
        return uv_mask.rectangle(width, height, *props.rect_min, *props.rect_max)
    if obj is None or obj.type != "MESH":
        raise JobInputError("Selected-faces masks need an active mesh object")
    return selected_faces_uv_mask(obj, width, height, props.uv_margin, image_extension(obj, image))


def walk_params(scene) -> tuple[dict, dict]:
    """A walk job from Scene.dream (generation settings) and Scene.dream_walk."""
    walk = scene.dream_walk
    params, arrays = scene_params(scene.dream)
    params.update(walk=walk.kind, frames=walk.frames, fps=walk.fps, batch_size=walk.batch_size)
    if walk.kind == "prompts":
        params["walk_prompts"] = [params.pop("prompt", "") or scene.dream.prompt] + [p.text for p in walk.prompts]
        params["interpolation"] = walk.interpolation
    elif walk.kind == "seeds":
        try:
            params["walk_seeds"] = [int(s) for s in walk.seeds.replace(",", " ").split()]
        except ValueError:
            raise JobInputError(f"Seeds must be whole numbers separated by commas, not {walk.seeds!r}") from None
    elif walk.kind in ("random", "direction"):
        params["step_size"], params["walk_seed"] = walk.step_size, walk.walk_seed
    if walk.init_image is not None:
        image = walk.init_image
        pixels = resized(image_pixels(image), params["height"], params["width"])
        arrays["init_image"] = wire_array(image, pixels)
        params["strength"] = scene.dream.strength
    params["preview_interval"] = 0.0  # frames stream instead
    return params, arrays
