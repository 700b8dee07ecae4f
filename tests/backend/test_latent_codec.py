"""The latent image codec on the shipped pocket model: exact maths, validated files, tiling."""

import io
import json
import struct

import numpy as np
import pytest

from generator_backend import latent_codec as lc
from generator_backend.pocket_dataset import render
from generator_backend.pocket_eval import seam_error


@pytest.fixture(scope="module")
def pocket():
    from generator_backend.models import ModelManager

    return ModelManager(["pocket"], device="cpu").get()


@pytest.fixture(scope="module")
def texture():
    return render("blue", "bricks", 64, seed=3)


@pytest.fixture(scope="module")
def encoded(pocket, texture):
    return lc.compress(pocket, texture, lc.CodecSettings(), model="pocket")


def psnr(a, b):
    return 10 * np.log10(1 / np.mean((a - b) ** 2))


def test_round_trip_is_deterministic(pocket, texture, encoded):
    assert lc.compress(pocket, texture, lc.CodecSettings(), model="pocket") == encoded
    first = lc.decompress(pocket, encoded)
    assert np.array_equal(first, lc.decompress(pocket, encoded))
    assert first.shape == texture.shape and first.dtype == np.float32


def test_zero_denoise_steps_is_the_plain_decode_of_the_dequantised_latent(pocket, encoded):
    # Parse the file by hand, as its format says, and decode with the VAE directly.
    import torch
    from PIL import Image

    magic, version, head_len = struct.unpack_from("!4sBI", encoded)
    assert (magic, version) == (b"DLAT", 1)
    header = json.loads(encoded[9:9 + head_len])
    c, h, w = header["latent_shape"]
    n = header["palette"]
    palette = np.frombuffer(encoded[9 + head_len:9 + head_len + n * c], np.uint8).reshape(n, c)
    indices = np.asarray(Image.open(io.BytesIO(encoded[9 + head_len + n * c:])))
    codes = palette[indices].transpose(2, 0, 1).astype(np.float32)
    lo, hi = (np.array(header[k], np.float32)[:, None, None] for k in ("lo", "hi"))
    latents = (lo + codes / 255 * (hi - lo)).astype(np.float32)
    with torch.no_grad():
        z = torch.from_numpy(latents)[None] / pocket.vae.config.scaling_factor
        expected = ((pocket.vae.decode(z).sample[0].permute(1, 2, 0).numpy() + 1) / 2).clip(0, 1)
    assert np.array_equal(lc.decompress(pocket, encoded, denoise_steps=0), expected)


def test_quality_follows_the_vae_and_bits(pocket, texture):
    ceiling = psnr(lc.decode_latents(pocket, lc.encode_latents(pocket, texture), 64, 64), texture)
    eight = psnr(lc.decompress(pocket, lc.compress(pocket, texture, lc.CodecSettings(palette=0))), texture)
    three = psnr(lc.decompress(pocket, lc.compress(pocket, texture, lc.CodecSettings(bits=3, palette=0))), texture)
    assert ceiling - 0.1 <= eight <= ceiling + 0.1  # 8-bit codes are below the VAE's own error
    assert three < eight - 1.0  # and coarser codes cost quality


def test_quantise_error_is_at_most_half_a_step():
    rng = np.random.default_rng(0)
    latents = rng.normal(size=(4, 8, 8)).astype(np.float32)
    for bits in (1, 4, 8):
        codes, lo, hi = lc.quantise(latents, bits)
        step = (hi - lo) / ((1 << bits) - 1)
        err = np.abs(lc.dequantise(codes, bits, lo, hi) - latents)
        assert (err <= step[:, None, None] / 2 + 1e-5).all()


def test_palette_is_exact_when_it_has_room_and_nearest_without_dither():
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 4, size=(4, 6, 6)).astype(np.uint8)  # at most 4**4 = 256 colours, fewer here
    points = codes.reshape(4, -1).T
    palette = lc.fit_palette(points, 256)
    assert np.array_equal(palette[lc.palettise(codes, palette, dither=False)].transpose(2, 0, 1), codes)
    small = lc.fit_palette(rng.integers(0, 256, size=(500, 4)).astype(np.uint8), 16)
    idx = lc.palettise(codes, small, dither=False).ravel()
    dist = ((points[:, None, :].astype(int) - small[None].astype(int)) ** 2).sum(-1)
    assert np.array_equal(dist[np.arange(len(idx)), idx], dist.min(1))


def box_mean(a, k):
    """Mean over each k × k window (wrapping), per channel."""
    return sum(np.roll(a, (dy, dx), axis=(0, 1)) for dy in range(k) for dx in range(k)) / k / k


def test_dithering_trades_pixel_error_for_local_means(pocket, texture):
    # Error diffusion (Floyd and Steinberg 1976) raises each pixel's error but keeps local means.
    codes, _, _ = lc.quantise(lc.encode_latents(pocket, texture), 8)
    palette = lc.fit_palette(codes.reshape(4, -1).T, 8)
    x = codes.transpose(1, 2, 0).astype(np.float64)
    plain, dithered = (palette[lc.palettise(codes, palette, d)].astype(np.float64) for d in (False, True))
    assert np.mean((dithered - x) ** 2) > np.mean((plain - x) ** 2)
    local = [np.mean((box_mean(y, 4) - box_mean(x, 4)) ** 2) for y in (plain, dithered)]
    assert local[1] < 0.9 * local[0]


