"""Measuring the pocket model: classify generated textures by colour and pattern.

Colour: the nearest reference colour by mean RGB (references rendered from the dataset).
Pattern: nearest centroid over scale-free features of the grey image (radial and angular
power spectrum, grey-level histogram), centroids fitted on procedural textures.
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
    def __init__(self, size=64, per_class=40, seed=0):
        rng = np.random.default_rng(seed)
        self.colours = {c: np.mean([ds.render(c, p, size, seed=int(rng.integers(2**31))).reshape(-1, 3).mean(0)
                                    for p in ds.PATTERNS], axis=0) for c in ds.COLOURS}
        samples = {p: [] for p in ds.PATTERNS}
        while min(len(v) for v in samples.values()) < per_class:
            image, _, (_, pattern) = ds.sample(rng, size)
            samples[pattern].append(features(image))
        self.centroids = {p: np.mean(v, axis=0) for p, v in samples.items()}

    def colour(self, image) -> str:
        mean = image.reshape(-1, 3).mean(0)
        return min(self.colours, key=lambda c: np.abs(self.colours[c] - mean).sum())

    def pattern(self, image) -> str:
        f = features(image)
        return min(self.centroids, key=lambda p: np.abs(self.centroids[p] - f).sum())


def seam_error(image: np.ndarray) -> float:
    """Wrap-around step against the mean inner step (1.0 means the seam looks like any column)."""
    inner = np.abs(np.diff(image, axis=1)).mean() + np.abs(np.diff(image, axis=0)).mean()
    wrap = np.abs(image[:, 0] - image[:, -1]).mean() + np.abs(image[0] - image[-1]).mean()
    return float(wrap / (inner + 1e-9))
