"""A real backend process on loopback, driven over the protocol."""

import json
import os
import socket
import stat
import struct
import subprocess
import sys

import numpy as np
import pytest

from dream_addon import protocol
from dream_addon.client import BackendConnection, BackendError

SMALL = {"prompt": "red bricks", "width": 64, "height": 64, "steps": 3, "preview_interval": 0.0}


def connect(backend, token=None):
    conn = BackendConnection("127.0.0.1", backend.ready_info["port"], token or backend.token, client="pytest")
    conn.sock.settimeout(120)  # an event that never comes fails the test instead of hanging the suite
    return conn


def events_until_terminal(conn, job_id):
    events = []
    while True:
        message, arrays = conn.recv()
        if message.get("job_id") == job_id:
            events.append((message, arrays))
            if message["type"] in protocol.TERMINAL_EVENTS:
                return events


def test_handshake_welcome(backend):
    conn = connect(backend)
    w = conn.welcome
    assert w["protocol"] == 1 and w["device"] == "cpu"
    assert [m["name"] for m in w["models"] if m["default"]] == ["tiny"]
    assert [m["name"] for m in w["models"]] == ["tiny", "tiny-b", "tiny-inpaint"]
    assert [m["family"] for m in w["models"]] == ["tiny/unet4", "tiny/unet4", "tiny/unet9"]
    assert [m["size"] for m in w["models"]] == [256, 256, 256]  # the tiny models' native size
    assert w["capabilities"]["job_kinds"] == sorted(protocol.JOB_KINDS)
    assert {"compress", "decompress", "detail", "enhance", "img2img", "inpaint", "mosaic", "teach_concept", "txt2img",
            "upscale", "walk"} <= set(protocol.JOB_KINDS)
    assert w["upscalers"] == [{"name": "pocket-x4", "architecture": "SRVGGNetCompact", "scale": 4, "default": True}]
    conn.close()


def test_wrong_token_is_refused_and_closed(backend):
    with pytest.raises(BackendError) as info:
        connect(backend, token="not-the-token")
    assert info.value.code == "auth_failed"
    connect(backend).close()  # the server is still up


def test_messages_before_hello_are_refused(backend):
    with socket.create_connection(("127.0.0.1", backend.ready_info["port"])) as sock:
        protocol.send_frame(sock, {"type": "submit", "job_id": "x", "params": SMALL})
        message, _ = protocol.recv_frame(sock)
        assert message["code"] == "handshake_required"
        assert sock.recv(1) == b""  # closed


def test_protocol_version_mismatch(backend):
    with socket.create_connection(("127.0.0.1", backend.ready_info["port"])) as sock:
        protocol.send_frame(sock, {"type": "hello", "protocol": 2, "token": backend.token})
        message, _ = protocol.recv_frame(sock)
        assert message["code"] == "version_mismatch" and message["allowed"] == [1]
    with socket.create_connection(("127.0.0.1", backend.ready_info["port"])) as sock:
        body = json.dumps({"type": "hello", "protocol": 2, "token": backend.token}).encode()
        sock.sendall(struct.pack("!4sHHIQ", b"DREM", 2, 0, len(body), 0) + body)
        message, _ = protocol.recv_frame(sock)
        assert message["code"] == "version_mismatch"


def test_submit_progress_result_and_sidecar(backend):
    conn = connect(backend)
    params = dict(SMALL, steps=4, preview_interval=0.001, seed=5)
    conn.send({"type": "submit", "job_id": "flow-1", "params": params})
    events = events_until_terminal(conn, "flow-1")
    kinds = [m["type"] for m, _ in events]
    assert kinds[:3] == ["accepted", "queued", "started"]
    steps = [m["step"] for m, _ in events if m["type"] == "progress" and m["stage"] == "denoise"]
    assert steps == [1, 2, 3, 4]
    previews = [a["image"] for m, a in events if m["type"] == "preview"]
    assert previews and all(p.shape == (64, 64, 4) for p in previews)
    result, arrays = events[-1]
    assert result["type"] == "result" and arrays["image"].shape == (64, 64, 4)
    folder = result["path"]
    sidecar = json.load(open(os.path.join(folder, "result.json")))
    assert sidecar["params"]["seed"] == 5 and sidecar["model"] == "tiny" and "generate_s" in sidecar["timings"]
    np.testing.assert_array_equal(np.load(os.path.join(folder, "result.npy")), arrays["image"][..., :3])
    assert os.path.exists(os.path.join(folder, "result.png"))
    conn.close()


