"""LoRA: low-rank weight deltas from the models folder, one or more per job with a weight each.

Files in A1111/kohya or diffusers/peft layout are read by diffusers' ``lora_state_dict`` and
injected with peft (diffusers' LoRA backend) into each model's UNet and text encoder once; they
stay loaded (at most ``MAX_CACHED`` per model) and are switched per job. Around every stage
(``weights``, from the prompt encoding on) the job's adapters are active with its weights:

- unfused (default): peft adds ``w·s·B(A(x))`` to each wrapped layer's output; the base weights
  are never written;
- fused (``lora_fuse``): each wrapped layer's base weight gets ``Σ w·s·B·A`` for the job, from a
  copy kept aside, and the copy is put back on exit (bit-exact, unlike subtracting the delta).

On every exit the adapters are disabled, so the next job runs the base model exactly.
"""

from __future__ import annotations

import hashlib
import threading
import warnings
import weakref
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dream_addon.protocol import ProtocolError

from . import Technique

warnings.filterwarnings("ignore", "Adapter .* was active which is now deleted", UserWarning)  # peft, on eviction
MAX_CACHED = 8  # adapters kept loaded per model; the least recently used is deleted beyond that


@dataclass
class LoraTerm:
    """One LoRA of a job: its listed name, its file and its weight."""

    name: str
    weight: float
    path: str | None = None  # set by ``resolve`` from the models folder's listing


def resolve(req, library):
    """Give each of the request's LoRAs its file from the listing (names were checked at submit)."""
    from ..model_library import LibraryError

    for i, term in enumerate(req.loras):
        try:
            term.path = library.get(term.name, "lora").path
        except LibraryError as exc:
            raise ProtocolError("invalid_param", f"params.loras[{i}].name: {exc}", field=f"params.loras[{i}].name",
                                allowed=library.names("lora")) from None


def adapter_name(path: str) -> str:
    """A peft adapter name for one version of a file (its path, size and mtime)."""
    stat = Path(path).stat()
    digest = hashlib.blake2b(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode(), digest_size=6).hexdigest()
    return f"lora_{digest}"


_loaded = weakref.WeakKeyDictionary()  # unet -> OrderedDict(adapter name -> has a text-encoder part)
_lock = threading.Lock()


def _peft_names(module) -> set:
    return set(getattr(module, "peft_config", None) or {})


def load(c, term: LoraTerm, where: str) -> tuple[str, bool]:
    """Load ``term``'s file into model ``c`` unless it is there; (adapter name, has a text-encoder part)."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin
    from diffusers.loaders.lora_base import _load_lora_into_text_encoder

    name = adapter_name(term.path)
    with _lock, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # peft's notes on several adapters in one model
        cache = _loaded.setdefault(c.unet, OrderedDict())
        if name in cache:
            cache.move_to_end(name)
            return name, cache[name]
        try:
            state, alphas = StableDiffusionLoraLoaderMixin.lora_state_dict(term.path)
            unet_keys = [k for k in state if k.startswith("unet.")]
            text_keys = [k for k in state if k.startswith("text_encoder.")]
            if not unet_keys and not text_keys:
                raise ValueError("it holds no UNet or text-encoder LoRA weights")
            if unet_keys:
                c.unet.load_lora_adapter(state, prefix="unet", network_alphas=alphas, adapter_name=name)
                if name not in _peft_names(c.unet):
                    raise ValueError("none of its layers is in this model's UNet")
            if text_keys:
                _load_lora_into_text_encoder(state, alphas, c.text_encoder, prefix="text_encoder",
                                             adapter_name=name)
        except (ValueError, RuntimeError, KeyError, OSError) as exc:
            _forget(c, name)
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise ProtocolError("invalid_param", f"{where} {term.name!r} does not fit this model: {first}",
                                field=where) from None
        cache[name] = bool(text_keys)
        while len(cache) > MAX_CACHED:
            old, _ = cache.popitem(last=False)
            _forget(c, old)
        return name, cache[name]


def _forget(c, name: str):
    """Delete one adapter from a model's UNet and text encoder (wherever it got)."""
    if name in _peft_names(c.unet):
        c.unet.delete_adapters(name)
    if name in _peft_names(c.text_encoder):
        c.text_encoder.delete_adapter(name)


