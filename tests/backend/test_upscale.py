"""Tiled upscaling: exactness against the untiled net, seamless wrap, the upscale job (cancel keeps tiles,
resume makes only the missing ones), upscaler files (safetensors, weights-only .pth) and refusals."""

import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from dream_addon import protocol
from generator_backend import upscale as up
from generator_backend import upscaler_train as ut
from generator_backend.jobs import CANCELLED, DONE, FAILED, Job, JobQueue, JobStore
from generator_backend.pocket_dataset import render
from generator_backend.runner import Worker
from generator_backend.upscalers import (DEFAULT_UPSCALER, POCKET_UPSCALER, UpscalerError, UpscalerManager,
                                         load_descriptor, parse_upscaler_specs)

TOL = 1e-5  # float32: the same convolutions on different tile shapes may sum in another order


@pytest.fixture(scope="module")
def net_file(tmp_path_factory):
    """A small random SRVGGNetCompact x4 (8 features, 4 convolutions: receptive radius 6) as .safetensors."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("upscalers") / "rand-x4.safetensors"
    save_file({k: v.contiguous() for k, v in ut.build_net(8, 4).state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def net(net_file):
    return load_descriptor(net_file)


def single_cover(height, width, tile, overlap, scale, wrap_x=False, wrap_y=False):
    """(H*s, W*s) bool: output pixels that exactly one tile covers."""
    count = np.zeros((height * scale, width * scale), int)
    for t in up.plan_tiles(height, width, tile, overlap, wrap_x, wrap_y):
        for y0, _, ny in up.segments(t.y.start * scale, t.y.length * scale, height * scale):
            for x0, _, nx in up.segments(t.x.start * scale, t.x.length * scale, width * scale):
                count[y0:y0 + ny, x0:x0 + nx] += 1
    assert count.min() >= 1  # every pixel is covered
    return count == 1


def noise_image(height, width, seed=0):
    return np.random.default_rng(seed).random((height, width, 3)).astype(np.float32)


def test_single_cover_pixels_are_the_untiled_net(net):
    """Where one tile covers a pixel, the tiled result is the untiled net's (overlap = the receptive radius)."""
    radius = up.receptive_radius(net)
    assert radius == 6
    image = noise_image(70, 90)
    untiled = up.run_net(net, image)
    tiled = up.upscale_image(net, image, tile=32, overlap=radius)
    alone = single_cover(70, 90, 32, radius, 4)
    assert 0.3 < alone.mean() < 1  # both kinds of pixels are there
    assert np.abs(tiled - untiled)[alone].max() <= TOL
    # In the blend zones the tiles' own border effects are faded out, not removed: a random net's
    # are large; what is left stays well below them.
    assert np.abs(tiled - untiled)[~alone].max() < 0.2


def test_one_tile_is_the_untiled_net_bit_for_bit(net):
    image = noise_image(40, 56)
    np.testing.assert_array_equal(up.upscale_image(net, image, tile=64, overlap=8), up.run_net(net, image))


def test_blend_weights_sum_to_one():
    """A fading-out tile and the next fading-in one sum to 1 (the normalisation changes nothing there)."""
    for fade in (1, 5, 24):
        rise = up.ramp(2 * fade, fade, True, False)[:fade]
        fall = up.ramp(2 * fade, fade, False, True)[fade:]
        np.testing.assert_allclose(rise + fall, 1.0, atol=1e-12)
    spans = up.axis_spans(300, 64, 16, wrap=False)
    assert spans[0].start == 0 and spans[-1].start + spans[-1].length == 300
    assert all(s.length <= 64 for s in spans)
    wrapped = up.axis_spans(300, 64, 16, wrap=True)
    assert wrapped[0].start < 0 and all(s.fade_in and s.fade_out for s in wrapped)


def test_wrapped_tiles_are_the_net_on_the_periodic_image(net):
    """On seamless axes the tiles read around the edges: single-cover pixels equal the untiled net run on the
    image padded periodically, including at the seam."""
    radius = up.receptive_radius(net)
    image = noise_image(48, 80, seed=2)
    pad = radius + 2
    periodic = up.run_net(net, np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="wrap"))
    reference = periodic[pad * 4:-pad * 4, pad * 4:-pad * 4]
    for tile in (32, 200):  # several tiles; one tile blended onto itself around the torus
        tiled = up.upscale_image(net, image, tile=tile, overlap=radius, wrap_x=True, wrap_y=True)
        alone = single_cover(48, 80, tile, radius, 4, True, True)
        assert np.abs(tiled - reference)[alone].max() <= TOL
        assert np.abs(tiled - reference).max() < 0.2


