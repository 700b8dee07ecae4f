"""The latent image codec: an image stored as its palettised Stable Diffusion latent.

The method of Matthias Bühlmann's "Stable Diffusion based Image Compression" (2022), the
roundup seed's digression: encode the image with the VAE; quantise the latent to a few bits per
channel; treat the 4-channel latent as an RGBA image and palettise it (256 colours, dithered);
store that losslessly. Decoding undoes the palette and the quantisation, optionally removes the
quantisation noise with a few denoising steps of the UNet at the matching noise level, and
decodes with the VAE. Its artefacts are plausible detail rather than blocks.

A file (``.dlat``) is::

    MAGIC b"DLAT" | format version u8 | header length u32 | header JSON | palette | PNG

The header names the latent family and the VAE it was made with; decoding refuses a model of
another family. The palette is ``palette × channels`` bytes; the PNG holds the palette index of
each latent pixel (mode L), or with no palette the quantised channels themselves.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import zlib
from dataclasses import dataclass

import numpy as np

from dream_addon.latent_format import (  # noqa: F401  (the file format, shared with the add-on)
    BITS_RANGE, FORMAT_VERSION, HEADER_FIELDS, MAGIC, MAX_HEADER_BYTES, MAX_LATENT_DIM, PALETTE_RANGE, PREFIX,
    CodecError, CodecSettings, read_header)


# The job kinds this module runs (runner.execute_compress / execute_decompress) and the protocol
# parameters it owns; the others of those kinds (model, encodings, seamless, size) are the core's,
# the runner's and the seamless technique's, as for every kind.
KINDS = ("compress", "decompress")
FIELDS = ("bits", "palette", "dither", "latent_bytes", "denoise_steps")


@dataclass
class LatentImage:
    """A decoded file: the dequantised latent (unit-scaled, as the UNet sees it) and its header."""

    latents: np.ndarray  # (C, h, w) float32
    header: dict


# --------------------------------------------------------------------------- latent family
def vae_digest(vae) -> str:
    """A short fingerprint of the VAE's weights (as float16, so it is the same on every device)."""
    import torch

    def convs(part):
        return [m for m in part.modules() if isinstance(m, torch.nn.Conv2d)]

    h = hashlib.sha256()
    # the encoder's last and the decoder's first convolution (conv_out and conv_in in an AutoencoderKL)
    for module in (convs(vae.encoder)[-1], convs(vae.decoder)[0], getattr(vae, "post_quant_conv", None)):
        if module is None:
            continue
        h.update(module.weight.detach().to("cpu", torch.float16).numpy().tobytes())
    return h.hexdigest()[:16]


def latent_family(vae) -> str:
    """Models whose latents can be exchanged share this: downscale factor, channels, scale."""
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    return f"f{f}/c{vae.config.latent_channels}/s{float(vae.config.scaling_factor):.5g}"


# --------------------------------------------------------------------------- quantisation
def quantise(latents: np.ndarray, bits: int):
    """Per-channel uniform quantisation to ``bits``: (codes uint8, lo, hi)."""
    levels = (1 << bits) - 1
    lo = latents.min(axis=(1, 2)).astype(np.float32)
    hi = latents.max(axis=(1, 2)).astype(np.float32)
    span = np.maximum(hi - lo, 1e-8)[:, None, None]
    codes = np.rint((latents - lo[:, None, None]) / span * levels)
    return np.clip(codes, 0, levels).astype(np.uint8), lo, hi


def dequantise(codes: np.ndarray, bits: int, lo, hi) -> np.ndarray:
    levels = (1 << bits) - 1
    lo = np.asarray(lo, np.float32)[:, None, None]
    hi = np.asarray(hi, np.float32)[:, None, None]
    return (lo + codes.astype(np.float32) / levels * (hi - lo)).astype(np.float32)


