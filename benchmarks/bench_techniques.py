"""Denoising-core benchmarks (issue 3): tiny model, 256 px, 20 steps, side by side in one run.

Seconds per image for plain generation, each technique alone (the layout pass included) and a
combined job; UNet calls
per step for prompt ensembles of K = 2 and 4 and their wall time against K separate stock
pipeline calls; infusion overhead against plain.
Usage: .venv/bin/python benchmarks/bench_techniques.py [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bench_common import timed

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from generator_backend.core import GenerationRequest, PromptTerm, generate  # noqa: E402
from generator_backend.models import ModelManager  # noqa: E402

SIZE, STEPS = 256, 20




def count_unet_calls(components, request):
    calls = []
    hook = components.unet.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        generate(components, request)
    finally:
        hook.remove()
    return len(calls) / request.steps


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    manager = ModelManager(["tiny", "tiny-b"], device="cpu")
    a, b = manager.get("tiny"), manager.get("tiny-b")
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.random((SIZE, SIZE, 3), dtype=np.float32))
    bias = torch.from_numpy(rng.random((SIZE, SIZE, 3), dtype=np.float32))
    mask = torch.zeros(SIZE, SIZE)
    mask[64:192, 64:192] = 1
    base = dict(prompt="red bricks", seed=1, steps=STEPS, width=SIZE, height=SIZE, scheduler="euler")
    infuse = dict(infusion_images=[bias], infusion_weights={"down1": 0.3, "mid": 0.5, "up0": 0.3})
    cases = {
        "plain txt2img": (a, {}),
        "prompt ensemble K=2": (a, {"prompt": "", "prompts": [PromptTerm("red bricks", .5), PromptTerm("blue", .5)]}),
        "img2img, strength 1.0": (a, {"init_image": image, "strength": 1.0}),
        "inpainting (4-channel)": (a, {"init_image": image, "mask": mask}),
        "seamless tiling xy": (a, {"tile_axes": "xy"}),
        "layout pass (half-size seamless first)": (a, {"layout": "on"}),
        "infusion, 1 biasing image": (a, infuse),
        "model ensemble, 2 models": ([(a, .5), (b, .5)], {}),
        "combined: K=2 ensemble + inpaint + tiling + infusion": (a, {
            "prompt": "", "prompts": [PromptTerm("red bricks", .5), PromptTerm("blue", .5)],
            "init_image": image, "mask": mask, "tile_axes": "xy", **infuse}),
    }
    seconds = {}
    for name, (models, extra) in cases.items():
        request = GenerationRequest(**{**base, **extra})
        seconds[name] = timed(lambda: generate(models, request), args.repeats)

    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=a.vae, text_encoder=a.text_encoder, tokenizer=a.tokenizer, unet=a.unet,
                                   scheduler=a.scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    ensembles = {}
    for k in (2, 4):
        terms = [PromptTerm(f"prompt {i}", 1 / k) for i in range(k)]
        request = GenerationRequest(**{**base, "prompt": "", "prompts": terms})
        ours = timed(lambda: generate(a, request), args.repeats)
        separate = timed(lambda: [pipe(t.text, num_inference_steps=STEPS, width=SIZE, height=SIZE,
                                       generator=torch.Generator().manual_seed(1)) for t in terms], args.repeats)
        ensembles[k] = (count_unet_calls(a, request), ours, separate)

    print(f"tiny model, {SIZE} px, {STEPS} steps, Euler, CPU ({os.cpu_count()} cores), median of {args.repeats}")
    print("| job | s / image | vs plain |\n|---|---|---|")
    for name, s in seconds.items():
        print(f"| {name} | {s:.3f} | {s / seconds['plain txt2img']:.2f}x |")
    print("\n| prompt ensemble | UNet calls per step | our loop | K separate pipeline calls | ratio |")
    print("|---|---|---|---|---|")
    for k, (calls, ours, separate) in ensembles.items():
        print(f"| K = {k} | {calls:g} (target 1) | {ours:.3f} s | {separate:.3f} s | {ours / separate:.2f} |")
    print(f"\ninfusion overhead with one biasing image: "
          f"{seconds['infusion, 1 biasing image'] / seconds['plain txt2img']:.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()
