"""The denoising core: named stages around one denoiser, that every technique plugs into.

With no technique active it reproduces diffusers' StableDiffusionPipeline exactly (same
model, seed, scheduler and settings). ``generate`` runs the stages top to bottom:

    1. encode prompts → 2. timesteps → 3. starting latents → 4. denoise (the denoiser, then
    the scheduler step, then after-step) → 5. decode (and paste back)

The denoiser maps (latents, t) to the combined noise prediction: every model's UNet on all rows
(negative and prompts, frames, the rows and channels techniques add), guidance, prompt and model
ensembles, in the spirit of k-diffusion's ``model(x, sigma)`` wrappers. Samplers stay diffusers
schedulers. Techniques (generator_backend/techniques/) contribute to the stages they change;
docs/architecture.md describes the whole shape.
"""

from __future__ import annotations

import hashlib
import inspect
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import torch
from diffusers.loaders.textual_inversion import TextualInversionLoaderMixin

from dream_addon import protocol

from .encoding import linear_to_srgb, srgb_to_linear, to_rgba  # noqa: F401  (importable from the core, as before)
from .schedulers import make_scheduler
from .sdxl import encode_prompt_xl, is_xl, unet_inputs, zero_negative


@dataclass
class Components:
    """The model parts the loop needs, already on their device."""

    unet: object
    vae: object
    text_encoder: object
    tokenizer: object
    scheduler: object  # the model's own scheduler; only its config is used
    device: torch.device
    dtype: torch.dtype
    text_encoder_2: object = None  # SDXL (sdxl.py): the second text encoder, with projection
    tokenizer_2: object = None
    zero_empty_negative: bool = False  # SDXL's force_zeros_for_empty_prompt

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @classmethod
    def from_pipeline(cls, pipe, device, dtype):
        return cls(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler,
                   torch.device(device), dtype, getattr(pipe, "text_encoder_2", None),
                   getattr(pipe, "tokenizer_2", None),
                   bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False)))


@dataclass
class PromptTerm:
    """One prompt of an ensemble: its weight and, optionally, a guidance scale of its own."""

    text: str
    weight: float = 1.0
    guidance: float | None = None


def _default(name: str, fields: dict):
    """A parameter's default, from the protocol's Field table (one definition of each parameter)."""
    return fields[name].default


_TXT2IMG, _IMG2IMG = protocol.txt2img_fields(), protocol.img2img_fields()
_INPAINT = protocol.inpaint_fields()


@dataclass
class GenerationRequest:
    """What the core needs of one job; defaults are the protocol's."""

    prompt: str = _default("prompt", _TXT2IMG)
    negative_prompt: str = _default("negative_prompt", _TXT2IMG)
    seed: int = _default("seed", _TXT2IMG)
    steps: int = _default("steps", _TXT2IMG)
    guidance: float = _default("guidance", _TXT2IMG)
    width: int = _default("width", _TXT2IMG)
    height: int = _default("height", _TXT2IMG)
    scheduler: str = _default("scheduler", _TXT2IMG)
    prompts: list = field(default_factory=list)  # PromptTerms; empty: just ``prompt``
    ensemble_mode: str = _default("ensemble_mode", _TXT2IMG)  # "noise" or "embedding"
    init_image: torch.Tensor | None = None  # img2img / inpainting: (H, W, 3) in [0, 1]
    strength: float = _default("strength", _IMG2IMG)  # inpainting's own default (1.0) comes with its kind
    mask: torch.Tensor | None = None  # inpainting: (H, W) in [0, 1], 1 = repaint
    feather: float = _default("feather", _INPAINT)  # pixels of soft edge when pasting the original back
    tile_axes: str = _default("seamless", _TXT2IMG)  # seamless tiling: "", "x", "y" or "xy"
    infusion_images: list = field(default_factory=list)  # (H, W, 3) tensors in [0, 1]
    infusion_weights: dict = field(default_factory=dict)  # layer name -> weight
    infusion_decay: float = _default("infusion_decay", _TXT2IMG)  # the weights are multiplied by decay**step
    infusion_cond_only: bool = _default("infusion_cond_only", _TXT2IMG)
    layout: str = _default("layout", _TXT2IMG)  # text-to-image: "on", "off", or "auto"
    # Frames generated together (walks): per-frame starting noise (B, C, h, w) of unit variance,
    # and per-frame conditional text embeddings (B, tokens, dim) in place of the prompts.
    frame_noise: torch.Tensor | None = None
    frame_embeds: torch.Tensor | None = None
    walk: object = None  # a walk job's WalkSettings (techniques/walk.py)
    loras: list = field(default_factory=list)  # techniques/lora.py LoraTerms: files from the models folder
    lora_fuse: bool = _default("lora_fuse", _TXT2IMG)
    tile_images: torch.Tensor | None = None  # tiled jobs: (B, H, W, 3) in [0, 1], one init image per frame

    @property
    def batch(self) -> int:
        return self.frame_noise.shape[0] if self.frame_noise is not None else 1

    @property
    def frames(self) -> bool:
        """A batch of frames: ``generate`` returns (B, H, W, 3)."""
        return self.frame_noise is not None

    def terms(self):
        return self.prompts or [PromptTerm(self.prompt)]


