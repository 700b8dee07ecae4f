"""Probe (issue 15): where the colour goes with seamless tiling on, the VAE and the UNet apart.

VAE rows, for each of the 64 colour x pattern procedural textures at 64 and 128 px (the project's
classifier, pocket_eval.TextureClassifier):
  trip off / xy   the VAE's own round trip, zero padding / every convolution wrapped
  ref off / xy    the reference VAE's latents (the shipped pocket model's, the latent space its UNet
                  knows) decoded by this VAE: plain latents with zero padding; border-free latents
                  (pocket_train.tileable_latents) with the decoder wrapped, which is what a wrapped UNet
                  has to make
With ``--unet`` it also generates 32 prompts at 64 px (Euler, 20 steps, guidance 3) and names the
colour of the final latents by their four channel means, nearest to the reference's latents of
procedural textures of the same pattern (plain or border-free): the UNet's colour with no decoder.

    .venv/bin/python benchmarks/probe_vae_tiling.py generator_backend/pocket_model/vae [--unet MODEL]
"""

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from generator_backend import pocket_dataset as ds  # noqa: E402
from generator_backend.core import vae_latents  # noqa: E402
from generator_backend.modifiers import seamless  # noqa: E402
from generator_backend.models import POCKET_DIR  # noqa: E402
from generator_backend.pocket_eval import TextureClassifier  # noqa: E402
from generator_backend.pocket_train import tileable_latents  # noqa: E402


def load_vae(folder):
    from diffusers import AutoencoderKL, AutoencoderTiny

    kind = json.loads((Path(folder) / "config.json").read_text())["_class_name"]
    return {"AutoencoderKL": AutoencoderKL, "AutoencoderTiny": AutoencoderTiny}[kind].from_pretrained(folder).eval()


def psnr(a, b):
    return (10 * torch.log10(4 / F.mse_loss(a, b))).item()


@torch.no_grad()
def vae_rows(vae, reference):
    scale = reference.config.scaling_factor / vae.config.scaling_factor  # reference latents in this VAE's units
    pairs = [(c, p) for c in ds.COLOURS for p in ds.PATTERNS]
    print("| size | latents | decoder | PSNR dB | colour | misses |\n|---|---|---|---|---|---|")
    for size in (64, 128):
        classifier = TextureClassifier(size=size)
        x = torch.stack([torch.from_numpy(ds.render(c, p, size, seed=100 + i))
                         for i, (c, p) in enumerate(pairs)]).permute(0, 3, 1, 2) * 2 - 1
        for name, axes in (("own round trip", ""), ("own round trip", "xy"), ("reference", ""), ("reference", "xy")):
            if name == "reference":
                latents = (tileable_latents(reference, x) if axes else vae_latents(reference, x)) * scale
            else:
                with seamless([vae], axes):
                    latents = vae_latents(vae, x)
            with seamless([vae.decoder], axes):
                y = vae.decode(latents).sample
            images = (y / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
            misses = [f"{c}>{classifier.colour(im)}" for im, (c, _) in zip(images, pairs) if classifier.colour(im) != c]
            summary = ", ".join(f"{k} {misses.count(k)}" for k in sorted(set(misses)))
            print(f"| {size} | {name} | {'wrapped' if axes else 'zero padding'} | {psnr(y, x):.1f} | "
                  f"{len(pairs) - len(misses)}/{len(pairs)} | {summary} |", flush=True)


@torch.no_grad()
def unet_rows(model, reference):
    from evaluate_pocket import prompt_set

    from generator_backend.core import GenerationRequest, generate
    from generator_backend.models import ModelManager

    c = ModelManager([f"pocket={model}"], device="cpu").get()
    scale, size = reference.config.scaling_factor, 64
    refs = {}
    for colour in ds.COLOURS:
        for pattern in ds.PATTERNS:
            x = torch.stack([torch.from_numpy(ds.render(colour, pattern, size, seed=k)) for k in range(4)])
            x = x.permute(0, 3, 1, 2) * 2 - 1
            refs[colour, pattern] = {"": (vae_latents(reference, x) * scale).mean((0, 2, 3)),
                                     "xy": (tileable_latents(reference, x) * scale).mean((0, 2, 3))}
    print("| UNet | seamless | latent colour | misses |\n|---|---|---|---|")
    for axes in ("", "xy"):
        misses = []
        for colour, pattern in prompt_set(32):
            last = {}
            generate(c, GenerationRequest(prompt=f"{colour} {pattern}", seed=7, steps=20, guidance=3.0, width=size,
                                          height=size, scheduler="default", tile_axes=axes),
                     lambda _i, _n, latents: last.update(z=latents))
            means = last["z"][0].mean((1, 2))
            named = min(ds.COLOURS, key=lambda k: (refs[k, pattern][axes] - means).norm().item())
            if named != colour:
                misses.append(f"{colour}>{named}")
        summary = ", ".join(f"{k} {misses.count(k)}" for k in sorted(set(misses)))
        print(f"| {model} | {axes or 'off'} | {32 - len(misses)}/32 | {summary} |", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("vae", type=Path, help="a VAE folder (AutoencoderKL or AutoencoderTiny)")
    parser.add_argument("--reference", type=Path, default=POCKET_DIR / "vae")
    parser.add_argument("--unet", type=Path, help="also probe this model folder's UNet (its latents' colour)")
    args = parser.parse_args(argv)
    reference = load_vae(args.reference)
    vae_rows(load_vae(args.vae), reference)
    if args.unet:
        unet_rows(args.unet, reference)


if __name__ == "__main__":
    main()
