"""Training of the pocket texture model on the procedural dataset (CPU-friendly, resumable).

Three stages, each checkpointed with its optimiser and every random state so a resumed run
continues exactly where it stopped:

1. an f=4 VAE trained as a plain autoencoder; the log-variance half of ``quant_conv`` is fixed
   (weight 0, bias -30) so ``latent_dist.sample()`` equals the mode, which img2img and
   inpainting rely on;
2. a small UNet with attention only at the low resolutions, and the CLIP text encoder, trained
   with the epsilon objective on the frozen VAE's latents. Before it starts, the VAE's
   ``scaling_factor`` is set to 1/std of its latents (as SD's 0.18215 was for its own VAE), so the
   latents have unit variance and the noise schedule means what it says. 10 % empty prompts teach the
   unconditional prediction that classifier-free guidance needs. Steps cycle through canvas
   sizes (same pixels per step: batch 16 at 32 px, 4 at 64, 1 at 128) so the model meets the
   sizes it will be asked for; the learning rate falls linearly to zero over the last quarter of
   the stage, and an exponential moving average of the weights is what gets exported;
3. the VAE decoder again, alone, at the canvas sizes users ask for. Stage 1 trains at 32 px, and
   the GroupNorm statistics of a small canvas are border-heavy: decoded at 128 px, yellow came back
   orange. The encoder (and so the UNet's latent space) stays frozen, so this stage can run on a
   finished model.

The UNet and decoder steps can cycle through seamless-tiling modes (``tiling``): those steps wrap
the model's convolutions as the backend's seamless option does (``modifiers.seamless``). Trained
with zero padding only, both read absolute colour from the canvas borders (the zero padding is
their only anchor after GroupNorm): wrapped, they drew green purple. A wrapped step works on
``tileable_latents``, the latents of the texture away from any border (the encoder itself is
not wrapped nor trained there, so the latent space stays the one the UNet knows).

A **retile** stage (between 1 and 2, after ``init_from``) trains encoder and decoder together,
wrapped in a share of the steps, with the latents anchored to the loaded VAE's, so colour stops
depending on the border while the loaded UNet's latent space stays; ``vae_groups`` can lower the
VAE's GroupNorm groups (16 groups of two channels keep no absolute colour without a border).
After it, wrapped UNet and decoder steps encode wrapped, as the backend does.

A **distil** stage (after ``init_from``, before the UNet) replaces the VAE by a normalisation-free
one (diffusers' ``AutoencoderTiny``, ``build_tiny_vae``) taught the loaded VAE's latent space: its
decoder turns the loaded VAE's scaled latents back into the pixels, its encoder makes those latents,
in the same tiling cycle (wrapped steps: the border-free ``tileable_latents``, the student wrapped).
Without GroupNorm every output pixel depends only on the latents around it, so a wrapped decode is
the inside of a plain one and colour cannot come from the border. Its ``scaling_factor`` is 1: it
makes the scaled latents the loaded UNet already knows. After it, stage 3 trains the tiny decoder
alone (its encoder frozen, so a UNet trained on its latents stays valid), with a term for the mean
colour of each 8-px patch, since that is what a wrapped UNet's latents lose in the decode.

The result is saved as a Stable Diffusion folder (``save_pretrained``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import pocket_dataset
from .prompt_words import write_vocabulary
from .tiny_model import build_tokenizer_vocab

LOGVAR_BIAS = -30.0
# Words users type that carry no texture meaning: seen in training, they stay neutral.
PROMPT_FORMS = ("{}", "{}", "{}", "{} texture", "seamless {}", "seamless {} texture", "a {} pattern",
                "{} pattern", "a {} texture")


def training_words():
    """Every word of the training prompts (labels and their neutral forms): the model's vocabulary.txt."""
    ds = pocket_dataset
    words = {word for form in PROMPT_FORMS for word in form.format("").split()}
    for colour in ds.COLOURS:
        for pattern in ds.PATTERNS:
            for tone in ds.TONES:
                for orientation, scale in ds.variants(pattern):
                    words.update(ds.label(colour, pattern, tone, orientation, scale).split())
    return words


