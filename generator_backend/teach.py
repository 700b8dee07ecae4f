"""Teach a concept: textual inversion ("An Image is Worth One Word", Gal et al. 2022).

A new word's vectors are the only trained parameters: the UNet, VAE and text encoder stay
frozen, and the word's rows enter the text encoder through ``ConceptRows``, a stand-in for its
token embedding that leaves every other token's row as it was. Each step noises one of the
images at a random timestep and moves the vectors so that the UNet, reading a prompt with the
word, predicts that noise (the model's own training objective).

Every step's draws (image, flip, timestep, noise, prompt template) come from a stream of its own
(core.stream_seed(seed, "teach:<step>")), and a checkpoint holds the vectors and the optimiser's
state: a job resumed from a checkpoint ends exactly where an uninterrupted one would.
"""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from .core import GenerationRequest, encode_image, encode_prompt, generate, stream_generator
from dream_addon.protocol import ProtocolError

from .embeddings import tokens_of

KIND = "teach_concept"
FIELDS = ("word", "initializer", "train_steps", "learning_rate", "vectors", "preview_every")  # the kind's own
TEMPLATES = ("{}", "{} texture", "seamless {}", "{} pattern")
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


def check_word(c, settings: TeachSettings):
    """What only the model can tell: one text encoder, a word it does not know, an initializer it does;
    the initializer's token ids."""
    from .sdxl import is_xl

    def refuse(field, message):
        return ProtocolError("invalid_param", message, field=f"params.{field}")

    if is_xl(c):
        raise refuse("model", "teaching needs a model with one text encoder (SD 1.x/2.x); SDXL is not taught yet")
    tokenizer = c.tokenizer
    if settings.word in tokenizer.get_vocab():
        raise refuse("word", f"{settings.word!r} is already a word of the model's tokenizer: choose another word")
    loaded = [t for t in tokens_of(settings.word, 75) if t in tokenizer.added_tokens_encoder]
    if loaded and len(loaded) != settings.vectors:
        raise refuse("vectors", f"{settings.word!r} is loaded with {len(loaded)} vectors: teach it with "
                     f"vectors={len(loaded)}, or choose another word")
    ids = tokenizer(settings.initializer, add_special_tokens=False).input_ids
    if not settings.initializer.strip() or not ids:
        raise refuse("initializer", "the initializer must be a word the model knows (e.g. 'texture')")
    return ids


@contextmanager
def concept_encoder(c, settings: TeachSettings, rows: torch.Tensor):
    """(components reading the word, the ConceptRows) while teaching; the model is restored on exit."""
    tokenizer = copy.deepcopy(c.tokenizer)
    tokens = tokens_of(settings.word, settings.vectors)
    tokenizer.add_tokens([t for t in tokens if t not in tokenizer.added_tokens_encoder])
    base = c.text_encoder.get_input_embeddings()
    concept = ConceptRows(base, tokenizer.convert_tokens_to_ids(tokens), rows)
    c.text_encoder.set_input_embeddings(concept)
    try:
        yield replace(c, tokenizer=tokenizer), concept
    finally:
        c.text_encoder.set_input_embeddings(base)


def initial_rows(c, settings: TeachSettings, initializer_ids) -> torch.Tensor:
    """An initializer of as many tokens as the word has vectors gives each vector its token's row
    (the word starts as that phrase: "blue checker" for two vectors); otherwise every vector starts
    as the mean of the initializer's rows."""
    weight = c.text_encoder.get_input_embeddings().weight
    rows = weight[initializer_ids].float().detach().cpu()
    if len(initializer_ids) == settings.vectors:
        return rows.clone()
    return rows.mean(0).expand(settings.vectors, -1).clone()


