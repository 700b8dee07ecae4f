"""Evaluate a pocket model folder: colour and pattern accuracy over all 8 x 8 prompts at 64 and
128 px, and the wrap-around seam error with and without seamless tiling. Prints a markdown table.
The classifiers are first run on procedural textures of the same prompts, and on those textures
after a VAE round trip (encode, decode): those rows are the ceilings of what the model's rows can
show. Where the layout pass's "auto" turns it on (from twice the model's native size), the model
is measured both with it (the backend's default) and without.

    .venv/bin/python scripts/evaluate_pocket.py .cache/pocket_model --samples 2
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from generator_backend import pocket_dataset as ds  # noqa: E402
from generator_backend.core import GenerationRequest, encode_image, generate, uses_layout_pass  # noqa: E402
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
        def model(layout):
            return lambda colour, pattern, seed: generate(components, GenerationRequest(
                prompt=f"{colour} {pattern}", seed=seed, steps=args.steps, guidance=args.guidance,
                width=size, height=size, scheduler="euler", layout=layout)).numpy()

        def procedural(colour, pattern, seed):
            # a seed of its own per image: the random fields of wood and marble depend on the seed only
            return ds.render(colour, pattern, size, seed=(
                list(ds.COLOURS).index(colour) * len(ds.PATTERNS) + ds.PATTERNS.index(pattern)) * 1000 + seed)

        def round_trip(colour, pattern, seed):
            with torch.no_grad():
                latents = encode_image(components, torch.from_numpy(procedural(colour, pattern, seed)), None)
                image = components.vae.decode(latents / components.vae.config.scaling_factor).sample
            return (image[0] / 2 + 0.5).clamp(0, 1).permute(1, 2, 0).numpy()

        sources = {"procedural (classifier check)": procedural, "procedural through the VAE": round_trip,
                   "pocket model": model("off")}
        if uses_layout_pass(components, GenerationRequest(width=size, height=size, layout="auto")):
            sources["pocket model, layout pass"] = model("auto")
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
    print("\n| size | images | " + " | ".join(ds.PATTERNS) + " |\n|---|---|" + "---|" * len(ds.PATTERNS))
    for (source, size) in dict.fromkeys((source, size) for source, size, _ in per_pattern):
        if source.startswith("pocket model"):
            cells = (per_pattern[source, size, pattern] / (len(ds.COLOURS) * args.samples) for pattern in ds.PATTERNS)
            print(f"| {size} | {source} | " + " | ".join(f"{cell:.0%}" for cell in cells) + " |")
    seams = {}
    for tile in ("", "xy"):
        errors = [seam_error(generate(components, GenerationRequest(
            prompt=f"{c} waves", seed=s, steps=args.steps, guidance=args.guidance, width=64, height=64,
            scheduler="euler", tile_axes=tile)).numpy()) for c in ("red", "blue", "green") for s in range(2)]
        seams[tile or "off"] = float(np.mean(errors))
    print(f"\nseam error (wrap step / inner step): seamless off {seams['off']:.2f}, seamless xy {seams['xy']:.2f}")


if __name__ == "__main__":
    main()
