"""Train the offline x4 upscaler (see generator_backend/upscaler_train.py). Resumable: run it again with
the same --work folder and it continues from its last checkpoint. Run it gently on a shared machine:

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python scripts/train_upscaler.py --work .cache/upscaler \
        --steps 1800 --export generator_backend/upscaler_model/pocket-x4.safetensors

(the first of the shipped pocket-x4's four runs, 25 minutes of one core; the other three went on from
its weights with --init-from, --loss psnr --schedule cosine --clean-share 0.9: see benchmarks/RESULTS.md
and training_log.jsonl beside the file; a resumed run must repeat its options, which the checkpoint checks)
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from generator_backend.upscaler_train import CLEAN_SHARE, LOSSES, SCHEDULES, Trainer  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="checkpoint folder")
    parser.add_argument("--steps", type=int, default=1800)
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--num-feat", type=int, default=32)
    parser.add_argument("--num-conv", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clean-share", type=float, default=CLEAN_SHARE, help="share of clean bicubic inputs")
    parser.add_argument("--schedule", choices=SCHEDULES, default="linear", help="learning-rate decay")
    parser.add_argument("--loss", choices=LOSSES, default="mse", help="mse over the batch, or each patch's PSNR")
    parser.add_argument("--init-from", type=Path, help="start from these .safetensors weights (a new run only)")
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--deadline-min", type=float, help="stop (checkpointed) after this many minutes")
    parser.add_argument("--export", type=Path, help="write the weights here as .safetensors when done")
    parser.add_argument("--export-only", action="store_true", help="export the last checkpoint without training")
    args = parser.parse_args(argv)
    trainer = Trainer(args.work, seed=args.seed, steps=args.steps, batch_size=args.batch, lr=args.lr,
                      num_feat=args.num_feat, num_conv=args.num_conv, clean_share=args.clean_share,
                      schedule=args.schedule, init_from=args.init_from, loss=args.loss)
    if trainer.load():
        print(f"resumed at {trainer.step}", flush=True)
    if not args.export_only:
        trainer.train(args.checkpoint_every, args.deadline_min and args.deadline_min * 60)
    if args.export:
        print(f"exported step {trainer.step} to {trainer.export(args.export)}", flush=True)


if __name__ == "__main__":
    main()