def test_an_upscaled_seamless_texture_still_tiles():
    """The shipped upscaler on tileable textures. With wrapped tiles the pixels at the seam are what the net makes
    of the texture moved by half its size (seam inside): the seam is like any other line. Without wrapping
    the net's zero padding marks the borders."""
    net = UpscalerManager().get()
    for colour, pattern, seed in (("green", "bricks", 3), ("blue", "marble", 1), ("red", "waves", 2)):
        texture = render(colour, pattern, 64, seed=seed)
        moved = np.roll(texture, (32, 32), axis=(0, 1))  # the tile grid maps onto itself
        inside = np.roll(up.upscale_image(net, moved, 48, 16, True, True), (-128, -128), axis=(0, 1))
        wrapped = up.upscale_image(net, texture, 48, 16, wrap_x=True, wrap_y=True)
        plain = up.upscale_image(net, texture, 48, 16)
        band = np.zeros((256, 256), bool)
        band[:8], band[-8:], band[:, :8], band[:, -8:] = True, True, True, True
        print(f"{pattern}: seam error input {up.seam_error(texture):.3f}, wrapped {up.seam_error(wrapped, 4):.3f}, "
              f"not wrapped {up.seam_error(plain, 4):.3f}; at the seam, against the seam inside: wrapped "
              f"{np.abs(wrapped - inside)[band].max():.2e}, not wrapped {np.abs(plain - inside)[band].mean():.4f}")
        assert np.abs(wrapped - inside).max() <= TOL
        assert np.abs(plain - inside)[band].mean() > 100 * TOL


def test_factor_below_the_scale_keeps_the_seam_and_the_size(net):
    image = render("red", "checker", 32, seed=1)
    half = up.upscale_to(net, image, 2, 32, 6, wrap_x=True, wrap_y=True)
    assert half.shape == (64, 64, 3) and half.dtype == np.float32
    full = up.upscale_to(net, image, 4, 32, 6, wrap_x=True, wrap_y=True)
    assert not np.allclose(up.resized(full, 64, 64), half, atol=1e-3)  # the wrapped resize differs at the edges
    np.testing.assert_allclose(up.resized(full, 64, 64)[8:-8, 8:-8], half[8:-8, 8:-8], atol=2e-3)


# --------------------------------------------------------------------------- the job
class Collector:
    """A subscriber that records the job's events (and can ask for a cancel after N tiles)."""

    def __init__(self, job=None, cancel_after=None):
        self.events, self.job, self.cancel_after = [], job, cancel_after

    def send(self, message, arrays=None, coalesce_key=None):
        self.events.append((message, arrays))
        if self.cancel_after and message["type"] == "progress" and message.get("stage") == "tiles" \
                and message["step"] == self.cancel_after:
            self.job.cancel_requested.set()

    def tiles(self):
        return [m["step"] for m, _ in self.events if m["type"] == "progress" and m.get("stage") == "tiles"]


def run_job(worker, job_id, params, image, cancel_after=None):
    params, arrays = protocol.validate_job("upscale", params, {"init_image": image})
    job = Job(job_id, "upscale", params, arrays)
    collector = Collector(job, cancel_after)
    job.subscribe(collector)
    worker.execute(job)
    return job, collector


@pytest.fixture()
def worker(tmp_path, net_file):
    w = Worker(JobQueue(), None, JobStore(tmp_path / "out"))
    w.upscalers = UpscalerManager({"rand": net_file}, device="cpu")
    return w


