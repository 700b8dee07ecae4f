"""The latent image file format (``.dlat``), shared by the backend's codec and the add-on.

Standard library and numpy only: the add-on reads a file's header (its size, model) before it
sends the file, and the backend validates it in full (generator_backend/latent_codec.py). The
layout is documented there and in docs/techniques.md.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass

import numpy as np

MAGIC = b"DLAT"
FORMAT_VERSION = 1
PREFIX = struct.Struct("!4sBI")  # magic, version, header length
MAX_HEADER_BYTES = 1 << 16
MAX_LATENT_DIM = 2048  # 16384 px at f=8
BITS_RANGE = (1, 8)
PALETTE_RANGE = (2, 256)  # or 0: no palette


class CodecError(ValueError):
    """A file that is not a valid latent image, or settings out of range; the message says which."""


@dataclass(frozen=True)
class CodecSettings:
    bits: int = 8  # per latent channel
    palette: int = 256  # colours of the latent "image"; 0 stores the quantised channels directly
    dither: bool = True  # Floyd–Steinberg error diffusion when palettising
    tile_axes: str = ""  # seamless axes: the VAE wraps around, so a tileable texture stays tileable

    def check(self):
        if not (isinstance(self.bits, int) and BITS_RANGE[0] <= self.bits <= BITS_RANGE[1]):
            raise CodecError(f"bits must be an integer in {BITS_RANGE[0]}..{BITS_RANGE[1]}, got {self.bits!r}")
        if not (isinstance(self.palette, int) and (self.palette == 0 or PALETTE_RANGE[0] <= self.palette
                                                    <= PALETTE_RANGE[1])):
            raise CodecError(f"palette must be 0 (none) or an integer in {PALETTE_RANGE[0]}..{PALETTE_RANGE[1]}, "
                             f"got {self.palette!r}")
        if self.tile_axes not in ("", "x", "y", "xy"):
            raise CodecError(f"tile_axes must be one of '', 'x', 'y', 'xy', got {self.tile_axes!r}")


HEADER_FIELDS = {
    "family": str, "vae_digest": str, "model": str, "width": int, "height": int, "latent_shape": list,
    "bits": int, "palette": int, "dither": bool, "tile_axes": str, "lo": list, "hi": list, "noise_std": float,
    "body_bytes": int, "body_crc32": int,
}


def _check_header(header) -> dict:
    if not isinstance(header, dict):
        raise CodecError("latent file: the header is not a JSON object")
    for name, kind in HEADER_FIELDS.items():
        value = header.get(name)
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok:
            raise CodecError(f"latent file: header field {name!r} is missing or not a {kind.__name__}")
    shape = header["latent_shape"]
    if len(shape) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v for v in shape):
        raise CodecError("latent file: latent_shape must be three positive integers [channels, height, width]")
    c, h, w = shape
    if c not in (1, 3, 4) or h > MAX_LATENT_DIM or w > MAX_LATENT_DIM:
        raise CodecError(f"latent file: latent_shape {shape} is out of range (channels 1, 3 or 4; "
                         f"at most {MAX_LATENT_DIM} per side)")
    if not (0 < header["width"] and 0 < header["height"]):
        raise CodecError("latent file: width and height must be positive")
    try:
        CodecSettings(header["bits"], header["palette"], header["dither"], header["tile_axes"]).check()
    except CodecError as exc:
        raise CodecError(f"latent file: {exc}") from None
    for name in ("lo", "hi"):
        values = header[name]
        if len(values) != c or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                       and math.isfinite(v) for v in values):
            raise CodecError(f"latent file: {name!r} must hold {c} finite numbers")
    return header


def read_header(data: bytes) -> tuple[dict, int]:
    """Validate the prefix and header of a latent file: (header, offset of the palette)."""
    if len(data) < PREFIX.size:
        raise CodecError("not a latent image file: it is shorter than the file prefix")
    magic, version, head_len = PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise CodecError(f"not a latent image file (it starts with {magic!r}, not {MAGIC!r})")
    if version != FORMAT_VERSION:
        raise CodecError(f"latent file format version {version} is not supported (this backend reads "
                         f"version {FORMAT_VERSION})")
    if head_len > MAX_HEADER_BYTES or PREFIX.size + head_len > len(data):
        raise CodecError("latent file: the header is truncated or too long")
    try:
        header = json.loads(data[PREFIX.size:PREFIX.size + head_len].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise CodecError("latent file: the header is not valid JSON") from None
    return _check_header(header), PREFIX.size + head_len


# Files travel in frames as (blocks, 64, 64) uint8 arrays, 4 KiB a block, so every dimension stays
# within the protocol's array limits (a backend's largest side, at least 64), with their exact
# length beside them as ``latent_bytes``.
BLOCK = (64, 64)
BLOCK_BYTES = BLOCK[0] * BLOCK[1]
MAX_FILE_BYTES = 2048 * BLOCK_BYTES  # 8 MiB: a 2048-block array at the default largest side


def to_rows(data: bytes) -> np.ndarray:
    """The bytes of a file as a zero-padded (blocks, 64, 64) uint8 array."""
    blocks = max(1, -(-len(data) // BLOCK_BYTES))
    out = np.zeros(blocks * BLOCK_BYTES, np.uint8)
    out[:len(data)] = np.frombuffer(data, np.uint8)
    return out.reshape(blocks, *BLOCK)


def from_rows(array: np.ndarray, length: int) -> bytes:
    """The first ``length`` bytes of a ``to_rows`` array."""
    return np.ascontiguousarray(array, np.uint8).reshape(-1)[:length].tobytes()
