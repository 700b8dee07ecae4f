"""Teach a concept to the pocket model: a colour or a pattern outside its vocabulary.

The pocket model knows eight colours and eight patterns (generator_backend/pocket_model/vocabulary.txt).
Concepts (--concept): "teal-checker", its checker in teal, a colour it has no word for;
"red-rings", concentric rings in its red, a pattern it never saw; "teal-mixed", teal in four of
its patterns. The training images are drawn as pocket_dataset.render draws (its colouring, grain
and random phase). Teaching runs with the panel's defaults (protocol.teach_fields) unless told
otherwise: the initializer is chosen from the images (teach.choose_initializer) and the time
reported includes that choice. After teaching, images of the word alone are compared with images
of the nearest known words (the concept's neighbours, the chosen initializer and each of its
words) by a feature distance to the training images:

    d(image) = |mean RGB − training mean RGB|₁ + |pattern features − training mean features|₁

(pocket_eval.features: radial and angular power spectrum and grey-level histogram of the grey
image, colour-blind), reported with its colour and pattern parts. Smaller is closer. The word in a
colour word's place ("<word> checker" against "blue checker", "green checker", measured against
teal references of that pattern) is reported too, as information. The script exits with an error
when the word is not closer than every known word, or when teaching took longer than --budget
seconds.

Run: nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_teach.py
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dream_addon import protocol  # noqa: E402
from generator_backend import pocket_dataset as ds  # noqa: E402
from generator_backend.core import GenerationRequest, generate  # noqa: E402
from generator_backend.embeddings import EmbeddingLibrary  # noqa: E402
from generator_backend.models import ModelManager  # noqa: E402
from generator_backend.pocket_eval import features  # noqa: E402
from generator_backend.teach import Teacher, TeachSettings, save_embedding  # noqa: E402

TEAL = np.array([0.05, 0.52, 0.50])
RED = np.array(ds.COLOURS["red"])


def rings_field(size: int) -> np.ndarray:
    """Concentric rings, 8 px apart, around the centre of every 32 px cell: a pattern the pocket model never saw."""
    y, x = np.mgrid[0:size, 0:size] + 0.5
    radius = np.hypot(x % ds.TILE - ds.TILE / 2, y % ds.TILE - ds.TILE / 2)
    return (np.sin(2 * np.pi * radius / 8) > 0).astype(float)


def texture(colour: np.ndarray, pattern: str, size: int, seed: int) -> np.ndarray:
    """A texture drawn as pocket_dataset.render draws one (a lighter accent), in any colour, with the rings too."""
    rng = np.random.default_rng(seed)
    accent = colour + (1 - colour) * 0.35  # lighter: render's accent for red, and last session's teal
    field = rings_field(size) if pattern == "rings" else ds.pattern_field(pattern, size, rng)
    field = np.roll(field, rng.integers(ds.TILE, size=2), axis=(0, 1))[..., None]
    image = colour * (1 - field) + accent * field + rng.normal(0, 0.015, (size, size, 3))
    return np.clip(image, 0, 1).astype(np.float32)


def teal_texture(pattern: str, size: int, seed: int) -> np.ndarray:
    return texture(TEAL, pattern, size, seed)


# concept: (colour, patterns of the training images, neighbours: the known phrases nearest by hand)
CONCEPTS = {
    "teal-checker": (TEAL, ["checker"], ["blue checker", "green checker"]),
    "red-rings": (RED, ["rings"], ["red dots", "red scales"]),
    "teal-mixed": (TEAL, ["checker", "stripes", "dots", "bricks"], ["blue", "green"]),
}


def parts(image: np.ndarray, colour: np.ndarray, pattern: np.ndarray) -> tuple:
    """(colour distance, pattern distance) of an image to a reference."""
    return float(np.abs(image.reshape(-1, 3).mean(0) - colour).sum()), float(np.abs(features(image) - pattern).sum())


def distance(image, colour, pattern) -> float:
    return sum(parts(image, colour, pattern))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    fields = protocol.teach_fields()
    parser.add_argument("--concept", choices=sorted(CONCEPTS), default="teal-checker")
    parser.add_argument("--word", default="newc")
    parser.add_argument("--images", type=int, default=6, help="training images (spread over the concept's patterns)")
    parser.add_argument("--evaluate", nargs="*", default=[],
                        help="teal-mixed: patterns of the word-in-a-colour's-place table (none: no table)")
    parser.add_argument("--steps", type=int, default=fields["train_steps"].default)
    parser.add_argument("--lr", type=float, default=fields["learning_rate"].default)
    parser.add_argument("--vectors", type=int, default=fields["vectors"].default)
    parser.add_argument("--initializer", default=fields["initializer"].default, help="empty: chosen from the images")
    parser.add_argument("--samples", type=int, default=6, help="images per prompt in the comparison")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--budget", type=float, default=300.0, help="seconds teaching may take")
    parser.add_argument("--known", nargs="*", default=None, help="known phrases to compare with (default: the "
                        "concept's neighbours); the chosen initializer and its words are always added")
    args = parser.parse_args()

    models = ModelManager(["pocket"], device="cpu")
    c = models.get("pocket")
    colour, patterns, neighbours = CONCEPTS[args.concept]
    train = [texture(colour, patterns[k % len(patterns)], args.size, k) for k in range(args.images)]
    settings = TeachSettings(args.word, args.initializer, args.steps, args.lr, args.vectors, 0, 0, args.size,
                             args.size)
    started = time.perf_counter()
    teacher = Teacher(c, settings, [torch.from_numpy(t) for t in train], vocabulary=models.vocabulary("pocket"))
    chosen = time.perf_counter() - started
    rows, _ = teacher.run(lambda step, loss: None, lambda step, image: None, lambda state: None)
    seconds = time.perf_counter() - started
    initializer = teacher.initializer
    known = list(dict.fromkeys([*(neighbours if args.known is None else args.known), initializer,
                                *initializer.split()]))
    with tempfile.TemporaryDirectory() as folder:
        save_embedding(Path(folder), args.word, rows)
        assert EmbeddingLibrary(folder).apply(c) == []

    def images(prompt):
        return [generate(c, GenerationRequest(prompt=prompt, seed=100 + k, steps=20, width=args.size,
                                              height=args.size)).numpy() for k in range(args.samples)]

    rows_out, failures = [], []
    for pattern in args.evaluate:
        refs = [teal_texture(pattern, args.size, 1000 + k) for k in range(8)]
        colour = np.mean([r.reshape(-1, 3).mean(0) for r in refs], axis=0)
        features_mean = np.mean([features(r) for r in refs], axis=0)
        scores = {}
        for prompt in [f"{args.word} {pattern}", *[f"{k} {pattern}" for k in known]]:
            made = images(prompt)
            scores[prompt] = np.mean([distance(m, colour, features_mean) for m in made])
            rows_out.append((prompt, scores[prompt], np.mean([m.reshape(-1, 3).mean(0) for m in made], axis=0)))
    train_colour = np.mean([t.reshape(-1, 3).mean(0) for t in train], axis=0)
    train_features = np.mean([features(t) for t in train], axis=0)
    alone_rows = []
    for prompt in [args.word, *known]:
        made = images(prompt)
        split = np.mean([parts(m, train_colour, train_features) for m in made], axis=0)
        alone_rows.append((prompt, split.sum(), split, np.mean([m.reshape(-1, 3).mean(0) for m in made], axis=0)))
    word_distance, known = alone_rows[0][1], min(r[1] for r in alone_rows[1:])
    if not word_distance < known:
        failures.append(f"the word ({word_distance:.3f}) is not closer than the nearest known word ({known:.3f})")
    losses = teacher.losses
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}, torch {torch.__version__}")
    print(f"teaching {args.concept}: {args.steps} steps, {len(train)} images ({', '.join(patterns)}) {args.size} px, "
          f"lr {args.lr}, vectors {args.vectors} -> {teacher.settings.vectors}, initializer {args.initializer!r} -> "
          f"{initializer!r} (chosen in {chosen:.1f} s): {seconds:.1f} s in all "
          f"({(seconds - chosen) / args.steps * 1000:.0f} ms/step); loss first 50 {np.mean(losses[:50]):.4f}, "
          f"last 50 {np.mean(losses[-50:]):.4f}")
    print(f"training images' mean RGB {np.round(train_colour, 3).tolist()}")
    print("| prompt | distance to the training images | colour part | pattern part | mean RGB |")
    print("|---|---|---|---|---|")
    for prompt, d, (colour_part, pattern_part), rgb in alone_rows:
        print(f"| {prompt} | {d:.3f} | {colour_part:.3f} | {pattern_part:.3f} | {np.round(rgb, 3).tolist()} |")
    if rows_out:
        print()
        print("| prompt | distance to teal references of the pattern | mean RGB |")
        print("|---|---|---|")
    for prompt, d, rgb in rows_out:
        print(f"| {prompt} | {d:.3f} | {np.round(rgb, 3).tolist()} |")
    if seconds > args.budget:
        failures.append(f"teaching took {seconds:.0f} s, more than the budget of {args.budget:.0f} s")
    if failures:
        sys.exit("FAILED: " + "; ".join(failures))


if __name__ == "__main__":
    main()