def test_upscale_job_result_cancel_and_resume(worker, net):
    image = noise_image(60, 72, seed=5)
    params = {"width": 72, "height": 60, "upscaler": "rand", "tile_size": 32, "tile_overlap": 6}
    job, events = run_job(worker, "up-1", params, image, cancel_after=3)
    assert job.state == CANCELLED and events.tiles() == [1, 2, 3]
    tiles = sorted((worker.store.job_dir("up-1") / "tiles").glob("tile_*.npy"))
    assert len(tiles) == 3  # the finished tiles are kept
    job, events = run_job(worker, "up-1", params, image)  # resumed under the same id
    assert job.state == DONE and events.tiles() == list(range(1, 10))
    meta = worker.store.load_meta("up-1")
    assert meta["tiles"] == 9 and meta["tiles_made"] == 6  # only the missing ones were made
    assert not (worker.store.job_dir("up-1") / "tiles").exists()  # not needed once the result is saved
    result = events.events[-1]
    assert result[0]["type"] == "result" and (result[0]["width"], result[0]["height"]) == (288, 240)
    whole, _ = run_job(worker, "up-2", params, image)  # not interrupted
    # Kept tiles are 16-bit levels, within half a level of the net's output; the blend is a convex
    # combination of tiles, so a resumed result is within half a level of the uninterrupted one.
    resumed, uninterrupted = worker.store.load_image("up-1"), worker.store.load_image("up-2")
    np.testing.assert_allclose(resumed, uninterrupted, rtol=0, atol=0.5 / up.KEPT_LEVELS + 1e-7)
    np.testing.assert_allclose(uninterrupted, up.upscale_image(net, image, 32, 6), atol=TOL)


def test_kept_tiles_are_16_bit_and_old_float32_folders_resume_exactly(worker, net, monkeypatch):
    image = noise_image(60, 72, seed=6)
    params = {"width": 72, "height": 60, "upscaler": "rand", "tile_size": 32, "tile_overlap": 6}
    run_job(worker, "up-16", params, image, cancel_after=2)
    (first, *_) = sorted((worker.store.job_dir("up-16") / "tiles").glob("tile_*.npy"))
    stored = np.load(first)
    assert stored.dtype == np.uint16 and first.stat().st_size == stored.nbytes + 128  # half of float32
    # A folder an earlier version wrote: exact float32 tiles. It resumes, and exactly.
    with monkeypatch.context() as patched:
        patched.setattr(up, "kept", lambda output: output)
        job, _ = run_job(worker, "up-old", params, image, cancel_after=3)
    old = sorted((worker.store.job_dir("up-old") / "tiles").glob("tile_*.npy"))
    assert job.state == CANCELLED and len(old) == 3 and np.load(old[0]).dtype == np.float32
    np.save(open(old[2], "wb"), np.zeros((4, 4), np.int64))  # not a tile: made again, never a crash
    np.save(open(old[1], "wb"), np.zeros((4, 4, 3), np.float32))  # a tile of the wrong shape: made again
    job, _ = run_job(worker, "up-old", params, image)
    assert job.state == DONE and worker.store.load_meta("up-old")["tiles_made"] == 8
    run_job(worker, "up-whole", params, image)
    np.testing.assert_array_equal(worker.store.load_image("up-old"), worker.store.load_image("up-whole"))


def test_tiles_of_another_input_are_not_reused(worker):
    params = {"width": 40, "height": 40, "upscaler": "rand", "tile_size": 32, "tile_overlap": 4}
    run_job(worker, "up-3", params, noise_image(40, 40, seed=1), cancel_after=1)
    job, _ = run_job(worker, "up-3", params, noise_image(40, 40, seed=2))
    assert job.state == DONE and worker.store.load_meta("up-3")["tiles_made"] == 4


def test_upscale_job_refusals_name_the_field(worker):
    image = noise_image(16, 16)
    job, events = run_job(worker, "up-bad-1", {"width": 16, "height": 16, "upscaler": "nope"}, image)
    error = events.events[-1][0]
    assert job.state == FAILED and error["field"] == "params.upscaler" and error["allowed"] == [DEFAULT_UPSCALER,
                                                                                                "rand"]
    ok = UpscalerManager({"x2": POCKET_UPSCALER}, device="cpu")  # the scale comes from the file's metadata
    assert ok.scale("x2") == 4
    with pytest.raises(protocol.ProtocolError) as refused:  # before any job: the result would be too large
        protocol.validate_job("upscale", {"width": 2048, "height": 64, "factor": 5}, {"init_image": np.zeros(
            (64, 2048, 3), np.uint8)}, max_size=2048)
    assert refused.value.field == "params.factor" and refused.value.allowed == {"min": 1, "max": 4}
    with pytest.raises(protocol.ProtocolError) as refused:
        protocol.validate_job("upscale", {"width": 16, "height": 16, "tile_size": 64, "tile_overlap": 40},
                              {"init_image": image})
    assert refused.value.field == "params.tile_overlap" and refused.value.allowed == {"min": 0, "max": 32}
    with pytest.raises(protocol.ProtocolError) as refused:
        protocol.validate_job("upscale", {"width": 16, "height": 16}, {"init_image": np.zeros((8, 8, 3))})
    assert refused.value.field == "arrays.init_image"


