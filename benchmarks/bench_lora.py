"""LoRA overhead per denoising step (issue 17), side by side in one run: the plain model, the same
model with a LoRA unfused (peft's extra low-rank matmuls) and fused (the deltas added into the
weights for the job, restored exactly afterwards).

Every side runs the same model, size, steps, seed and sampler (checked; it exits with an error when
they differ); the fused and unfused sides must make the same image (max difference <= 1e-4), and the
plain side must equal the model before any LoRA was loaded. (Fused and unfused sum the same terms
in another order; over 20 steps at 256 px the fp32 rounding reached 2.7e-5, hence 1e-4.) LoRAs are made here with peft.
Usage: .venv/bin/python benchmarks/bench_lora.py [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

from bench_common import interleaved, require_same, require_same_pixels, set_torch_threads

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

ROWS = (("tiny", 256, 10, 4), ("tiny", 256, 10, 32), ("pocket", 128, 10, 4))  # model, size, steps, LoRA rank
SEED, SCHEDULER = 3, "euler"


def measure(model, size, steps, rank, repeats, folder):
    import torch

    from generator_backend.core import GenerationRequest, generate
    from generator_backend.models import ModelManager
    from generator_backend.techniques import lora
    from generator_backend.tiny_lora import build_lora

    manager = ModelManager([model], device="cpu", models_dir=os.environ.get("DREAM_MODELS_DIR"))
    c = manager.get()
    before = generate(c, GenerationRequest(prompt="red bricks", seed=SEED, steps=steps, width=size, height=size,
                                           scheduler=SCHEDULER, layout="off"))
    path = build_lora(c, Path(folder) / f"{model}-r{rank}.safetensors", seed=rank, rank=rank, text_encoder=True)

    def request(loras=(), fuse=False):
        return GenerationRequest(prompt="red bricks", seed=SEED, steps=steps, width=size, height=size,
                                 scheduler=SCHEDULER, lora_fuse=fuse, layout="off",
                                 loras=[lora.LoraTerm("bench", 1.0, str(path))] if loras else [])

    sides = {"plain": request(), "unfused": request(True), "fused": request(True, True)}
    for name, req in sides.items():  # the same model, size and settings on every side
        require_same(f"{name} settings", (req.width, req.height, req.steps, req.seed, req.scheduler, req.prompt),
                     (size, size, steps, SEED, SCHEDULER, "red bricks"))
    images = {name: generate(c, req) for name, req in sides.items()}
    require_same_pixels(images["fused"].numpy(), images["unfused"].numpy(), 1e-4)
    require_same_pixels(images["plain"].numpy(), before.numpy(), 0.0)  # loading a LoRA left the model as it was
    if torch.equal(images["plain"], images["unfused"]):
        raise SystemExit("the LoRA changed nothing: the benchmark would time no work")
    times = interleaved({name: (lambda req=req: generate(c, req)) for name, req in sides.items()}, repeats)
    lora.unload_all(c)
    return {name: t / steps for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    threads = set_torch_threads()
    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{threads} threads, load average {os.getloadavg()[0]:.1f}")
    print("| model, size, steps, LoRA rank | plain s/step | unfused s/step | fused s/step | unfused / plain | "
          "fused / plain |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for model, size, steps, rank in ROWS:
            t = measure(model, size, steps, rank, args.repeats, folder)
            print(f"| {model}, {size} px, {steps}, r{rank} | {t['plain']:.4f} | {t['unfused']:.4f} | "
                  f"{t['fused']:.4f} | {t['unfused'] / t['plain']:.3f} | {t['fused'] / t['plain']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
