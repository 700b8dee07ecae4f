"""Teach a concept to the pocket model: a colour outside its vocabulary (teal) on its checker.

The pocket model knows eight colours (generator_backend/pocket_model/vocabulary.txt); teal is
none of them. The training images are procedural teal checkers drawn like the pocket dataset's
textures (pocket_dataset.pattern_field, colourised as pocket_dataset.render does). After teaching,
images of the new word are compared with images of the nearest known words ("blue checker",
"green checker": the colours on either side of teal, the same pattern) by a feature distance to the
training images:

    d(image) = |mean RGB − training mean RGB|₁ + |pattern features − training mean features|₁

(pocket_eval.features: radial and angular power spectrum and grey-level histogram of the grey
image, colour-blind). Smaller is closer. The script exits with an error when the word is not
closer than every known prompt, or when teaching took longer than --budget seconds.

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


def distance(image: np.ndarray, colour: np.ndarray, pattern: np.ndarray) -> float:
    return float(np.abs(image.reshape(-1, 3).mean(0) - colour).sum() + np.abs(features(image) - pattern).sum())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--word", default="tealchk")
    parser.add_argument("--pattern", default="checker")
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--vectors", type=int, default=1)
    parser.add_argument("--initializer", default="texture")
    parser.add_argument("--samples", type=int, default=8, help="images per prompt in the comparison")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--budget", type=float, default=300.0, help="seconds teaching may take")
    parser.add_argument("--known", nargs="+", default=["blue checker", "green checker"])
    args = parser.parse_args()

    models = ModelManager(["pocket"], device="cpu")
    c = models.get("pocket")
    train = [teal_texture(args.pattern, args.size, seed) for seed in range(args.images)]
    colour = np.mean([t.reshape(-1, 3).mean(0) for t in train], axis=0)
    pattern = np.mean([features(t) for t in train], axis=0)
    settings = TeachSettings(args.word, args.initializer, args.steps, args.lr, args.vectors, 0, 0, args.size, args.size)
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

    table = {}
    for prompt in [args.word, f"{args.word} {args.pattern}", *args.known]:
        made = images(prompt)
        table[prompt] = (np.mean([distance(m, colour, pattern) for m in made]),
                         np.mean([m.reshape(-1, 3).mean(0) for m in made], axis=0))
    losses = teacher.losses
    print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}, torch {torch.__version__}")
    print(f"teaching: {args.steps} steps, {args.images} images {args.size} px, lr {args.lr}, {args.vectors} vector(s), "
          f"initializer {args.initializer!r}: "
          f"{seconds:.1f} s ({seconds / args.steps * 1000:.0f} ms/step); loss first 50 {np.mean(losses[:50]):.4f}, "
          f"last 50 {np.mean(losses[-50:]):.4f}")
    print(f"training images: mean RGB {np.round(colour, 3).tolist()}")
    print("| prompt | distance to the training images | mean RGB |")
    print("|---|---|---|")
    for prompt, (d, rgb) in table.items():
        print(f"| {prompt} | {d:.3f} | {np.round(rgb, 3).tolist()} |")
    word_distance = table[args.word][0]
    known = min(table[p][0] for p in args.known)
    failures = []
    if not word_distance < known:
        failures.append(f"the word ({word_distance:.3f}) is not closer than the nearest known prompt ({known:.3f})")
    if seconds > args.budget:
        failures.append(f"teaching took {seconds:.0f} s, more than the budget of {args.budget:.0f} s")
    if failures:
        sys.exit("FAILED: " + "; ".join(failures))


if __name__ == "__main__":
    main()
