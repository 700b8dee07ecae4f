"""Evaluate a pocket model folder: colour and pattern accuracy over all 8 x 8 prompts at 64 and
128 px, and the wrap-around seam error with and without seamless tiling. Prints a markdown table.
The classifiers are first run on procedural textures of the same prompts: that row is the
ceiling of what the model's row can show.

    .venv/bin/python scripts/evaluate_pocket.py .cache/pocket_model --samples 2
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from generator_backend import pocket_dataset as ds  # noqa: E402
from generator_backend.core import GenerationRequest, generate  # noqa: E402
from generator_backend.models import ModelManager  # noqa: E402
from generator_backend.pocket_eval import TextureClassifier, seam_error  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--samples", type=int, default=2, help="samples per prompt and size")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=3.0)
    args = parser.parse_args(argv)
    components = ModelManager([f"pocket={args.model}"], device="cpu").get()
    print("| size | images | colour accuracy | pattern accuracy | samples |\n|---|---|---|---|---|")
    per_pattern = {}
    for size in (64, 128):
        classifier = TextureClassifier(size=size)  # patterns have the same pixel scale at every size
        sources = {
            # a seed of its own per image: the random fields of wood and marble depend on the seed only
            "procedural (classifier check)": lambda colour, pattern, seed: ds.render(colour, pattern, size, seed=(
                list(ds.COLOURS).index(colour) * len(ds.PATTERNS) + ds.PATTERNS.index(pattern)) * 1000 + seed),
            "pocket model": lambda colour, pattern, seed: generate(components, GenerationRequest(
                prompt=f"{colour} {pattern}", seed=seed, steps=args.steps, guidance=args.guidance,
                width=size, height=size, scheduler="euler")).numpy(),
        }
        for source, make in sources.items():
            colour_hits = pattern_hits = total = 0
            for colour in ds.COLOURS:
                for pattern in ds.PATTERNS:
                    for seed in range(args.samples):
                        image = make(colour, pattern, seed)
                        colour_hits += classifier.colour(image) == colour
                        hit = classifier.pattern(image) == pattern
                        pattern_hits += hit
                        per_pattern[source, size, pattern] = per_pattern.get((source, size, pattern), 0) + hit
                        total += 1
            print(f"| {size} | {source} | {colour_hits / total:.1%} | {pattern_hits / total:.1%} | {total} |")
    # Which patterns fail: the model's accuracy per pattern, over all colours and seeds.
    print("\n| size | " + " | ".join(ds.PATTERNS) + " |\n|---|" + "---|" * len(ds.PATTERNS))
    for size in (64, 128):
        cells = (per_pattern["pocket model", size, pattern] / (len(ds.COLOURS) * args.samples)
                 for pattern in ds.PATTERNS)
        print(f"| {size} | " + " | ".join(f"{cell:.0%}" for cell in cells) + " |")
    seams = {}
    for tile in ("", "xy"):
        errors = [seam_error(generate(components, GenerationRequest(
            prompt=f"{c} waves", seed=s, steps=args.steps, guidance=args.guidance, width=64, height=64,
            scheduler="euler", tile_axes=tile)).numpy()) for c in ("red", "blue", "green") for s in range(2)]
        seams[tile or "off"] = float(np.mean(errors))
    print(f"\nseam error (wrap step / inner step): seamless off {seams['off']:.2f}, seamless xy {seams['xy']:.2f}")


if __name__ == "__main__":
    main()
