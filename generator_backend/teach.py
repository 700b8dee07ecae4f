"""Teach a concept: textual inversion ("An Image is Worth One Word", Gal et al. 2022).

A new word's vectors are the only trained parameters: the UNet, VAE and text encoder stay
frozen, and the word's rows enter the text encoder through ``ConceptRows``, a stand-in for its
token embedding that leaves every other token's row as it was. Each step noises one of the
images at a random timestep and moves the vectors so that the UNet, reading a prompt with the
word, predicts that noise (the model's own training objective).

Every step's draws (image, flip, timestep, noise, prompt template) come from a stream of its own
(core.stream_seed(seed, "teach:<step>")), and a checkpoint holds the vectors and the optimiser's
state: a job resumed from a checkpoint ends exactly where an uninterrupted one would.

An SDXL model has two text encoders: the word gets vectors in both (clip_l and clip_g, the SDXL
embedding format), taught together through the packed prompt tensor the UNet reads (sdxl.py).

The word starts from known words. With no initializer given, they are chosen for the images: the
known words whose own images (made by the model) are closest to the training images, and the word
gets one vector per token of them, so that it starts as exactly that phrase and an artist needs
only the images and a word.
"""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import torch

from .core import GenerationRequest, encode_image, encode_prompt, generate, stream_generator
from dream_addon.protocol import ProtocolError

from .embeddings import tokens_of

KIND = "teach_concept"
FIELDS = ("word", "initializer", "train_steps", "learning_rate", "vectors", "preview_every")  # the kind's own
TEMPLATES = ("{}", "{} texture", "seamless {}", "{} pattern")
# Words an automatic initializer is chosen from when the model ships no vocabulary.txt (prompt_words.py).
CANDIDATE_WORDS = tuple("""
red green blue yellow orange purple pink brown black white grey gold light dark
stripes checker dots bricks waves wood marble scales tiles grid spots rings zigzag noise
stone metal rust fabric leather sand grass water concrete moss
""".split())
CHOOSE_POOL = 4  # words a phrase is built from: half the closest in colour, half in pattern
CHOOSE_WORDS = 2  # words of a chosen initializer when the word's vectors are automatic (0): "green checker"
MAX_VECTORS = 8  # protocol.teach_fields' bound
CHOOSE_SEEDS, CHOOSE_STEPS = 1, 10  # images of a candidate phrase, and their denoising steps
PREVIEW_STEPS = 20  # denoising steps of a preview image of the word
CHECKPOINT = "concept_checkpoint.pt"  # in the job's folder
CHECKPOINT_EVERY = 50  # steps; a cancel also writes one


@dataclass(frozen=True)
class TeachSettings:
    word: str
    initializer: str
    steps: int
    learning_rate: float
    vectors: int
    preview_every: int
    seed: int
    width: int
    height: int


class ConceptRows(torch.nn.Module):
    """A token embedding whose rows for ``ids`` are the trainable ``rows``; all others are ``base``'s."""

    def __init__(self, base: torch.nn.Embedding, ids, rows: torch.Tensor):
        super().__init__()
        self.base = base
        self.register_buffer("ids", torch.tensor(ids, device=base.weight.device))
        self.rows = torch.nn.Parameter(rows.clone().to(base.weight.device, torch.float32))

    @property
    def weight(self):
        return self.base.weight

    def forward(self, input_ids):
        match = input_ids[..., None] == self.ids  # (..., n)
        out = self.base(input_ids.clamp(max=self.base.num_embeddings - 1))
        picked = match.to(self.rows.dtype) @ self.rows
        return torch.where(match.any(-1, keepdim=True), picked.to(out.dtype), out)


def text_encoders(c) -> list:
    """[(embedding key, tokenizer, text encoder)]: "" for one encoder, clip_l and clip_g for SDXL's two
    (the keys of an embedding file, embeddings.vectors_of)."""
    from .sdxl import is_xl

    if is_xl(c):
        return [("clip_l", c.tokenizer, c.text_encoder), ("clip_g", c.tokenizer_2, c.text_encoder_2)]
    return [("", c.tokenizer, c.text_encoder)]


def phrase_ids(tokenizer, phrase: str) -> list:
    return tokenizer(phrase, add_special_tokens=False).input_ids