def build_components(seed: int = 0, vae_groups: int = 16):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab, merges = build_tokenizer_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=16)
    torch.manual_seed(seed)
    vae = AutoencoderKL(block_out_channels=(32, 64, 64), in_channels=3, out_channels=3,
                        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                        latent_channels=4, norm_num_groups=vae_groups, layers_per_block=1,
                        mid_block_add_attention=False)
    with torch.no_grad():  # sample() == mode(): no noise from the log-variance half
        vae.quant_conv.weight[4:].zero_()
        vae.quant_conv.bias[4:].fill_(LOGVAR_BIAS)
    vae.quant_conv.requires_grad_(False)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(48, 96, 96), norm_num_groups=16, cross_attention_dim=64,
                                attention_head_dim=8,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"], hidden_size=64, intermediate_size=128, num_attention_heads=4,
        num_hidden_layers=2, vocab_size=len(vocab), max_position_embeddings=16))
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading")
    return {"vae": vae, "unet": unet, "text_encoder": text_encoder, "tokenizer": tokenizer, "scheduler": scheduler}


TINY_VAE_CHANNELS = 48
TINY_VAE_ENCODER_BLOCKS = (1, 2, 2)
TINY_VAE_DECODER_BLOCKS = (3, 3, 1)


def build_tiny_vae(seed: int = 0):
    """The distil stage's VAE: f=4, no normalisation layers (0.84 M parameters)."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    return AutoencoderTiny(encoder_block_out_channels=(TINY_VAE_CHANNELS,) * len(TINY_VAE_ENCODER_BLOCKS),
                           decoder_block_out_channels=(TINY_VAE_CHANNELS,) * len(TINY_VAE_DECODER_BLOCKS),
                           num_encoder_blocks=TINY_VAE_ENCODER_BLOCKS, num_decoder_blocks=TINY_VAE_DECODER_BLOCKS,
                           latent_channels=4, scaling_factor=1.0)


def batch_of(rng, size, count):
    images, labels = [], []
    for _ in range(count):
        image, text, _ = pocket_dataset.sample(rng, size)
        images.append(image)
        labels.append(text)
    pixels = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2) * 2 - 1
    return pixels, labels


EMA_DECAY = 0.999
CALIBRATION_IMAGES = 256  # at the base size: enough for the latent std within ~2 %
TILINGS = ("", "x", "y", "xy")  # seamless axes a UNet step may train with ("" = zero padding)
DECAY_FRACTION = 0.25  # of the UNet stage, at its end, over which the learning rate falls to zero
RETILE_DECODE = ("own", "reference")  # the latents the retile stage's decoder learns from
COLOUR_WEIGHT = 4.0  # of the 8-px mean colour against the pixel loss, in a tiny VAE's decoder stage
RETILE_ANCHOR = 1.0  # weight of the latent anchor (scaled latents) against the pixel loss in the retile stage


TILE_MARGIN = 32  # pixels of wrap-around context on each side: beyond the encoder's border effects


def tileable_latents(vae, pixels, axes="xy", margin=TILE_MARGIN):
    """Latents of tileable ``pixels`` (B, 3, H, W) away from the borders across ``axes``: the canvas
    is wrapped by ``margin`` pixels on those sides, encoded with zero padding as always, and the
    centre kept."""
    mx, my = (margin if "x" in axes else 0), (margin if "y" in axes else 0)
    padded = F.pad(pixels, (mx, mx, my, my), mode="circular")
    from .core import vae_latents  # core imports diffusers: not at module load
    latents = vae_latents(vae, padded)
    f = padded.shape[-1] // latents.shape[-1]
    return latents[..., my // f:latents.shape[-2] - my // f, mx // f:latents.shape[-1] - mx // f]


def loaded_scale(folder) -> float:
    return json.loads((Path(folder) / "vae" / "config.json").read_text())["scaling_factor"]


def latent_std(vae, seed: int, size: int, images: int = CALIBRATION_IMAGES) -> float:
    """Standard deviation of the VAE's latents over procedural textures (its own random stream)."""
    rng = np.random.default_rng([seed, 1])
    values = []
    vae.eval()
    with torch.no_grad():
        for start in range(0, images, 16):
            pixels, _ = batch_of(rng, size, min(16, images - start))
            values.append(vae.encode(pixels).latent_dist.mode().flatten())
    return torch.cat(values).std().item()


