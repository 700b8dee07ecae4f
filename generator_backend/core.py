"""The denoising core: one loop that every technique runs through.

With no modifiers it reproduces diffusers' StableDiffusionPipeline exactly (same
model, seed, scheduler and settings). The stages read top to bottom:

    1. encode prompts → 2. timesteps (and strength) → 3. starting latents → 4. denoise
    (UNet → guidance → scheduler step) → 5. decode

Techniques are modifiers of these stages and combine freely in one request: prompt
ensembling (stage 1 and guidance), img2img (stages 2-3), inpainting (stages 3-5), seamless
tiling and infusion (context managers in modifiers.py) and model ensembling (stage 4).
"""

from __future__ import annotations

import inspect
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from diffusers.loaders.textual_inversion import TextualInversionLoaderMixin

from .modifiers import Infusion, feathered, seamless
from .schedulers import make_scheduler


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

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @classmethod
    def from_pipeline(cls, pipe, device, dtype):
        return cls(pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.scheduler,
                   torch.device(device), dtype)


@dataclass
class PromptTerm:
    """One prompt of an ensemble: its weight and, optionally, a guidance scale of its own."""

    text: str
    weight: float = 1.0
    guidance: float | None = None


@dataclass
class GenerationRequest:
    prompt: str = ""
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 20
    guidance: float = 7.5
    width: int = 512
    height: int = 512
    scheduler: str = "default"
    prompts: list = field(default_factory=list)  # PromptTerms; empty: just ``prompt``
    ensemble_mode: str = "noise"  # "noise": combine predictions; "embedding": average text embeddings
    init_image: torch.Tensor | None = None  # img2img / inpainting: (H, W, 3) in [0, 1]
    strength: float = 0.75
    mask: torch.Tensor | None = None  # inpainting: (H, W) in [0, 1], 1 = repaint
    feather: float = 0.0  # pixels of soft edge when pasting the original back
    tile_axes: str = ""  # seamless tiling: "", "x", "y" or "xy"
    infusion_images: list = field(default_factory=list)  # (H, W, 3) tensors in [0, 1]
    infusion_weights: dict = field(default_factory=dict)  # layer name -> weight
    infusion_decay: float = 1.0  # the weights are multiplied by decay**step
    infusion_cond_only: bool = False
    layout: str = "off"  # text-to-image: "on", "off", or "auto" (on from twice the model's native size)
    # Frames generated together (walks): per-frame starting noise (B, C, h, w) of unit variance,
    # and per-frame conditional text embeddings (B, tokens, dim) in place of the prompts.
    frame_noise: torch.Tensor | None = None
    frame_embeds: torch.Tensor | None = None

    @property
    def batch(self) -> int:
        return self.frame_noise.shape[0] if self.frame_noise is not None else 1

    def terms(self):
        return self.prompts or [PromptTerm(self.prompt)]


def uses_layout_pass(c: Components, req: GenerationRequest) -> bool:
    """Text-to-image only; "auto" turns it on where the canvas is at least twice the model's native
    size both ways, the sizes at which a lattice goes astray."""
    if req.layout == "off" or req.init_image is not None or req.frame_noise is not None:
        return False
    if req.layout == "on":
        return True
    native = c.unet.config.sample_size
    native_h, native_w = (native, native) if isinstance(native, int) else native
    f = c.vae_scale_factor
    return req.height >= 2 * native_h * f and req.width >= 2 * native_w * f


# The layout pass draws its noise from a seed of its own: with the job's seed, torch.randn's draws for
# the half size are the first values of the main pass's draws, and that correlation undid the layout.
LAYOUT_SEED_OFFSET = 1_000_003
# The layout pass only has to fix the lattice the main pass starts from (a faint 0.068·x₀ under the
# noise), and its small UNet calls cost more than their pixels on a CPU: it runs this share of the
# job's steps (benchmarks/bench_pocket.py measures time and quality).
LAYOUT_STEP_FRACTION = 0.5


