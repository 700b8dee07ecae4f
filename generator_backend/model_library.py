"""The models folder: checkpoints (diffusers folders and single files), LoRAs, embeddings and upscalers.

``ModelLibrary.scan()`` walks the folder (bounded in depth, count and name length; nothing outside
it is followed), reads only the JSON header of each ``.safetensors`` file (never its tensors) and
detects what the file is, its family (sd1, sd2, sdxl) and kind (txt2img, inpaint, depth,
upscaler) from the tensor names and shapes. Results are cached by (mtime, size), so a rescan
reads only new or changed files. Needs no torch: the listing is plain JSON for the welcome.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dream_addon import protocol

log = logging.getLogger("generator_backend.model_library")

MAX_ENTRIES = 2000  # files and folders listed; more are ignored (and logged)
MAX_DEPTH = 4  # folder levels below the models folder
MAX_NAME = 200  # characters of a listed name (its path inside the folder)
MAX_HEADER_BYTES = 64 << 20  # a safetensors JSON header larger than this is not read
MAX_FILE_BYTES = 64 << 30  # files larger than this are not listed

TYPES = ("checkpoint", "lora", "embedding", "upscaler")
FAMILIES = ("sd1", "sd2", "sd2-base", "sdxl")  # sd2: v-prediction 768 (2.x); sd2-base: epsilon 512
KINDS = ("txt2img", "inpaint", "depth", "upscaler")
WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
UNET_IN = "model.diffusion_model.input_blocks.0.0.weight"
_KIND_BY_CHANNELS = {4: "txt2img", 9: "inpaint", 5: "depth", 7: "upscaler"}


def refusal(kind: str | None) -> str | None:
    """Why a checkpoint of ``kind`` cannot run here, or None when it can."""
    return protocol.REFUSED_KINDS.get(kind)


class LibraryError(Exception):
    """A name that is not in the listing, or a path outside the folder."""


@dataclass
class Entry:
    """One listed model file or folder, with what was detected in it."""

    name: str  # its path inside the models folder, without the weight suffix (posix)
    type: str  # one of TYPES, or "unknown"
    path: str  # absolute
    format: str  # "diffusers", "safetensors", "ckpt", "pt", "pth", "bin"
    size: int
    family: str | None = None  # the effective family (the detected one, unless overridden)
    kind: str | None = None
    detected_family: str | None = None
    detected_kind: str | None = None
    architecture: str | None = None  # the shipped configuration it loads with (model_configs/<name>)
    note: str = ""  # why it cannot be used, when it cannot
    extra: dict = field(default_factory=dict)

    def public(self) -> dict:
        """What the welcome lists (no absolute paths: the add-on names entries, never paths)."""
        out = {k: v for k, v in asdict(self).items() if k not in ("path", "extra") and v not in (None, "")}
        out.update(self.extra)
        return out


def read_safetensors_header(path: Path) -> dict:
    """{tensor name: (dtype, shape)} from a safetensors file's JSON header, without reading any tensor."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError("shorter than a safetensors header")
        (length,) = struct.unpack("<Q", raw)
        if not 2 <= length <= MAX_HEADER_BYTES:
            raise ValueError(f"safetensors header of {length} bytes")
        header = json.loads(f.read(length))
    if not isinstance(header, dict):
        raise ValueError("safetensors header is not an object")
    return {k: (v.get("dtype"), tuple(v.get("shape", ()))) for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict)}


def _shape(tensors, key):
    entry = tensors.get(key)
    return entry[1] if entry else None


def _context_dim(tensors, prefix="model.diffusion_model.") -> int | None:
    """The cross-attention width (the text encoder's): the input of any attn2.to_k."""
    for key, (_, shape) in tensors.items():
        if key.startswith(prefix) and key.endswith("attn2.to_k.weight") and len(shape) == 2:
            return shape[1]
    return None


def checkpoint_family(tensors) -> str | None:
    """sd1 / sd2 / sdxl from the text encoders a single-file checkpoint holds."""
    if any(k.startswith("conditioner.embedders.1.") for k in tensors):
        return "sdxl"
    if any(k.startswith("cond_stage_model.model.") for k in tensors):
        return "sd2"
    if any(k.startswith("cond_stage_model.transformer.") for k in tensors):
        return "sd1"
    context = _context_dim(tensors)
    return {768: "sd1", 1024: "sd2", 2048: "sdxl"}.get(context)


def checkpoint_architecture(tensors, family) -> str | None:
    """The shipped configuration folder that fits the tensors (model_configs/<name>), or None."""
    context = _context_dim(tensors)
    conv_in = _shape(tensors, UNET_IN)
    width = conv_in[0] if conv_in else None
    known = {("sd1", 768, 320): "sd15", ("sd2", 1024, 320): "sd2", ("sdxl", 2048, 320): "sdxl",
             ("sd1", 64, 48): "pocket", ("sd1", 32, 32): "tiny",  # the project's own models, converted
             ("sd2", 32, 32): "tiny-sd2", ("sdxl", 64, 32): "tiny-xl"}
    return known.get((family, context, width))


