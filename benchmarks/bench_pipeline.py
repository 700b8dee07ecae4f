"""Our denoising loop against diffusers' stock StableDiffusionPipeline, side by side in one run.

Both sides get the same model (its very modules), seed, scheduler, size, steps, guidance and
prompts; the benchmark first checks that they make the same image and fails loudly when they do
not (a difference in model, size or settings). Target: our loop <= 1.0x the pipeline's time.
Usage: .venv/bin/python benchmarks/bench_pipeline.py [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

from bench_common import interleaved, require_same, require_same_pixels, set_torch_threads

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from generator_backend.core import GenerationRequest, generate  # noqa: E402
from generator_backend.models import ModelManager  # noqa: E402

# (model, size, steps): the tiny test model and the shipped pocket model (the default).
CASES = (("tiny", 256, 20), ("pocket", 128, 20))
PROMPT, NEGATIVE, SEED, GUIDANCE, SCHEDULER = "red bricks", "blurry", 1, 7.5, "euler"


def stock_pipeline(c, scheduler):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def measure(manager, model, size, steps, repeats):
    from generator_backend.schedulers import make_scheduler

    c = manager.get(model)
    # The layout pass is ours alone; the stock pipeline has none, so it is off for the comparison.
    request = GenerationRequest(prompt=PROMPT, negative_prompt=NEGATIVE, seed=SEED, steps=steps, guidance=GUIDANCE,
                                width=size, height=size, scheduler=SCHEDULER, layout="off")
    pipe = stock_pipeline(c, make_scheduler(SCHEDULER, c.scheduler))

    def ours():
        return generate(c, request).numpy()

    def stock():
        return pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, guidance_scale=GUIDANCE,
                    width=size, height=size, generator=torch.Generator().manual_seed(SEED),
                    output_type="np").images[0]

    require_same("scheduler", type(pipe.scheduler).__name__, type(make_scheduler(SCHEDULER, c.scheduler)).__name__)
    require_same("modules", (pipe.unet, pipe.vae, pipe.text_encoder), (c.unet, c.vae, c.text_encoder))
    require_same_pixels(ours(), stock(), 1e-5)
    times = interleaved({"ours": ours, "stock": stock}, repeats)
    return times["ours"], times["stock"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    threads = set_torch_threads()
    manager = ModelManager([m for m, _, _ in CASES], device="cpu", models_dir=os.environ.get("DREAM_MODELS_DIR"))
    rows = []
    for model, size, steps in CASES:
        rows.append((model, size, steps, *measure(manager, model, size, steps, args.repeats)))
        print(f"measured {model}", file=sys.stderr, flush=True)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, torch {torch.__version__} ({threads} threads); {SCHEDULER}, guidance {GUIDANCE}, "
          f"median of {args.repeats}, sides interleaved; same image checked first")
    print("| model, size, steps | our loop | stock StableDiffusionPipeline | ratio ours / stock | target |")
    print("|---|---|---|---|---|")
    for model, size, steps, ours, stock in rows:
        print(f"| {model}, {size} px, {steps} | {ours:.3f} s | {stock:.3f} s | {ours / stock:.3f} | <= 1.0 |")


if __name__ == "__main__":
    main()
