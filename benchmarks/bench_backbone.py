"""Backbone benchmarks (issue 2), measured side by side in one run.

1. txt2img through the socket against a direct in-process call: the same model (tiny), size (256 px),
   steps (20), seed and sampler on both sides, checked (result message and pixels) before timing.
2. A 2048x2048 float RGBA result delivered into a Blender image (fetch + foreach_set), with the
   bare foreach_set and the pack beside it.
3. The longest main-thread drain call while a job streams previews into Blender.

Parts 2 and 3 run in a separate bpy process (bpy and torch never share one).
Usage: .venv/bin/python benchmarks/bench_backbone.py [--repeats N]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_common import interleaved, longest_drain, require_same, require_same_pixels, set_torch_threads

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def start_backend(output_dir, max_size=2048, models=None):
    from dream_addon.supervisor import BackendProcess

    extra = ["--preload", "--max-size", str(max_size)]
    if os.environ.get("DREAM_MODELS_DIR"):
        extra += ["--models-dir", os.environ["DREAM_MODELS_DIR"]]
    backend = BackendProcess(sys.executable, 0, **({"models": models} if models else {}), output_dir=output_dir,
                             device="cpu", max_restarts=0, extra_args=extra)
    backend.start()
    assert backend.wait_ready(300), "\n".join(backend.tail)
    return backend


MODEL, SIZE, STEPS, SEED, SCHEDULER = "tiny", 256, 20, 1, "euler"


def socket_vs_direct(repeats):
    """Both sides serve the same model with the same settings; it fails loudly when they differ
    (checked on the result message and on the pixels themselves)."""
    import torch

    from dream_addon import protocol
    from dream_addon.client import BackendConnection
    from generator_backend.core import generate
    from generator_backend.encoding import to_rgba
    from generator_backend.models import ModelManager
    from generator_backend.techniques import request_from_params

    threads = set_torch_threads()
    params = {"prompt": "red bricks", "width": SIZE, "height": SIZE, "steps": STEPS, "seed": SEED,
              "scheduler": SCHEDULER, "preview_interval": 0.0, "model": MODEL}
    manager = ModelManager([MODEL], device="cpu", models_dir=os.environ.get("DREAM_MODELS_DIR"))
    components = manager.get(MODEL)
    request = request_from_params(protocol.validate_params(params, protocol.txt2img_fields()), {})
    with tempfile.TemporaryDirectory() as out:
        backend = start_backend(out, models=(MODEL,))
        conn = BackendConnection("127.0.0.1", backend.ready_info["port"], backend.token)
        message, arrays = conn.run_job("warm", params)
        require_same("model", message["model"], manager.resolve(MODEL))
        require_same("size", (message["width"], message["height"]), (request.width, request.height))
        require_same("seed", message["seed"], request.seed)
        require_same_pixels(arrays["image"], to_rgba(generate(components, request), "float32", False), 1e-5)

        counter = itertools.count()

        def via_socket():
            message, _ = conn.run_job(f"bench-{next(counter)}", params)
            assert message["type"] == "result", message

        times = interleaved({"direct": lambda: to_rgba(generate(components, request), "float32", False),
                             "socket": via_socket}, repeats)
        conn.close()
        backend.stop()
    return {"direct_s": times["direct"], "socket_s": times["socket"], "ratio": times["socket"] / times["direct"],
            "repeats": repeats, "threads": threads}


def blender_part(repeats):
    """Runs inside a bpy process."""
    sys.path.insert(0, str(REPO / "scripts"))
    import blender_session  # noqa: F401

    import bpy
    import numpy as np

    module = blender_session.install_dev()
    mods = {n: sys.modules[f"{module}.dream_addon.{n}"] for n in ("session", "blender_images", "client")}
    images = mods["blender_images"]
    results = {}
    with tempfile.TemporaryDirectory() as out:
        backend = start_backend(out)
        port, token = backend.ready_info["port"], backend.token
        conn = mods["client"].BackendConnection("127.0.0.1", port, token)
        # A 2048² result on disk (one step is enough: delivery is what is measured).
        conn.run_job("big", {"prompt": "x", "width": 2048, "height": 2048, "steps": 1, "preview_interval": 0.0})
        image = images.new_result_image("big", 2048, 2048)
        deliver, bare, pack = [], [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            conn.send({"type": "fetch", "job_id": "big", "output": mods["session"].BLENDER_OUTPUT})
            message, arrays = conn.recv()
            images.write_pixels("big", arrays["image"], flipped=True)
            t2 = time.perf_counter()
            deliver.append(t2 - t0)
            flat = np.ascontiguousarray(arrays["image"]).reshape(-1)
            t = time.perf_counter()
            image.pixels.foreach_set(flat)
            bare.append(time.perf_counter() - t)
            t = time.perf_counter()
            image.pack()
            pack.append(time.perf_counter() - t)
        results["fetch_2048_s"] = statistics.median(deliver)
        results["deliver_2048_s"] = deliver_ready_frame(mods, arrays["image"], repeats)
        results["foreach_set_2048_s"] = statistics.median(bare)
        results["pack_2048_s"] = statistics.median(pack)
        conn.close()

        # Drain while previews stream: a 1024² job with a preview after every step.
        session = mods["session"].SESSION
        prefs = bpy.context.preferences.addons[module].preferences
        prefs.host, prefs.port, prefs.token = "127.0.0.1", port, token
        session.connect(prefs)
        props = bpy.context.scene.dream
        props.width = props.height = 1024
        props.steps, props.preview_interval = 12, 0.001
        bpy.ops.dream.generate_texture()
        job = list(session.jobs.values())[-1]
        drain_max = longest_drain(session, job)
        results["drain_max_s"] = drain_max
        results["drain_previews"] = job.previews
        backend.stop()
    print("BLENDER_RESULTS " + json.dumps(results))


def deliver_ready_frame(mods, rgba, repeats):
    """Client side alone: a ready 2048² frame over TCP loopback, received and written to an image."""
    import socket
    import threading

    protocol = sys.modules[mods["client"].__name__.rsplit(".", 1)[0] + ".protocol"]
    listener = socket.create_server(("127.0.0.1", 0))
    sender = socket.create_connection(listener.getsockname())
    receiver, _ = listener.accept()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        thread = threading.Thread(target=protocol.send_frame, args=(sender, {"type": "result"}, {"image": rgba}))
        thread.start()
        _, arrays = protocol.recv_frame(receiver)
        mods["blender_images"].write_pixels("big", arrays["image"], flipped=True)
        times.append(time.perf_counter() - t0)
        thread.join()
    for s in (sender, receiver, listener):
        s.close()
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--blender-part", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--socket-only", action="store_true", help="part 1 only (no bpy process)")
    args = parser.parse_args()
    if args.blender_part:
        return blender_part(args.repeats)
    a = socket_vs_direct(args.repeats)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, {a['threads']} torch threads (OMP_NUM_THREADS) on both sides")
    print("| measure | value | target |\n|---|---|---|")
    print(f"| txt2img {MODEL} {SIZE}px {STEPS} steps, direct in-process (median of {a['repeats']}) "
          f"| {a['direct_s']:.3f} s | |")
    print(f"| same through the socket, submit to result received | {a['socket_s']:.3f} s | |")
    print(f"| ratio socket / direct | {a['ratio']:.3f} | <= 1.05 |", flush=True)
    if args.socket_only:
        return 0
    run = subprocess.run([sys.executable, __file__, "--blender-part", "--repeats", str(args.repeats)],
                         capture_output=True, text=True)
    line = [ln for ln in run.stdout.splitlines() if ln.startswith("BLENDER_RESULTS ")]
    if not line:
        print(run.stdout[-3000:], run.stderr[-3000:])
        return 1
    b = json.loads(line[0].split(" ", 1)[1])
    print(f"| 2048² float RGBA frame: TCP loopback transfer, receive, foreach_set into the image "
          f"| {b['deliver_2048_s'] * 1000:.0f} ms | <= 200 ms |")
    print(f"| same, from a fetch by job id (backend loads the result and converts sRGB to linear on the CPU) "
          f"| {b['fetch_2048_s'] * 1000:.0f} ms | |")
    print(f"| 2048² bare foreach_set | {b['foreach_set_2048_s'] * 1000:.0f} ms | |")
    print(f"| 2048² image.pack() (once per final result) | {b['pack_2048_s'] * 1000:.0f} ms | |")
    print(f"| longest drain call, 1024² job streaming {b['drain_previews']} previews (result pack included) "
          f"| {b['drain_max_s'] * 1000:.0f} ms | <= 50 ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
