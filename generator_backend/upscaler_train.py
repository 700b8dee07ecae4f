"""Training the offline x4 upscaler: spandrel's SRVGGNetCompact on procedural textures.

High-resolution patches are the pocket dataset's tileable patterns (generator_backend/pocket_dataset.py)
with random colours, finer periods (rendered large, then area-reduced) and a second pattern mixed in.
Low-resolution inputs go through realistic degradations (Real-ESRGAN's first order, simplified):
Gaussian blur, a bicubic / area / bilinear / Lanczos reduction, Gaussian noise, JPEG, 8-bit
quantisation (``clean_share`` of them are clean bicubic reductions instead). The loss is the mean squared
error or the mean of each patch's PSNR (``loss``); the net starts as bilinear interpolation (``build_net``),
or from earlier weights (``init_from``, widened by ``widen`` when the new net is larger). Every step's
batch comes from a generator seeded by (seed, step), so a resumed run sees exactly the batches an
uninterrupted one would.
"""

from __future__ import annotations

import io
import json
import math
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from . import pocket_dataset as ds

SCALE = 4
HR_SIZE = 128  # training patch; the input is HR_SIZE // SCALE
DOWN_FILTERS = (Image.Resampling.BICUBIC, Image.Resampling.BOX, Image.Resampling.BILINEAR,
                Image.Resampling.LANCZOS)


def build_net(num_feat=32, num_conv=12):
    """A fresh SRVGGNetCompact x4 (spandrel's class, so an exported state dict loads back through spandrel)."""
    from spandrel.architectures.Compact import Compact

    net = Compact(num_in_ch=3, num_out_ch=3, num_feat=num_feat, num_conv=num_conv, upscale=SCALE)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        # He initialisation for the PReLU stack (torch's default shrinks the signal layer by layer).
        for conv in convs:
            torch.nn.init.kaiming_normal_(conv.weight, a=0.25, nonlinearity="leaky_relu")
            torch.nn.init.zeros_(conv.bias)
        # Start as bilinear interpolation, not as the net's nearest-neighbour shortcut (3 dB worse on
        # textures; from there it took thousands of steps to reach plain interpolation): features 0-2
        # carry the input unchanged through every layer (pixels are >= 0, so PReLU passes them), and the
        # last layer turns them into bilinear's difference from nearest; the other features start small.
        for conv in convs[:-1]:
            conv.weight[:3] = 0
            conv.weight[:3, :3, 1, 1] = torch.eye(3)
        last = convs[-1].weight
        last.mul_(0.01)
        last[:, :3] = 0
        for i in range(SCALE):
            for j in range(SCALE):
                kernel = torch.outer(_bilinear_taps(i), _bilinear_taps(j))
                kernel[1, 1] -= 1  # the shortcut adds the centre pixel
                for c in range(3):
                    last[c * SCALE * SCALE + i * SCALE + j, c] = kernel
    return net


def widen(state: dict, num_feat: int, num_conv: int) -> dict:
    """A larger net's state dict that computes what ``state`` computes (net2net): the new features start
    random but unread (the old features and the last layer take nothing from them), and the added
    convolutions, placed before the last one, start as the identity followed by a linear PReLU."""
    old_convs = sorted((k[:-len(".weight")] for k, v in state.items() if k.endswith(".weight") and v.dim() == 4),
                       key=lambda k: int(k.split(".")[1]))  # a file's keys come sorted as text
    old_feat = state[old_convs[0] + ".weight"].shape[0]
    if num_feat < old_feat or num_conv < len(old_convs) - 2:
        raise ValueError(f"num_feat, num_conv: {num_feat}, {num_conv} is smaller than the net it widens")
    new = build_net(num_feat, num_conv).state_dict()
    new_convs = [k[:-len(".weight")] for k, v in new.items() if k.endswith(".weight") and v.dim() == 4]
    pairs = list(zip(old_convs[:-1], new_convs)) + [(old_convs[-1], new_convs[-1])]
    with torch.no_grad():
        for added in new_convs[len(old_convs) - 1:-1]:
            new[added + ".weight"].zero_()
            new[added + ".weight"][:, :, 1, 1] = torch.eye(num_feat)
            new[added + ".bias"].zero_()
            prelu = f"body.{int(added.split('.')[1]) + 1}.weight"
            new[prelu].fill_(1.0)
        for old, fresh in pairs:
            w, b = state[old + ".weight"], state[old + ".bias"]
            target = new[fresh + ".weight"]
            target[:w.shape[0], w.shape[1]:] = 0  # old features (and the output) read no new feature
            target[:w.shape[0], :w.shape[1]] = w
            new[fresh + ".bias"][:b.shape[0]] = b
            if old != old_convs[-1]:
                prelu_old, prelu_new = (f"body.{int(k.split('.')[1]) + 1}.weight" for k in (old, fresh))
                new[prelu_new][:b.shape[0]] = state[prelu_old]
    return new