def check_word(c, settings: TeachSettings) -> int:
    """What only the model can tell: a word it does not know, an initializer it does; the number
    of vectors the word is loaded with already (0: not loaded)."""

    def refuse(field, message):
        return ProtocolError("invalid_param", message, field=f"params.{field}")

    phrase, loaded = settings.initializer.strip(), []
    for key, tokenizer, _ in text_encoders(c):
        if settings.word in tokenizer.get_vocab():
            raise refuse("word", f"{settings.word!r} is already a word of the model's tokenizer: choose another word")
        loaded = [t for t in tokens_of(settings.word, 75) if t in tokenizer.added_tokens_encoder]
        if loaded and settings.vectors and len(loaded) != settings.vectors:
            raise refuse("vectors", f"{settings.word!r} is loaded with {len(loaded)} vectors: teach it with "
                         f"vectors={len(loaded)}, or choose another word")
    return len(loaded)


@contextmanager
def concept_encoder(c, settings: TeachSettings, rows: dict):
    """(components reading the word, {key: ConceptRows}) while teaching; the model is restored on exit."""
    tokens = tokens_of(settings.word, settings.vectors)
    changes, concepts, restore = {}, {}, []
    for (key, tokenizer, encoder), name in zip(text_encoders(c), ("tokenizer", "tokenizer_2")):
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.add_tokens([t for t in tokens if t not in tokenizer.added_tokens_encoder])
        base = encoder.get_input_embeddings()
        concepts[key] = ConceptRows(base, tokenizer.convert_tokens_to_ids(tokens), rows[key])
        encoder.set_input_embeddings(concepts[key])
        restore.append((encoder, base))
        changes[name] = tokenizer
    try:
        yield replace(c, **changes), concepts
    finally:
        for encoder, base in restore:
            encoder.set_input_embeddings(base)


def initial_rows(tokenizer, encoder, phrase: str, vectors: int) -> torch.Tensor:
    """An initializer of as many tokens as the word has vectors gives each vector its token's row
    (the word starts as that phrase, "blue checker" for two vectors); one of as many words gives
    each vector the mean of its word's rows; otherwise every vector starts as the mean of all."""
    weight = encoder.get_input_embeddings().weight.float().detach().cpu()
    ids, words = phrase_ids(tokenizer, phrase), phrase.split()
    if len(ids) == vectors:
        return weight[ids].clone()
    if len(words) == vectors:
        return torch.stack([weight[phrase_ids(tokenizer, w)].mean(0) for w in words])
    return weight[ids].mean(0).expand(vectors, -1).clone()


def vector_count(c, settings: TeachSettings, phrase: str, loaded: int) -> int:
    """The word's vectors: as set; else as it is loaded; else one per token of the initializer
    (so it starts as exactly that phrase), or one per word where that is more than MAX_VECTORS."""
    tokens = len(phrase_ids(c.tokenizer, phrase))
    return settings.vectors or loaded or (tokens if tokens <= MAX_VECTORS else min(len(phrase.split()), MAX_VECTORS))


def training_schedule(c):
    """The noise schedule the model was trained with (a DDPM scheduler from its config)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(c.scheduler.config)


def unet_target(schedule, latents, noise, t):
    return noise if schedule.config.prediction_type == "epsilon" else schedule.get_velocity(latents, noise, t)


def denoising_loss(c, schedule, settings, states, latents, noise, t, reduce=True):
    """The model's training loss of noisy ``latents`` under prompt ``states`` (SD or packed SDXL rows)."""
    from .sdxl import unet_inputs

    noisy = schedule.add_noise(latents, noise, t)
    states = states.expand(latents.shape[0], *states.shape[1:])
    prediction = c.unet(noisy.to(c.device, c.dtype), t.to(c.device), **unet_inputs(c, states, settings)).sample
    error = (prediction.float() - unet_target(schedule, latents, noise, t).to(prediction.device).float()) ** 2
    return error.mean() if reduce else error.flatten(1).mean(1)


def image_features(image) -> np.ndarray:
    """An (H, W, 3) image in [0, 1] as mean RGB and pattern features (pocket_eval.features: power
    spectrum and grey levels, colour-blind); L1 distances between these compare textures."""
    from .pocket_eval import features

    image = np.asarray(image, dtype=np.float64)
    return np.concatenate([image.reshape(-1, 3).mean(0), features(image)])