# Noise streams, one per purpose, all derived from the job's seed. The main stream is the seed
# itself (the order of its draws follows diffusers' pipelines, which stay our oracle). The layout
# pass keeps the offset it was measured with (docs/pocket.md); the others are hashed, so no two
# purposes of one job, nor of neighbouring seeds, draw the same noise.
LAYOUT_SEED_OFFSET = 1_000_003
# The layout pass only has to fix the lattice the main pass starts from (a faint 0.068·x₀ under the
# noise), and its small UNet calls cost more than their pixels on a CPU: it runs this share of the
# job's steps (benchmarks/bench_pocket.py measures time and quality).
LAYOUT_STEP_FRACTION = 0.5


def stream_seed(seed: int, purpose: str) -> int:
    """The seed of one purpose's noise stream ("main", "layout", "infusion", "circular", ...)."""
    if purpose == "main":
        return seed
    if purpose == "layout":
        return (seed + LAYOUT_SEED_OFFSET) % 2**32
    digest = hashlib.blake2b(f"{purpose}:{seed}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 2**32


def stream_generator(seed: int, purpose: str) -> torch.Generator:
    """A CPU generator for one purpose's noise, so a seed means the same noise on every device."""
    return torch.Generator(device="cpu").manual_seed(stream_seed(seed, purpose))


def tiled(tensor: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Repeat a seamless (..., h, w) image or latent to cover (height, width), cropping the last repeat."""
    reps = (-(-height // tensor.shape[-2]), -(-width // tensor.shape[-1]))
    return tensor.repeat(*[1] * (tensor.dim() - 2), *reps)[..., :height, :width]


class Cancelled(Exception):
    """Raised from a step callback to stop the loop between two steps."""


def encode_prompt(c: Components, text: str) -> torch.Tensor:
    """CLIP text embedding of one prompt, padded to the tokenizer's maximum length.

    Multi-vector textual-inversion tokens are expanded first, as diffusers' pipelines do.
    SDXL models get both encoders' states and the pooled embedding, packed (sdxl.py)."""
    if is_xl(c):
        return encode_prompt_xl(c, text)
    text = TextualInversionLoaderMixin._maybe_convert_prompt(None, text, c.tokenizer)  # uses no state
    tokens = c.tokenizer(text, padding="max_length", max_length=c.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt")
    mask = None
    device = c.text_encoder.device  # the device's, or the CPU's (memory.MemoryOptions.text_encoders_on_cpu)
    if getattr(c.text_encoder.config, "use_attention_mask", False):
        mask = tokens.attention_mask.to(device)
    return c.text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0].to(c.device, c.dtype)


def encode_negative(c: Components, text: str) -> torch.Tensor:
    """The negative prompt's embedding: all zeros where the model asks for that of an empty one."""
    if zero_negative(c, text):
        return torch.zeros_like(encode_prompt(c, text))
    return encode_prompt(c, text)


def step_kwargs(scheduler, generator) -> dict:
    """Extra scheduler.step arguments: eta=0 for DDIM, the generator for ancestral samplers."""
    params = inspect.signature(scheduler.step).parameters
    kwargs = {}
    if "eta" in params:
        kwargs["eta"] = 0.0
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs


def img2img_timesteps(scheduler, steps: int, strength: float):
    """The last ``strength`` part of the schedule, exactly as diffusers' img2img pipeline cuts it."""
    init_timestep = min(int(steps * strength), steps)
    t_start = max(steps - init_timestep, 0)
    timesteps = scheduler.timesteps[t_start * scheduler.order:]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(t_start * scheduler.order)
    return timesteps


def vae_latents(vae, pixels: torch.Tensor, generator=None) -> torch.Tensor:
    """Unscaled latents of (B, 3, H, W) pixels in [-1, 1]: sampled with ``generator``, or the mode if
    None; a VAE without a distribution (AutoencoderTiny, as the pocket model's) gives its latents."""
    encoded = vae.encode(pixels)
    dist = getattr(encoded, "latent_dist", None)
    if dist is None:
        return encoded.latents
    return dist.mode() if generator is None else dist.sample(generator)


def encode_image(c: Components, image: torch.Tensor, generator) -> torch.Tensor:
    """VAE latents of an (H, W, 3) image in [0, 1]: sampled with ``generator``, or the mode if None."""
    pixels = (image.permute(2, 0, 1)[None] * 2 - 1).to(c.device, c.vae.dtype)  # an upcast VAE: fp32
    return (vae_latents(c.vae, pixels, generator) * c.vae.config.scaling_factor).to(c.dtype)


def guided(noise_pred, terms, guidance: float, use_cfg: bool):
    """Combine one batched prediction: ε = ε_neg + Σ_k g_k·w_k·(ε_k − ε_neg) (prompt ensembling,
    "Compositional Visual Generation with Composable Diffusion Models", Liu et al. 2022)."""
    if not use_cfg:
        rows = noise_pred.chunk(len(terms))
        total = rows[0] * terms[0].weight  # × 1.0 is exact: K = 1 equals plain generation
        for row, term in zip(rows[1:], terms[1:]):
            total = total + row * term.weight
        return total
    rows = noise_pred.chunk(len(terms) + 1)
    uncond, total = rows[0], rows[0]
    for cond, term in zip(rows[1:], terms):
        scale = (term.guidance if term.guidance is not None else guidance) * term.weight
        total = total + scale * (cond - uncond)
    return total


class IncompatibleModels(ValueError):
    """Models that do not share a latent space cannot be ensembled."""


def ensemble_members(components) -> list:
    """[(Components, weight)] from one Components or a list; refuses models that differ in
    latent space (VAE scale and scaling factor, latent channels, UNet input) or prediction type."""
    members = [(components, 1.0)] if isinstance(components, Components) else list(components)
    base = members[0][0]

    def signature(c):
        return (c.vae_scale_factor, c.vae.config.scaling_factor, c.vae.config.latent_channels,
                c.unet.config.in_channels, c.unet.config.out_channels,
                c.scheduler.config.get("prediction_type", "epsilon"))

    for c, _ in members[1:]:
        if signature(c) != signature(base):
            raise IncompatibleModels(f"models do not share a latent space: {signature(base)} != {signature(c)} "
                                     "(vae factor, scaling factor, latent channels, unet in/out, prediction type)")
    return members


@contextmanager
def resident(unet, device, offload: bool):
    """With ``offload``, a UNet lives on the CPU and visits the device for its own call only."""
    if not offload:
        yield
        return
    unet.to(device)
    try:
        yield
    finally:
        unet.to("cpu")


@contextmanager
def offloaded(members, offload: bool):
    """Model ensembling short of memory: all UNets wait on the CPU, and go back afterwards."""
    if not offload:
        yield
        return
    for m, _ in members:
        m.unet.to("cpu")
    try:
        yield
    finally:
        for m, _ in members:
            m.unet.to(m.device)


@dataclass
class Run:
    """One job on its way through the stages: what each stage has made so far."""

    components: object  # as given to ``generate``: Components or [(Components, weight)]
    members: list  # [(Components, weight)]
    req: GenerationRequest
    techniques: list  # the registered techniques that apply to ``req``, in registry order
    on_step: object
    offload: bool
    generator: torch.Generator  # the main noise stream
    use_cfg: bool
    encoded: list = field(default_factory=list)  # per model: (embeds, terms, negative)
    rows: int = 0  # generated rows of one UNet batch: blocks × frames
    scheduler: object = None
    timesteps: torch.Tensor | None = None
    strength: float | None = None  # set by a technique that starts from an image: cut the schedule
    extra: dict = field(default_factory=dict)  # scheduler.step arguments
    done: int = 0  # steps already reported (the layout pass)
    image_latents: torch.Tensor | None = None
    noise: torch.Tensor | None = None
    latents: torch.Tensor | None = None
    state: dict = field(default_factory=dict)  # each technique's own inputs for this job, by its name

    @property
    def c(self) -> Components:
        """The first model: its VAE and scheduler config serve the whole ensemble."""
        return self.members[0][0]

    @property
    def shape(self) -> tuple:
        f = self.c.vae_scale_factor
        return (1, self.c.vae.config.latent_channels, self.req.height // f, self.req.width // f)

    @property
    def blocks(self) -> int:
        return self.rows // self.req.batch

    def each(self, stage: str, *args):
        """Call ``stage`` of every active technique, in registry order."""
        for technique in self.techniques:
            getattr(technique, stage)(self, *args)


def prompt_embeddings(run: Run, c: Components):
    """Stage 1 for one model: the batch of text embeddings and the terms its rows stand for."""
    req, use_cfg = run.req, run.use_cfg
    terms = req.terms()
    replaced = [r for r in (t.conditions(run, c) for t in run.techniques) if r is not None]
    if replaced:  # e.g. a walk: one conditional embedding per frame
        conds, terms = replaced[0], [PromptTerm("", 1.0)]
    else:
        conds = [encode_prompt(c, term.text) for term in terms]
        if req.ensemble_mode == "embedding" and len(terms) > 1:
            total_weight = sum(term.weight for term in terms)
            conds = [sum(term.weight * e for term, e in zip(terms, conds)) / total_weight]
            terms = [PromptTerm("", 1.0)]
    negative = encode_negative(c, req.negative_prompt) if use_cfg else None
    # Rows in blocks of one row per frame: [negative × B, prompt 1 × B, ..., prompt K × B].
    conds = [cond.expand(req.batch, -1, -1) for cond in conds]
    blocks = ([negative.expand(req.batch, -1, -1)] if use_cfg else []) + conds
    return torch.cat(blocks), terms, negative


def encode_prompts(run: Run):
    """1. Each model's own text encoder: [negative, prompt 1..K] rows; techniques may add rows."""
    run.encoded = [prompt_embeddings(run, m) for m, _ in run.members]
    run.rows = run.encoded[0][0].shape[0]
    run.each("encoded")


def set_timesteps(run: Run):
    """2. A scheduler of the job's own (no state shared between jobs); a technique that starts
    from an image sets ``run.strength``, and the schedule keeps its last ``strength`` part."""
    run.scheduler = make_scheduler(run.req.scheduler, run.c.scheduler)
    run.scheduler.set_timesteps(run.req.steps, device=run.c.device)
    run.timesteps = run.scheduler.timesteps
    run.each("schedule")
    if run.strength is not None:
        run.timesteps = img2img_timesteps(run.scheduler, run.req.steps, run.strength)
    run.extra = step_kwargs(run.scheduler, run.generator)
    run.each("prepare")


def starting_latents(run: Run):
    """3. Drawn on the CPU so a seed means the same noise on every device. The order of random
    draws follows diffusers' pipelines (image latents, noise, then the techniques' inputs)."""
    c = run.c
    run.each("before_noise")
    run.noise = next((n for n in (t.noise(run) for t in run.techniques) if n is not None), None)
    if run.noise is None:
        run.noise = torch.randn(run.shape, generator=run.generator, dtype=torch.float32)
    run.noise = run.noise.to(c.device, c.dtype)
    run.latents = run.noise * run.scheduler.init_noise_sigma
    run.each("start")


def denoiser(run: Run):
    """The combined noise prediction ε(latents, t) of step i: UNet (all rows of every model, with the
    rows and channels techniques add) → guidance and prompt ensemble → model weights Σ_m w_m ε_m."""
    req = run.req
    conditioning = [unet_inputs(m, embeds, req) for (m, _), (embeds, _, _) in zip(run.members, run.encoded)]

    def predict(latents, t, i):
        model_input = torch.cat([latents] * run.blocks) if run.blocks > 1 else latents
        for technique in run.techniques:
            model_input = technique.model_rows(run, model_input, t, i)
        model_input = run.scheduler.scale_model_input(model_input, t)
        for technique in run.techniques:
            model_input = technique.model_channels(run, model_input)
        noise_pred = None
        for (m, weight), (_, terms, _), inputs in zip(run.members, run.encoded, conditioning):
            with resident(m.unet, m.device, run.offload), ExitStack() as hooks:
                for technique in run.techniques:
                    hooks.enter_context(technique.unet_context(run, m.unet))
                out = m.unet(model_input, t, **inputs, return_dict=False)[0]
            prediction = guided(out[:run.rows], terms, req.guidance, run.use_cfg)
            if len(run.members) == 1:
                noise_pred = prediction
            else:  # ε = Σ_m w_m ε_m
                noise_pred = weight * prediction if noise_pred is None else noise_pred + weight * prediction
        return noise_pred

    return predict


def denoise(run: Run):
    """4. Each step: the denoiser, the scheduler step, then what techniques do after a step."""
    predict = denoiser(run)
    for i, t in enumerate(run.timesteps):
        noise_pred = predict(run.latents, t, i)
        run.latents = run.scheduler.step(noise_pred, t, run.latents, **run.extra, return_dict=False)[0]
        run.each("after_step", i)
        if run.on_step is not None:
            run.on_step(run.done + i + 1, run.done + len(run.timesteps), run.latents)


def decode(run: Run) -> torch.Tensor:
    """5. VAE decode to (B, H, W, 3) sRGB float in [0, 1]."""
    vae = run.c.vae
    latents = (run.latents / vae.config.scaling_factor).to(vae.dtype)  # an upcast VAE decodes in fp32
    image = vae.decode(latents, return_dict=False, generator=run.generator)[0]
    return (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float()


@torch.no_grad()
def generate(components, req: GenerationRequest, on_step=None, offload: bool = False) -> torch.Tensor:
    """Run the stages; return the decoded image as a (H, W, 3) float32 tensor in [0, 1],
    or (B, H, W, 3) for a batch of frames (``req.frame_noise``).

    ``components`` is one model's Components, or [(Components, weight)] for model ensembling.
    ``on_step(step, total, latents)`` is called after every denoising step; it may raise
    ``Cancelled`` to stop the job within one step. Hooks and padding changes are removed on
    every exit. ``offload`` runs ensembled models one after another on the device.
    """
    from .techniques import active  # the techniques import the core's stages

    members = ensemble_members(components)
    c = members[0][0]
    run = Run(components, members, req, active(c, req), on_step, offload,
              stream_generator(req.seed, "main"), req.guidance > 1.0 and c.unet.config.time_cond_proj_dim is None)
    with ExitStack() as weights:  # around every stage: weights a technique changes (LoRA), restored on exit
        for technique in run.techniques:
            weights.enter_context(technique.weights(run))
        encode_prompts(run)
        set_timesteps(run)
        with ExitStack() as contexts:
            contexts.enter_context(offloaded(members, offload))
            for technique in run.techniques:
                contexts.enter_context(technique.context(run))
            starting_latents(run)
            denoise(run)
            image = decode(run)
    for technique in run.techniques:
        image = technique.finish(run, image)
    return image if req.frames else image[0]


# Linear map from SD latents to RGB, a cheap preview that needs no VAE decode.
SD_LATENT_RGB = torch.tensor([
    [0.3512, 0.2297, 0.3227],
    [0.3250, 0.4974, 0.2350],
    [-0.2829, 0.1762, 0.2721],
    [-0.2120, -0.2616, -0.7177],
])


@torch.no_grad()
def latent_preview(latents: torch.Tensor, scale: int) -> torch.Tensor:
    """Approximate RGB of the first latent, upsampled ``scale``× by nearest neighbour: (H, W, 3)."""
    lat = latents[0].float()
    if lat.shape[0] == 4:
        rgb = torch.einsum("chw,cr->hwr", lat, SD_LATENT_RGB.to(lat.device))
        rgb = (rgb + 1) / 2
    else:  # unknown latent space: show the first channels, normalised
        rgb = lat[:3].permute(1, 2, 0)
        rgb = (rgb - rgb.amin()) / (rgb.amax() - rgb.amin() + 1e-6)
        if rgb.shape[-1] < 3:
            rgb = rgb[..., :1].expand(-1, -1, 3)
    rgb = rgb.clamp(0, 1)
    return rgb.repeat_interleave(scale, 0).repeat_interleave(scale, 1)


class StepTimer:
    """Running estimate of the remaining time of a job from its step durations."""

    def __init__(self):
        self.start = time.perf_counter()

    def eta(self, step: int, total: int) -> float:
        elapsed = time.perf_counter() - self.start
        return elapsed / max(step, 1) * (total - step)


# Kept importable from the core, as before (the layout technique lives in techniques/layout.py).
from .techniques.layout import layout_request, uses_layout_pass  # noqa: E402,F401