def _bilinear_taps(i: int) -> torch.Tensor:
    """Bilinear weights of the pixels before, at and after an input pixel for its ``i``-th output sub-pixel."""
    d = (2 * i + 1) / (2 * SCALE) - 0.5  # the sub-pixel centre's offset from the input pixel's centre
    return torch.tensor([max(-d, 0.0), 1 - abs(d), max(d, 0.0)])


@contextmanager
def _zoomed_grid(zoom: float, angle: float, supersample: int):
    """Make the pocket patterns' pixel grid finer and turned: periods ``zoom`` times larger, any
    orientation, ``supersample`` points per pixel (reduced afterwards: anti-aliased edges)."""
    plain = ds._grid
    c, s = np.cos(angle), np.sin(angle)

    def grid(size):
        y, x = np.mgrid[0:size, 0:size].astype(np.float64)
        x, y = (x + 0.5) / (supersample * zoom), (y + 0.5) / (supersample * zoom)
        return c * x - s * y, s * x + c * y

    ds._grid = grid
    try:
        yield
    finally:
        ds._grid = plain


def hr_texture(rng, size=HR_SIZE, supersample=2) -> np.ndarray:
    """One (size, size, 3) float32 texture in [0, 1]: a pocket pattern in random colours, at a random
    scale and angle, sometimes with a second one mixed in; edges anti-aliased like a photo's."""

    def field():
        pattern = ds.PATTERNS[rng.integers(len(ds.PATTERNS))]
        orientation, scale = ds.variants(pattern)[rng.integers(len(ds.variants(pattern)))]
        zoom = float(np.exp(rng.uniform(np.log(1.0), np.log(6.0))))
        with _zoomed_grid(zoom, float(rng.uniform(0, 2 * np.pi)), supersample):
            f = ds.pattern_field(pattern, size * supersample, rng, orientation, scale)
        return f.reshape(size, supersample, size, supersample).mean(axis=(1, 3))

    f = field()
    if rng.random() < 0.4:
        g = field()
        f = f * g if rng.random() < 0.5 else np.maximum(f, 0.6 * g)
    base, accent = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    image = base * (1 - f[..., None]) + accent * f[..., None]
    image = image + rng.normal(0, rng.uniform(0, 0.01), image.shape)
    return np.clip(image, 0, 1).astype(np.float32)


def to_pil(image):
    return Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8))