def layout_request(c: Components, req: GenerationRequest) -> GenerationRequest:
    """The layout pass: the same prompts on a seamless canvas of half the size (rounded up to what
    the UNet can downsample), with a seed of its own, without infusion (its images have the full size)."""
    f = c.vae_scale_factor
    multiple = 2 ** (len(c.unet.config.block_out_channels) - 1)

    def half(pixels):
        latent = -(-(pixels // f) // 2)
        return -(-latent // multiple) * multiple * f

    return replace(req, width=half(req.width), height=half(req.height), tile_axes="xy", layout="off",
                   steps=max(1, round(req.steps * LAYOUT_STEP_FRACTION)),
                   seed=(req.seed + LAYOUT_SEED_OFFSET) % 2**32, infusion_images=[], infusion_weights={})


def tiled(tensor: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Repeat a seamless (..., h, w) image or latent to cover (height, width), cropping the last repeat."""
    reps = (-(-height // tensor.shape[-2]), -(-width // tensor.shape[-1]))
    return tensor.repeat(*[1] * (tensor.dim() - 2), *reps)[..., :height, :width]


class Cancelled(Exception):
    """Raised from a step callback to stop the loop between two steps."""


def encode_prompt(c: Components, text: str) -> torch.Tensor:
    """CLIP text embedding of one prompt, padded to the tokenizer's maximum length.

    Multi-vector textual-inversion tokens are expanded first, as diffusers' pipelines do."""
    text = TextualInversionLoaderMixin._maybe_convert_prompt(None, text, c.tokenizer)  # uses no state
    tokens = c.tokenizer(text, padding="max_length", max_length=c.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt")
    mask = None
    if getattr(c.text_encoder.config, "use_attention_mask", False):
        mask = tokens.attention_mask.to(c.device)
    return c.text_encoder(tokens.input_ids.to(c.device), attention_mask=mask)[0].to(c.dtype)


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


def encode_image(c: Components, image: torch.Tensor, generator) -> torch.Tensor:
    """VAE latents of an (H, W, 3) image in [0, 1]: sampled with ``generator``, or the mode if None."""
    pixels = (image.permute(2, 0, 1)[None] * 2 - 1).to(c.device, c.dtype)
    dist = c.vae.encode(pixels).latent_dist
    latents = dist.mode() if generator is None else dist.sample(generator)
    return latents * c.vae.config.scaling_factor


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


def prompt_embeddings(c: Components, req: GenerationRequest, use_cfg: bool):
    """Stage 1 for one model: the batch of text embeddings and the terms its rows stand for."""
    terms = req.terms()
    if req.frame_embeds is not None:  # a walk: one conditional embedding per frame
        conds, terms = [req.frame_embeds.to(c.device, c.dtype)], [PromptTerm("", 1.0)]
    else:
        conds = [encode_prompt(c, term.text) for term in terms]
        if req.ensemble_mode == "embedding" and len(terms) > 1:
            total_weight = sum(term.weight for term in terms)
            conds = [sum(term.weight * e for term, e in zip(terms, conds)) / total_weight]
            terms = [PromptTerm("", 1.0)]
    negative = encode_prompt(c, req.negative_prompt) if use_cfg or req.infusion_images else None
    # Rows in blocks of one row per frame: [negative × B, prompt 1 × B, ..., prompt K × B].
    conds = [cond.expand(req.batch, -1, -1) for cond in conds]
    blocks = ([negative.expand(req.batch, -1, -1)] if use_cfg else []) + conds
    return torch.cat(blocks), terms, negative


def inpaint_inputs(c: Components, req: GenerationRequest, generator):
    """Pixel mask (binarised at 0.5, as diffusers does), its latent-size version, and the
    masked image's latents (the 9-channel UNet's extra input)."""
    mask = (req.mask >= 0.5).float()
    f = c.vae_scale_factor
    latent_mask = F.interpolate(mask[None, None], size=(req.height // f, req.width // f)).to(c.device, c.dtype)
    # Masked pixels become 0 in the VAE's [-1, 1] range (mid grey), as diffusers feeds them.
    masked_image = torch.where(mask[..., None] < 0.5, req.init_image, torch.full_like(req.init_image, 0.5))
    return mask, latent_mask, encode_image(c, masked_image, generator)


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


@torch.no_grad()
def generate(components, req: GenerationRequest, on_step=None, offload: bool = False) -> torch.Tensor:
    """Run the denoising loop; return the decoded image as a (H, W, 3) float32 tensor in [0, 1],
    or (B, H, W, 3) for a batch of frames (``req.frame_noise``).

    ``components`` is one model's Components, or [(Components, weight)] for model ensembling.
    ``on_step(step, total, latents)`` is called after every denoising step; it may raise
    ``Cancelled`` to stop the job within one step. Hooks and padding changes are removed on
    every exit. ``offload`` runs ensembled models one after another on the device.

    The layout pass (``req.layout``): a training step at the last timestep sees
    √ᾱ_T·x₀ + √(1−ᾱ_T)·ε, and with SD's schedule √ᾱ_T = 0.068 is not zero ("Common Diffusion Noise
    Schedules and Sample Steps are Flawed", Lin et al. 2024). On a large canvas that faint signal
    carries the lattice of a pattern, and pure starting noise lets the model read a wrong one (a
    sheared checker). The pass first samples a seamless half-size canvas; the main pass starts from
    it tiled, encoded by the VAE at the full size as training's x₀ always was, and noised to the
    first timestep, as img2img at strength 1 would.
    """
    members = ensemble_members(components)
    c = members[0][0]  # its VAE and scheduler config serve the whole ensemble
    generator = torch.Generator(device="cpu").manual_seed(req.seed)
    use_cfg = req.guidance > 1.0 and c.unet.config.time_cond_proj_dim is None
    inpaint = req.mask is not None
    unet_channels = c.unet.config.in_channels

    # 1. Encode prompts, with each model's own text encoder: [negative, prompt 1..K] rows.
    encoded = [prompt_embeddings(m, req, use_cfg) for m, _ in members]
    rows = encoded[0][0].shape[0]  # blocks × frames
    blocks = rows // req.batch

    # 2. Timesteps, from a scheduler of the job's own (no state shared between jobs);
    #    img2img and inpainting below strength 1 keep the last ``strength`` part of the schedule.
    scheduler = make_scheduler(req.scheduler, c.scheduler)
    scheduler.set_timesteps(req.steps, device=c.device)
    timesteps = scheduler.timesteps
    layout = uses_layout_pass(c, req)
    if req.init_image is not None and (not inpaint or req.strength < 1.0) or layout:
        timesteps = img2img_timesteps(scheduler, req.steps, 1.0 if layout else req.strength)
    extra = step_kwargs(scheduler, generator)
    f = c.vae_scale_factor
    shape = (1, c.vae.config.latent_channels, req.height // f, req.width // f)
    done = 0  # steps of the layout pass, counted in the job's progress

    # 2a. The layout pass, with progress, previews (tiled to the full size) and cancel of its own steps.
    if layout:
        def on_layout_step(step, total, latents):
            nonlocal done
            done = total
            if on_step is not None:
                on_step(step, total + len(timesteps), tiled(latents, *shape[2:]))

        small = generate(components, layout_request(c, req), on_layout_step, offload)
        layout_latents = encode_image(c, tiled(small.permute(2, 0, 1), req.height, req.width).permute(1, 2, 0), None)

    with seamless([m.unet for m, _ in members] + [c.vae], req.tile_axes), offloaded(members, offload):
        # 3. Starting latents, drawn on the CPU so a seed means the same noise on every device.
        #    The order of random draws follows diffusers' pipelines, so they stay our oracle.
        image_latents = None
        if req.init_image is not None and (unet_channels == 4 and inpaint or req.strength < 1.0 or not inpaint):
            image_latents = encode_image(c, req.init_image, generator)
        if req.frame_noise is not None:
            noise = req.frame_noise.to(c.device, c.dtype)
        else:
            noise = torch.randn(shape, generator=generator, dtype=torch.float32).to(c.device, c.dtype)
        if layout:
            latents = scheduler.add_noise(layout_latents, noise, timesteps[:1])
        elif req.init_image is None or (inpaint and req.strength == 1.0):
            latents = noise * scheduler.init_noise_sigma
        else:
            latents = scheduler.add_noise(image_latents, noise, timesteps[:1])
        if inpaint:
            pixel_mask, latent_mask, masked_latents = inpaint_inputs(c, req, generator)

        # Infusion: biasing images as extra rows of the same UNet call, noised with one shared noise.
        infusion = None
        if req.infusion_images and any(w != 0 for w in req.infusion_weights.values()):
            bias_latents = torch.cat([encode_image(c, img, None) for img in req.infusion_images])
            bias_noise = torch.randn(bias_latents.shape[1:], generator=torch.Generator().manual_seed(req.seed + 1))
            bias_noise = bias_noise.to(c.device, c.dtype).expand_as(bias_latents)
            infusion = Infusion(req.infusion_weights, generated=rows,
                                targets=slice(req.batch, None) if use_cfg and req.infusion_cond_only else slice(None))

        # 4. Denoise: UNet (all rows of every model) → guidance → model weights → scheduler step.
        for i, t in enumerate(timesteps):
            model_input = torch.cat([latents] * blocks) if blocks > 1 else latents
            if infusion is not None:
                model_input = torch.cat([model_input, scheduler.add_noise(bias_latents, bias_noise, t[None])])
                infusion.scale = req.infusion_decay ** i
            model_input = scheduler.scale_model_input(model_input, t)
            if unet_channels == 9:
                extra_rows = model_input.shape[0]
                model_input = torch.cat([model_input, latent_mask.expand(extra_rows, -1, -1, -1),
                                         masked_latents.expand(extra_rows, -1, -1, -1)], dim=1)
            noise_pred = None
            for (m, weight), (embeds, terms, negative) in zip(members, encoded):
                if infusion is not None:
                    embeds = torch.cat([embeds, negative.expand(len(req.infusion_images), -1, -1)])
                with resident(m.unet, m.device, offload), \
                        (infusion.attached(m.unet) if infusion is not None else nullcontext()):
                    out = m.unet(model_input, t, encoder_hidden_states=embeds, return_dict=False)[0]
                prediction = guided(out[:rows], terms, req.guidance, use_cfg)
                if len(members) == 1:
                    noise_pred = prediction
                else:  # ε = Σ_m w_m ε_m
                    noise_pred = weight * prediction if noise_pred is None else noise_pred + weight * prediction
            latents = scheduler.step(noise_pred, t, latents, **extra, return_dict=False)[0]
            if inpaint and unet_channels == 4:  # keep the unmasked latents on the original's noisy path
                original = image_latents
                if i < len(timesteps) - 1:
                    original = scheduler.add_noise(image_latents, noise, timesteps[i + 1][None])
                latents = (1 - latent_mask) * original + latent_mask * latents
            if on_step is not None:
                on_step(done + i + 1, done + len(timesteps), latents)

        # 5. Decode to pixels in [0, 1]; inpainting pastes the original back outside the mask.
        image = c.vae.decode(latents / c.vae.config.scaling_factor, return_dict=False, generator=generator)[0]
    image = (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float()
    if inpaint:
        soft = feathered(pixel_mask.to(image.device), req.feather)[..., None]
        original = req.init_image.to(image.device)
        image = torch.where(soft > 0, original * (1 - soft) + image * soft, original)
    return image if req.frame_noise is not None else image[0]


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


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    """The sRGB decoding curve (IEC 61966-2-1)."""
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    """The sRGB encoding curve (IEC 61966-2-1), inverse of srgb_to_linear."""
    x = x.clamp(0, 1)
    return torch.where(x <= 0.0031308, x * 12.92, 1.055 * x ** (1 / 2.4) - 0.055)


def to_rgba(image: torch.Tensor, dtype: str, flip_y: bool, linear: bool = False):
    """Convert (H, W, 3) sRGB float in [0, 1] to a numpy RGBA array of ``dtype``, on the device."""
    if flip_y:
        image = image.flip(0)
    if linear:
        image = srgb_to_linear(image.float())
    rgba = torch.cat([image, torch.ones_like(image[..., :1])], dim=-1)
    if dtype == "uint8":
        rgba = (rgba * 255).round().to(torch.uint8)
    elif dtype == "float16":
        rgba = rgba.half()
    else:
        rgba = rgba.float()
    return rgba.contiguous().cpu().numpy()


class StepTimer:
    """Running estimate of the remaining time of a job from its step durations."""

    def __init__(self):
        self.start = time.perf_counter()

    def eta(self, step: int, total: int) -> float:
        elapsed = time.perf_counter() - self.start
        return elapsed / max(step, 1) * (total - step)