def test_factor_above_the_upscalers_scale_is_refused(worker, tmp_path):
    torch.manual_seed(1)
    x2 = tmp_path / "x2.safetensors"
    from spandrel.architectures.Compact import Compact

    save_file({k: v.contiguous() for k, v in Compact(num_feat=4, num_conv=1, upscale=2).state_dict().items()},
              str(x2))
    worker.upscalers = UpscalerManager({"x2": x2}, device="cpu")
    assert worker.upscalers.scale("x2") == 2  # no metadata: spandrel detected it
    job, events = run_job(worker, "up-bad-2", {"width": 16, "height": 16, "upscaler": "x2", "factor": 3},
                          noise_image(16, 16))
    assert events.events[-1][0]["field"] == "params.factor" and events.events[-1][0]["allowed"]["max"] == 2


# --------------------------------------------------------------------------- files
def test_pth_files_load_weights_only_and_pickled_code_is_refused(tmp_path, net_file):
    from safetensors.torch import load_file

    state = load_file(str(net_file))
    weights = tmp_path / "weights.pth"
    torch.save({"params_ema": state}, weights)  # the common release layout: unwrapped by spandrel
    assert load_descriptor(weights).scale == 4

    class Payload:
        def __reduce__(self):
            return (threading.Thread, ())  # any callable: a weights-only load must not call it

    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"params": state, "x": Payload()}, f)
    with pytest.raises(UpscalerError, match="weights-only"):
        load_descriptor(evil)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(UpscalerError, match="junk"):
        UpscalerManager({"junk": junk})
    with pytest.raises(UpscalerError, match="allowed: .safetensors"):
        parse_upscaler_specs([str(tmp_path / "model.onnx")])
    assert parse_upscaler_specs([f"mine={weights}"]) == {"mine": weights}


def test_upscaler_folders_and_names(tmp_path, net_file):
    folder = tmp_path / "ups"
    folder.mkdir()
    (folder / "a.safetensors").write_bytes(net_file.read_bytes())
    (folder / "readme.txt").write_text("not a model")
    assert parse_upscaler_specs([str(folder), f"b={net_file}"]) == {"a": folder / "a.safetensors", "b": net_file}
    with pytest.raises(UpscalerError, match="no such file"):
        parse_upscaler_specs([str(tmp_path / "missing.safetensors")])


def test_the_shipped_upscaler_describes_itself_without_spandrel():
    """The welcome's list comes from the file's metadata: starting a backend does not import spandrel."""
    code = ("import sys; from generator_backend.upscalers import UpscalerManager; m = UpscalerManager(); "
            "print(m.describe()); assert 'spandrel' not in sys.modules and 'torch' not in sys.modules")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert out.returncode == 0, out.stderr
    assert "'name': 'pocket-x4', 'architecture': 'SRVGGNetCompact', 'scale': 4, 'default': True" in out.stdout
    assert POCKET_UPSCALER.stat().st_size <= 5 * 2**20


def test_training_is_seeded_and_resumes_where_it_stopped(tmp_path):
    """Batches depend on (seed, step) only; a run stopped and resumed ends with the weights of one that was not."""
    low, high = ut.batch(3, 7, 2, ut.texture_pool(3, 4))
    again = ut.batch(3, 7, 2, ut.texture_pool(3, 4))
    assert torch.equal(low, again[0]) and torch.equal(high, again[1]) and low.shape == (2, 3, 32, 32)
    whole = ut.Trainer(tmp_path / "whole", steps=4, batch_size=2, num_feat=8, num_conv=2, pool_size=4)
    whole.train(checkpoint_every=2)
    part = ut.Trainer(tmp_path / "part", steps=4, batch_size=2, num_feat=8, num_conv=2, pool_size=4)
    part.train(checkpoint_every=2, deadline_s=1e-9)  # stops at its first checkpoint, like a run cut short
    assert part.step == 2
    resumed = ut.Trainer(tmp_path / "part", steps=4, batch_size=2, num_feat=8, num_conv=2, pool_size=4)
    assert resumed.load() and resumed.step == 2
    resumed.train(checkpoint_every=2)
    for key, value in whole.net.state_dict().items():
        assert torch.equal(value, resumed.net.state_dict()[key]), key
    path = resumed.export(tmp_path / "x4.safetensors")
    assert load_descriptor(path).scale == 4