def bicubic_down(image, scale=SCALE) -> np.ndarray:
    """The clean reduction the benchmark uses: PIL bicubic (antialiased), 8-bit."""
    h, w = image.shape[:2]
    return np.asarray(to_pil(image).resize((w // scale, h // scale), Image.Resampling.BICUBIC), np.float32) / 255


def degrade(image, rng, scale=SCALE, clean_share=0.3) -> np.ndarray:
    """A realistic low-resolution input for ``image``: blur, reduction, noise, JPEG, 8-bit; a ``clean_share``
    of them clean bicubic."""
    h, w = image.shape[:2]
    if rng.random() < clean_share:
        return bicubic_down(image, scale)
    pil = to_pil(image)
    if rng.random() < 0.6:
        pil = pil.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.2, 2.0))))
    pil = pil.resize((w // scale, h // scale), DOWN_FILTERS[rng.integers(len(DOWN_FILTERS))])
    low = np.asarray(pil, np.float32) / 255
    if rng.random() < 0.5:
        low = low + rng.normal(0, rng.uniform(0.002, 0.03), low.shape)
    pil = to_pil(low)
    if rng.random() < 0.5:
        buffer = io.BytesIO()
        pil.save(buffer, format="JPEG", quality=int(rng.integers(40, 96)))
        pil = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return np.asarray(pil, np.float32) / 255


CLEAN_SHARE = 0.6  # of training inputs that are clean bicubic reductions; the others are degraded
SCHEDULES = ("linear", "cosine")
# "mse" over the batch weighs hard (edgy) patches most; "psnr" is the mean of each patch's PSNR (its
# log squared error), what the benchmark averages over images.
LOSSES = ("mse", "psnr")
POOL_SIZE = 768  # high-resolution textures made once per run (half the cost of a step otherwise)


def texture_pool(seed, count=POOL_SIZE) -> list:
    """The run's textures, the same for the same seed."""
    rng = np.random.default_rng([seed, 2**31])
    return [hr_texture(rng) for _ in range(count)]


def batch(seed, step, count, pool=None, clean_share=CLEAN_SHARE) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high) NCHW float batches for ``step``, the same for the same (seed, step) and pool: textures
    drawn from ``pool`` (turned and mirrored at random) or made fresh, and freshly degraded."""
    rng = np.random.default_rng([seed, step])
    if pool is None:
        highs = [hr_texture(rng) for _ in range(count)]
    else:
        highs = [np.ascontiguousarray(np.rot90(pool[rng.integers(len(pool))], rng.integers(4))[:, ::rng.choice(
            (1, -1))]) for _ in range(count)]
    lows = [degrade(h, rng, clean_share=clean_share) for h in highs]

    def nchw(images):
        return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()

    return nchw(lows), nchw(highs)


class Trainer:
    """The net, its optimiser and step; ``save``/``load`` make a run resumable."""

    def __init__(self, out: Path, seed=0, steps=1800, batch_size=12, lr=1e-3, num_feat=32, num_conv=12,
                 pool_size=POOL_SIZE, clean_share=CLEAN_SHARE, schedule="linear", init_from=None,
                 loss="mse"):
        self.out, self.seed, self.steps, self.batch_size, self.lr = Path(out), seed, steps, batch_size, lr
        self.clean_share, self.schedule = clean_share, schedule
        self.lineage = ""  # the training runs the start weights came from
        self.loss = loss
        if loss not in LOSSES:
            raise ValueError(f"loss: {loss!r} is not one of {', '.join(LOSSES)}")
        if not 0.0 <= clean_share <= 1.0:
            raise ValueError(f"clean_share: {clean_share} is not between 0 and 1")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule: {schedule!r} is not one of {', '.join(SCHEDULES)}")
        torch.manual_seed(seed)
        self.net = build_net(num_feat, num_conv)
        if init_from is not None:  # a checkpoint in ``out`` (load) takes precedence over these weights
            from safetensors.torch import load_file

            from safetensors import safe_open

            with safe_open(str(init_from), "pt") as f:
                before = f.metadata() or {}
            self.lineage = before.get("lineage") or f"{before.get('steps', '?')} steps, seed {before.get('seed', '?')}"
            state = load_file(str(init_from))
            self.net.load_state_dict(widen(state, num_feat, num_conv) if state["body.0.weight"].shape[0] != num_feat
                                     or len(state) != len(self.net.state_dict()) else state)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=lr)
        self.step, self.log = 0, []
        self.pool, self.pool_size = None, pool_size  # made on the first step (not for an export)

    @property
    def checkpoint(self) -> Path:
        return self.out / "checkpoint.pt"

    def lr_at(self, step):
        """"linear": constant, then linear to a tenth over the last 40 % of the run; "cosine": a cosine
        from ``lr`` to a hundredth of it over the whole run."""
        if self.schedule == "cosine":
            return self.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(step, self.steps) / self.steps)))
        start = 0.6 * self.steps
        return self.lr * (1.0 if step < start else max(0.1, 1 - 0.9 * (step - start) / (self.steps - start)))

    def options(self) -> dict:
        """What a resumed run must share with the run that wrote the checkpoint (its batches and its loss; the
        step count and the learning rate may change, to extend a run)."""
        return {"loss": self.loss, "schedule": self.schedule, "clean_share": float(self.clean_share),
                "batch_size": int(self.batch_size)}

    def save(self):
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.checkpoint.with_suffix(".tmp")
        torch.save({"net": self.net.state_dict(), "opt": self.opt.state_dict(), "step": self.step,
                    "log": self.log, "seed": self.seed, "options": self.options(), "lineage": self.lineage}, tmp)
        tmp.replace(self.checkpoint)

    def load(self) -> bool:
        if not self.checkpoint.exists():
            return False
        state = torch.load(self.checkpoint, weights_only=True)
        if state["seed"] != self.seed:
            raise ValueError(f"seed: the checkpoint in {self.out} was trained with seed {state['seed']}, not {self.seed}")
        for name, value in state.get("options", {}).items():  # a resumed run sees the batches an unbroken one would
            if self.options()[name] != value:
                raise ValueError(f"{name}: the checkpoint in {self.out} was trained with {value!r}, not "
                                 f"{self.options()[name]!r}")
        self.lineage = state.get("lineage", self.lineage)
        self.net.load_state_dict(state["net"])
        self.opt.load_state_dict(state["opt"])
        self.step, self.log = state["step"], state["log"]
        return True

    def train_step(self) -> float:
        if self.pool is None:
            self.pool = texture_pool(self.seed, self.pool_size)
        low, high = batch(self.seed, self.step, self.batch_size, self.pool, self.clean_share)
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(self.step)
        per_patch = ((self.net(low) - high) ** 2).mean(dim=(1, 2, 3))
        loss = per_patch.mean() if self.loss == "mse" else 10 * torch.log10(per_patch + 1e-8).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.step += 1
        shortcut = torch.nn.functional.interpolate(low, scale_factor=SCALE, mode="nearest")
        return float(per_patch.detach().mean()), float(torch.nn.functional.mse_loss(shortcut, high))

    def train(self, checkpoint_every=100, deadline_s=None):
        """Train to ``self.steps`` (or until ``deadline_s`` of wall time), checkpointing as it goes."""
        started, window = time.monotonic(), []
        while self.step < self.steps:
            window.append(self.train_step())
            if self.step % checkpoint_every == 0 or self.step == self.steps:
                mse, nearest = np.mean(window, axis=0)
                self.log.append({"step": self.step, "mse": float(mse), "mse_nearest": float(nearest),
                                 "lr": self.lr_at(self.step - 1)})
                window = []
                self.save()
                print(json.dumps(self.log[-1]), flush=True)
                if deadline_s and time.monotonic() - started > deadline_s:
                    break
        self.save()

    def export(self, path: Path, name="pocket-x4") -> Path:
        """The weights as .safetensors (spandrel detects the architecture from the keys)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.net.state_dict().items()}
        save_file(state, str(path), metadata={"name": name, "architecture": "SRVGGNetCompact", "scale": str(SCALE),
                                               "steps": str(self.step), "seed": str(self.seed),
                                               "lineage": "; then ".join(filter(None, (
                                                   self.lineage, f"{self.step} steps, seed {self.seed}"))),
                                               "training": "generator_backend/upscaler_train.py"})
        return path
