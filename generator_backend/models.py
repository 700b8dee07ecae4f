"""Models: named sources (local diffusers folders or hub ids), loaded lazily and cached."""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

log = logging.getLogger("generator_backend.models")


class _TinyVaeTypeNote(logging.Filter):
    """diffusers' SD pipelines type their VAE as AutoencoderKL and warn at every load of an
    AutoencoderTiny (the pocket model's), which they run as any VAE: not worth a user's attention."""

    def filter(self, record):
        message = record.getMessage()
        return not (message.startswith("Expected types for vae:") and "AutoencoderTiny" in message)


logging.getLogger("diffusers.pipelines.pipeline_utils").addFilter(_TinyVaeTypeNote())

BUILTIN_MODELS = ("tiny", "tiny-b", "tiny-inpaint", "pocket",  # tiny*: built offline by tiny_model.py
                  "tiny-xl", "tiny-xl-b", "tiny-xl-inpaint")  # SDXL-shaped, by tiny_xl.py
POCKET_DIR = Path(__file__).resolve().parent / "pocket_model"  # the trained model shipped in the package


def pick_device(requested: str = "auto") -> str:
    """'auto' takes CUDA, then Apple MPS, then the CPU."""
    import torch

    if requested != "auto":
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def parse_model_spec(spec: str):
    """'NAME=SOURCE' or 'SOURCE' (named after its last path part or hub id)."""
    if "=" in spec:
        name, source = spec.split("=", 1)
    else:
        source = spec
        name = spec if spec in BUILTIN_MODELS else os.path.basename(os.path.normpath(spec)) or spec
    return name.strip(), source.strip()


class ModelLoadError(Exception):
    pass


def _hub_cached(repo_id: str):
    """The cache folder holding ``repo_id``'s model_index.json, or None (also for names that are no hub id)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "model_index.json")
    except Exception:  # not a valid repo id, or no hub library
        return None
    return found if isinstance(found, str) else None


def not_found_message(name: str, source: str, models_dir) -> str:
    """What was looked for, and how to fix it, for a model that is nowhere."""
    from huggingface_hub import constants

    folder = Path(source).expanduser().resolve()
    looked = [f"a local diffusers folder {folder}"
              + (" (it exists but has no model_index.json)" if folder.is_dir() else " (no such folder)")]
    if models_dir:
        looked.append(f"{Path(models_dir).resolve() / source} in --models-dir (no such folder)")
    looked.append(f"the Hugging Face hub id {source!r} (not in the cache {constants.HF_HUB_CACHE}, and it could "
                  "not be downloaded: offline, or no such repository)")
    return (f"model {name!r} was not found. Looked for: " + "; ".join(looked) + ". Fix: pass --model with the "
            "path of a diffusers folder (the one holding model_index.json), or a hub id once online so it is "
            "downloaded into the cache, or one of the built-in models " + ", ".join(BUILTIN_MODELS) + ".")


def is_xl_folder(source) -> bool:
    """A diffusers folder (or cached hub id) of an SDXL pipeline: it names a second text encoder."""
    index = Path(source).expanduser() / "model_index.json"
    found = str(index) if index.exists() else _hub_cached(str(source))
    try:
        return "text_encoder_2" in json.loads(Path(found).read_text()) if found else False
    except (OSError, ValueError):
        return False


def pipeline_class(source):
    """The diffusers pipeline that loads ``source``: SDXL's for SDXL folders, SD's otherwise."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if is_xl_folder(source) else StableDiffusionPipeline