def test_a_cosine_psnr_run_from_shipped_weights_resumes_where_it_stopped(tmp_path):
    """The retraining options (start weights, clean share, cosine decay, per-patch PSNR loss) keep a run
    seeded and resumable: its checkpoint loads weights-only and the resumed run ends where an unbroken one does."""
    start = ut.Trainer(tmp_path / "start", steps=1, batch_size=2, num_feat=8, num_conv=2, pool_size=4)
    weights = start.export(tmp_path / "start.safetensors")
    options = dict(seed=1, steps=4, batch_size=2, num_feat=8, num_conv=2, pool_size=4, clean_share=0.5,
                   schedule="cosine", loss="psnr", init_from=weights)
    whole = ut.Trainer(tmp_path / "whole", **options)
    assert torch.equal(whole.net.state_dict()["body.0.weight"], start.net.state_dict()["body.0.weight"])
    whole.train(checkpoint_every=2)
    part = ut.Trainer(tmp_path / "part", **options)
    part.train(checkpoint_every=2, deadline_s=1e-9)
    resumed = ut.Trainer(tmp_path / "part", **options)
    assert resumed.load() and resumed.step == 2
    resumed.train(checkpoint_every=2)
    for key, value in whole.net.state_dict().items():
        assert torch.equal(value, resumed.net.state_dict()[key]), key
    assert whole.lr_at(0) == 1e-3 and abs(whole.lr_at(4) - 1e-5) < 1e-12  # to a hundredth
    from safetensors import safe_open

    with safe_open(str(whole.export(tmp_path / "whole.safetensors")), "pt") as f:
        assert f.metadata()["lineage"] == "0 steps, seed 0; then 4 steps, seed 1"  # where the weights came from
    assert ut.Trainer(tmp_path / "part", **{**options, "init_from": None}).load()  # resumed without --init-from
    assert resumed.lineage == "0 steps, seed 0"  # ... it still knows where its weights came from
    for change in ({"loss": "mse"}, {"schedule": "linear"}, {"clean_share": 0.9}, {"batch_size": 3}):
        name = next(iter(change))
        with pytest.raises(ValueError, match=f"{name}: the checkpoint"):  # two runs never mix silently
            ut.Trainer(tmp_path / "part", **{**options, **change}).load()
    with pytest.raises(ValueError, match="loss: 'l2' is not one of mse, psnr"):
        ut.Trainer(tmp_path / "bad", loss="l2")
    with pytest.raises(ValueError, match="clean_share: 1.5 is not between 0 and 1"):
        ut.Trainer(tmp_path / "bad", clean_share=1.5)


def test_a_widened_net_computes_what_the_narrow_one_did(tmp_path):
    """widen (net2net): more features and convolutions, the same output exactly, and spandrel loads it."""
    narrow = ut.Trainer(tmp_path / "n", steps=2, batch_size=2, num_feat=8, num_conv=5, pool_size=4)  # body.10+ sort before body.2
    narrow.train(checkpoint_every=2)  # trained a little, so no weight is still at its initial pattern
    path = narrow.export(tmp_path / "narrow.safetensors")
    wide = ut.Trainer(tmp_path / "w", num_feat=12, num_conv=7, init_from=path)
    x = torch.rand(1, 3, 20, 20)
    with torch.no_grad():
        assert torch.equal(narrow.net(x), wide.net(x))
    assert load_descriptor(wide.export(tmp_path / "wide.safetensors")).scale == 4
    with pytest.raises(ValueError, match="num_feat, num_conv"):
        ut.widen(narrow.net.state_dict(), 4, 2)
