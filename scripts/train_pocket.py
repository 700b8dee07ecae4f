"""Train the pocket texture model (see generator_backend/pocket_train.py). Resumable: run it
again with the same --work folder and it continues from its last checkpoint.

    .venv/bin/python scripts/train_pocket.py --work .cache/pocket --vae-steps 1500 --unet-steps 20000 \
        --export generator_backend/pocket_model
    # continue from the shipped weights instead of from scratch:
    .venv/bin/python scripts/train_pocket.py --work .cache/pocket2 --init-from generator_backend/pocket_model \
        --vae-steps 2500 --unet-steps 30000 --export .cache/pocket_model
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from generator_backend.pocket_train import Trainer  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="checkpoint folder")
    parser.add_argument("--vae-steps", type=int, default=1500)
    parser.add_argument("--unet-steps", type=int, default=20000,
                        help="the learning rate falls to zero over the last quarter of these; raise it before "
                             "that point to extend a run without a bump")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=32, help="training image size (textures are stationary)")
    parser.add_argument("--unet-sizes", default="32,64,128,64",
                        help="canvas sizes the UNet steps cycle through (multiples of 32)")
    parser.add_argument("--tiling", default="none",
                        help="seamless modes (none, x, y, xy) the UNet and decoder steps cycle through, one per "
                             "full cycle of the stage's sizes, e.g. none,xy,none,xy,none,x,none,y")
    parser.add_argument("--decoder-steps", type=int, default=3000,
                        help="the VAE decoder alone, after the UNet, at --decoder-sizes (0 to skip)")
    parser.add_argument("--decoder-sizes", default="32,64,128",
                        help="canvas sizes the decoder steps cycle through (multiples of 32)")
    parser.add_argument("--retile-steps", type=int, default=0,
                        help="encoder and decoder together after --init-from, wrapped per --tiling, latents anchored "
                             "to the loaded VAE's, at --decoder-sizes (before the UNet steps)")
    parser.add_argument("--distil-steps", type=int, default=0,
                        help="replace the VAE by a normalisation-free one taught the loaded VAE's latent space, "
                             "at --decoder-sizes in the --tiling cycle (after --init-from, before the UNet steps)")
    parser.add_argument("--distil-anchor", type=float,
                        help="the distil stage also trains the tiny VAE's own round trip, its encoder kept near "
                             "the KL VAE's latents at this weight (default: pure distillation)")
    parser.add_argument("--mean-weight", type=float, default=0.0,
                        help="the UNet stage also learns each channel's spatial mean of the noise at this weight "
                             "(the colour; per-pixel MSE weighs it by 1/(H*W) only)")
    parser.add_argument("--vae-groups", type=int, default=16,
                        help="GroupNorm groups of the VAE (fewer keep more of the colour without a border)")
    parser.add_argument("--keep-scale", action="store_true",
                        help="keep the loaded latent scale (the loaded UNet's) instead of measuring it again")
    parser.add_argument("--init-from", type=Path,
                        help="start from an exported pocket model's weights; the step counts then train on top")
    parser.add_argument("--anchor-to", type=Path,
                        help="the exported model whose VAE latents the retile and distil stages keep (default: --init-from; "
                             "read at the start of a run, a resumed run keeps its checkpoint's)")
    parser.add_argument("--retile-decode", choices=("own", "reference"), default="own",
                        help="the latents the retile stage decodes: the VAE's own, or the anchor VAE's "
                             "(the decoder then learns exactly the UNet's latent space)")
    parser.add_argument("--lr", type=float, default=1e-3, help="the VAE and distil stages'; the retile, UNet and decoder stages take half")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-every", type=int, default=200)
    parser.add_argument("--export", type=Path, help="save the model here as a diffusers folder when done")
    parser.add_argument("--export-only", action="store_true",
                        help="export the last checkpoint without training (safe while a run is going on)")
    args = parser.parse_args(argv)
    modes = args.tiling.split(",")
    if any(m not in ("none", "x", "y", "xy") for m in modes):
        parser.error(f"--tiling: {args.tiling!r}; each mode is one of none, x, y, xy")
    trainer = Trainer(args.work, seed=args.seed, size=args.size, batch=args.batch, lr=args.lr,
                      unet_sizes=[int(s) for s in args.unet_sizes.split(",")],
                      decoder_sizes=[int(s) for s in args.decoder_sizes.split(",")],
                      tiling=["" if m == "none" else m for m in modes], vae_groups=args.vae_groups,
                      keep_scale=args.keep_scale, retile_decode=args.retile_decode,
                      distil_anchor=args.distil_anchor, mean_weight=args.mean_weight)
    if trainer.load():
        print(f"resumed at {trainer.steps}", flush=True)
    elif args.init_from:
        trainer.init_from(args.init_from, args.anchor_to)
        print(f"initialised from {args.init_from}", flush=True)
    if args.export_only:
        print(f"exported {trainer.steps} to {trainer.export(args.export)}", flush=True)
        return
    trainer.train(args.vae_steps, args.unet_steps, args.decoder_steps, args.checkpoint_every,
                  report=lambda line: print(line, flush=True), retile_steps=args.retile_steps,
                  distil_steps=args.distil_steps)
    if args.export:
        print(f"exported to {trainer.export(args.export)}", flush=True)


if __name__ == "__main__":
    main()
