"""Probe: which inference-time variant of seamless tiling keeps the pocket model's colours (issue 15).

Each mode generates every prompt of the evaluator's set (scripts/evaluate_pocket.py) at one size with the
backend's default sampling (Euler, 20 steps, guidance 3, layout auto) and prints colour and pattern accuracy
with the project's classifier, and the wrap-around seam error (about 1 for a texture that tiles).

Modes:
  off        zero padding everywhere (the model's ceiling; does not tile)
  circ       the backend's seamless xy: every convolution of UNet and VAE wraps around
  vae        only the VAE wraps; the UNet keeps its zero padding
  hybNN[n]   the UNet wraps from step NN % of the schedule on (zero padding before); n: VAE not wrapped
  extPvQ     a wrap-extended canvas instead of wrapped convolutions: the UNet's input is padded with its own
             other side by P latent pixels (and the VAE's by Q) and run with zero padding, then cropped
  dc[v]      the wrapped UNet's prediction with its spatial mean per channel taken from the zero-padded UNet
             (v: the decoder's output mean likewise), so the result still tiles exactly

    .venv/bin/python benchmarks/probe_seamless.py --size 64 --modes circ,vae,ext2v0 --prompts 32 [--model DIR]
"""

import argparse
import contextlib
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import numpy as np  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from evaluate_pocket import prompt_set  # noqa: E402
from generator_backend.core import GenerationRequest, generate  # noqa: E402
from generator_backend.modifiers import seamless  # noqa: E402
from generator_backend.models import ModelManager  # noqa: E402
from generator_backend.pocket_eval import TextureClassifier, seam_error  # noqa: E402

AXES = "xy"


def wrap(x, p):
    return F.pad(x, (p, p, p, p), mode="circular")


def crop(x, p):
    return x[..., p:x.shape[-2] - p, p:x.shape[-1] - p]


@contextlib.contextmanager
def overridden(*pairs):
    """Instance ``forward``s replaced for the duration."""
    for module, forward in pairs:
        module.forward = forward
    try:
        yield
    finally:
        for module, _ in pairs:
            module.__dict__.pop("forward", None)


def extended(c, p, q):
    unet, enc, dec, f = c.unet, c.vae.encoder, c.vae.decoder, c.vae_scale_factor
    fu, fe, fd = unet.forward, enc.forward, dec.forward
    pairs = []
    if p:
        pairs.append((unet, lambda s, t, *a, **k: (crop(fu(wrap(s, p), t, *a, **k)[0], p),)))
    if q:
        pairs += [(enc, lambda x, *a, **k: crop(fe(wrap(x, q * f), *a, **k), q)),
                  (dec, lambda z, *a, **k: crop(fd(wrap(z, q), *a, **k), q * f))]
    return overridden(*pairs)


def dc_corrected(c, vae_too):
    unet, dec = c.unet, c.vae.decoder
    fu, fd = unet.forward, dec.forward

    def mean(x):
        return x.mean((-2, -1), keepdim=True)

    def unet_forward(s, t, *a, **k):
        with seamless([unet], AXES):
            wrapped = fu(s, t, *a, **k)[0]
        return (wrapped - mean(wrapped) + mean(fu(s, t, *a, **k)[0]),)

    def dec_forward(z, *a, **k):
        with seamless([dec], AXES):
            wrapped = fd(z, *a, **k)
        return wrapped - mean(wrapped) + mean(fd(z, *a, **k))

    stack = contextlib.ExitStack()
    stack.enter_context(overridden((unet, unet_forward), *([(dec, dec_forward)] if vae_too else [])))
    if not vae_too:
        stack.enter_context(seamless([c.vae], AXES))
    return stack


def make_image(c, mode, req):
    """One image of ``mode``; returns (H, W, 3) numpy."""
    if mode in ("off", "circ"):
        return generate(c, req if mode == "circ" else GenerationRequest(**{**req.__dict__, "tile_axes": ""})).numpy()
    plain = GenerationRequest(**{**req.__dict__, "tile_axes": ""})
    if mode == "vae":
        with seamless([c.vae], AXES):
            return generate(c, plain).numpy()
    if mode.startswith("ext"):
        p, q = (int(v) for v in mode[3:].split("v"))
        with extended(c, p, q), (seamless([c.vae], AXES) if not q else contextlib.nullcontext()):
            return generate(c, plain).numpy()
    if mode.startswith("dc"):
        with dc_corrected(c, mode.endswith("v")):
            return generate(c, plain).numpy()
    if mode.startswith("hyb"):
        switch, vae_too = round(int(mode[3:5]) / 100 * req.steps), not mode.endswith("n")
        with contextlib.ExitStack() as stack:
            def wrap_from(step, *_):
                if step == switch:
                    stack.enter_context(seamless([c.unet] + ([c.vae] if vae_too else []), AXES))
            if switch == 0:
                wrap_from(0)
            return generate(c, plain, wrap_from).numpy()
    raise SystemExit(f"unknown mode {mode!r}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "generator_backend" / "pocket_model")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--modes", default="off,circ,vae")
    parser.add_argument("--prompts", type=int, default=None, help="a subset covering colours and patterns equally")
    args = parser.parse_args(argv)
    c = ModelManager([f"pocket={args.model}"], device="cpu").get()
    classifier, prompts = TextureClassifier(size=args.size), prompt_set(args.prompts)
    print("| size | mode | colour | pattern | seam error | s / image | colour misses |\n|---|---|---|---|---|---|---|")
    for mode in args.modes.split(","):
        colours = patterns = 0
        misses = []
        seams, started = [], time.perf_counter()
        for colour, pattern in prompts:
            req = GenerationRequest(prompt=f"{colour} {pattern}", seed=0, steps=20, guidance=3.0, width=args.size,
                                    height=args.size, scheduler="default", layout="auto", tile_axes=AXES)
            image = make_image(c, mode, req)
            named = classifier.colour(image)
            colours += named == colour
            misses += [f"{colour}>{named}"] if named != colour else []
            patterns += classifier.pattern(image) == pattern
            seams.append(seam_error(image))
        n = len(prompts)
        print(f"| {args.size} | {mode} | {colours / n:.1%} | {patterns / n:.1%} | {np.mean(seams):.2f} | "
              f"{(time.perf_counter() - started) / n:.2f} | "
              f"{', '.join(f'{k} {misses.count(k)}' for k in sorted(set(misses)))} |", flush=True)


if __name__ == "__main__":
    main()