@torch.no_grad()
def choose_initializer(c, settings: TeachSettings, images, vocabulary=None, on_image=None) -> str:
    """The known words whose images are closest to the training images: the words whose own images
    come closest in colour and those closest in pattern (image_features' two parts, L1), then the
    closest of the phrases pairing one of each, either way round, grown a word before or after
    while the word has more vectors. The candidates are the model's ``vocabulary`` where it ships
    one (a word it never saw means nothing to it), else CANDIDATE_WORDS. (Scoring words by the
    model's denoising loss on the images was tried: on the pocket model neutral words such as
    "seamless" won for every image set.) ``on_image(made, planned)`` runs after every denoising step
    of these images and may raise core.Cancelled (``planned`` counts the single words' images)."""
    words = sorted(vocabulary) if vocabulary else list(CANDIDATE_WORDS)
    planned, made_count = len(words) * CHOOSE_SEEDS, [0]

    def step(*_):
        if on_image is not None:
            on_image(made_count[0], planned)
    count = settings.vectors or CHOOSE_WORDS
    target = np.mean([image_features(i) for i in images], axis=0)
    scores = {}

    def fits(phrase):  # an automatic word has a vector per token of its initializer: at most MAX_VECTORS
        return bool(settings.vectors) or len(phrase_ids(c.tokenizer, " ".join(phrase))) <= MAX_VECTORS

    def parts(phrase):
        """(colour distance, pattern distance) of the phrase's images to the training images."""
        phrase = " ".join(phrase) if isinstance(phrase, list) else phrase
        if phrase not in scores:
            made = [generate(c, GenerationRequest(prompt=phrase, negative_prompt="", seed=settings.seed + k,
                                                  steps=CHOOSE_STEPS, width=settings.width, height=settings.height),
                             step)
                    for k in range(CHOOSE_SEEDS)]
            made_count[0] += CHOOSE_SEEDS
            gaps = [np.abs(image_features(m.float().cpu()) - target) for m in made]
            scores[phrase] = (float(np.mean([g[:3].sum() for g in gaps])), float(np.mean([g[3:].sum() for g in gaps])))
        return scores[phrase]

    def total(phrase):
        return sum(parts(phrase))

    if count == 1:
        return min(words, key=total)
    by_colour = sorted(words, key=lambda w: parts(w)[0])[:CHOOSE_POOL // 2]
    by_pattern = sorted(words, key=lambda w: parts(w)[1])[:CHOOSE_POOL // 2]
    pairs = [p for a in by_colour for b in by_pattern if a != b for p in ([a, b], [b, a]) if fits(p)]
    phrase = min(pairs, key=total) if pairs else [min(words, key=total)]
    pool = list(dict.fromkeys(by_colour + by_pattern + sorted(words, key=total)[:CHOOSE_POOL]))
    while len(phrase) < count:
        options = [p for w in pool if w not in phrase for p in (phrase + [w], [w] + phrase) if fits(p)]
        if not options:
            break
        phrase = min(options, key=total)
    return " ".join(phrase)


class Teacher:
    """One teaching job's state: images' latents, the vectors, the optimiser, the step reached."""

    def __init__(self, c, settings: TeachSettings, images, checkpoint=None, vocabulary=None, on_choose=None):
        self.c = c
        loaded = check_word(c, settings)
        with torch.no_grad():
            self.latents = [encode_image(c, image, None).float() for image in images]
            self.latents += [torch.flip(lat, dims=(3,)) for lat in self.latents]  # mirrored copies
        self.schedule = training_schedule(c)
        self.step = 0
        self.losses = []
        self.initializer = settings.initializer.strip()
        self._optimizer_state = None
        if checkpoint is not None:
            rows, self.step, self.losses = checkpoint["rows"], int(checkpoint["step"]), list(checkpoint["losses"])
            self.rows = rows if isinstance(rows, dict) else {"": rows}  # one encoder's checkpoint of before SDXL
            self.initializer = checkpoint.get("initializer", self.initializer)
            self._optimizer_state = checkpoint["optimizer"]
            self.settings = replace(settings, vectors=next(iter(self.rows.values())).shape[0])
            return
        if not self.initializer:
            self.initializer = choose_initializer(c, settings, images, vocabulary, on_choose)
        self.settings = replace(settings, vectors=vector_count(c, settings, self.initializer, loaded))
        self.rows = {key: initial_rows(tokenizer, encoder, self.initializer, self.settings.vectors)
                     for key, tokenizer, encoder in text_encoders(c)}

    def checkpoint(self, concepts, optimizer) -> dict:
        return {"rows": {k: v.rows.detach().cpu().clone() for k, v in concepts.items()}, "step": self.step,
                "losses": list(self.losses), "optimizer": optimizer.state_dict(), "initializer": self.initializer}

    def loss(self, concept_c, step: int) -> torch.Tensor:
        """The denoising loss of step ``step``'s draws."""
        g = stream_generator(self.settings.seed, f"teach:{step}")
        count = len(self.latents) // 2
        index = int(torch.randint(count, (1,), generator=g)) + count * int(torch.randint(2, (1,), generator=g))
        t = torch.randint(self.schedule.config.num_train_timesteps, (1,), generator=g)
        template = TEMPLATES[int(torch.randint(len(TEMPLATES), (1,), generator=g))]
        latents = self.latents[index]
        noise = torch.randn(latents.shape, generator=g)
        states = encode_prompt(concept_c, template.format(self.settings.word))
        return denoising_loss(self.c, self.schedule, self.settings, states, latents, noise, t)

    def preview(self, concept_c) -> torch.Tensor:
        s = self.settings
        return generate(concept_c, GenerationRequest(prompt=s.word, negative_prompt="", seed=s.seed,
                                                     steps=PREVIEW_STEPS, width=s.width, height=s.height))

    def run(self, on_step, on_preview, on_checkpoint):
        """Teach from ``self.step`` to the last step; return ({key: vectors (n, d)}, the last preview).

        ``on_step(step, loss)`` may raise core.Cancelled: a checkpoint is handed to ``on_checkpoint``
        first. Previews every ``preview_every`` steps and at the end go to ``on_preview(step, image)``."""
        s = self.settings
        with concept_encoder(self.c, s, self.rows) as (concept_c, concepts):
            optimizer = torch.optim.Adam([concept.rows for concept in concepts.values()], lr=s.learning_rate)
            if self._optimizer_state is not None:
                optimizer.load_state_dict(self._optimizer_state)
            image = None
            while self.step < s.steps:
                with torch.enable_grad():
                    loss = self.loss(concept_c, self.step)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                optimizer.step()
                self.step += 1
                self.losses.append(float(loss.detach()))
                try:
                    on_step(self.step, self.losses[-1])
                except BaseException:
                    on_checkpoint(self.checkpoint(concepts, optimizer))
                    raise
                if self.step % CHECKPOINT_EVERY == 0:
                    on_checkpoint(self.checkpoint(concepts, optimizer))
                if s.preview_every and self.step % s.preview_every == 0 and self.step < s.steps:
                    on_preview(self.step, self.preview(concept_c))
            image = self.preview(concept_c)
            on_preview(self.step, image)
            return {k: v.rows.detach().cpu().clone() for k, v in concepts.items()}, image


def save_embedding(folder, word: str, vectors: dict):
    """Write the word as a safetensors embedding, atomically: A1111's ``emb_params`` for one text
    encoder, ``clip_l`` and ``clip_g`` for SDXL (the formats embeddings.vectors_of reads)."""
    import os

    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{word}.safetensors"
    tmp = folder / f".{word}.safetensors.tmp{os.getpid()}"
    tensors = {key or "emb_params": rows.contiguous() for key, rows in vectors.items()}
    save_file(tensors, str(tmp), metadata={"word": word, "made_by": "dream teach_concept"})
    os.replace(tmp, path)
    return path


class Timer:
    """Remaining-time estimate over the steps run in this session."""

    def __init__(self, first_step: int):
        self.start, self.first = time.perf_counter(), first_step

    def eta(self, step: int, total: int) -> float:
        done = max(step - self.first, 1)
        return (time.perf_counter() - self.start) / done * (total - step)
