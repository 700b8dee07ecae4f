"""Procedural, tileable textures with text labels: the training data of the pocket model.

Every pattern is a periodic function of the pixel position whose periods are fixed in pixels and
divide 32, so a texture has the same scale at any size that is a multiple of 32, and tiles.
Labels read like prompts: "thin vertical red stripes", "dark blue checker", "green marble". A
modifier left out means its default (normal scale, vertical, plain tone), so a bare "red stripes" is
one well-defined texture rather than a blend of orientations.
"""

from __future__ import annotations

import numpy as np

COLOURS = {
    "red": (0.80, 0.12, 0.10), "green": (0.15, 0.62, 0.20), "blue": (0.12, 0.25, 0.80),
    "yellow": (0.92, 0.82, 0.15), "orange": (0.95, 0.50, 0.10), "purple": (0.50, 0.18, 0.65),
    "white": (0.92, 0.92, 0.90), "black": (0.08, 0.08, 0.09),
}
PATTERNS = ("stripes", "checker", "dots", "bricks", "waves", "wood", "marble", "scales")
ORIENTED = ("stripes", "waves")  # take an orientation word
SIZED = ("stripes", "checker", "dots", "bricks", "scales")  # take a scale word
ORIENTATIONS = ("horizontal", "vertical", "diagonal")
TONES = ("", "light", "dark")


TILE = 32  # every period divides this, so any multiple of it tiles
PERIOD = {"thin": 8, "normal": 16, "thick": 32}  # pixels: the same scale at any canvas size
SCALES = tuple(PERIOD)


def variants(pattern):
    """The (orientation, scale) pairs a pattern is drawn with."""
    return [(o, s) for o in (ORIENTATIONS if pattern in ORIENTED else ("vertical",))
            for s in (SCALES if pattern in SIZED else ("normal",))]


def _grid(size):
    if size % TILE:
        raise ValueError(f"size must be a multiple of {TILE}, got {size}")
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    return x + 0.5, y + 0.5  # pixel centres


def _periodic_noise(size, rng, octaves=3):
    """Smooth tileable noise: a sum of random sinusoids with wavelengths of 32/k pixels."""
    x, y = _grid(size)
    out = np.zeros((size, size))
    for octave in range(octaves):
        for _ in range(3):
            kx, ky = rng.integers(-2 - 2 * octave, 3 + 2 * octave, size=2)
            out += np.sin(2 * np.pi * (kx * x + ky * y) / TILE + rng.uniform(0, 2 * np.pi)) / (1 + octave)
    return out / max(np.abs(out).max(), 1e-9)


def pattern_field(pattern, size, rng, orientation="vertical", scale="normal"):
    """The pattern as a field in [0, 1] (1 = the accent), tileable at ``size``; periods in pixels."""
    x, y = _grid(size)
    period = PERIOD[scale]
    if pattern in ORIENTED:
        axis = {"vertical": x, "horizontal": y, "diagonal": (x + y)}[orientation]
    if pattern == "stripes":
        return (np.sin(2 * np.pi * axis / period) > 0).astype(float)
    if pattern == "waves":
        other = y if orientation == "vertical" else x
        return 0.5 + 0.5 * np.sin(2 * np.pi * (axis / 16 + 0.35 * np.sin(2 * np.pi * other / 32)))
    if pattern == "checker":
        return ((np.floor(x / period * 2) + np.floor(y / period * 2)) % 2).astype(float)
    if pattern == "dots":
        cu, cv = (x / period) % 1 - 0.5, (y / period) % 1 - 0.5
        return (cu**2 + cv**2 < 0.09).astype(float)
    if pattern == "bricks":
        row = np.floor(y / period * 2)
        shifted = (x / period + 0.5 * (row % 2)) % 1
        mortar = ((y / period * 2) % 1 < 0.14) | (shifted < 0.07)
        return 1.0 - mortar.astype(float)
    if pattern == "wood":
        warp = 0.5 * _periodic_noise(size, rng, 1)
        return 0.5 + 0.5 * np.sin(2 * np.pi * (x / 8 + warp))
    if pattern == "marble":
        warp = _periodic_noise(size, rng, 2)
        return (0.5 + 0.5 * np.sin(2 * np.pi * ((x + y) / 32 + warp))) ** 3
    if pattern == "scales":
        row = np.floor(y / period * 2)
        cu = (x / period + 0.5 * (row % 2)) % 1 - 0.5
        cv = (y / period * 2) % 1
        return ((cu**2 + (cv - 0.9) ** 2) > 0.2).astype(float) * cv
    raise ValueError(f"unknown pattern {pattern!r}")


def render(colour, pattern, size=64, tone="", orientation="vertical", scale="normal", seed=0):
    """One (size, size, 3) float32 texture in [0, 1]."""
    rng = np.random.default_rng(seed)
    base = np.array(COLOURS[colour])
    if tone == "light":
        base = base + (1 - base) * 0.45
    elif tone == "dark":
        base = base * 0.45
    accent = base * 0.45 if base.mean() > 0.35 else base + (1 - base) * 0.35  # contrast within the colour
    field = pattern_field(pattern, size, rng, orientation, scale)
    field = np.roll(field, rng.integers(TILE, size=2), axis=(0, 1))[..., None]  # random phase: stationary
    image = base * (1 - field) + accent * field
    image = image + rng.normal(0, 0.015, image.shape)  # a little grain
    return np.clip(image, 0, 1).astype(np.float32)


def label(colour, pattern, tone="", orientation="", scale=""):
    words = [scale if scale in ("thin", "thick") else "", orientation, tone, colour, pattern]
    return " ".join(w for w in words if w)


def sample(rng, size=64):
    """A random (image, label, (colour, pattern)) from the whole label space."""
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    pattern = PATTERNS[rng.integers(len(PATTERNS))]
    tone = TONES[rng.integers(len(TONES))]
    orientation = ORIENTATIONS[rng.integers(3)] if pattern in ORIENTED else "vertical"
    scale = SCALES[rng.integers(3)] if pattern in SIZED else "normal"
    image = render(colour, pattern, size, tone, orientation, scale, int(rng.integers(2**31)))
    # The default orientation is named half the time, so both "vertical red stripes" and "red stripes" mean it.
    named = orientation if pattern in ORIENTED and (orientation != "vertical" or rng.random() < 0.5) else ""
    return image, label(colour, pattern, tone, named, scale), (colour, pattern)