def test_same_seed_same_pixels_over_the_socket(backend):
    conn = connect(backend)
    a = conn.run_job("seed-a", dict(SMALL, seed=1))[1]["image"]
    b = conn.run_job("seed-b", dict(SMALL, seed=1))[1]["image"]
    c = conn.run_job("seed-c", dict(SMALL, seed=2))[1]["image"]
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3
    conn.close()


def test_output_options(backend):
    conn = connect(backend)
    plain = conn.run_job("out-plain", SMALL)[1]["image"]
    flipped = conn.run_job("out-flip", dict(SMALL, flip_y=True, output_dtype="uint8"))[1]["image"]
    assert flipped.dtype == np.uint8
    np.testing.assert_array_equal(flipped, (plain[::-1] * 255).round().astype(np.uint8))
    conn.close()


def test_bad_params_error_and_server_keeps_going(backend):
    conn = connect(backend)
    conn.send({"type": "submit", "job_id": "bad-1", "params": dict(SMALL, width=1001)})
    message, _ = conn.recv()
    assert message["type"] == "error" and message["field"] == "params.width" and message["job_id"] == "bad-1"
    assert message["allowed"] == {"min": 64, "max": 2048, "multiple_of": 8}
    assert "Traceback" not in message["message"]
    conn.send({"type": "submit", "job_id": "bad-2", "kind": "video", "params": SMALL})
    assert conn.recv()[0]["field"] == "kind"
    conn.send({"type": "submit", "job_id": "bad-3", "params": dict(SMALL, model="nope")})
    assert conn.recv()[0]["allowed"] == ["tiny", "tiny-b", "tiny-inpaint"]
    conn.send({"type": "dance"})
    assert conn.recv()[0]["code"] == "unknown_type"
    assert conn.run_job("bad-4", SMALL)[0]["type"] == "result"
    conn.close()


def test_malformed_frames_do_not_hurt_other_clients(backend):
    other = connect(backend)
    conn = connect(backend)
    body = b"{broken"
    conn.sock.sendall(struct.pack("!4sHHIQ", b"DREM", 1, 0, len(body), 0) + body)
    assert conn.recv()[0]["code"] == "bad_json"
    conn.sock.sendall(struct.pack("!4sHHIQ", b"DREM", 1, 0, 10, 2**50))
    message, _ = conn.recv()
    assert message["code"] == "frame_too_large"
    assert conn.sock.recv(1) == b""  # a header it cannot trust ends the connection
    assert other.run_job("after-bad", SMALL)[0]["type"] == "result"
    other.close()


def test_cancel_mid_job_within_a_step(backend):
    conn = connect(backend)
    conn.send({"type": "submit", "job_id": "cancel-1", "params": dict(SMALL, steps=200)})
    while True:
        message, _ = conn.recv()
        if message["type"] == "progress" and message["stage"] == "denoise" and message["step"] >= 2:
            break
    conn.send({"type": "cancel", "job_id": "cancel-1"})
    events = events_until_terminal(conn, "cancel-1")
    assert events[-1][0]["type"] == "cancelled" and events[-1][0]["step"] < 200
    conn.send({"type": "status", "job_id": "cancel-1"})
    assert conn.recv()[0]["job"]["state"] == "cancelled"
    conn.close()


