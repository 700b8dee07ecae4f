"""The pocket model's procedural dataset: every label renders, tiles seamlessly and is distinct."""

import numpy as np
import pytest

from generator_backend import pocket_dataset as ds
from generator_backend.tiny_model import TINY_WORDS


@pytest.mark.parametrize("pattern", ds.PATTERNS)
def test_every_pattern_tiles_seamlessly(pattern):
    image = ds.render("red", pattern, size=64, seed=1)
    # The wrap-around step (last column to first) is no sharper than the sharpest step inside.
    for axis in (0, 1):
        steps = np.abs(np.diff(image, axis=axis)).mean(axis=(1 - axis, 2))
        wrap = np.abs(image.take(0, axis=axis) - image.take(-1, axis=axis)).mean()
        assert wrap <= steps.max() + 0.01, (axis, wrap, steps.max())
    # And the seam is not an edge where the inside has none: a plain roll by half keeps statistics.
    rolled = np.roll(image, 32, axis=(0, 1))
    assert abs(np.abs(np.diff(rolled, axis=1)).mean() - np.abs(np.diff(image, axis=1)).mean()) < 0.01


def test_colours_are_recognisable_from_the_mean():
    means = {c: ds.render(c, "checker", seed=2).reshape(-1, 3).mean(0) for c in ds.COLOURS}
    for colour, mean in means.items():
        nearest = min(ds.COLOURS, key=lambda c: np.abs(means[c] - mean).sum() if c != colour else 9)
        assert np.abs(means[nearest] - mean).sum() > 0.1, (colour, nearest)


def test_labels_use_the_tokenizer_words_and_cover_the_space():
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(400):
        image, text, (colour, pattern) = ds.sample(rng, size=32)
        assert image.shape == (32, 32, 3) and image.dtype == np.float32 and 0 <= image.min() <= image.max() <= 1
        assert set(text.split()) <= set(TINY_WORDS) and colour in text and pattern in text
        seen.add((colour, pattern))
    assert len(seen) == len(ds.COLOURS) * len(ds.PATTERNS)  # 8 colours x 8 patterns


def test_modifiers_change_the_texture():
    base = ds.render("blue", "stripes", seed=3)
    for kw in ({"tone": "dark"}, {"tone": "light"}, {"orientation": "horizontal"}, {"scale": "thin"}):
        assert np.abs(ds.render("blue", "stripes", seed=3, **kw) - base).mean() > 0.01, kw


@pytest.mark.parametrize("pattern", ["stripes", "checker", "dots"])
def test_pattern_scale_is_fixed_in_pixels(pattern):
    # Textures are stationary: a larger canvas shows more periods, not larger ones.
    def dominant_frequency(image):  # cycles per pixel along y and x, sign-free
        grey = image.mean(axis=2)
        power = np.abs(np.fft.fft2(grey - grey.mean()))
        ky, kx = np.unravel_index(power.argmax(), power.shape)
        size = len(grey)
        return abs(np.fft.fftfreq(size)[ky]), abs(np.fft.fftfreq(size)[kx])

    assert dominant_frequency(ds.render("red", pattern, 64, seed=1)) == dominant_frequency(ds.render("red", pattern, 128, seed=1))


def test_size_must_be_a_multiple_of_the_tile():
    with pytest.raises(ValueError, match="multiple of 32"):
        ds.render("red", "stripes", 48)


def test_a_bare_oriented_label_means_vertical():
    # "red stripes" with no orientation word is in the labels, and always drawn vertical
    # (constant down each column, apart from the grain), like the written "vertical red stripes".
    rng = np.random.default_rng(4)
    bare = named_vertical = 0
    for _ in range(300):
        image, text, (_, pattern) = ds.sample(rng, size=32)
        if pattern != "stripes":
            continue
        if not set(ds.ORIENTATIONS) & set(text.split()):
            bare += 1
            assert np.abs(np.diff(image, axis=0)).mean() < 0.03 < np.abs(np.diff(image, axis=1)).mean(), text
        named_vertical += "vertical" in text.split()
    assert bare > 0 and named_vertical > 0, (bare, named_vertical)