def detect_tensors(tensors) -> dict:
    """type, family, kind and architecture of a weights file from its tensor names and shapes."""
    keys = list(tensors)
    if UNET_IN in tensors:
        family = checkpoint_family(tensors)
        channels = _shape(tensors, UNET_IN)[1]
        return {"type": "checkpoint", "family": family, "kind": _KIND_BY_CHANNELS.get(channels),
                "architecture": checkpoint_architecture(tensors, family), "in_channels": channels}
    if any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) or ".lora_A." in k or ".lora_B." in k
           or ".lora_down." in k or ".lora.down." in k for k in keys):
        return {"type": "lora", "family": _lora_family(tensors), "rank": _lora_rank(tensors)}
    if "emb_params" in tensors or "string_to_param" in keys or {"clip_l", "clip_g"} & set(keys) or (
            len(keys) == 1 and len(tensors[keys[0]][1]) in (1, 2)):
        dims = [shape[-1] for _, shape in tensors.values() if shape]
        return {"type": "embedding", "family": "sdxl" if {"clip_l", "clip_g"} <= set(keys) else
                {768: "sd1", 1024: "sd2"}.get(dims[0] if dims else None)}
    if any(k.startswith(("conv_first.", "model.0.", "body.", "RRDB_trunk.")) for k in keys):
        return {"type": "upscaler", "kind": "upscaler"}
    return {"type": "unknown"}


def _lora_family(tensors) -> str | None:
    """The base family a LoRA was made for: its cross-attention LoRA's input width, or SDXL's second encoder."""
    if any(k.startswith("lora_te2_") or ".text_encoder_2." in k for k in tensors):
        return "sdxl"
    for key, (_, shape) in tensors.items():
        if "attn2" in key and ("to_k" in key) and ("lora_down" in key or "lora_A" in key or "lora.down" in key):
            return {768: "sd1", 1024: "sd2", 2048: "sdxl"}.get(shape[-1])
    return None


def _lora_rank(tensors) -> int | None:
    for key, (_, shape) in tensors.items():
        if ("lora_down" in key or "lora_A" in key or "lora.down" in key) and shape:
            return shape[0]
    return None


def detect_folder(path: Path) -> dict:
    """A diffusers folder: read its model_index and UNet config (no weights)."""
    try:
        index = json.loads((path / "model_index.json").read_text())
        unet = json.loads((path / "unet" / "config.json").read_text())
    except (OSError, ValueError):
        return {"type": "checkpoint", "note": "its model_index.json or unet/config.json cannot be read"}
    sdxl = "XL" in str(index.get("_class_name", "")) or "text_encoder_2" in index
    context = unet.get("cross_attention_dim")
    family = "sdxl" if sdxl else {1024: "sd2"}.get(context, "sd1")
    channels = unet.get("in_channels", 4)
    return {"type": "checkpoint", "family": family, "kind": _KIND_BY_CHANNELS.get(channels),
            "in_channels": channels}


