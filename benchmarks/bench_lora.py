"""LoRA overhead per denoising step (issue 17), side by side in one run: the plain model, the same
model with a LoRA unfused (peft's extra low-rank matmuls) and fused (the deltas added into the
weights for the job, restored exactly afterwards). A step is timed as one UNet call on a CFG batch
(the text encoder runs once per job); the sides are taken in turn, median and minimum reported.

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
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

from bench_common import require_same, require_same_pixels, set_torch_threads

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
    # Per step: one UNet call on a CFG batch (2 rows) at the job's latent size, the sides taken in turn.
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn((2, 4, size // 8, size // 8), generator=generator)
    embeds = torch.randn((2, 77, c.text_encoder.config.hidden_size), generator=generator)
    t = c.scheduler.timesteps[0] if len(c.scheduler.timesteps) else torch.tensor(999)
    contexts = {"plain": lambda: nullcontext(), "unfused": lambda: lora.active(c, sides["unfused"].loras, False),
                "fused": lambda: lora.active(c, sides["fused"].loras, True)}
    outs = {}
    for name, context in contexts.items():
        with torch.no_grad(), context():
            outs[name] = c.unet(latents, t, encoder_hidden_states=embeds).sample
    require_same_pixels(outs["fused"].numpy(), outs["unfused"].numpy(), 1e-4)
    times = {name: [] for name in contexts}
    for _ in range(repeats):
        for name, context in contexts.items():
            with torch.no_grad(), context():
                start = time.perf_counter()
                c.unet(latents, t, encoder_hidden_states=embeds)
                times[name].append(time.perf_counter() - start)
    lora.unload_all(c)
    return {name: (statistics.median(ts), min(ts)) for name, ts in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="UNet calls per side")
    args = parser.parse_args()
    threads = set_torch_threads()
    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{threads} threads, load average {os.getloadavg()[0]:.1f}")
    print("| model, size, LoRA rank | plain s/step | unfused s/step | fused s/step | unfused / plain | fused / plain |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for model, size, steps, rank in ROWS:
            t = measure(model, size, steps, rank, args.repeats, folder)
            cells = " | ".join(f"{t[s][0]:.4f} (min {t[s][1]:.4f})" for s in ("plain", "unfused", "fused"))
            ratios = " | ".join(f"{t[s][0] / t['plain'][0]:.3f} (min {t[s][1] / t['plain'][1]:.3f})"
                                for s in ("unfused", "fused"))
            print(f"| {model}, {size} px, r{rank} | {cells} | {ratios} |", flush=True)


if __name__ == "__main__":
    main()
