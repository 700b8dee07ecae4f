"""Latent walks: the maths of the frame plans, batching, and the walk job over the socket."""

import json
import os

import numpy as np
import pytest
import torch

from dream_addon import protocol
from generator_backend.core import GenerationRequest, generate
from generator_backend.jobs import JobStore
from generator_backend.techniques import request_from_params
from generator_backend.walks import WalkPlan, lerp, noise_for_seed, slerp
from tests.backend.test_server import connect, events_until_terminal


def test_slerp_endpoints_exact_and_norm_kept():
    a, b = noise_for_seed(1, (1, 4, 16, 16)), noise_for_seed(2, (1, 4, 16, 16))
    torch.testing.assert_close(slerp(a, b, 0.0), a, rtol=0, atol=1e-6)
    torch.testing.assert_close(slerp(a, b, 1.0), b, rtol=0, atol=1e-6)
    mid = slerp(a, b, 0.5)
    expected = (a.norm() + b.norm()) / 2
    assert abs(mid.norm() - expected) / expected < 0.02  # slerp keeps the norm of noise
    assert lerp(a, b, 0.5).norm() < 0.8 * expected  # lerp shrinks it (by ~1/√2 for independent noise)


def walk_params(**kw):
    params = protocol.validate_params({"prompt": "red bricks", "width": 64, "height": 64, "steps": 3,
                                       "scheduler": "euler", "seed": 7, **kw}, protocol.walk_fields())
    return params


def frames(components, params, ks, batch=True):
    request = request_from_params(params, {})
    plan = WalkPlan(components, request)
    if batch:
        request.frame_noise, request.frame_embeds = plan.batch(ks)
        return generate(components, request).numpy()
    out = []
    for k in ks:
        request.frame_noise, request.frame_embeds = plan.batch([k])
        out.append(generate(components, request).numpy()[0])
    return np.stack(out)


def test_circular_walk_loops_and_keeps_unit_variance(components):
    n = 6
    params = walk_params(walk="circular", frames=n + 1, period=n)
    plan = WalkPlan(components, request_from_params(params, {}))
    for k in range(n + 1):
        noise, embedding = plan.frame(k)
        assert embedding is None and abs(noise.var().item() - 1) < 0.15
    images = frames(components, params, [0, n])
    np.testing.assert_allclose(images[1], images[0], atol=1e-5)  # frame N equals frame 0
    torch.testing.assert_close(plan.frame(n)[0], plan.frame(0)[0], rtol=0, atol=1e-5)
    loop = [plan.frame(k)[0] for k in range(n)]
    closest = min((a - b).abs().max().item() for i, a in enumerate(loop) for b in loop[i + 1:])
    assert closest > 0.1  # no duplicated end frame within a loop


def test_infusion_and_the_circular_walk_draw_different_noise(components):
    """Each purpose has a noise stream of its own, derived from the job's seed."""
    from generator_backend.core import stream_seed
    from generator_backend.techniques.infusion import infusion_noise

    request = request_from_params(walk_params(walk="circular", frames=4), {})
    plan = WalkPlan(components, request)
    second, bias = plan.second[0].flatten(), infusion_noise(request.seed, plan.shape[1:]).flatten()
    main = plan.noise[0].flatten()
    for a, b in ((second, bias), (second, main), (bias, main)):
        assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1]) < 0.2  # independent draws, not the same noise
    seeds = {stream_seed(request.seed, p) for p in ("main", "layout", "infusion", "circular")}
    assert len(seeds) == 4 and stream_seed(request.seed + 1, "main") not in seeds


def test_batched_frames_equal_single_frames(components):
    params = walk_params(walk="circular", frames=8)
    np.testing.assert_allclose(frames(components, params, [0, 1, 2, 3]),
                               frames(components, params, [0, 1, 2, 3], batch=False), atol=1e-5)


@pytest.mark.parametrize("walk, extra", [
    ("prompts", {"prompt": "", "walk_prompts": ["red bricks", "blue waves", "green moss"]}),
    ("random", {}), ("direction", {}),
    ("seeds", {"walk_seeds": [7, 8, 9]}),
])
def test_first_frame_is_the_plain_image_and_frames_move(components, walk, extra):
    params = walk_params(walk=walk, frames=5, step_size=0.5, **extra)
    images = frames(components, params, range(5))
    prompt = extra.get("walk_prompts", ["red bricks"])[0]
    plain = generate(components, GenerationRequest(prompt=prompt, seed=7, steps=3, width=64, height=64,
                                                   scheduler="euler")).numpy()
    np.testing.assert_allclose(images[0], plain, atol=1e-5)  # t = 0 is the single-prompt image
    steps = [np.abs(images[i + 1] - images[i]).mean() for i in range(4)]
    assert all(s > 1e-5 for s in steps)


