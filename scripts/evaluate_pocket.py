"""Evaluate a pocket model folder: colour and pattern accuracy, and the wrap-around seam error,
with seamless tiling off and on, in one table. Prints markdown tables.

Rows per size: the procedural textures of the evaluated prompts (the classifiers' own ceiling)
and those textures after a VAE round trip (encode, decode: the decoder's ceiling), then the model
for each --seamless mode, with the backend's default sampling (20 steps, the model's Euler, layout
"auto", which turns the layout pass on from twice the model's native size). --layout-off adds the
model from pure noise where "auto" would use the pass. Sizes above 128 px measure --big-prompts
prompts (every colour and every pattern equally often) since they are slow on a CPU. The
"artist's phrasing" row is the demo's path: prompts worded as scripts/demo.py's
("seamless thick blue bricks texture": "seamless {colour} {pattern} texture"), at its size,
guidance and tiling.

    .venv/bin/python scripts/evaluate_pocket.py .cache/pocket_model --samples 1 --sizes 64,128,256
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from generator_backend import pocket_dataset as ds  # noqa: E402
from generator_backend.core import GenerationRequest, encode_image, generate, uses_layout_pass  # noqa: E402
from generator_backend.models import ModelManager  # noqa: E402
from generator_backend.pocket_eval import TextureClassifier, seam_error  # noqa: E402

# scripts/demo.py's defaults: its prompt's wording, canvas, guidance and seamless tiling on both axes
DEMO = {"form": "seamless {} texture", "size": 128, "guidance": 4.0, "tile": "xy"}


def prompt_set(count=None):
    """All colour x pattern pairs, or ``count`` of them covering each colour and pattern equally."""
    pairs = [(c, p) for c in ds.COLOURS for p in ds.PATTERNS]
    if count is None or count >= len(pairs):
        return pairs
    colours, patterns = list(ds.COLOURS), ds.PATTERNS
    return [(colours[i % len(colours)], patterns[(i + i // len(colours)) % len(patterns)]) for i in range(count)]


def procedural(size):
    def make(colour, pattern, seed):
        # a seed of its own per image: the random fields of wood and marble depend on the seed only
        return ds.render(colour, pattern, size, seed=(
            list(ds.COLOURS).index(colour) * len(ds.PATTERNS) + ds.PATTERNS.index(pattern)) * 1000 + seed)
    return make


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--samples", type=int, default=1, help="samples per prompt and row")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--sizes", default="64,128")
    parser.add_argument("--seamless", default="off,xy", help="tiling modes measured: off, x, y, xy")
    parser.add_argument("--big-prompts", type=int, default=16, help="prompts measured at sizes above 128 px")
    parser.add_argument("--layout-off", action="store_true", help="also the model from pure noise where "
                        "layout 'auto' would use the layout pass")
    parser.add_argument("--no-artist", action="store_true", help="leave out the artist's-phrasing row")
    parser.add_argument("--save", type=Path, help="save every generated image here as PNG, one folder per row")
    args = parser.parse_args(argv)
    components = ModelManager([f"pocket={args.model}"], device="cpu").get()
    tiles = ["" if mode == "off" else mode for mode in args.seamless.split(",")]
    print(f"{args.model}: {args.steps} steps, Euler, guidance {args.guidance}, {args.samples} sample(s) per prompt\n")
    print("| size | images | seamless | colour | pattern | seam error | images | s / image |\n"
          "|---|---|---|---|---|---|---|---|")
    per_pattern = {}

    def model(size, tile, layout, form="{}", guidance=args.guidance):
        def make(colour, pattern, seed):
            return generate(components, GenerationRequest(
                prompt=form.format(f"{colour} {pattern}"), seed=seed, steps=args.steps, guidance=guidance,
                width=size, height=size, scheduler="default", layout=layout, tile_axes=tile)).numpy()
        return make

    def row(size, name, tile, make, prompts, classifier):
        colour_hits = pattern_hits = total = 0
        seams, started = [], time.perf_counter()
        for colour, pattern in prompts:
            for seed in range(args.samples):
                image = make(colour, pattern, seed)
                if args.save and not name.startswith("procedural"):
                    from PIL import Image

                    folder = args.save / f"{size}-{name}-{tile or 'off'}".replace(" ", "_").replace(",", "")
                    folder.mkdir(parents=True, exist_ok=True)
                    Image.fromarray((image * 255).round().astype(np.uint8)).save(
                        folder / f"{colour}_{pattern}_{seed}.png")
                colour_hits += classifier.colour(image) == colour
                hit = classifier.pattern(image) == pattern
                pattern_hits += hit
                key = (size, name, tile or "off")
                per_pattern.setdefault(key, {}).setdefault(pattern, []).append(hit)
                seams.append(seam_error(image))
                total += 1
        spent = (time.perf_counter() - started) / total
        print(f"| {size} | {name} | {tile or 'off'} | {colour_hits / total:.1%} | {pattern_hits / total:.1%} | "
              f"{np.mean(seams):.2f} | {total} | {spent:.2f} |", flush=True)

    for size in (int(s) for s in args.sizes.split(",")):
        classifier = TextureClassifier(size=size)  # patterns have the same pixel scale at every size
        prompts = prompt_set(args.big_prompts if size > 128 else None)

        def round_trip(colour, pattern, seed, make=procedural(size)):
            with torch.no_grad():
                latents = encode_image(components, torch.from_numpy(make(colour, pattern, seed)), None)
                image = components.vae.decode(latents / components.vae.config.scaling_factor).sample
            return (image[0] / 2 + 0.5).clamp(0, 1).permute(1, 2, 0).numpy()

        row(size, "procedural (classifier check)", "", procedural(size), prompts, classifier)
        row(size, "procedural through the VAE", "", round_trip, prompts, classifier)
        layout = uses_layout_pass(components, GenerationRequest(width=size, height=size, layout="auto"))
        for tile in tiles:
            row(size, "pocket model" + (", layout pass" if layout else ""), tile, model(size, tile, "auto"),
                prompts, classifier)
            if layout and args.layout_off:
                row(size, "pocket model, layout off", tile, model(size, tile, "off"), prompts, classifier)
        if size == DEMO["size"] and not args.no_artist:
            row(size, "artist's phrasing, demo settings", DEMO["tile"],
                model(size, DEMO["tile"], "auto", DEMO["form"], DEMO["guidance"]), prompts, classifier)
    # Which patterns fail: the model's accuracy per pattern, over all colours and seeds.
    print("\n| size | images | seamless | " + " | ".join(ds.PATTERNS) + " |\n|---|---|---|"
          + "---|" * len(ds.PATTERNS))
    for (size, name, tile), hits in per_pattern.items():
        if not name.startswith("procedural"):
            cells = (f"{np.mean(hits[p]):.0%}" if p in hits else "-" for p in ds.PATTERNS)
            print(f"| {size} | {name} | {tile} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
