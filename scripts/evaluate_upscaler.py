"""Measure an x4 upscaler on held-out textures: PSNR and SSIM against bicubic and Lanczos.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/evaluate_upscaler.py [--upscaler FILE] [--crops DIR]

Held-out sets (seeds no training step draws; training seeds are (seed, step) pairs):
- "textures": the training generator's kind of texture (random scale, angle, colours, mixes), 256²;
- "pocket": the pocket dataset's own textures (what the pocket model makes), 256²;
each reduced x4 twice: clean (PIL bicubic, 8-bit) and degraded (blur, reduction, noise, JPEG: the
training degradations, one fixed draw per image). PSNR on [0, 1] RGB over the whole image; SSIM is
the mean over RGB channels of the standard 11x11 Gaussian (sigma 1.5) SSIM.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from generator_backend import pocket_dataset as ds  # noqa: E402
from generator_backend import upscaler_train as ut  # noqa: E402
from generator_backend.upscale import run_net, upscale_image  # noqa: E402
from generator_backend.upscalers import POCKET_UPSCALER, load_descriptor  # noqa: E402

HELD_OUT_SEED = 987_654  # training batches come from default_rng([seed, step]); these from default_rng([this, i])


def psnr(a, b) -> float:
    return float(10 * np.log10(1.0 / max(np.mean((a.astype(np.float64) - b) ** 2), 1e-12)))


def ssim(a, b) -> float:
    """Mean SSIM over channels (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03)."""
    import torch
    import torch.nn.functional as F

    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5 ** 2))
    w = torch.tensor(np.outer(g, g) / np.outer(g, g).sum(), dtype=torch.float64)[None, None].repeat(3, 1, 1, 1)
    x, y = (torch.from_numpy(np.asarray(v, np.float64)).permute(2, 0, 1)[None] for v in (a, b))

    def blur(t):
        return F.conv2d(t, w, groups=3)

    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return float(s.mean())


def held_out(kind: str, count: int, size=256):
    rng = np.random.default_rng([HELD_OUT_SEED, {"textures": 0, "pocket": 1}[kind]])
    for _ in range(count):
        if kind == "textures":
            yield ut.hr_texture(rng, size)
        else:
            yield ds.sample(rng, size)[0]


def resize_pil(low, size, method):
    from PIL import Image

    return np.asarray(ut.to_pil(low).resize((size, size), method), np.float32) / 255


def evaluate(net, count=24, crops: Path | None = None) -> dict:
    from PIL import Image

    table = {}
    for kind in ("textures", "pocket"):
        for degradation in ("clean", "degraded"):
            scores = {m: {"psnr": [], "ssim": []} for m in ("bicubic", "lanczos", "ours")}
            rng = np.random.default_rng([HELD_OUT_SEED, 7])
            for i, high in enumerate(held_out(kind, count)):
                low = ut.bicubic_down(high) if degradation == "clean" else ut.degrade(high, rng, clean_share=0)
                outs = {"bicubic": resize_pil(low, high.shape[0], Image.Resampling.BICUBIC),
                        "lanczos": resize_pil(low, high.shape[0], Image.Resampling.LANCZOS),
                        "ours": upscale_image(net, low, tile=256, overlap=16)}
                for m, out in outs.items():
                    scores[m]["psnr"].append(psnr(out, high))
                    scores[m]["ssim"].append(ssim(out, high))
                if crops is not None and i < 3:
                    crops.mkdir(parents=True, exist_ok=True)
                    nearest = resize_pil(low, high.shape[0], Image.Resampling.NEAREST)
                    row = np.concatenate([nearest, outs["bicubic"], outs["ours"], high], 1)[:128]
                    ut.to_pil(row).save(crops / f"{kind}-{degradation}-{i}.png")
            table[f"{kind}/{degradation}"] = {m: {k: float(np.mean(v)) for k, v in s.items()} for m, s in scores.items()}
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--upscaler", type=Path, default=POCKET_UPSCALER)
    parser.add_argument("--count", type=int, default=24, help="images per set")
    parser.add_argument("--crops", type=Path, help="save nearest | bicubic | ours | truth crops here")
    args = parser.parse_args(argv)
    net = load_descriptor(args.upscaler)
    assert run_net(net, np.zeros((8, 8, 3), np.float32)).shape == (32, 32, 3), "an x4 upscaler is measured here"
    table = evaluate(net, args.count, args.crops)
    print(json.dumps(table, indent=1))
    print("| set | bicubic PSNR / SSIM | Lanczos PSNR / SSIM | pocket-x4 PSNR / SSIM | gain over bicubic |")
    print("|---|---|---|---|---|")
    for name, s in table.items():
        cells = [f"{s[m]['psnr']:.2f} dB / {s[m]['ssim']:.4f}" for m in ("bicubic", "lanczos", "ours")]
        print(f"| {name} | " + " | ".join(cells) + f" | {s['ours']['psnr'] - s['bicubic']['psnr']:+.2f} dB |")


if __name__ == "__main__":
    main()