def test_walk_validation():
    for params, field in (({"walk": "prompts", "prompt": ""}, "params.walk_prompts"),
                          ({"walk": "seeds", "prompt": "a"}, "params.walk_seeds"),
                          ({"walk": "circular", "prompt": "a", "scheduler": "euler_a"}, "params.scheduler"),
                          ({"walk": "random", "prompts": [{"text": "a"}, {"text": "b"}]}, "params.prompts"),
                          ({"walk": "circular", "prompt": "a", "frames": 1}, "params.frames")):
        with pytest.raises(protocol.ProtocolError) as info:
            protocol.validate_job("walk", params, {})
        assert info.value.field == field
    params, _ = protocol.validate_job("walk", {"walk": "circular", "prompts": [{"text": "a"}, {"text": "b"}]}, {})
    assert params["frames"] == 24  # noise walks take prompt ensembles


def test_walk_job_streams_cancels_resumes_and_exports(backend):
    import av
    from PIL import Image

    conn = connect(backend)
    params = {"walk": "circular", "prompt": "red bricks", "width": 64, "height": 64, "steps": 20, "frames": 6,
              "batch_size": 2, "preview_interval": 0.0, "seed": 3}
    conn.send({"type": "submit", "job_id": "walk-1", "kind": "walk", "params": params})
    first = []
    while True:
        message, arrays = conn.recv()
        if message["type"] == "frame":
            first.append(message["index"])
            assert arrays["image"].shape == (64, 64, 4) and os.path.exists(message["path"])
            if len(first) == 1:
                conn.send({"type": "cancel", "job_id": "walk-1"})
        if message["type"] in protocol.TERMINAL_EVENTS:
            break
    # Cancel stops after the batch in flight (the worker may have begun the next one before the
    # cancel arrived): whole batches of 2, fewer than all 6 frames.
    assert message["type"] == "cancelled" and first in ([0, 1], [0, 1, 2, 3])
    conn.send({"type": "status", "job_id": "walk-1"})
    assert conn.recv()[0]["job"]["state"] == "cancelled"
    job_dir = os.path.join(backend.ready_info["output_dir"], "walk-1")
    kept = sorted(f for f in os.listdir(job_dir) if f.startswith("frame_"))
    assert kept == [f"frame_{k + 1:06d}.png" for k in first]  # cancel keeps the finished frames
    conn.send({"type": "submit", "job_id": "walk-1", "kind": "walk", "params": params, "resume": True})
    events = events_until_terminal(conn, "walk-1")
    resumed = [m["index"] for m, _ in events if m["type"] == "frame"]
    assert resumed == [k for k in range(6) if k not in first]  # only the missing ones
    result = events[-1][0]
    assert result["type"] == "result" and result["frames"] == 6 and result["fps"] == 12
    assert sorted(f for f in os.listdir(job_dir) if f.startswith("frame_")) == [f"frame_{i:06d}.png"
                                                                               for i in range(1, 7)]
    conn.send({"type": "export", "job_id": "walk-1", "options": {"format": "gif", "rubber_band": True}})
    exported = conn.recv()[0]
    assert exported["type"] == "exported" and exported["frames"] == 2 * 6 - 2
    with Image.open(exported["path"]) as gif:
        assert gif.n_frames == 10 and gif.size == (64, 64)
    conn.send({"type": "export", "job_id": "walk-1", "options": {"format": "mp4", "fps": 24}})
    exported = conn.recv()[0]
    with av.open(exported["path"]) as video:
        decoded = [f for f in video.decode(video=0)]
    assert len(decoded) == 6 and (decoded[0].width, decoded[0].height) == (64, 64)
    conn.send({"type": "export", "job_id": "seed-a", "options": {}})
    assert conn.recv()[0]["code"] == "not_found"
    conn.close()


class CountingStore(JobStore):
    """A real store that counts its scans of the frames on disk."""

    scans = 0

    def frames_done(self, job_id, count):
        self.scans += 1
        return super().frames_done(job_id, count)


def test_a_walk_scans_its_frames_on_disk_once(tmp_path, models_dir):
    """Not once per frame (the todo list) nor once per save (the manifest)."""
    from generator_backend.jobs import Job, JobQueue
    from generator_backend.models import ModelManager
    from generator_backend.runner import Worker

    store = CountingStore(tmp_path)
    params, arrays = protocol.validate_job("walk", {"walk": "circular", "prompt": "red", "width": 64, "height": 64,
                                                    "steps": 1, "frames": 6, "batch_size": 3,
                                                    "preview_interval": 0.0}, {})
    store.save_frame(Job("w", "walk", params), 2, np.zeros((64, 64, 3), np.float32))  # one frame from before
    store.scans = 0
    job = Job("w", "walk", params)
    Worker(JobQueue(), ModelManager(["tiny"], device="cpu", models_dir=models_dir), store).execute(job)
    assert job.state == "done" and store.scans == 1
    manifest = json.loads((tmp_path / "w" / "manifest.json").read_text())
    assert manifest["done"] == 6 and manifest["files"] == [f"frame_{k:06d}.png" for k in range(1, 7)]