def training_schedule(c):
    """The noise schedule the model was trained with (a DDPM scheduler from its config)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(c.scheduler.config)


class Teacher:
    """One teaching job's state: images' latents, the vectors, the optimiser, the step reached."""

    def __init__(self, c, settings: TeachSettings, images, checkpoint=None):
        self.c, self.settings = c, settings
        initializer_ids = check_word(c, settings)
        with torch.no_grad():
            self.latents = [encode_image(c, image, None).float() for image in images]
            self.latents += [torch.flip(lat, dims=(3,)) for lat in self.latents]  # mirrored copies
        self.schedule = training_schedule(c)
        self.step = 0
        self.losses = []
        rows = initial_rows(c, settings, initializer_ids)
        if checkpoint is not None:
            rows, self.step, self.losses = checkpoint["rows"], int(checkpoint["step"]), list(checkpoint["losses"])
        self.rows = rows
        self._optimizer_state = checkpoint["optimizer"] if checkpoint is not None else None

    def checkpoint(self, concept, optimizer) -> dict:
        return {"rows": concept.rows.detach().cpu().clone(), "step": self.step, "losses": list(self.losses),
                "optimizer": optimizer.state_dict()}

    def loss(self, model, concept_c, step: int) -> torch.Tensor:
        """The denoising loss of step ``step``'s draws."""
        g = stream_generator(self.settings.seed, f"teach:{step}")
        count = len(self.latents) // 2
        index = int(torch.randint(count, (1,), generator=g)) + count * int(torch.randint(2, (1,), generator=g))
        t = torch.randint(self.schedule.config.num_train_timesteps, (1,), generator=g)
        template = TEMPLATES[int(torch.randint(len(TEMPLATES), (1,), generator=g))]
        latents = self.latents[index]
        noise = torch.randn(latents.shape, generator=g)
        noisy = self.schedule.add_noise(latents, noise, t)
        c = self.c
        states = encode_prompt(concept_c, template.format(self.settings.word))
        prediction = model(noisy.to(c.device, c.dtype), t.to(c.device), encoder_hidden_states=states).sample
        target = noise if self.schedule.config.prediction_type == "epsilon" else \
            self.schedule.get_velocity(latents, noise, t)
        return F.mse_loss(prediction.float(), target.to(prediction.device).float())

    def preview(self, concept_c) -> torch.Tensor:
        s = self.settings
        return generate(concept_c, GenerationRequest(prompt=s.word, negative_prompt="", seed=s.seed,
                                                     steps=PREVIEW_STEPS, width=s.width, height=s.height))

    def run(self, on_step, on_preview, on_checkpoint):
        """Teach from ``self.step`` to the last step; return (vectors (n, d), the last preview).

        ``on_step(step, loss)`` may raise core.Cancelled: a checkpoint is handed to ``on_checkpoint``
        first. Previews every ``preview_every`` steps and at the end go to ``on_preview(step, image)``."""
        s = self.settings
        with concept_encoder(self.c, s, self.rows) as (concept_c, concept):
            optimizer = torch.optim.Adam([concept.rows], lr=s.learning_rate)
            if self._optimizer_state is not None:
                optimizer.load_state_dict(self._optimizer_state)
            image = None
            while self.step < s.steps:
                with torch.enable_grad():
                    loss = self.loss(self.c.unet, concept_c, self.step)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                optimizer.step()
                self.step += 1
                self.losses.append(float(loss.detach()))
                try:
                    on_step(self.step, self.losses[-1])
                except BaseException:
                    on_checkpoint(self.checkpoint(concept, optimizer))
                    raise
                if self.step % CHECKPOINT_EVERY == 0:
                    on_checkpoint(self.checkpoint(concept, optimizer))
                if s.preview_every and self.step % s.preview_every == 0 and self.step < s.steps:
                    on_preview(self.step, self.preview(concept_c))
            image = self.preview(concept_c)
            on_preview(self.step, image)
            return concept.rows.detach().cpu().clone(), image


def save_embedding(folder, word: str, rows: torch.Tensor):
    """Write the word as an A1111-style safetensors embedding (``emb_params``), atomically."""
    import os

    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{word}.safetensors"
    tmp = folder / f".{word}.safetensors.tmp{os.getpid()}"
    save_file({"emb_params": rows.contiguous()}, str(tmp), metadata={"word": word, "made_by": "dream teach_concept"})
    os.replace(tmp, path)
    return path


class Timer:
    """Remaining-time estimate over the steps run in this session."""

    def __init__(self, first_step: int):
        self.start, self.first = time.perf_counter(), first_step

    def eta(self, step: int, total: int) -> float:
        done = max(step - self.first, 1)
        return (time.perf_counter() - self.start) / done * (total - step)
