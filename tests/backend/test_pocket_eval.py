"""The evaluator's classifiers must be right on the procedural textures themselves, or the
accuracy they report for the model means nothing."""

import numpy as np

from generator_backend import pocket_dataset as ds
from generator_backend.pocket_eval import TextureClassifier, seam_error


def test_classifier_recognises_held_out_procedural_textures():
    classifier = TextureClassifier(size=64, per_kind=20, seed=0)
    rng = np.random.default_rng(123)
    # Colour, as the evaluator asks it (plain tone): every colour on every pattern, none missed.
    missed = [(c, p) for c in ds.COLOURS for p in ds.PATTERNS
              if classifier.colour(ds.render(c, p, 64, seed=int(rng.integers(2**31)))) != c]
    assert missed == []
    # Pattern, over the whole label space (every orientation, scale and tone).
    n = 240
    samples = (ds.sample(rng, 64) for _ in range(n))
    hits = sum(classifier.pattern(image) == pattern for image, _, (_, pattern) in samples)
    assert hits / n >= 0.97, hits / n


def test_seam_error_separates_tiling_from_not():
    tiled = ds.render("red", "waves", 64, seed=1)
    assert seam_error(tiled) < 1.5
    cut = np.roll(ds.render("red", "waves", 64, seed=1), 0, axis=0)[:, 7:57]  # a crop does not tile
    assert seam_error(cut) > seam_error(tiled)
