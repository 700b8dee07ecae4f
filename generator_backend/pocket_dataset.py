"""Procedural, tileable textures with text labels: the training data of the pocket model.

Every pattern is a periodic function of the pixel position with whole periods across the image,
so each texture tiles seamlessly. Labels read like prompts: "thin vertical red stripes",
"dark blue checker", "green marble".
"""

from __future__ import annotations

import numpy as np

COLOURS = {
    "red": (0.80, 0.12, 0.10), "green": (0.15, 0.62, 0.20), "blue": (0.12, 0.25, 0.80),
    "yellow": (0.92, 0.82, 0.15), "orange": (0.95, 0.50, 0.10), "purple": (0.50, 0.18, 0.65),
    "white": (0.92, 0.92, 0.90), "black": (0.08, 0.08, 0.09),
}
PATTERNS = ("stripes", "checker", "dots", "bricks", "waves", "wood", "marble", "scales")
ORIENTED = ("stripes", "waves")  # take horizontal / vertical / diagonal
SIZED = ("stripes", "checker", "dots", "bricks", "scales")  # take thin / thick
TONES = ("", "light", "dark")


def _grid(size):
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    return (x + 0.5) / size, (y + 0.5) / size  # 0..1, one period = the whole image


def _periodic_noise(size, rng, octaves=3):
    """Smooth tileable noise: a sum of random whole-period sinusoids."""
    u, v = _grid(size)
    out = np.zeros((size, size))
    for octave in range(octaves):
        for _ in range(3):
            fx, fy = rng.integers(-2 - 2 * octave, 3 + 2 * octave, size=2)
            out += np.sin(2 * np.pi * (fx * u + fy * v) + rng.uniform(0, 2 * np.pi)) / (1 + octave)
    return out / np.abs(out).max()


def pattern_field(pattern, size, rng, orientation="vertical", scale="normal"):
    """The pattern as a field in [0, 1] (1 = the accent), tileable at ``size``."""
    u, v = _grid(size)
    count = {"thin": 8, "normal": 5, "thick": 3}[scale]
    if pattern in ORIENTED:
        axis = {"vertical": u, "horizontal": v, "diagonal": (u + v)}[orientation]
    if pattern == "stripes":
        return (np.sin(2 * np.pi * count * axis) > 0).astype(float)
    if pattern == "waves":
        other = v if orientation == "vertical" else u
        return 0.5 + 0.5 * np.sin(2 * np.pi * (4 * axis + 0.35 * np.sin(2 * np.pi * 2 * other)))
    if pattern == "checker":
        return ((np.floor(u * count * 2) + np.floor(v * count * 2)) % 2).astype(float)
    if pattern == "dots":
        cu, cv = (u * count) % 1 - 0.5, (v * count) % 1 - 0.5
        return (cu**2 + cv**2 < 0.09).astype(float)
    if pattern == "bricks":
        rows = count * 2
        row = np.floor(v * rows)
        shifted = (u * count + 0.5 * (row % 2)) % 1
        mortar = ((v * rows) % 1 < 0.12) | (shifted < 0.06)
        return 1.0 - mortar.astype(float)
    if pattern == "wood":
        warp = 0.15 * _periodic_noise(size, rng, 2)
        return 0.5 + 0.5 * np.sin(2 * np.pi * (6 * u + warp * 4))
    if pattern == "marble":
        warp = _periodic_noise(size, rng, 3)
        return (0.5 + 0.5 * np.sin(2 * np.pi * (2 * (u + v) + 1.5 * warp))) ** 3
    if pattern == "scales":
        rows = count * 2
        row = np.floor(v * rows)
        cu = (u * count + 0.5 * (row % 2)) % 1 - 0.5
        cv = (v * rows) % 1
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
    field = pattern_field(pattern, size, rng, orientation, scale)[..., None]
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
    orientation = ("horizontal", "vertical", "diagonal")[rng.integers(3)] if pattern in ORIENTED else ""
    scale = ("thin", "normal", "thick")[rng.integers(3)] if pattern in SIZED else "normal"
    image = render(colour, pattern, size, tone, orientation or "vertical", scale, int(rng.integers(2**31)))
    return image, label(colour, pattern, tone, orientation, scale), (colour, pattern)
