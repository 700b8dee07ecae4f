"""Rate–distortion of the latent image codec against JPEG and WebP at matched sizes.

    .venv/bin/python benchmarks/bench_latent_codec.py [--size 128] [--model pocket]

Held-out images: procedural textures of the pocket dataset (seeds the trainer never draws: its
stream is one generator seeded 0, these are fresh generators seeded 10 000 and up), and a few
non-procedural images made here (a photograph-like smooth scene with shapes and text, and 1/f
noise). For every codec setting and image, JPEG and WebP get the highest quality whose file is no
larger than ours (quality 1 when even that is larger: then their size is reported as it is).
PSNR in dB over RGB in [0, 1]; SSIM on the luma (Wang et al. 2004, 11-tap Gaussian, σ 1.5).
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from generator_backend import latent_codec as lc  # noqa: E402
from generator_backend.pocket_dataset import COLOURS, PATTERNS, render  # noqa: E402


def psnr(a, b):
    return float(10 * np.log10(1 / max(np.mean((a - b) ** 2), 1e-12)))


def _gauss_blur(x, sigma=1.5, radius=5):
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    x = np.apply_along_axis(lambda r: np.convolve(r, k, mode="valid"), 0, x)
    return np.apply_along_axis(lambda r: np.convolve(r, k, mode="valid"), 1, x)


def ssim(a, b):
    """Mean SSIM of the luma of two (H, W, 3) images in [0, 1]."""
    w = np.array([0.299, 0.587, 0.114])
    x, y = a @ w, b @ w
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mx, my = _gauss_blur(x), _gauss_blur(y)
    sxx = _gauss_blur(x * x) - mx * mx
    syy = _gauss_blur(y * y) - my * my
    sxy = _gauss_blur(x * y) - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return float(s.mean())


def made_images(size):
    """Non-procedural test images: a smooth scene with shapes and text, and 1/f noise."""
    from PIL import Image, ImageDraw, ImageFilter

    yy, xx = np.mgrid[0:size, 0:size] / size
    sky = np.stack([0.3 + 0.4 * yy, 0.5 + 0.3 * yy, 0.9 - 0.3 * yy], -1)
    scene = Image.fromarray(np.uint8(sky * 255))
    draw = ImageDraw.Draw(scene)
    draw.ellipse([size * 0.1, size * 0.1, size * 0.4, size * 0.4], fill=(250, 220, 60))
    draw.rectangle([size * 0.5, size * 0.55, size * 0.9, size * 0.95], fill=(120, 60, 30))
    draw.polygon([(size * 0.45, size * 0.6), (size * 0.7, size * 0.3), (size * 0.95, size * 0.6)], fill=(180, 40, 40))
    draw.text((size * 0.05, size * 0.8), "Dream", fill=(255, 255, 255))
    scene = np.asarray(scene.filter(ImageFilter.GaussianBlur(0.6)), np.float32) / 255
    rng = np.random.default_rng(10_000)
    spectrum = np.fft.fft2(rng.normal(size=(size, size, 3)), axes=(0, 1))
    fy, fx = np.meshgrid(np.fft.fftfreq(size), np.fft.fftfreq(size), indexing="ij")
    spectrum /= np.maximum(np.hypot(fy, fx), 1 / size)[..., None]
    noise = np.real(np.fft.ifft2(spectrum, axes=(0, 1)))
    noise = (noise - noise.min()) / (noise.max() - noise.min())
    return {"scene (shapes, text)": scene, "1/f noise": noise.astype(np.float32)}


def held_out_textures(size, count):
    images = {}
    for i in range(count):
        rng = np.random.default_rng(10_000 + i)
        colour = list(COLOURS)[i % len(COLOURS)]
        pattern = PATTERNS[(i * 3) % len(PATTERNS)]
        images[f"{colour} {pattern}"] = render(colour, pattern, size, seed=int(rng.integers(2**31)))
    return images


def pillow_at_size(image, fmt, budget):
    """(bytes, decoded image) of the highest quality whose file fits ``budget`` bytes."""
    from PIL import Image

    pil = Image.fromarray(np.uint8(np.rint(image * 255)))
    best = None
    lo, hi = 1, 100
    while lo <= hi:  # size grows with quality, near enough for a bisection
        q = (lo + hi) // 2
        buf = io.BytesIO()
        pil.save(buf, fmt, quality=q)
        if len(buf.getvalue()) <= budget or best is None and q == 1:
            best = (q, buf.getvalue())
            lo = q + 1
        else:
            hi = q - 1
    if best is None:
        buf = io.BytesIO()
        pil.save(buf, fmt, quality=1)
        best = (1, buf.getvalue())
    decoded = np.asarray(Image.open(io.BytesIO(best[1])).convert("RGB"), np.float32) / 255
    return best[0], len(best[1]), decoded


SETTINGS = {
    "8 bit, 256 colours, dithered (default)": lc.CodecSettings(),
    "8 bit, no palette": lc.CodecSettings(palette=0),
    "5 bit, 64 colours, dithered": lc.CodecSettings(bits=5, palette=64),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--textures", type=int, default=8)
    parser.add_argument("--model", default="pocket")
    parser.add_argument("--denoise-steps", type=int, default=2)
    args = parser.parse_args(argv)
    from generator_backend.models import ModelManager

    components = ModelManager([args.model], device="cpu").get()
    groups = {"procedural (held out)": held_out_textures(args.size, args.textures),
              "made (non-procedural)": made_images(args.size)}
    print(f"model {args.model}, {args.size}x{args.size} px, raw RGB {3 * args.size ** 2} bytes; medians over images")
    print("| images | codec | bytes | bits/px | PSNR dB | SSIM | JPEG q | JPEG bytes | JPEG PSNR | JPEG SSIM "
          "| WebP q | WebP bytes | WebP PSNR | WebP SSIM |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    times = {"encode": [], "decode": [], "decode+denoise": []}
    for group, images in groups.items():
        ceiling = [(psnr(lc.decode_latents(components, lc.encode_latents(components, im), args.size, args.size), im))
                   for im in images.values()]
        print(f"| {group} | VAE round trip, unquantised (ceiling) | | | {statistics.median(ceiling):.2f} | | | | | | | | | |")
        for name, settings in SETTINGS.items():
            for steps in (0, args.denoise_steps):
                rows = []
                for image in images.values():
                    t = time.perf_counter()
                    data = lc.compress(components, image, settings, model=args.model)
                    times["encode"].append(time.perf_counter() - t)
                    t = time.perf_counter()
                    out = lc.decompress(components, data, steps)
                    times["decode+denoise" if steps else "decode"].append(time.perf_counter() - t)
                    jq, jn, jpeg = pillow_at_size(image, "JPEG", len(data))
                    wq, wn, webp = pillow_at_size(image, "WEBP", len(data))
                    rows.append((len(data), psnr(out, image), ssim(out, image), jq, jn, psnr(jpeg, image),
                                 ssim(jpeg, image), wq, wn, psnr(webp, image), ssim(webp, image)))
                med = [statistics.median(col) for col in zip(*rows)]
                label = f"{name}{f', {steps} denoise steps' if steps else ''}"
                print(f"| {group} | {label} | {med[0]:.0f} | {8 * med[0] / args.size ** 2:.2f} | {med[1]:.2f} | "
                      f"{med[2]:.3f} | {med[3]:.0f} | {med[4]:.0f} | {med[5]:.2f} | {med[6]:.3f} | {med[7]:.0f} | "
                      f"{med[8]:.0f} | {med[9]:.2f} | {med[10]:.3f} |")
    print()
    for key, values in times.items():
        print(f"{key}: median {statistics.median(values):.3f} s per image ({len(values)} runs)")


if __name__ == "__main__":
    main()
