"""The evaluator's classifiers must be right on the procedural textures themselves, or the
accuracy they report for the model means nothing."""

import numpy as np

from generator_backend import pocket_dataset as ds
from generator_backend.pocket_eval import TextureClassifier, seam_error


def test_classifier_recognises_held_out_procedural_textures():
    classifier = TextureClassifier(size=64, per_class=30, seed=0)
    rng = np.random.default_rng(123)
    colour_hits = pattern_hits = 0
    n = 160
    for i in range(n):
        colour, pattern = list(ds.COLOURS)[i % 8], ds.PATTERNS[(i // 8) % 8]
        image = ds.render(colour, pattern, 64, seed=int(rng.integers(2**31)))
        colour_hits += classifier.colour(image) == colour
        pattern_hits += classifier.pattern(image) == pattern
    assert colour_hits / n >= 0.95 and pattern_hits / n >= 0.85, (colour_hits / n, pattern_hits / n)


def test_seam_error_separates_tiling_from_not():
    tiled = ds.render("red", "waves", 64, seed=1)
    assert seam_error(tiled) < 1.5
    cut = np.roll(ds.render("red", "waves", 64, seed=1), 0, axis=0)[:, 7:57]  # a crop does not tile
    assert seam_error(cut) > seam_error(tiled)
