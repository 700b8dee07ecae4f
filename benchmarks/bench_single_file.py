"""Loading a model from one single-file checkpoint against its diffusers folder (issue 17), side by side
in one run: the tiny SD, SD 2-shaped (OpenCLIP layout) and SDXL (SGM layout) models, each written as a
single file first, then loaded alternately from the folder and the file, median of N. Both sides must
give bit-identical weights (checked; it exits with an error when they do not). Also timed: building the
shipped CLIP tokenizer (clip_vocab.py), which every single file of a shipped architecture pays once
per tokenizer. Usage: .venv/bin/python benchmarks/bench_single_file.py [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def folders(models_dir):
    from generator_backend.tiny_model import ensure_tiny_model
    from generator_backend.tiny_sd2 import ensure_tiny_sd2_model
    from generator_backend.tiny_xl import ensure_tiny_xl_model

    return {"tiny (sd1, CLIP)": (ensure_tiny_model(models_dir, "tiny"), "clip"),
            "tiny-sd2 (OpenCLIP)": (ensure_tiny_sd2_model(models_dir), "openclip"),
            "tiny-xl (SGM)": (ensure_tiny_xl_model(models_dir, "tiny-xl"), "clip")}


def load(source, models_dir):
    from generator_backend.models import ModelManager

    start = time.perf_counter()
    manager = ModelManager([str(source)], device="cpu", models_dir=models_dir)
    components = manager.get()
    return time.perf_counter() - start, components


def same_weights(a, b):
    import torch

    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        x, y = getattr(a, part, None), getattr(b, part, None)
        if (x is None) != (y is None):
            sys.exit(f"{part}: only one side has it")
        if x is not None and not all(torch.equal(p, q) for p, q in zip(x.state_dict().values(),
                                                                           y.state_dict().values())):
            sys.exit(f"{part}: the two sides' weights differ")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import torch

    from generator_backend.checkpoint_convert import save_single_file
    from generator_backend.clip_vocab import clip_tokenizer, clip_vocab

    models_dir = os.environ.get("DREAM_MODELS_DIR") or None
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}")
    start = time.perf_counter()
    clip_vocab()
    vocab_s = time.perf_counter() - start
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        clip_tokenizer()
        times.append(time.perf_counter() - start)
    print(f"| shipped CLIP tokenizer | vocab from the BPE file {vocab_s:.3f} s (once) | tokenizer "
          f"{statistics.median(times):.3f} s |")
    with tempfile.TemporaryDirectory() as tmp:
        print("| model | folder s | single file s | file MB |\n|---|---|---|---|")
        for label, (folder, layout) in folders(models_dir).items():
            path = Path(tmp) / f"{folder.name}.safetensors"
            save_single_file(folder, path, text_layout=layout)
            sides = {"folder": [], "file": []}
            for _ in range(args.repeats):
                t_folder, a = load(folder, models_dir)
                t_file, b = load(path, models_dir)
                same_weights(a, b)
                sides["folder"].append(t_folder)
                sides["file"].append(t_file)
            print(f"| {label} | {statistics.median(sides['folder']):.2f} | {statistics.median(sides['file']):.2f} | "
                  f"{path.stat().st_size / 1e6:.1f} |")


if __name__ == "__main__":
    main()