def unload_all(c):
    """Delete every LoRA this module loaded into model ``c``."""
    with _lock:
        for name in list(_loaded.pop(c.unet, {})):
            _forget(c, name)


def _lora_layers(module, names):
    from peft.tuners.lora import LoraLayer

    return [m for m in module.modules() if isinstance(m, LoraLayer) and any(n in m.lora_A for n in names)]


_depth = weakref.WeakKeyDictionary()  # unet -> how many ``active`` contexts hold it (the layout pass nests one)


@contextmanager
def active(c, terms, fuse: bool, where="params.loras"):
    """Model ``c`` with ``terms`` applied (unfused, or fused into its weights); restored on every exit.

    A context inside another on the same model (the layout pass runs the core again within the
    job) leaves the outer one's LoRAs as they are: applied once, taken off by the outer exit only."""
    if _depth.get(c.unet, 0):
        _depth[c.unet] += 1
        try:
            yield
        finally:
            _depth[c.unet] -= 1
        return
    _depth[c.unet] = 1
    try:
        with _applied(c, terms, fuse, where):
            yield
    finally:
        _depth[c.unet] = 0


@contextmanager
def _applied(c, terms, fuse: bool, where):
    from diffusers.loaders.lora_base import set_adapters_for_text_encoder
    from diffusers.utils.peft_utils import set_adapter_layers

    parts, saved = [], []  # (module, its adapter names); (weight, its copy) while fused
    try:  # a freshly loaded adapter is active at once: restore from the first load on
        loaded = [load(c, term, f"{where}[{i}].name") for i, term in enumerate(terms)]
        unet_names = [(n, t.weight) for (n, _), t in zip(loaded, terms) if n in _peft_names(c.unet)]
        text_names = [(n, t.weight) for (n, te), t in zip(loaded, terms) if te]
        if unet_names:
            c.unet.set_adapters([n for n, _ in unet_names], [w for _, w in unet_names])
            parts.append((c.unet, [n for n, _ in unet_names]))
        if text_names:
            set_adapters_for_text_encoder([n for n, _ in text_names], c.text_encoder, [w for _, w in text_names])
            parts.append((c.text_encoder, [n for n, _ in text_names]))
        for module, names in parts:
            set_adapter_layers(module, enabled=True)
            if fuse:
                for layer in _lora_layers(module, names):
                    weight = layer.get_base_layer().weight
                    saved.append((weight, weight.detach().clone()))
                    delta = sum(layer.get_delta_weight(n) for n in names if n in layer.lora_A and
                                n in layer.active_adapters)
                    weight.data += delta.to(weight.dtype)
                set_adapter_layers(module, enabled=False)  # the deltas are in the weights now
        yield
    finally:
        for weight, original in saved:
            weight.data.copy_(original)
        for module in (c.unet, c.text_encoder):
            if _peft_names(module):
                set_adapter_layers(module, enabled=False)


class Lora(Technique):
    name = "lora"
    fields = ("loras", "lora_fuse")

    def request(self, params, arrays):
        if "loras" not in params:
            return {}
        return {"loras": [LoraTerm(t["name"], t["weight"]) for t in params["loras"] or []],
                "lora_fuse": params["lora_fuse"]}

    def applies(self, c, req):
        return bool(req.loras)

    def weights(self, run):
        return held([m for m, _ in run.members], run.req)


@contextmanager
def held(models, req):
    """Every model of a job (an ensemble's too) with the request's LoRAs, for as long as the context
    lasts: the runner holds them around a whole walk, whose prompt embeddings are made before its
    frames' core runs (which then find them applied)."""
    from contextlib import ExitStack

    with ExitStack() as stack:
        if req.loras:
            seen = set()
            for m in models:
                if id(m.unet) not in seen:
                    seen.add(id(m.unet))
                    stack.enter_context(active(m, req.loras, req.lora_fuse))
        yield


TECHNIQUE = Lora()
