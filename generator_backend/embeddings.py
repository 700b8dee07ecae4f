"""Textual-inversion embeddings: read from files, added to a model's tokenizers and text encoders.

Files (in the models folder's ``embeddings/``; the file name is the word, lower-cased):

- A1111 ``.pt`` (``string_to_param: {"*": (n, d)}``) and ``.safetensors`` (``emb_params: (n, d)``);
- diffusers ``.bin`` / ``.safetensors`` (``{token: (d,) or (n, d)}``, ``learned_embeds``);
- SDXL: ``clip_l: (n, 768)`` and ``clip_g: (n, 1280)``, one per text encoder.

``.pt`` and ``.bin`` are pickles: they are read with ``torch.load(weights_only=True)``, which
builds tensors, dicts and plain values only (never runs code from the file).

A word of n vectors becomes the tokens ``word, word_1, .., word_{n-1}``, as diffusers'
``load_textual_inversion`` adds them; the core's prompt encoding expands the word into them
(core.encode_prompt). Only the new tokens' rows are written: every other prompt encodes exactly
as before.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from dream_addon.protocol import CONCEPT_WORD

log = logging.getLogger("generator_backend.embeddings")

SUFFIXES = (".pt", ".bin", ".safetensors")
PICKLES = (".pt", ".bin")
FOLDER = "embeddings"  # inside the models folder
WORD = re.compile(CONCEPT_WORD)
MAX_VECTORS = 75  # a CLIP prompt holds 75 tokens
MAX_FILE_BYTES = 64 << 20  # real embeddings are a few KiB to a few hundred KiB


class EmbeddingError(ValueError):
    """A file that is no embedding, or one that does not fit the model."""


def word_of(path) -> str:
    """The prompt word of an embedding file: its name without the suffix, lower-cased."""
    word = Path(path).stem.lower()
    if not WORD.fullmatch(word):
        raise EmbeddingError(f"{Path(path).name}: the file name is the prompt word, so it must be 1..64 letters, "
                             "digits, '-' or '_', starting with a letter or digit")
    return word


def read_file(path) -> dict:
    """The raw contents of an embedding file; pickles through a weights-only load."""
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise EmbeddingError(f"{path.name}: an embedding file ends in {', '.join(SUFFIXES)}")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise EmbeddingError(f"{path.name}: {path.stat().st_size} bytes is more than an embedding "
                             f"({MAX_FILE_BYTES} at most)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle with code in it, a truncated file, not a tensor file at all
        raise EmbeddingError(f"{path.name} could not be read as an embedding: {str(exc).splitlines()[0][:200]}") \
            from None


def vectors_of(data) -> dict:
    """{"clip_l": (n, d), "clip_g": (n, d)} (SDXL) or {"": (n, d)} (one text encoder) from a file's contents."""
    if not isinstance(data, dict):
        raise EmbeddingError("an embedding file holds a dictionary of tensors")
    if "clip_l" in data or "clip_g" in data:
        found = {k: data[k] for k in ("clip_l", "clip_g") if k in data}
        if len(found) != 2:
            raise EmbeddingError("an SDXL embedding needs both clip_l and clip_g")
    elif "string_to_param" in data:  # A1111 .pt
        params = data["string_to_param"]
        if not isinstance(params, dict) or len(params) != 1:
            raise EmbeddingError("string_to_param must hold one tensor")
        found = {"": next(iter(params.values()))}
    elif "emb_params" in data:  # A1111 .safetensors
        found = {"": data["emb_params"]}
    elif len(data) == 1:  # diffusers: {token: vectors}
        found = {"": next(iter(data.values()))}
    else:
        raise EmbeddingError(f"not an embedding: expected string_to_param, emb_params, clip_l/clip_g or one "
                             f"token's tensor, found keys {sorted(map(str, data))[:6]}")
    out = {}
    for key, tensor in found.items():
        if not isinstance(tensor, torch.Tensor) or tensor.dim() not in (1, 2) or not tensor.is_floating_point():
            raise EmbeddingError(f"{key or 'the embedding'} must be a float tensor of shape (vectors, width)")
        tensor = tensor.detach().float().reshape(-1, tensor.shape[-1])
        if not 1 <= tensor.shape[0] <= MAX_VECTORS or not torch.isfinite(tensor).all():
            raise EmbeddingError(f"{key or 'the embedding'} must have 1..{MAX_VECTORS} finite vectors")
        out[key] = tensor
    return out