class ModelManager:
    """Maps model names to sources; loads each on first use, on one device, and keeps it."""

    def __init__(self, specs, device="auto", models_dir=None, overrides=None, memory=None):
        from .model_library import ModelLibrary

        self.served = dict(parse_model_spec(s) for s in specs)  # the --model names, first the default
        if not self.served:
            raise ValueError("at least one --model is needed")
        self.sources = dict(self.served)
        self.default = next(iter(self.sources))
        self.device = pick_device(device)
        self.models_dir = models_dir
        self.memory = memory  # memory.MemoryOptions, or None for the defaults
        self.library = ModelLibrary(models_dir, overrides)  # the models folder's checkpoints, LoRAs, ...
        self._loaded = {}
        self._vocabularies = {}  # name -> the words a model was trained on, when it ships the list
        self._lock = threading.Lock()
        self._stamps = {}  # folder checkpoint -> (path, size, family, kind) when it was listed
        self.rescan()

    def rescan(self) -> dict:
        """Re-read the models folder: its checkpoints join the served names (a --model name wins);
        a checkpoint that changed or went is loaded afresh next time. Returns the listing."""
        entries = self.library.scan()
        files = {n: e.path for n, e in entries.items() if e.type == "checkpoint" and n not in self.served}
        stamps = {n: (e.path, e.size, e.family, e.kind) for n, e in entries.items() if n in files}
        # Without the load lock: a rescan never waits for a model that is loading.
        for name in list(self._loaded):
            if name not in self.served and stamps.get(name) != self._stamps.get(name):
                self._loaded.pop(name, None)
        self._stamps = stamps
        self.sources = {**self.served, **files}
        return self.library.listing()

    def refusal(self, name: str):
        """Why the models folder's checkpoint ``name`` cannot run (a depth model), or None."""
        from .model_library import refusal

        entry = self.library.entries.get(name) if name not in self.served else None
        return refusal(entry.kind) if entry is not None and entry.type == "checkpoint" else None

    def usable(self) -> list:
        """Every model name a job may ask for: the served ones and the folder's runnable checkpoints."""
        return [n for n in self.sources if self.refusal(n) is None]

    @property
    def dtype(self):
        import torch

        return torch.float32 if self.device == "cpu" else torch.float16

    def names(self):
        """The --model names (the models folder's checkpoints are in ``library``, and servable too)."""
        return list(self.served)

    def family(self, name: str):
        """A label shared by models with one latent space (ensembling needs that), read from
        the configs of a local folder without loading weights; None when unknown (hub ids)."""
        from .tiny_model import TINY_VARIANTS
        from .tiny_xl import TINY_XL_VARIANTS

        source = self.sources[name]
        if source in TINY_VARIANTS:
            return f"tiny/unet{TINY_VARIANTS[source].get('unet_in_channels', 4)}"
        if source in TINY_XL_VARIANTS:
            return f"tiny-xl/unet{TINY_XL_VARIANTS[source].get('unet_in_channels', 4)}"
        folder = POCKET_DIR if source == "pocket" else Path(source)
        entry = self.library.entries.get(name)
        if entry is not None and not folder.is_dir():  # a single file: its architecture's configs
            return self._file_family(entry)
        try:
            vae = json.loads((folder / "vae" / "config.json").read_text())
            unet = json.loads((folder / "unet" / "config.json").read_text())
            scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        except (OSError, ValueError):
            return None
        return (f"vae{2 ** (len(vae['block_out_channels']) - 1)}/{vae.get('scaling_factor', 0.18215)}/"
                f"lat{vae.get('latent_channels', 4)}/unet{unet.get('in_channels', 4)}/"
                f"{scheduler.get('prediction_type', 'epsilon')}")

    def native_size(self, name: str):
        """The side in pixels the model was trained at (its default size: SD 1.x 512, SDXL 1024), from
        its configs without loading weights; None when unknown (hub ids)."""
        from .tiny_xl import TINY_XL_VARIANTS

        source = self.sources[name]
        if source in BUILTIN_MODELS and source != "pocket":
            return 256  # the tiny models: a 32-latent UNet with a factor-8 VAE (tiny_model.py, tiny_xl.py)
        folder = POCKET_DIR if source == "pocket" else Path(source)
        try:
            vae = json.loads((folder / "vae" / "config.json").read_text())
            unet = json.loads((folder / "unet" / "config.json").read_text())
        except (OSError, ValueError):
            return None
        size = unet.get("sample_size", 64)
        return (size if isinstance(size, int) else size[0]) * 2 ** (len(vae["block_out_channels"]) - 1)

    def _file_family(self, entry):
        """family() of a single-file checkpoint, from its architecture's configs and its own channels."""
        from .single_file import PREDICTION, SHIPPED, SingleFileError, config_folder

        if entry.architecture is None:
            return None
        if entry.architecture in ("tiny", "tiny-xl") and entry.family == entry.detected_family:  # as the built-ins
            return f"{entry.architecture}/unet{entry.extra.get('in_channels', 4)}"
        try:
            folder = config_folder(entry.architecture, self.models_dir)
            vae = json.loads((folder / "vae" / "config.json").read_text())
            scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        except (OSError, ValueError, SingleFileError):
            return None
        prediction = PREDICTION.get(entry.family)
        if entry.architecture not in SHIPPED and entry.family == entry.detected_family:
            prediction = scheduler.get("prediction_type", "epsilon")
        return (f"vae{2 ** (len(vae['block_out_channels']) - 1)}/{vae.get('scaling_factor', 0.18215)}/"
                f"lat{vae.get('latent_channels', 4)}/unet{entry.extra.get('in_channels', 4)}/{prediction}")

    def detected(self, name: str) -> dict:
        """What a served model's folder says of it without loading weights (base family, kind), or {}."""
        from .model_library import detect_folder

        source = self.sources[name]
        folder = POCKET_DIR if source == "pocket" else Path(self.models_dir or "", source) \
            if source in BUILTIN_MODELS else Path(source)
        if not (folder / "model_index.json").is_file():
            return {}
        found = detect_folder(folder)
        return {k: v for k, v in (("base", found.get("family")), ("kind", found.get("kind"))) if v}

    def vocabulary(self, name: str = ""):
        """The loaded model's vocabulary.txt words (prompt_words.py), or None when it has none."""
        self.get(name)
        return self._vocabularies.get(self.resolve(name))

    def resolve(self, name: str) -> str:
        return name or self.default

    def get(self, name: str = ""):
        """Return the Components of ``name``, loading them on first use."""
        name = self.resolve(name)
        with self._lock:
            components = self._loaded.get(name)
            if components is None:
                components = self._loaded[name] = self._load(name)
            return components

    def _load(self, name):
        import torch
        from diffusers.utils import logging as dlogging

        from .core import Components
        from .prompt_words import read_vocabulary
        from .tiny_model import ensure_tiny_model
        from .tiny_xl import TINY_XL_VARIANTS, ensure_tiny_xl_model

        dlogging.disable_progress_bar()
        source = self.sources[name]
        if Path(source).suffix.lower() in (".safetensors", ".ckpt") and Path(source).is_file():
            return self._load_file(name, source)
        if source == "pocket":
            if not (POCKET_DIR / "model_index.json").exists():
                raise ModelLoadError(f"the pocket model is not in this installation ({POCKET_DIR})")
            source = str(POCKET_DIR)
        elif source in TINY_XL_VARIANTS:
            source = str(ensure_tiny_xl_model(self.models_dir, source))
        elif source in BUILTIN_MODELS:
            source = str(ensure_tiny_model(self.models_dir, source))
        elif not (Path(source).expanduser() / "model_index.json").exists():
            in_models_dir = Path(self.models_dir or "", source)
            if self.models_dir and (in_models_dir / "model_index.json").exists():
                source = str(in_models_dir)
        local = (Path(source).expanduser() / "model_index.json").exists()
        log.info("loading model %s from %s on %s", name, source, self.device)
        try:
            cls = pipeline_class(source)
            extra = {} if is_xl_folder(source) else dict(safety_checker=None, feature_extractor=None,
                                                         requires_safety_checker=False)
            pipe = cls.from_pretrained(source, dtype=self.dtype, **extra)
        except Exception as exc:  # any loader failure becomes one clear message
            log.debug("model %s failed to load", name, exc_info=True)
            if not local and _hub_cached(source) is None:
                raise ModelLoadError(not_found_message(name, self.sources[name], self.models_dir)) from None
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"model {name!r} was found at {source!r} but could not be loaded: "
                                 f"{first_line[:300]}") from None
        self._vocabularies[name] = read_vocabulary(source) if Path(source).is_dir() else None
        return self._ready(pipe)

    def _ready(self, pipe):
        """A loaded pipeline's Components, on the device, frozen."""
        import torch

        from .core import Components

        from .memory import MemoryOptions, configure

        pipe.to(self.device)
        for module in (pipe.unet, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
            if module is not None:
                module.eval().requires_grad_(False)
        return configure(Components.from_pipeline(pipe, torch.device(self.device), self.dtype),
                         self.memory or MemoryOptions())

    def _load_file(self, name, source):
        """A single-file checkpoint (single_file.py), with the models folder's family/kind override."""
        from .single_file import SingleFileError, load_pipeline

        entry = self.library.entries.get(name)
        family = entry.family if entry is not None and entry.family != entry.detected_family else None
        kind = entry.kind if entry is not None and entry.kind != entry.detected_kind else None
        log.info("loading model %s from the single file %s on %s", name, source, self.device)
        try:
            pipe, _ = load_pipeline(source, self.dtype, family, kind, self.models_dir)
        except SingleFileError as exc:
            raise ModelLoadError(f"model {name!r}: {exc}") from None
        except Exception as exc:  # any loader failure becomes one clear message
            log.debug("model %s failed to load", name, exc_info=True)
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"model {name!r} ({Path(source).name}) could not be loaded as a single-file "
                                 f"checkpoint: {first_line[:300]}") from None
        self._vocabularies[name] = None
        return self._ready(pipe)