def detect_file(path: Path) -> dict:
    """What a weights file is; only safetensors headers are read (pickles are never opened here)."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            return detect_tensors(read_safetensors_header(path))
        except (OSError, ValueError) as exc:
            return {"type": "unknown", "note": f"not a readable safetensors file ({exc})"}
    # Pickled files are not opened to list them: their type comes from the folder they are in.
    parts = {p.lower() for p in path.parts}
    if parts & {"lora", "loras"}:
        return {"type": "lora"}
    if parts & {"embeddings", "embedding", "textual_inversion"} or suffix in (".pt", ".bin") and \
            path.stat().st_size < 1 << 20:
        return {"type": "embedding"}
    if parts & {"esrgan", "upscalers", "upscale_models", "realesrgan"} or suffix == ".pth":
        return {"type": "upscaler", "kind": "upscaler"}
    if suffix == ".ckpt":
        return {"type": "checkpoint", "note": "a pickled checkpoint: its type is read when it is loaded "
                "(weights only)"}
    return {"type": "unknown"}


MAX_OVERRIDES = 100


def parse_overrides(text: str) -> dict:
    """'NAME=FAMILY[/KIND], ...' (the add-on's preference) -> {name: (family, kind)}; ValueError when bad."""
    items = [item for item in (part.strip() for part in text.split(",")) if item]
    if len(items) > MAX_OVERRIDES:
        raise ValueError(f"at most {MAX_OVERRIDES} model types")
    return {name: (family, kind) for name, family, kind in map(parse_override, items)}


def parse_override(text: str):
    """'NAME=FAMILY[/KIND]' (a --model-type) -> (name, family, kind)."""
    name, _, value = text.partition("=")
    family, _, kind = value.partition("/")
    family, kind = family.strip() or None, kind.strip() or None
    if not name.strip() or (family and family not in FAMILIES) or (kind and kind not in KINDS):
        raise ValueError(f"--model-type {text!r}: expected NAME=FAMILY[/KIND] with FAMILY one of {list(FAMILIES)} "
                         f"and KIND one of {list(KINDS)}")
    return name.strip(), family, kind


class ModelLibrary:
    """The listing of one models folder; ``scan()`` refreshes it, reading only what changed."""

    def __init__(self, root, overrides=None):
        self.root = Path(root).expanduser().resolve() if root else None
        self.overrides = dict(overrides or {})  # name -> (family, kind)
        self.entries: dict[str, Entry] = {}
        self._cache = {}  # path -> ((mtime_ns, size), detected)
        self._lock = threading.Lock()
        self.truncated = False

    def _candidates(self):
        """(path, is_folder_model) under the root: bounded, hidden names and escaping links skipped."""
        found = []
        stack = [(self.root, 0)]
        while stack and len(found) < MAX_ENTRIES:
            folder, depth = stack.pop()
            try:
                children = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError:
                continue
            for child in children:
                if child.name.startswith(".") or ".tmp" in child.name:
                    continue
                path = Path(child.path)
                try:
                    real = path.resolve()
                    real.relative_to(self.root)  # a link out of the folder is not followed
                except (OSError, ValueError):
                    continue
                if child.is_dir():
                    if (path / "model_index.json").is_file():
                        found.append((path, True))
                    elif depth + 1 < MAX_DEPTH:
                        stack.append((path, depth + 1))
                elif path.suffix.lower() in WEIGHT_SUFFIXES:
                    found.append((path, False))
                if len(found) >= MAX_ENTRIES:
                    break
        self.truncated = len(found) >= MAX_ENTRIES
        if self.truncated:
            log.warning("models folder %s: only the first %d entries are listed", self.root, MAX_ENTRIES)
        return found

    def scan(self) -> dict:
        """Refresh the listing from the folder; return it (name -> Entry)."""
        if self.root is None or not self.root.is_dir():
            with self._lock:
                self.entries = {}
            return {}
        entries = {}
        for path, is_folder in self._candidates():
            rel = path.relative_to(self.root).as_posix()
            name = rel if is_folder else rel[: -len(path.suffix)]
            if len(rel) > MAX_NAME or not name or name in entries:
                name = rel
            if len(name) > MAX_NAME or name in entries:
                continue
            try:
                stat = path.stat()
            except OSError:
                continue
            if stat.st_size > MAX_FILE_BYTES:
                continue
            stamp = (stat.st_mtime_ns, stat.st_size)
            cached = self._cache.get(str(path))
            if cached and cached[0] == stamp:
                detected = cached[1]
            else:
                detected = detect_folder(path) if is_folder else detect_file(path)
                self._cache[str(path)] = (stamp, detected)
            entries[name] = self._entry(name, path, is_folder, stat.st_size, detected)
        with self._lock:
            self.entries = entries
        return entries

    def _entry(self, name, path, is_folder, size, detected) -> Entry:
        detected = dict(detected)
        family, kind = self.overrides.get(name, (None, None))
        entry = Entry(name=name, type=detected.pop("type"), path=str(path),
                      format="diffusers" if is_folder else path.suffix.lower().lstrip("."), size=size,
                      detected_family=detected.pop("family", None), detected_kind=detected.pop("kind", None),
                      architecture=detected.pop("architecture", None), note=detected.pop("note", ""),
                      extra=detected)
        entry.family = family or entry.detected_family
        entry.kind = kind or entry.detected_kind
        if entry.type == "checkpoint" and refusal(entry.kind):
            entry.note = entry.note or refusal(entry.kind)
        return entry

    def listing(self) -> dict:
        """The welcome's ``library``: entries by type (embedding and upscaler entries are listed for
        their loaders), plus the folder's bounds."""
        with self._lock:
            entries = list(self.entries.values())
        out = {t + "s": [e.public() for e in entries if e.type == t] for t in TYPES}
        out["unknown"] = [e.public() for e in entries if e.type == "unknown"]
        out["truncated"] = self.truncated
        out["folder"] = bool(self.root)
        return out

    def get(self, name: str, type_: str | None = None) -> Entry:
        """The entry called ``name`` (of ``type_``), or LibraryError naming what there is."""
        with self._lock:
            entry = self.entries.get(name)
        if entry is None or (type_ and entry.type != type_):
            raise LibraryError(f"{name!r} is not a {type_ or 'model'} in the models folder")
        path = Path(entry.path).resolve()
        if self.root is None or not path.is_relative_to(self.root):
            raise LibraryError(f"{name!r} is outside the models folder")
        return entry

    def names(self, type_: str) -> list:
        with self._lock:
            return [n for n, e in self.entries.items() if e.type == type_]
