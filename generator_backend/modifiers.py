"""Modifiers of the denoising loop that change the models themselves: seamless tiling
(circular padding) and infusion (block-output hooks). Each is a context manager that
restores the model on exit, also when the job fails or is cancelled."""

from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.downsampling import Downsample2D

from dream_addon import protocol


def _pad_input(module, args, *, pads, axes):
    """Pad a conv's input: circular along tiled axes, zeros along the others."""
    x = args[0]
    left, right, top, bottom = pads
    x = F.pad(x, (left, right, 0, 0), mode="circular" if "x" in axes else "constant")
    x = F.pad(x, (0, 0, top, bottom), mode="circular" if "y" in axes else "constant")
    return (x, *args[1:])


@contextmanager
def seamless(modules, axes):
    """Make every Conv2d of ``modules`` wrap around along ``axes`` ("x", "y" or both).

    The VAE encoder's Downsample2D pads (0, 1, 0, 1) with zeros itself before a conv with no
    padding; circular padding on Conv2d alone misses it, so it is taken over here too.
    """
    if not axes:
        yield
        return
    hooks, restore = [], []
    for root in modules:
        for module in root.modules():
            if isinstance(module, Downsample2D) and module.use_conv and module.padding == 0:
                restore.append((module, "padding", 0))
                module.padding = -1  # skip its own zero pad; the hook below pads instead
                hooks.append(module.conv.register_forward_pre_hook(
                    functools.partial(_pad_input, pads=(0, 1, 0, 1), axes=axes)))
            elif (isinstance(module, torch.nn.Conv2d) and isinstance(module.padding, tuple)
                  and any(module.padding) and module.padding_mode == "zeros"):
                if set(axes) == {"x", "y"}:  # torch's own circular mode pads the same values, without a hook
                    restore.append((module, "padding_mode", "zeros"))
                    module.padding_mode = "circular"
                    continue
                ph, pw = module.padding
                restore.append((module, "padding", module.padding))
                module.padding = (0, 0)
                hooks.append(module.register_forward_pre_hook(
                    functools.partial(_pad_input, pads=(pw, pw, ph, ph), axes=axes)))
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
        for module, name, value in restore:
            setattr(module, name, value)


@dataclass
class Infusion:
    """Adds the averaged block outputs of biasing-image rows to the generated rows.

    The UNet batch is [generated rows..., biasing rows...]; ``generated`` says how many come
    first and ``targets`` which of them receive the features. ``scale`` is set per step
    (the decay). Biasing rows are read, never written.
    """

    weights: dict  # layer name ("down0", "mid", "up1", ...) -> weight
    generated: int = 0
    targets: slice = field(default_factory=lambda: slice(None))
    scale: float = 1.0
    hooks: list = field(default_factory=list)

    @staticmethod
    def layer_names(unet):
        return ([f"down{i}" for i in range(len(unet.down_blocks))] + ["mid"]
                + [f"up{i}" for i in range(len(unet.up_blocks))])

    def _add(self, tensor, weight):
        """In place: the block's output is fresh and only flows on from here (no autograd)."""
        bias = tensor[self.generated:].mean(dim=0, keepdim=True)
        tensor[:self.generated][self.targets] += (weight * self.scale) * bias

    def _hook(self, module, args, output, *, weight):
        # Down blocks return (hidden, residuals for the skips), and hidden is also the last
        # residual: add once per distinct tensor.
        tensors = [output[0], *output[1]] if isinstance(output, tuple) else [output]
        for tensor in {id(t): t for t in tensors}.values():
            self._add(tensor, weight)
        return output

    @contextmanager
    def attached(self, unet):
        blocks = dict(zip(self.layer_names(unet), [*unet.down_blocks, unet.mid_block, *unet.up_blocks]))
        hooks = [blocks[name].register_forward_hook(functools.partial(self._hook, weight=w))
                 for name, w in self.weights.items() if w != 0]
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()


def feathered(mask: torch.Tensor, radius: float) -> torch.Tensor:
    """Soften a binary (H, W) mask with a Gaussian reaching ``radius`` pixels; 0 keeps it hard.

    The kernel is cut at 3 sigma = the radius (``protocol.feather_reach``): pixels farther from the
    mask stay exactly 0, so they are pasted back untouched, and a client knows which ones they are.
    """
    if radius <= 0:
        return mask
    half = protocol.feather_reach(radius)
    sigma = max(half, 1) / 3
    x = torch.arange(-half, half + 1, dtype=torch.float32, device=mask.device)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    m = mask[None, None].float()
    m = F.conv2d(F.pad(m, (half, half, 0, 0)), kernel.view(1, 1, 1, -1))
    m = F.conv2d(F.pad(m, (0, 0, half, half)), kernel.view(1, 1, -1, 1))
    return torch.maximum(m[0, 0], mask.float()).clamp(0, 1)