def test_seamless_round_trip_tiles(pocket):
    tile = render("red", "checker", 64, seed=7)  # tileable by construction
    plain = lc.decompress(pocket, lc.compress(pocket, tile, lc.CodecSettings()))
    wrapped = lc.decompress(pocket, lc.compress(pocket, tile, lc.CodecSettings(tile_axes="xy")))
    assert seam_error(wrapped) <= 1.1
    assert seam_error(wrapped) < seam_error(plain)


def test_odd_sizes_are_padded_and_cropped(pocket):
    image = render("green", "waves", 64, seed=2)[:50, :37]
    out = lc.decompress(pocket, lc.compress(pocket, image))
    assert out.shape == (50, 37, 3)
    assert psnr(out, image) > 20


def test_denoise_steps_change_the_result_deterministically(pocket, encoded):
    plain = lc.decompress(pocket, encoded)
    steps = []
    one = lc.decompress(pocket, encoded, denoise_steps=2, on_step=lambda i, n: steps.append((i, n)))
    assert np.array_equal(one, lc.decompress(pocket, encoded, denoise_steps=2))
    assert not np.array_equal(one, plain)
    assert steps == [(1, 2), (2, 2)]


def test_denoise_starts_at_the_quantisation_noise_level():
    acp = np.linspace(0.9999, 0.005, 1000)
    sigmas = np.sqrt((1 - acp) / acp)
    ts = lc.denoise_timesteps(acp, 0.3, 3)
    assert sigmas[ts[0]] >= 0.3 > sigmas[ts[0] - 1]
    assert ts == sorted(ts, reverse=True) and len(ts) == 3 and ts[-1] < ts[0]


@pytest.mark.parametrize("settings, field", [
    (lc.CodecSettings(bits=0), "bits"), (lc.CodecSettings(bits=9), "bits"),
    (lc.CodecSettings(palette=1), "palette"), (lc.CodecSettings(palette=300), "palette"),
    (lc.CodecSettings(tile_axes="z"), "tile_axes"),
])
def test_settings_out_of_range_name_the_field(pocket, texture, settings, field):
    with pytest.raises(lc.CodecError, match=field):
        lc.compress(pocket, texture, settings)


def test_every_truncation_is_refused_clearly(pocket, encoded):
    for n in range(len(encoded)):
        with pytest.raises(lc.CodecError):
            lc.decompress(pocket, encoded[:n])


def test_foreign_and_damaged_files_are_refused(pocket, encoded, models_dir):
    from generator_backend.models import ModelManager

    with pytest.raises(lc.CodecError, match="not a latent image file"):
        lc.decompress(pocket, b"\x89PNG\r\n\x1a\n" + encoded[8:])
    with pytest.raises(lc.CodecError, match="version 2"):
        lc.decompress(pocket, encoded[:4] + b"\x02" + encoded[5:])
    tiny = ModelManager(["tiny"], device="cpu", models_dir=models_dir).get()
    with pytest.raises(lc.CodecError, match="family") as err:
        lc.decompress(tiny, encoded, model_name="tiny")
    assert "'pocket'" in str(err.value)  # names the model to use
    rng = np.random.default_rng(0)
    for _ in range(300):  # seeded byte damage: a clear refusal or a valid decode, never a crash
        damaged = bytearray(encoded)
        for pos in rng.integers(0, len(damaged), size=rng.integers(1, 4)):
            damaged[pos] = int(rng.integers(256))
        try:
            lc.unpack(bytes(damaged))
        except lc.CodecError:
            pass


def test_header_fields_are_typed(encoded):
    header, _ = lc.read_header(encoded)
    for name, bad in [("bits", True), ("width", 1.5), ("latent_shape", [4, 16]), ("lo", [0.0]),
                      ("noise_std", float("nan")), ("palette", "256"), ("latent_shape", [4, 99999, 16])]:
        broken = dict(header, **{name: bad})
        head = json.dumps(broken).encode()
        data = struct.pack("!4sBI", b"DLAT", 1, len(head)) + head
        with pytest.raises(lc.CodecError, match=name if name != "latent_shape" else "latent_shape"):
            lc.read_header(data)


def test_command_line_round_trip_and_refusal(tmp_path, texture):
    import os
    import subprocess
    import sys

    from PIL import Image

    from tests.backend.conftest import REPO

    source = tmp_path / "in.png"
    Image.fromarray(np.uint8(np.rint(texture * 255))).save(source)
    env = dict(os.environ, PYTHONPATH=str(REPO))

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "generator_backend", *args], capture_output=True, text=True,
                              env=env, cwd=REPO, timeout=120)

    packed = tmp_path / "in.dlat"
    done = cli("compress", str(source), "-o", str(packed), "--device", "cpu", "--palette", "64")
    assert done.returncode == 0, done.stderr
    assert packed.stat().st_size < source.stat().st_size
    out = tmp_path / "out.png"
    done = cli("decompress", str(packed), "-o", str(out), "--device", "cpu")
    assert done.returncode == 0, done.stderr
    decoded = np.asarray(Image.open(out), np.float32) / 255
    assert decoded.shape == texture.shape and psnr(decoded, texture) > 25
    refused = cli("decompress", str(source), "-o", str(tmp_path / "x.png"), "--device", "cpu")
    assert refused.returncode == 2 and "not a latent image file" in refused.stderr
    assert "Traceback" not in refused.stderr
    refused = cli("compress", str(source), "-o", str(packed), "--bits", "12")
    assert refused.returncode == 2 and "bits must be" in refused.stderr