# --------------------------------------------------------------------------- palette
def fit_palette(points: np.ndarray, colours: int, iterations: int = 12) -> np.ndarray:
    """k-means (k-means++ start, fixed seed) over (N, C) codes: a deterministic palette."""
    unique = np.unique(points, axis=0)
    if len(unique) <= colours:
        return unique.astype(np.uint8)
    x = points.astype(np.float32)
    rng = np.random.default_rng(0)
    centres = [x[rng.integers(len(x))]]
    nearest = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, colours):
        total = nearest.sum()
        pick = rng.choice(len(x), p=nearest / total) if total > 0 else rng.integers(len(x))
        centres.append(x[pick])
        nearest = np.minimum(nearest, ((x - x[pick]) ** 2).sum(1))
    centres = np.stack(centres)
    for _ in range(iterations):
        assign = nearest_index(x, centres)
        sums = np.zeros_like(centres)
        np.add.at(sums, assign, x)
        counts = np.bincount(assign, minlength=len(centres))[:, None]
        centres = np.where(counts > 0, sums / np.maximum(counts, 1), centres)
    return np.clip(np.rint(centres), 0, 255).astype(np.uint8)


def nearest_index(x: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Index of the nearest palette entry for each row of ``x``."""
    p = palette.astype(np.float32)
    d = (x * x).sum(1)[:, None] - 2 * x @ p.T + (p * p).sum(1)[None]
    return d.argmin(1)


def palettise(codes: np.ndarray, palette: np.ndarray, dither: bool, wrap_x: bool = False) -> np.ndarray:
    """(C, h, w) codes → (h, w) palette indices; with ``dither``, Floyd–Steinberg error diffusion."""
    c, h, w = codes.shape
    pixels = codes.reshape(c, -1).T.astype(np.float32)
    if not dither:
        return nearest_index(pixels, palette).reshape(h, w).astype(np.uint8)
    p = palette.astype(np.float32)
    p_sq = (p * p).sum(1)
    work = pixels.reshape(h, w, c).copy()
    out = np.empty((h, w), np.uint8)
    for y in range(h):
        row = work[y]
        for x in range(w):
            value = row[x]
            k = int((p_sq - 2 * p @ value).argmin())
            out[y, x] = k
            err = value - p[k]
            # Wrapped along x for a seamless texture, so the error crosses the seam as elsewhere.
            right = (x + 1) % w if wrap_x else x + 1
            left = (x - 1) % w if wrap_x else x - 1
            if right < w and right != x:
                row[right] += err * (7 / 16)
            if y + 1 < h:
                below = work[y + 1]
                if 0 <= left < w and left != x:
                    below[left] += err * (3 / 16)
                below[x] += err * (5 / 16)
                if right < w and right != x:
                    below[right] += err * (1 / 16)
    return out


# --------------------------------------------------------------------------- file format
def _png(array: np.ndarray) -> bytes:
    from PIL import Image

    mode = {1: "L", 3: "RGB", 4: "RGBA"}[1 if array.ndim == 2 else array.shape[2]]
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def pack(header: dict, palette: np.ndarray | None, indices: np.ndarray) -> bytes:
    body = (b"" if palette is None else palette.astype(np.uint8).tobytes()) + _png(indices)
    header = dict(header, body_bytes=len(body), body_crc32=zlib.crc32(body))
    head = json.dumps(header, separators=(",", ":"), sort_keys=True).encode("utf-8")
    return PREFIX.pack(MAGIC, FORMAT_VERSION, len(head)) + head + body


def unpack(data: bytes) -> LatentImage:
    """Parse and validate a latent file into its dequantised latent; never trusts a size unchecked."""
    from PIL import Image

    header, offset = read_header(data)
    body = data[offset:]
    if len(body) != header["body_bytes"] or zlib.crc32(body) != header["body_crc32"]:
        raise CodecError(f"latent file: the data after the header is damaged or truncated "
                         f"({len(body)} bytes, the header says {header['body_bytes']})")
    c, h, w = header["latent_shape"]
    colours = header["palette"]
    palette = None
    if colours:
        end = offset + colours * c
        if end > len(data):
            raise CodecError("latent file: the palette is truncated")
        palette = np.frombuffer(data, np.uint8, colours * c, offset).reshape(colours, c)
        offset = end
    try:
        image = Image.open(io.BytesIO(data[offset:]), formats=["PNG"])
        if image.size != (w, h):
            raise CodecError(f"latent file: the stored latent is {image.size[0]}x{image.size[1]}, "
                             f"the header says {w}x{h}")
        want = "L" if colours or c == 1 else {3: "RGB", 4: "RGBA"}[c]
        if image.mode != want:
            raise CodecError(f"latent file: the stored latent has mode {image.mode}, expected {want}")
        pixels = np.asarray(image)
    except CodecError:
        raise
    except Exception as exc:  # Pillow raises many kinds on a damaged PNG
        raise CodecError(f"latent file: the stored latent cannot be read ({type(exc).__name__})") from None
    if colours:
        if int(pixels.max(initial=0)) >= colours:
            raise CodecError("latent file: a palette index is out of range")
        codes = palette[pixels].transpose(2, 0, 1)
    else:
        codes = pixels.reshape(h, w, c).transpose(2, 0, 1)
    if int(codes.max(initial=0)) > (1 << header["bits"]) - 1:
        raise CodecError("latent file: a code exceeds the header's bits")
    return LatentImage(dequantise(codes, header["bits"], header["lo"], header["hi"]), header)


# --------------------------------------------------------------------------- encode / decode
def _vae_context(c, axes):
    from .modifiers import seamless

    return seamless([c.vae], axes)


def encode_latents(c, image: np.ndarray, tile_axes: str = "") -> np.ndarray:
    """Unit-scaled VAE latents (C, h, w) of an (H, W, 3) image in [0, 1], edge-padded to the VAE's factor."""
    import torch

    from .core import encode_image

    f = c.vae_scale_factor
    height, width = image.shape[:2]
    pad = ((0, -height % f), (0, -width % f), (0, 0))
    padded = np.pad(image, pad, mode="wrap" if tile_axes else "edge")
    with torch.no_grad(), _vae_context(c, tile_axes):
        latents = encode_image(c, torch.from_numpy(np.ascontiguousarray(padded, np.float32)), None)
    return latents[0].float().cpu().numpy()


def compress(c, image: np.ndarray, settings: CodecSettings = CodecSettings(), model: str = "") -> bytes:
    """The latent file of an (H, W, 3) float image in [0, 1]."""
    settings.check()
    if image.ndim != 3 or image.shape[2] != 3:
        raise CodecError(f"image must be (height, width, 3), got shape {image.shape}")
    latents = encode_latents(c, np.clip(image, 0, 1), settings.tile_axes)
    codes, lo, hi = quantise(latents, settings.bits)
    palette = None
    stored = codes.transpose(1, 2, 0)
    if settings.palette:
        points = stored.reshape(-1, stored.shape[2])
        palette = fit_palette(points, settings.palette)
        stored = palettise(codes, palette, settings.dither, wrap_x="x" in settings.tile_axes)
        approx = palette[stored].transpose(2, 0, 1)
    else:
        approx = codes
        if stored.shape[2] == 1:
            stored = stored[..., 0]
    restored = dequantise(approx, settings.bits, lo, hi)
    header = {
        "family": latent_family(c.vae), "vae_digest": vae_digest(c.vae), "model": model,
        "width": int(image.shape[1]), "height": int(image.shape[0]), "latent_shape": list(latents.shape),
        "bits": settings.bits, "palette": len(palette) if palette is not None else 0,
        "dither": settings.dither, "tile_axes": settings.tile_axes,
        "lo": [float(v) for v in lo], "hi": [float(v) for v in hi],
        # RMS error the quantisation left, in unit-scaled latent units: the noise level the
        # optional denoise steps start from.
        "noise_std": float(np.sqrt(np.mean((restored - latents) ** 2))),
    }
    return pack(header, palette, stored)


def check_family(c, header: dict, model_name: str = ""):
    """Refuse to decode with a VAE of another latent family, or another VAE of the same shape."""
    family, digest = latent_family(c.vae), vae_digest(c.vae)
    made_with = f" (made with model {header['model']!r})" if header["model"] else ""
    if header["family"] != family or header["vae_digest"] != digest:
        using = f"model {model_name!r}" if model_name else "this model"
        raise CodecError(f"this latent file{made_with} needs a VAE of family {header['family']} "
                         f"(weights {header['vae_digest']}); {using} has family {family} (weights {digest}): "
                         f"decode it with the model it was made with")


def denoise_timesteps(alphas_cumprod, noise_std: float, steps: int) -> list[int]:
    """Timesteps from the one whose noise level √((1−ᾱ)/ᾱ) matches ``noise_std`` down towards 0."""
    sigmas = np.sqrt((1 - alphas_cumprod) / alphas_cumprod)
    start = int(np.searchsorted(sigmas, noise_std))
    start = min(max(start, 1), len(sigmas) - 1)
    return sorted({int(round(t)) for t in np.linspace(start, 0, steps, endpoint=False)}, reverse=True)


def denoise(c, latents, noise_std: float, steps: int, tile_axes: str = "", on_step=None):
    """DDIM (η = 0) from the quantisation's noise level to 0, unconditioned: quantisation noise out."""
    import torch

    from .core import encode_prompt
    from .modifiers import seamless

    acp = c.scheduler.alphas_cumprod if hasattr(c.scheduler, "alphas_cumprod") else None
    if acp is None:
        raise CodecError("this model's scheduler has no noise schedule to denoise with")
    acp = acp.double().cpu().numpy()
    timesteps = denoise_timesteps(acp, noise_std, steps)
    prediction = c.scheduler.config.get("prediction_type", "epsilon")
    with torch.no_grad(), seamless([c.unet], tile_axes):
        empty = encode_prompt(c, "")
        x = torch.as_tensor(latents)[None].to(c.device, c.dtype) * float(math.sqrt(acp[timesteps[0]]))
        for i, t in enumerate(timesteps):
            a = float(acp[t])
            a_prev = float(acp[timesteps[i + 1]]) if i + 1 < len(timesteps) else 1.0
            out = c.unet(x, t, encoder_hidden_states=empty).sample
            if prediction == "v_prediction":
                x0 = math.sqrt(a) * x - math.sqrt(1 - a) * out
                eps = math.sqrt(1 - a) * x + math.sqrt(a) * out
            else:
                eps = out
                x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
            x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
            if on_step is not None:
                on_step(i + 1, len(timesteps))
    return x[0].float().cpu().numpy()


def decode_latents(c, latents: np.ndarray, width: int, height: int, tile_axes: str = "") -> np.ndarray:
    """(H, W, 3) float image in [0, 1] of unit-scaled latents, cropped to ``width`` × ``height``."""
    import torch

    with torch.no_grad(), _vae_context(c, tile_axes):
        z = torch.as_tensor(latents)[None].to(c.device, c.dtype) / c.vae.config.scaling_factor
        image = c.vae.decode(z).sample[0]
    image = (image.float().cpu().permute(1, 2, 0).numpy() + 1) / 2
    return np.clip(image[:height, :width], 0, 1)


def decompress(c, data: bytes, denoise_steps: int = 0, model_name: str = "", on_step=None) -> np.ndarray:
    """The (H, W, 3) image of a latent file. ``denoise_steps`` 0 is the plain VAE decode."""
    if not (isinstance(denoise_steps, int) and 0 <= denoise_steps <= 50):
        raise CodecError(f"denoise_steps must be an integer in 0..50, got {denoise_steps!r}")
    item = unpack(data)
    header = item.header
    check_family(c, header, model_name)
    latents = item.latents
    if denoise_steps:
        latents = denoise(c, latents, header["noise_std"], denoise_steps, header["tile_axes"], on_step)
    return decode_latents(c, latents, header["width"], header["height"], header["tile_axes"])