def test_cancel_queued_job(backend):
    conn = connect(backend)
    conn.send({"type": "submit", "job_id": "q-run", "params": dict(SMALL, steps=200)})
    # q-wait is queued behind a running q-run (submitted together, q-wait's first position could
    # be 2, counted while q-run still waited for the worker)
    message, _ = conn.recv()
    while message.get("job_id") != "q-run" or message["type"] not in ("started", *protocol.TERMINAL_EVENTS):
        message, _ = conn.recv()  # the connection's own timeout bounds each wait
    assert message["type"] == "started"
    conn.send({"type": "submit", "job_id": "q-wait", "params": SMALL})
    positions = {}
    while "q-wait" not in positions:
        message, _ = conn.recv()
        if message["type"] == "queued":
            positions[message["job_id"]] = message["position"]
    assert positions["q-wait"] == 1
    conn.send({"type": "cancel", "job_id": "q-wait"})
    assert events_until_terminal(conn, "q-wait")[-1][0] == {"type": "cancelled", "job_id": "q-wait", "step": 0}
    assert events_until_terminal(conn, "q-run")[-1][0]["type"] == "result"
    conn.send({"type": "cancel", "job_id": "q-run"})
    assert conn.recv()[0]["code"] == "not_cancellable"
    conn.close()


def test_resubmit_same_id_never_runs_twice(backend):
    conn = connect(backend)
    first = conn.run_job("idem-1", SMALL)
    again = events_until_terminal_after_submit(conn, "idem-1", SMALL)
    assert again[0][0] == {"type": "accepted", "job_id": "idem-1", "duplicate": True}
    assert "started" not in [m["type"] for m, _ in again]
    assert again[-1][0]["timings"] == first[0]["timings"]
    np.testing.assert_array_equal(again[-1][1]["image"], first[1]["image"])
    conn.send({"type": "submit", "job_id": "idem-1", "params": dict(SMALL, seed=9)})
    assert conn.recv()[0]["code"] == "job_id_conflict"
    conn.send({"type": "status"})
    jobs = [j for j in conn.recv()[0]["jobs"] if j["job_id"] == "idem-1"]
    assert len(jobs) == 1
    conn.close()


def events_until_terminal_after_submit(conn, job_id, params):
    conn.send({"type": "submit", "job_id": job_id, "params": params})
    return events_until_terminal(conn, job_id)


def test_reconnect_and_fetch_by_job_id(backend):
    conn = connect(backend)
    conn.send({"type": "submit", "job_id": "lost-1", "params": dict(SMALL, steps=30)})
    assert conn.recv()[0]["type"] == "accepted"
    conn.close()  # the client goes away mid-job
    again = connect(backend)
    again.send({"type": "fetch", "job_id": "lost-1", "output": {"flip_y": True}})
    events = events_until_terminal(again, "lost-1")
    result, arrays = events[-1]
    assert result["type"] == "result" and result["flip_y"] is True
    stored = np.load(os.path.join(result["path"], "result.npy"))
    np.testing.assert_array_equal(arrays["image"][::-1, :, :3], stored)
    again.send({"type": "fetch", "job_id": "lost-1"})  # later fetches come from disk
    np.testing.assert_array_equal(again.recv()[1]["image"][..., :3], stored)
    again.send({"type": "fetch", "job_id": "never-was"})
    assert again.recv()[0]["code"] == "not_found"
    again.close()


@pytest.mark.parametrize("message, field", [
    ({"type": "fetch", "job_id": "a-job", "output": "x"}, "output"),
    ({"type": "fetch", "job_id": "a-job", "output": {"flip": True}}, "output.flip"),
    ({"type": "export", "job_id": "a-job", "options": 5}, "options"),
    ({"type": "export", "job_id": "a-job", "options": {"format": "bmp"}}, "options.format"),
])
def test_bad_fetch_output_and_export_options_name_their_own_field(backend, message, field):
    conn = connect(backend)
    conn.send(message)
    error = conn.recv()[0]
    assert error["type"] == "error" and error["field"] == field, error
    conn.close()


