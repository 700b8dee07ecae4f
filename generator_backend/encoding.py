"""Image encodings at the edges of the core: arrays as Blender sends them in, RGBA arrays out.

The denoising core works in sRGB float (H, W, 3) in [0, 1], rows top to bottom. What an array
holds is its ``Encoding``: linear light or sRGB, rows bottom to top or not, and its dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Encoding:
    """How an image array holds its pixels."""

    linear: bool = False
    flip_y: bool = False
    dtype: str = "float32"  # "uint8" is always sRGB: uint8 arrays are never linear


def output_encoding(output: dict) -> Encoding:
    """The Encoding a job's output options ask for."""
    return Encoding(output["linear"], output["flip_y"], output["output_dtype"])


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    """The sRGB decoding curve (IEC 61966-2-1)."""
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    """The sRGB encoding curve (IEC 61966-2-1), inverse of srgb_to_linear."""
    x = x.clamp(0, 1)
    return torch.where(x <= 0.0031308, x * 12.92, 1.055 * x ** (1 / 2.4) - 0.055)


def as_sent(params: dict) -> dict:
    """``image_tensor``'s arguments for a job's input arrays, from its validated parameters."""
    return {"linear": params["input_linear"], "flip_y": params["input_flip_y"]}


def image_tensor(array, channels=3, linear=False, flip_y=False) -> torch.Tensor:
    """An (H, W, C) uint8 or float array as (H, W, channels) float32 sRGB in [0, 1], rows top
    to bottom (alpha dropped). ``linear``/``flip_y`` describe the array as Blender holds it."""
    image = torch.from_numpy(np.ascontiguousarray(array[..., :channels]))
    is_bytes = image.dtype == torch.uint8
    image = image.float() / 255.0 if is_bytes else image.float().clamp(0, 1)
    if flip_y:
        image = image.flip(0)
    return linear_to_srgb(image) if linear and not is_bytes else image  # uint8 arrays are always sRGB


def image_alpha(array, flip_y=False) -> np.ndarray | None:
    """An input array's alpha as (H, W) float32 in [0, 1], rows top to bottom; None when it has no alpha
    channel or its alpha is 1 everywhere (the result's alpha is then exactly 1, as for RGB)."""
    array = np.asarray(array)
    if array.ndim != 3 or array.shape[2] < 4:
        return None
    alpha = array[..., 3]
    if alpha.dtype == np.uint8:
        if (alpha == 255).all():
            return None
        alpha = alpha.astype(np.float32) / np.float32(255)
    elif (alpha >= 1).all():
        return None
    alpha = np.clip(alpha, 0, 1).astype(np.float32)  # alpha is coverage: never linear, never sRGB
    return np.ascontiguousarray(alpha[::-1] if flip_y else alpha)


def with_alpha(image: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    """(H, W, 3) sRGB and (H, W) alpha (or None) -> (H, W, 4), or the image itself without alpha."""
    return image if alpha is None else np.concatenate([image, alpha[..., None].astype(image.dtype)], -1)


def to_rgba(image, dtype: str, flip_y: bool, linear: bool = False):
    """Convert (H, W, 3) sRGB float in [0, 1] (tensor or array) to a numpy RGBA array of ``dtype``, on the device;
    an (H, W, 4) image keeps its alpha as it is (alpha 1 otherwise)."""
    image = torch.as_tensor(image)
    if flip_y:
        image = image.flip(0)
    alpha = image[..., 3:].float() if image.shape[-1] == 4 else torch.ones_like(image[..., :1])
    image = image[..., :3]
    if linear:
        image = srgb_to_linear(image.float())
    rgba = torch.cat([image, alpha.to(image.dtype)], dim=-1)
    if dtype == "uint8":
        rgba = (rgba * 255).round().to(torch.uint8)
    elif dtype == "float16":
        rgba = rgba.half()
    else:
        rgba = rgba.float()
    return rgba.contiguous().cpu().numpy()


def recoded(array: np.ndarray, source: Encoding, target: Encoding) -> np.ndarray:
    """An input array's RGB in ``target``'s encoding, through sRGB float only where the two differ:
    the same encoding gives the same values, bit for bit."""
    rgb = np.asarray(array)[..., :3]
    if source.flip_y != target.flip_y:
        rgb = rgb[::-1]
    source_linear = source.linear and rgb.dtype != np.uint8
    both_bytes = target.dtype == "uint8" and rgb.dtype == np.uint8 and not target.linear
    both_float = target.dtype != "uint8" and rgb.dtype != np.uint8 and source_linear == target.linear
    if both_bytes or both_float:
        return rgb.astype(target.dtype)
    srgb = image_tensor(rgb, linear=source_linear)
    return to_rgba(srgb, target.dtype, False, target.linear)[..., :3]


def pasted_back(rgba: np.ndarray, original: np.ndarray, source: Encoding, target: Encoding,
                untouched: torch.Tensor) -> np.ndarray:
    """``rgba`` (in ``target``) with the ``untouched`` pixels (an (H, W) bool mask, rows top to bottom)
    replaced by the original's, recoded once from the input's own encoding."""
    keep = untouched.cpu().numpy()
    if target.flip_y:
        keep = keep[::-1]
    rgba = rgba.copy()
    rgba[..., :3][keep] = recoded(original, source, target)[keep]
    if np.asarray(original).shape[-1] == 4:  # the input's alpha, as it was sent
        alpha = np.asarray(original)[..., 3]
        if source.flip_y != target.flip_y:
            alpha = alpha[::-1]
        if (alpha.dtype == np.uint8) != (target.dtype == "uint8"):
            alpha = np.round(alpha * 255.0) if target.dtype == "uint8" else alpha / np.float32(255)
        rgba[..., 3][keep] = np.clip(alpha, 0, 255 if target.dtype == "uint8" else 1).astype(rgba.dtype)[keep]
    return rgba
