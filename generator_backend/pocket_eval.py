"""Measuring the pocket model: classify generated textures by colour and pattern.

Colour: the colour of the nearest reference mean RGB, one reference per colour and pattern
(a pattern sets how much of the darker or lighter accent shows: yellow bricks are mostly accent).
Pattern: the pattern of the nearest centroid over features of the grey image (radial and angular
power spectrum, grey-level histogram), one centroid per pattern, orientation and scale, fitted on
procedural textures (diagonal stripes and checker share an angle; a centroid of all stripes
would sit between the orientations and lose them).
"""

from __future__ import annotations

import numpy as np

from . import pocket_dataset as ds


def features(image: np.ndarray) -> np.ndarray:
    """Pattern features of an (H, W, 3) texture in [0, 1], independent of its colour."""
    grey = image.mean(axis=-1)
    grey = (grey - grey.mean()) / (grey.std() + 1e-6)
    size = grey.shape[0]
    power = np.abs(np.fft.fftshift(np.fft.fft2(grey))) ** 2
    fy, fx = np.mgrid[0:size, 0:size] - size // 2
    radius = np.hypot(fx, fy) / (size / 2)
    angle = np.mod(np.arctan2(fy, fx), np.pi)
    keep = (radius > 0) & (radius <= 1)
    radial = np.histogram(radius[keep], bins=12, range=(0, 1), weights=power[keep])[0]
    angular = np.histogram(angle[keep], bins=8, range=(0, np.pi), weights=power[keep])[0]
    levels = np.histogram(np.clip(grey, -3, 3), bins=8, range=(-3, 3))[0]
    parts = [radial / (radial.sum() + 1e-9), angular / (angular.sum() + 1e-9), levels / levels.sum()]
    return np.concatenate(parts)


class TextureClassifier:
    """Colour references and pattern centroids rendered at ``size``; ``per_kind`` textures per centroid."""

    def __init__(self, size=64, per_kind=40, seed=0):
        rng = np.random.default_rng(seed)

        def random_seed():
            return int(rng.integers(2**31))

        self.colours = {(c, p): ds.render(c, p, size, seed=random_seed()).reshape(-1, 3).mean(0)
                        for c in ds.COLOURS for p in ds.PATTERNS}
        kinds = [(p, o, s) for p in ds.PATTERNS for o, s in ds.variants(p)]
        self.centroids = {(p, o, s): np.mean([features(ds.render(
            list(ds.COLOURS)[rng.integers(len(ds.COLOURS))], p, size, ds.TONES[rng.integers(len(ds.TONES))], o, s,
            seed=random_seed())) for _ in range(per_kind)], axis=0) for p, o, s in kinds}

    def colour(self, image) -> str:
        mean = image.reshape(-1, 3).mean(0)
        return min(self.colours, key=lambda key: np.abs(self.colours[key] - mean).sum())[0]

    def pattern(self, image) -> str:
        f = features(image)
        return min(self.centroids, key=lambda kind: np.abs(self.centroids[kind] - f).sum())[0]


def seam_error(image: np.ndarray) -> float:
    """Wrap-around step against the mean inner step (1.0 means the seam looks like any column)."""
    inner = np.abs(np.diff(image, axis=1)).mean() + np.abs(np.diff(image, axis=0)).mean()
    wrap = np.abs(image[:, 0] - image[:, -1]).mean() + np.abs(image[0] - image[-1]).mean()
    return float(wrap / (inner + 1e-9))