def test_token_file_is_private_and_shutdown_stops(tmp_path, models_dir):
    token_file = tmp_path / "tok"
    env = {k: v for k, v in os.environ.items() if k != protocol.TOKEN_ENV}
    proc = subprocess.Popen([sys.executable, "-m", "generator_backend", "serve", "--port", "0", "--token-file",
                             str(token_file), "--output-dir", str(tmp_path / "out"), "--models-dir",
                             str(models_dir)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        ready = json.loads(proc.stdout.readline()[len(protocol.READY_PREFIX):])
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        conn = BackendConnection("127.0.0.1", ready["port"], token_file.read_text())
        conn.send({"type": "shutdown"})
        assert conn.recv()[0]["type"] == "bye"
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()


def test_refuses_non_loopback_without_flag(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "generator_backend", "serve", "--host", "0.0.0.0", "--port", "0",
                           "--output-dir", str(tmp_path), "--token-file", str(tmp_path / "t")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "only loopback" in proc.stderr
    # Refused before anything heavy is loaded: no torch, no model, no token file.
    probe = ("import sys; from generator_backend import cli; "
             f"code = cli.main(['serve', '--host', '10.0.0.1', '--output-dir', {str(tmp_path)!r}]); "
             "print(code, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["2", "False"], proc.stdout + proc.stderr
    assert not (tmp_path / "t").exists()


def test_img2img_and_ensemble_over_the_socket(backend):
    conn = connect(backend)
    init = (np.random.default_rng(1).random((64, 64, 4)) * 255).astype(np.uint8)
    conn.send({"type": "submit", "job_id": "i2i-1", "kind": "img2img",
               "params": dict(SMALL, steps=10, strength=0.3)}, {"init_image": init})
    result, arrays = events_until_terminal(conn, "i2i-1")[-1]
    assert result["type"] == "result", result
    low = arrays["image"][..., :3]
    conn.send({"type": "submit", "job_id": "i2i-2", "kind": "img2img",
               "params": dict(SMALL, steps=10, strength=0.9)}, {"init_image": init})
    high = events_until_terminal(conn, "i2i-2")[-1][1]["image"][..., :3]
    source = init[..., :3] / 255.0
    assert np.abs(low - source).mean() < np.abs(high - source).mean()
    params = {k: v for k, v in SMALL.items() if k != "prompt"}
    message, arrays = conn.run_job("ens-1", dict(params, prompts=[{"text": "red bricks", "weight": 1.0},
                                                                   {"text": "blue waves", "weight": 0.0}]))
    plain = conn.run_job("ens-plain", SMALL)[1]["image"]
    np.testing.assert_allclose(arrays["image"], plain, atol=1e-5)
    conn.send({"type": "submit", "job_id": "i2i-bad", "kind": "img2img", "params": SMALL},
              {"init_image": init[:32]})
    assert conn.recv()[0]["field"] == "arrays.init_image"
    conn.close()


def test_inpaint_tiling_infusion_and_model_ensemble_over_the_socket(backend):
    conn = connect(backend)
    rng = np.random.default_rng(2)
    init = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[8:40, 16:48] = 255
    params = dict(SMALL, prompts=[{"text": "red bricks"}, {"text": "blue waves"}], seamless="xy")
    del params["prompt"]
    conn.send({"type": "submit", "job_id": "combo-1", "kind": "inpaint", "params": params},
              {"init_image": init, "mask": mask})
    result, arrays = events_until_terminal(conn, "combo-1")[-1]
    assert result["type"] == "result", result
    out = (arrays["image"][..., :3] * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(out[mask == 0], init[mask == 0])  # outside the mask: the input, exactly
    bias = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    conn.send({"type": "submit", "job_id": "combo-2", "kind": "img2img",
               "params": dict(SMALL, steps=6, strength=0.7, infusion_weights={"mid": 1.0, "up1": 0.5},
                              models=[{"name": "tiny", "weight": 0.5}, {"name": "tiny-b"}], offload=True)},
              {"init_image": init, "infusion_0": bias})
    result, _ = events_until_terminal(conn, "combo-2")[-1]
    assert result["type"] == "result" and result["model"] == "tiny*0.5+tiny-b*0.5", result
    conn.send({"type": "submit", "job_id": "combo-3", "params": dict(SMALL, infusion_weights={"side9": 1.0})},
              {"infusion_0": bias})
    error = events_until_terminal(conn, "combo-3")[-1][0]
    assert error["code"] == "invalid_param" and error["field"] == "params.infusion_weights.side9"
    assert error["allowed"] == ["down0", "down1", "mid", "up0", "up1", "down", "up"]
    conn.send({"type": "submit", "job_id": "combo-4",
               "params": dict(SMALL, models=[{"name": "tiny"}, {"name": "nope"}])})
    assert conn.recv()[0]["field"] == "params.models[1].name"
    conn.send({"type": "submit", "job_id": "combo-6",
               "params": dict(SMALL, models=[{"name": "tiny"}, {"name": "tiny-inpaint"}])})
    error = events_until_terminal(conn, "combo-6")[-1][0]
    assert error["field"] == "params.models" and "latent space" in error["message"]
    conn.send({"type": "submit", "job_id": "combo-7",
               "params": dict(SMALL, model="tiny-inpaint")})  # a 9-channel model needs a mask
    error = events_until_terminal(conn, "combo-7")[-1][0]
    assert error["code"] == "invalid_param" and error["field"] == "params.model"
    conn.send({"type": "submit", "job_id": "combo-5", "kind": "inpaint", "params": SMALL},
              {"init_image": init, "mask": mask[:32]})
    assert conn.recv()[0]["field"] == "arrays.mask"
    conn.close()


def test_blender_layout_inputs_and_infusion_groups(backend):
    """Arrays sent as Blender holds them (linear, bottom-up) give the same job as sRGB top-down."""
    conn = connect(backend)
    srgb = np.random.default_rng(4).random((64, 64, 3)).astype(np.float32)
    linear = np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4).astype(np.float32)
    params = dict(SMALL, steps=6, strength=0.5)
    a = conn.run_job("layout-a", params, kind="img2img", arrays={"init_image": srgb})[1]["image"]
    b = conn.run_job("layout-b", dict(params, input_linear=True, input_flip_y=True), kind="img2img",
                     arrays={"init_image": linear[::-1].copy()})[1]["image"]
    np.testing.assert_allclose(a, b, atol=1e-4)
    grouped = conn.run_job("groups-a", dict(SMALL, infusion_weights={"down": 0.4, "mid": 0.5}),
                           arrays={"infusion_0": srgb})[1]["image"]
    named = conn.run_job("groups-b", dict(SMALL, infusion_weights={"down0": 0.4, "down1": 0.4, "mid": 0.5}),
                         arrays={"infusion_0": srgb})[1]["image"]
    np.testing.assert_array_equal(grouped, named)
    conn.close()


def test_server_module_imports_no_torch_and_no_private_worker_methods():
    # The server speaks the protocol; tensors live in the runner and the core.
    import ast
    from pathlib import Path

    tree = ast.parse((Path(__file__).resolve().parents[2] / "generator_backend" / "server.py").read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names} | {
        (n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
    assert "torch" not in imported
    private = [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr.startswith("_")
               and isinstance(n.value, ast.Attribute) and n.value.attr == "worker"]
    assert private == []


def test_a_cancel_is_answered_while_an_export_is_still_encoding(tmp_path, models_dir, monkeypatch):
    import threading

    from PIL import Image

    from generator_backend import export
    from generator_backend.models import ModelManager
    from generator_backend.server import Server

    release = threading.Event()
    real_export = export.export_frames

    def held_export(*args):  # slow by construction: it encodes only once the test has its cancel answer
        assert release.wait(30), "the test never released the export"
        return real_export(*args)

    monkeypatch.setattr(export, "export_frames", held_export)
    server = Server(ModelManager(["tiny"], device="cpu", models_dir=models_dir), tmp_path / "out", "token", port=0)
    server.store.save_meta("walk-x", {"job_id": "walk-x", "kind": "walk", "state": "done", "params": {"fps": 12}})
    for i in range(3):
        Image.new("RGB", (8, 8), (80 * i, 0, 0)).save(server.store.frame_path("walk-x", i))
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    try:
        conn = BackendConnection("127.0.0.1", server.port, "token", client="pytest")
        conn.sock.settimeout(20)  # a reader held by the export never answers: a timeout here, not a hang
        conn.send({"type": "export", "job_id": "walk-x", "options": {"format": "gif"}})
        conn.send({"type": "cancel", "job_id": "gone"})
        answer = conn.recv()[0]
        assert (answer["type"], answer["code"], answer["job_id"]) == ("error", "not_found", "gone")
        release.set()
        exported = conn.recv()[0]
        assert exported["type"] == "exported" and exported["frames"] == 3 and exported["job_id"] == "walk-x"
        conn.close()
    finally:
        release.set()
        server.request_shutdown()
        serving.join(60)
    assert not serving.is_alive()
