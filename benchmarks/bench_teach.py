"""Teach a concept to the pocket model: a colour outside its vocabulary (teal).

The pocket model knows eight colours (generator_backend/pocket_model/vocabulary.txt); teal is
none of them. The training images are procedural textures of the pocket dataset's patterns in
teal (pocket_dataset.pattern_field, colourised as pocket_dataset.render does). After teaching,
images of the word alone are compared with images of the nearest known words, the colours on
either side of teal ("blue", "green"), by a feature distance to the training images:

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

from generator_backend import pocket_dataset as ds  # noqa: E402
from generator_backend.core import GenerationRequest, generate  # noqa: E402
from generator_backend.embeddings import EmbeddingLibrary  # noqa: E402
from generator_backend.models import ModelManager  # noqa: E402
from generator_backend.pocket_eval import features  # noqa: E402
from generator_backend.teach import Teacher, TeachSettings, save_embedding  # noqa: E402

TEAL = np.array([0.05, 0.52, 0.50])


def teal_texture(pattern: str, size: int, seed: int) -> np.ndarray:
    """A pocket-dataset texture in teal (pocket_dataset.render's colouring, a colour it does not have)."""
    rng = np.random.default_rng(seed)
    accent = TEAL + (1 - TEAL) * 0.35
    field = ds.pattern_field(pattern, size, rng)
    field = np.roll(field, rng.integers(ds.TILE, size=2), axis=(0, 1))[..., None]
    image = TEAL * (1 - field) + accent * field + rng.normal(0, 0.015, (size, size, 3))
    return np.clip(image, 0, 1).astype(np.float32)


def parts(image: np.ndarray, colour: np.ndarray, pattern: np.ndarray) -> tuple:
    """(colour distance, pattern distance) of an image to a reference."""
    return float(np.abs(image.reshape(-1, 3).mean(0) - colour).sum()), float(np.abs(features(image) - pattern).sum())


def distance(image, colour, pattern) -> float:
    return sum(parts(image, colour, pattern))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--word", default="tealc")
    parser.add_argument("--patterns", nargs="+", default=["checker", "stripes", "dots", "bricks"],
                        help="patterns of the training images")
    parser.add_argument("--per-pattern", type=int, default=2, help="training images of each pattern")
    parser.add_argument("--evaluate", nargs="*", default=["checker", "stripes"],
                        help="patterns of the word-in-a-colour's-place table (none: no table)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--vectors", type=int, default=1)
    parser.add_argument("--initializer", default="green")
    parser.add_argument("--samples", type=int, default=6, help="images per prompt in the comparison")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--budget", type=float, default=300.0, help="seconds teaching may take")
    parser.add_argument("--known", nargs="+", default=["blue", "green"], help="the nearest known colours")
    args = parser.parse_args()

    models = ModelManager(["pocket"], device="cpu")
    c = models.get("pocket")
    train = [teal_texture(p, args.size, seed) for p in args.patterns for seed in range(args.per_pattern)]
    settings = TeachSettings(args.word, args.initializer, args.steps, args.lr, args.vectors, 0, 0, args.size,
                             args.size)
    teacher = Teacher(c, settings, [torch.from_numpy(t) for t in train])
    started = time.perf_counter()
    rows, _ = teacher.run(lambda step, loss: None, lambda step, image: None, lambda state: None)
    seconds = time.perf_counter() - started
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
        for prompt in [f"{args.word} {pattern}", *[f"{k} {pattern}" for k in args.known]]:
            made = images(prompt)
            scores[prompt] = np.mean([distance(m, colour, features_mean) for m in made])
            rows_out.append((prompt, scores[prompt], np.mean([m.reshape(-1, 3).mean(0) for m in made], axis=0)))
    train_colour = np.mean([t.reshape(-1, 3).mean(0) for t in train], axis=0)
    train_features = np.mean([features(t) for t in train], axis=0)
    alone_rows = []
    for prompt in [args.word, *args.known]:
        made = images(prompt)
        split = np.mean([parts(m, train_colour, train_features) for m in made], axis=0)
        alone_rows.append((prompt, split.sum(), split, np.mean([m.reshape(-1, 3).mean(0) for m in made], axis=0)))
    word_distance, known = alone_rows[0][1], min(r[1] for r in alone_rows[1:])
    if not word_distance < known:
        failures.append(f"the word ({word_distance:.3f}) is not closer than the nearest known word ({known:.3f})")
    losses = teacher.losses
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}, torch {torch.__version__}")
    print(f"teaching: {args.steps} steps, {len(train)} images ({', '.join(args.patterns)}) {args.size} px, lr {args.lr}, "
          f"{args.vectors} vector(s), initializer {args.initializer!r}: {seconds:.1f} s "
          f"({seconds / args.steps * 1000:.0f} ms/step); loss first 50 {np.mean(losses[:50]):.4f}, "
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