class Trainer:
    """Holds the components, optimisers and random states; ``save``/``load`` make runs resumable."""

    def __init__(self, out: Path, seed=0, size=32, batch=16, lr=1e-3, unet_sizes=None, decoder_sizes=None,
                 tiling=None, vae_groups=16, keep_scale=False, retile_decode="own", distil_anchor=None,
                 mean_weight=0.0):
        self.out, self.seed, self.size, self.batch = Path(out), seed, size, batch
        self.vae_groups, self.keep_scale = vae_groups, keep_scale
        if retile_decode not in RETILE_DECODE:
            raise ValueError(f"retile_decode: {retile_decode!r} not among {RETILE_DECODE}")
        self.retile_decode = retile_decode
        if distil_anchor is not None and not distil_anchor >= 0:
            raise ValueError(f"distil_anchor: {distil_anchor!r}; a weight >= 0, or None for pure distillation")
        self.distil_anchor = distil_anchor
        if not mean_weight >= 0:
            raise ValueError(f"mean_weight: {mean_weight!r}; a weight >= 0")
        self.mean_weight = mean_weight
        self.unet_sizes = tuple(unet_sizes or (size,))
        self.tiling = tuple(tiling or ("",))
        bad = [axes for axes in self.tiling if axes not in TILINGS]
        if bad:
            raise ValueError(f"tiling: {bad} not among {TILINGS}")
        self.decoder_sizes = tuple(decoder_sizes or (size,))
        self.c = build_components(seed, vae_groups)
        self.reference = None  # the VAE the retile stage anchors latents to (init_from's)
        self.ema = self._weights()
        self.vae_opt = torch.optim.AdamW([p for p in self.c["vae"].parameters() if p.requires_grad], lr=lr)
        self.unet_opt = torch.optim.AdamW(list(self.c["unet"].parameters())
                                          + list(self.c["text_encoder"].parameters()), lr=lr / 2)
        vae = self.c["vae"]
        self.decoder_opt = torch.optim.AdamW(list(vae.post_quant_conv.parameters()) + list(vae.decoder.parameters()),
                                             lr=lr / 2)
        self.retile_opt = torch.optim.AdamW([p for p in vae.parameters() if p.requires_grad], lr=lr / 2)
        self.rng = np.random.default_rng(seed)
        self.torch_gen = torch.Generator().manual_seed(seed)
        self.lr = lr
        self.tiny, self.distil_opt = None, None  # the distil stage's VAE and optimiser, once it starts
        self.tiny_decoder_opt = None  # the decoder stage's, for a tiny VAE
        self.distil_reference = True  # whether self.c["vae"] holds the KL VAE the distil stage learns from
        self.steps = {"vae": 0, "retile": 0, "distil": 0, "unet": 0, "decoder": 0}
        self.targets = {"retile": 0, "distil": 0, "unet": 0, "decoder": 0}
        self.calibrated = False
        self.log = []

    def _weights(self):
        """Copies of the trained weights, per component: the moving average starts here."""
        return {name: {key: value.detach().clone() for key, value in self.c[name].state_dict().items()}
                for name in ("unet", "text_encoder")}

    def _update_ema(self):
        decay = min(EMA_DECAY, (1 + self.steps["unet"]) / (10 + self.steps["unet"]))
        with torch.no_grad():
            for name, averages in self.ema.items():
                for key, value in self.c[name].state_dict().items():
                    if value.is_floating_point():
                        averages[key].lerp_(value, 1 - decay)
                    else:
                        averages[key].copy_(value)

    def init_from(self, folder: Path, anchor: Path | None = None):
        """Start from the weights of an exported pocket model (fresh optimisers); the retile stage
        anchors to ``anchor``'s VAE (default: the folder's own)."""
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel

        if json.loads((Path(folder) / "vae" / "config.json").read_text())["_class_name"] == "AutoencoderTiny":
            from diffusers import AutoencoderTiny  # a distilled model: it goes on with its tiny VAE

            for name, cls in (("unet", UNet2DConditionModel), ("text_encoder", CLIPTextModel)):
                self.c[name].load_state_dict(cls.from_pretrained(Path(folder) / name).state_dict())
            self.start_distil()
            self.distil_reference = False
            self.tiny.load_state_dict(AutoencoderTiny.from_pretrained(Path(folder) / "vae").state_dict())
            self.ema = self._weights()
            if anchor:  # more distil steps: they keep the latent space of this KL VAE
                self.reference = AutoencoderKL.from_pretrained(Path(anchor) / "vae").eval().requires_grad_(False)
                self.distil_reference = True
            return
        groups = json.loads((Path(folder) / "vae" / "config.json").read_text())["norm_num_groups"]
        # GroupNorm weights load into any group count; only fewer groups (the retile stage's) is meant
        if groups < self.vae_groups:
            raise ValueError(f"vae_groups: {folder}'s VAE has {groups} GroupNorm groups; --vae-groups "
                             f"{self.vae_groups} would change every latent it makes (pass --vae-groups {groups})")
        for name, cls in (("vae", AutoencoderKL), ("unet", UNet2DConditionModel), ("text_encoder", CLIPTextModel)):
            self.c[name].load_state_dict(cls.from_pretrained(Path(folder) / name).state_dict())
        # kept for a run without a UNet stage; one with a UNet stage measures it again
        self.c["vae"].register_to_config(scaling_factor=loaded_scale(folder))
        self.reference = AutoencoderKL.from_pretrained(Path(anchor or folder) / "vae").eval().requires_grad_(False)
        self.ema = self._weights()
        self.calibrated = self.keep_scale  # the loaded UNet's latent scale, when the retile stage anchors to it

    def calibrate_latent_scale(self):
        """Set the VAE's scaling_factor so the UNet's latents have unit standard deviation."""
        scale = 1.0 / latent_std(self.c["vae"], self.seed, self.size)
        self.c["vae"].register_to_config(scaling_factor=scale)
        self.calibrated = True
        return scale

    def start_distil(self):
        self.tiny = build_tiny_vae(self.seed)
        self.distil_opt = torch.optim.AdamW(self.tiny.parameters(), lr=self.lr)
        self.calibrated = True  # the tiny VAE makes the loaded UNet's scaled latents

    @property
    def unet_vae(self):
        """The VAE whose latents the UNet learns: the distilled one once the distil stage has begun."""
        return self.tiny if self.tiny is not None else self.c["vae"]

    def stage_lr(self, stage):
        """Constant, then linear to zero over the last DECAY_FRACTION of the stage."""
        decay_steps = max(1, round(self.targets[stage] * DECAY_FRACTION))
        remaining = self.targets[stage] - self.steps[stage]
        return self.lr / 2 * min(1.0, max(0.0, remaining / decay_steps))

    def axes(self, stage, step):
        """Seamless axes of ``stage``'s step ``step``: one tiling mode per full cycle of the stage's
        sizes, so every size meets every mode."""
        sizes = self.unet_sizes if stage == "unet" else self.decoder_sizes  # retile: the decoder's sizes
        return self.tiling[(step // len(sizes)) % len(self.tiling)]

    def latents(self, pixels, axes):
        """The frozen encoder's latents (unscaled): plain, or away from the borders for a wrapped step
        (after a retile stage the encoder wraps as the backend's seamless option does)."""
        from .core import vae_latents
        from .modifiers import seamless

        vae = self.unet_vae
        with torch.no_grad():
            if self.tiny is not None:  # local: wrapped, it encodes the texture away from any border
                with seamless([vae], axes):
                    return vae_latents(vae, pixels)
            if axes and self.steps["retile"]:
                with seamless([vae], axes):
                    return vae.encode(pixels).latent_dist.mode()
            return tileable_latents(vae, pixels, axes) if axes else vae.encode(pixels).latent_dist.mode()

    def batch_size(self, size):
        return max(1, round(self.batch * (self.size / size) ** 2))  # same pixels per step

    @property
    def checkpoint(self) -> Path:
        return self.out / "checkpoint.pt"

    def save(self):
        self.out.mkdir(parents=True, exist_ok=True)
        state = {"vae": self.c["vae"].state_dict(), "unet": self.c["unet"].state_dict(),
                 "text_encoder": self.c["text_encoder"].state_dict(), "vae_opt": self.vae_opt.state_dict(),
                 "unet_opt": self.unet_opt.state_dict(), "decoder_opt": self.decoder_opt.state_dict(),
                 "steps": self.steps, "rng": self.rng.bit_generator.state,
                 "torch_gen": self.torch_gen.get_state(), "log": self.log, "ema": self.ema,
                 "calibrated": self.calibrated, "scaling_factor": self.c["vae"].config.scaling_factor,
                 "unet_sizes": self.unet_sizes, "decoder_sizes": self.decoder_sizes, "tiling": self.tiling,
                 "vae_groups": self.vae_groups, "retile_decode": self.retile_decode,
                 "distil_anchor": self.distil_anchor, "mean_weight": self.mean_weight,
                 "distil_reference": self.distil_reference,
                 "tiny": None if self.tiny is None else {
                     "vae": self.tiny.state_dict(), "opt": self.distil_opt.state_dict(),
                     "decoder_opt": None if self.tiny_decoder_opt is None else self.tiny_decoder_opt.state_dict()},
                 "retile_opt": self.retile_opt.state_dict(),
                 "reference": None if self.reference is None else {
                     "config": dict(self.reference.config), "weights": self.reference.state_dict()}}
        tmp = self.checkpoint.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.checkpoint)

    def load(self) -> bool:
        if not self.checkpoint.exists():
            return False
        state = torch.load(self.checkpoint, weights_only=False)
        # A schedule changed mid-run would silently train something else than what is recorded.
        for key in ("unet_sizes", "decoder_sizes", "tiling", "vae_groups", "retile_decode"):
            if key in state and key in ("vae_groups", "retile_decode") and state[key] != getattr(self, key):
                raise ValueError(f"{key}: the checkpoint in {self.out} has {state[key]}, not {getattr(self, key)}")
            if key in state and key not in ("vae_groups", "retile_decode") and tuple(state[key]) != getattr(self, key):
                raise ValueError(f"{key}: the checkpoint in {self.out} was trained with {tuple(state[key])}, "
                                 f"not {getattr(self, key)}")
        if state.get("distil_anchor", self.distil_anchor) != self.distil_anchor:
            raise ValueError(f"distil_anchor: the checkpoint in {self.out} has {state['distil_anchor']}, "
                             f"not {self.distil_anchor}")
        if state.get("mean_weight", 0.0) != self.mean_weight:
            raise ValueError(f"mean_weight: the checkpoint in {self.out} has {state.get('mean_weight', 0.0)}, "
                             f"not {self.mean_weight}")
        for name in ("vae", "unet", "text_encoder"):
            self.c[name].load_state_dict(state[name])
        self.vae_opt.load_state_dict(state["vae_opt"])
        self.unet_opt.load_state_dict(state["unet_opt"])
        if "decoder_opt" in state:  # checkpoints from before the decoder stage lack it
            self.decoder_opt.load_state_dict(state["decoder_opt"])
        if "retile_opt" in state:
            self.retile_opt.load_state_dict(state["retile_opt"])
        if state.get("reference"):
            from diffusers import AutoencoderKL

            config = {k: v for k, v in state["reference"]["config"].items() if not k.startswith("_")}
            self.reference = AutoencoderKL.from_config(config).eval().requires_grad_(False)
            self.reference.load_state_dict(state["reference"]["weights"])
        self.distil_reference = state.get("distil_reference", True)
        if state.get("tiny"):
            self.start_distil()
            self.tiny.load_state_dict(state["tiny"]["vae"])
            self.distil_opt.load_state_dict(state["tiny"]["opt"])
            if state["tiny"].get("decoder_opt"):
                self.tiny_decoder_opt = torch.optim.AdamW(self.tiny.decoder.parameters(), lr=self.lr / 2)
                self.tiny_decoder_opt.load_state_dict(state["tiny"]["decoder_opt"])
        self.steps, self.log = {"decoder": 0, "retile": 0, "distil": 0, **state["steps"]}, state["log"]
        self.rng.bit_generator.state = state["rng"]
        self.torch_gen.set_state(state["torch_gen"])
        self.ema = state.get("ema") or self._weights()
        self.calibrated = state.get("calibrated", False)
        # measured, or init_from's: a resumed fine-tune must not fall back to the default scale
        self.c["vae"].register_to_config(scaling_factor=state["scaling_factor"])
        return True

    def _optimise(self, stage, optimiser, loss, scheduled=True):
        """One optimiser step of ``stage`` on ``loss``, at the stage's scheduled learning rate."""
        if scheduled:
            for group in optimiser.param_groups:
                group["lr"] = self.stage_lr(stage)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        self.steps[stage] += 1
        return loss.item()

    def vae_step(self):
        vae = self.c["vae"].train()
        pixels, _ = batch_of(self.rng, self.size, self.batch)
        latents = vae.encode(pixels).latent_dist.mode()
        return self._optimise("vae", self.vae_opt, F.mse_loss(vae.decode(latents).sample, pixels), scheduled=False)

    def retile_step(self):
        """Encoder and decoder together, wrapped in a share of the steps (``tiling``), so colour stops
        depending on the canvas border: pixels back, plus latents anchored to the reference VAE's
        (its zero-padded latents for a zero-padded step, its border-free ``tileable_latents`` for a
        wrapped one), so the UNet's latent space stays the one it knows; and a latent crop decoded
        alone gives back the pixels' crop. With ``retile_decode="reference"`` the decoder learns from
        the reference's latents (what the UNet was taught to make) and the encoder from the anchor alone."""
        from .modifiers import seamless

        vae = self.c["vae"].train()
        size = self.decoder_sizes[self.steps["retile"] % len(self.decoder_sizes)]
        pixels, _ = batch_of(self.rng, size, self.batch_size(size))
        axes = self.axes("retile", self.steps["retile"])
        scale = vae.config.scaling_factor
        with torch.no_grad():
            anchor = (tileable_latents(self.reference, pixels, axes) if axes
                      else self.reference.encode(pixels).latent_dist.mode())
        with seamless([vae], axes):
            encoded = vae.encode(pixels).latent_dist.mode()
            latents = anchor if self.retile_decode == "reference" else encoded
            loss = F.mse_loss(vae.decode(latents).sample, pixels)
        loss = loss + RETILE_ANCHOR * F.mse_loss(encoded * scale, anchor * scale)
        f = size // latents.shape[-1]
        if latents.shape[-1] >= 16:  # a half-size latent crop, decoded alone, gives back its pixels
            half = latents.shape[-1] // 2
            y, x = (int(v) for v in self.rng.integers(0, latents.shape[-1] - half + 1, size=2))
            crop = vae.decode(latents[..., y:y + half, x:x + half]).sample
            loss = loss + F.mse_loss(crop, pixels[..., y * f:(y + half) * f, x * f:(x + half) * f])
        return self._optimise("retile", self.retile_opt, loss)

    def distil_step(self):
        """The tiny VAE learns the loaded VAE's latent space: its decoder gives back the pixels from the
        loaded VAE's scaled latents (the border-free ones on a wrapped step, the tiny VAE wrapped), its
        encoder makes them; the learning rate follows a cosine to zero over the stage. With a
        ``distil_anchor`` weight the tiny VAE also learns its own round trip (wrapped on a wrapped
        step) and its encoder keeps the reference latents at that weight only: where the reference's
        border-free latents of two colours resemble each other (red and orange), its own may part."""
        from .core import vae_latents
        from .modifiers import seamless

        if self.tiny is None:
            self.start_distil()
        # the anchor's VAE (init_from's, or --anchor-to), or the one trained in stage 1
        reference = (self.reference if self.reference is not None else self.c["vae"]).eval()
        tiny = self.tiny.train()
        size = self.decoder_sizes[self.steps["distil"] % len(self.decoder_sizes)]
        axes = self.axes("distil", self.steps["distil"])
        pixels, _ = batch_of(self.rng, size, self.batch_size(size))
        with torch.no_grad():
            target = (tileable_latents(reference, pixels, axes) if axes
                      else vae_latents(reference, pixels)) * reference.config.scaling_factor
        for group in self.distil_opt.param_groups:
            group["lr"] = self.lr * 0.5 * (1 + np.cos(np.pi * self.steps["distil"] / self.targets["distil"]))
        with seamless([tiny], axes):
            decoded = tiny.decode(target).sample
            encoded = tiny.encode(pixels).latents
        loss = F.mse_loss(decoded, pixels) + F.mse_loss(encoded, target)
        if self.distil_anchor is not None:
            with seamless([tiny], axes):
                round_trip = tiny.decode(encoded).sample
            loss = (F.mse_loss(decoded, pixels) + F.mse_loss(round_trip, pixels)
                    + self.distil_anchor * F.mse_loss(encoded, target))
        return self._optimise("distil", self.distil_opt, loss, scheduled=False)

    def unet_step(self):
        from .modifiers import seamless

        vae, unet, text_encoder = self.unet_vae.eval(), self.c["unet"].train(), self.c["text_encoder"].train()
        size = self.unet_sizes[self.steps["unet"] % len(self.unet_sizes)]
        pixels, labels = batch_of(self.rng, size, self.batch_size(size))
        labels = ["" if self.rng.random() < 0.1 else PROMPT_FORMS[self.rng.integers(len(PROMPT_FORMS))].format(text)
                  for text in labels]
        ids = self.c["tokenizer"](labels, padding="max_length", max_length=16, truncation=True,
                                  return_tensors="pt").input_ids
        axes = self.axes("unet", self.steps["unet"])
        latents = self.latents(pixels, axes) * vae.config.scaling_factor
        with seamless([unet], axes):
            noise = torch.randn(latents.shape, generator=self.torch_gen)
            t = torch.randint(0, 1000, (latents.shape[0],), generator=self.torch_gen)
            noisy = self.c["scheduler"].add_noise(latents, noise, t)
            prediction = unet(noisy, t, encoder_hidden_states=text_encoder(ids)[0]).sample
        loss = F.mse_loss(prediction, noise)
        if self.mean_weight:  # the colour: per-pixel MSE weighs each channel's spatial mean by 1/(H*W) only
            loss = loss + self.mean_weight * F.mse_loss(prediction.mean((2, 3)), noise.mean((2, 3)))
        loss = self._optimise("unet", self.unet_opt, loss)
        self._update_ema()
        return loss

    def decoder_step(self):
        """The decoder alone (the encoder, and with it the UNet's latent space, frozen); a tiny VAE's
        decoder also learns the colour of each 8-px patch (``COLOUR_WEIGHT``): the mean colour is what
        goes wrong when a wrapped UNet's border-free latents are decoded."""
        from .modifiers import seamless

        vae = self.unet_vae.train()
        size = self.decoder_sizes[self.steps["decoder"] % len(self.decoder_sizes)]
        pixels, _ = batch_of(self.rng, size, self.batch_size(size))
        axes = self.axes("decoder", self.steps["decoder"])
        latents = self.latents(pixels, axes)
        if self.tiny is not None:
            if self.tiny_decoder_opt is None:
                self.tiny_decoder_opt = torch.optim.AdamW(vae.decoder.parameters(), lr=self.lr / 2)
            with seamless([vae.decoder], axes):
                decoded = vae.decode(latents).sample
            loss = F.mse_loss(decoded, pixels) + COLOUR_WEIGHT * F.mse_loss(F.avg_pool2d(decoded, 8),
                                                                             F.avg_pool2d(pixels, 8))
            return self._optimise("decoder", self.tiny_decoder_opt, loss)
        with seamless([vae.decoder], axes):
            loss = F.mse_loss(vae.decode(latents).sample, pixels)
        return self._optimise("decoder", self.decoder_opt, loss)

    def train(self, vae_steps: int, unet_steps: int, decoder_steps: int = 0, checkpoint_every: int = 200,
              report=print, retile_steps: int = 0, distil_steps: int = 0):
        """Run the stages up to the given step counts, checkpointing as it goes."""
        started = time.perf_counter()
        self.targets = {"retile": retile_steps, "distil": distil_steps, "unet": unet_steps, "decoder": decoder_steps}
        if retile_steps and self.reference is None:
            raise ValueError("retile steps anchor to a reference VAE: start them with --init-from")
        if distil_steps > self.steps["distil"] and not self.distil_reference:
            raise ValueError("distil steps learn a KL VAE's latent space: name it with --anchor-to")
        if vae_steps > self.steps["vae"] and self.tiny is not None:
            raise ValueError("VAE steps train a KL VAE; this run already has its distilled one (--vae-steps 0)")
        for stage, target, step in (("vae", vae_steps, self.vae_step), ("retile", retile_steps, self.retile_step),
                                    ("distil", distil_steps, self.distil_step),
                                    ("unet", unet_steps, self.unet_step),
                                    ("decoder", decoder_steps, self.decoder_step)):
            if stage in ("distil", "unet") and not self.calibrated and self.steps[stage] < target:
                report(json.dumps({"stage": "calibrate", "scaling_factor": round(self.calibrate_latent_scale(), 5)}))
            while self.steps[stage] < target:
                loss = step()
                if self.steps[stage] % 50 == 0 or self.steps[stage] == target:
                    self.log.append({"stage": stage, "step": self.steps[stage], "loss": round(loss, 5),
                                     "elapsed_s": round(time.perf_counter() - started, 1)})
                    report(json.dumps(self.log[-1]))
                if self.steps[stage] % checkpoint_every == 0:
                    self.save()
        self.save()

    def export(self, folder: Path):
        """Save as a Stable Diffusion folder that from_pretrained loads (Euler for inference), with
        the moving-average weights."""
        import copy

        from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

        averaged = {name: copy.deepcopy(self.c[name]) for name in self.ema}
        for name, weights in self.ema.items():
            averaged[name].load_state_dict(weights)
        scheduler = EulerDiscreteScheduler.from_config(self.c["scheduler"].config)
        pipe = StableDiffusionPipeline(vae=self.unet_vae.eval(), unet=averaged["unet"].eval(),
                                       text_encoder=averaged["text_encoder"].eval(), tokenizer=self.c["tokenizer"],
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
        pipe.save_pretrained(folder, safe_serialization=True)
        if self.tiny is not None:  # AutoencoderTiny registers this itself and warns when a config names it
            config = Path(folder) / "vae" / "config.json"
            config.write_text(json.dumps({k: v for k, v in json.loads(config.read_text()).items()
                                          if k != "block_out_channels"}, indent=2, sort_keys=True) + "\n")
        write_vocabulary(folder, training_words())  # what the backend warns about (prompt_words.py)
        (Path(folder) / "training_log.json").write_text(json.dumps({"steps": self.steps, "log": self.log}))
        return folder