def read_embedding(path) -> tuple[str, dict]:
    """(word, vectors by text encoder) of one embedding file."""
    return word_of(path), vectors_of(read_file(path))


def encoders(c, vectors: dict) -> list:
    """[(tokenizer, text encoder, (n, d) vectors)] for model ``c``: clip_l/clip_g for SDXL's two encoders,
    the single tensor for a one-encoder model; an embedding made for the other kind is refused."""
    from .sdxl import is_xl

    if is_xl(c):
        if "" in vectors:
            raise EmbeddingError("an SD 1.x/2.x embedding (one tensor) does not fit an SDXL model, which needs "
                                 "clip_l and clip_g")
        pairs = [(c.tokenizer, c.text_encoder, vectors["clip_l"]), (c.tokenizer_2, c.text_encoder_2,
                                                                    vectors["clip_g"])]
    else:
        if "" not in vectors:
            raise EmbeddingError("an SDXL embedding (clip_l, clip_g) does not fit a model with one text encoder")
        pairs = [(c.tokenizer, c.text_encoder, vectors[""])]
    for tokenizer, encoder, tensor in pairs:
        width = encoder.get_input_embeddings().weight.shape[1]
        if tensor.shape[1] != width:
            raise EmbeddingError(f"vectors of width {tensor.shape[1]} do not fit a text encoder of width {width}")
    return pairs


def tokens_of(word: str, count: int) -> list:
    """The tokens of a word of ``count`` vectors, named as diffusers names them."""
    return [word] + [f"{word}_{i}" for i in range(1, count)]


@torch.no_grad()
def add_word(c, word: str, vectors: dict):
    """Add (or update) ``word`` in model ``c``'s tokenizers and text encoders."""
    pairs = encoders(c, vectors)
    for tokenizer, encoder, tensor in pairs:
        tokens = tokens_of(word, tensor.shape[0])
        known = [t for t in tokens if t in tokenizer.added_tokens_encoder]
        if known and len(known) != len(tokens) or f"{word}_{len(tokens)}" in tokenizer.added_tokens_encoder:
            raise EmbeddingError(f"{word!r} is loaded with another number of vectors; restart the backend to "
                                 "load it with a new one")
        if not known:
            if word in tokenizer.get_vocab():
                raise EmbeddingError(f"{word!r} is already a word of the model's tokenizer: rename the file")
            tokenizer.add_tokens(tokens)
            encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        ids = tokenizer.convert_tokens_to_ids(tokens)
        weight = encoder.get_input_embeddings().weight
        weight[ids] = tensor.to(weight.device, weight.dtype)


def words(c) -> set:
    """The words added to model ``c`` (without their _1.. continuation tokens)."""
    added = set(c.tokenizer.added_tokens_encoder) - set(c.tokenizer.all_special_tokens)
    return {t for t in added if not re.fullmatch(r".+_\d+", t) or t.rsplit("_", 1)[0] not in added}


def embeddings_folder(models_dir) -> Path:
    """Where embeddings live: the models folder's ``embeddings/`` (``serve --models-dir``)."""
    from .tiny_model import default_models_dir

    return Path(models_dir or default_models_dir()) / FOLDER


class EmbeddingLibrary:
    """The embeddings in one folder, added to each model the first time it is used after a file
    appears or changes (so a new or re-taught word is usable from the next job on)."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self._applied = {}  # id(tokenizer) -> (tokenizer, {path: stamp})
        self.problems = {}  # (id(tokenizer), path) -> message, for files that could not be added

    def files(self) -> list:
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if p.suffix in SUFFIXES and p.is_file())

    def apply(self, c) -> list:
        """Add new or changed embeddings to model ``c``; return the messages of files newly found unusable."""
        _, applied = self._applied.setdefault(id(c.tokenizer), (c.tokenizer, {}))
        fresh = []
        for path in self.files():
            try:
                stamp = (path.stat().st_mtime_ns, path.stat().st_size)
            except OSError:
                continue
            if applied.get(path) == stamp:
                continue
            applied[path] = stamp
            try:
                add_word(c, *read_embedding(path))
                self.problems.pop((id(c.tokenizer), path), None)
            except EmbeddingError as exc:
                message = f"embedding {path.name} not loaded: {exc}"
                log.warning("%s", message)
                if self.problems.get((id(c.tokenizer), path)) != message:
                    fresh.append(message)
                self.problems[id(c.tokenizer), path] = message
        return fresh
