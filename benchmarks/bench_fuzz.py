"""Malformed-frame figures (issue 13): a real backend on loopback with the tiny model.

Sends seeded malformed frames of every category (tests/backend/fuzz_frames.py, the same
generator as the suite's fuzz test) and reports frames by category, structured errors by
code, closes, hangs, wrong answers and the server's resident memory before and after; then
the handshake attacks: a hello with a 64 MiB payload, a hello dribbled a byte at a time,
and more idle unauthenticated connections than there are slots.
Usage: .venv/bin/python benchmarks/bench_fuzz.py [--frames N] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from dream_addon import protocol  # noqa: E402
from dream_addon.client import BackendConnection  # noqa: E402
from dream_addon.supervisor import BackendProcess  # noqa: E402
from tests.backend.fuzz_frames import Driver, Fuzzer  # noqa: E402

SMALL = {"prompt": "red bricks", "width": 64, "height": 64, "steps": 2, "preview_interval": 0.0}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def one_job(port, token, job_id) -> str:
    conn = BackendConnection("127.0.0.1", port, token, client="bench")
    try:
        return conn.run_job(job_id, SMALL)[0]["type"]
    finally:
        conn.close()


def big_payload_hello(port) -> str:
    """A wrong-token hello announcing 64 MiB, which is then sent: the answer and whether it came before the payload."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        body = json.dumps({"type": "hello", "protocol": 1, "token": "wrong"}).encode()
        sock.sendall(protocol.HEADER.pack(protocol.MAGIC, 1, 0, len(body), 64 << 20) + body)
        answer = protocol.recv_frame(sock)[0]
        try:
            sock.sendall(bytes(64 << 20))
            sent = "payload then accepted by the socket"
        except OSError:
            sent = "payload refused (connection closed)"
        return f"{answer['code']} ({answer.get('field')}) before the payload; {sent}"


def dribbled_hello(port, token) -> float:
    """Seconds until a hello sent one byte per 0.5 s is cut off."""
    hello = protocol.frame_bytes({"type": "hello", "protocol": 1, "token": token, "client": "slow"})
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        started = time.monotonic()
        for byte in hello:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
            if select.select([sock], [], [], 0.5)[0]:
                break
        return time.monotonic() - started


def idle_flood(port, token, count=64) -> str:
    idle = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(count)]
    try:
        conn = BackendConnection("127.0.0.1", port, token, client="bench")
        conn.close()
        return f"{count} idle unauthenticated connections open: the real client got its welcome"
    except Exception as exc:  # the figure to report, whatever it is
        return f"{count} idle connections open: the real client was refused ({exc})"
    finally:
        for sock in idle:
            sock.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()
    models_dir = ["--models-dir", os.environ["DREAM_MODELS_DIR"]] if os.environ.get("DREAM_MODELS_DIR") else []
    with tempfile.TemporaryDirectory() as tmp:
        backend = BackendProcess(sys.executable, 0, models=("tiny",), output_dir=Path(tmp) / "out", device="cpu",
                                 max_restarts=0, extra_args=["--preload", *models_dir])
        backend.start()
        assert backend.wait_ready(180), "\n".join(backend.tail)
        port, token, pid = backend.ready_info["port"], backend.token, backend.pid
        try:
            assert one_job(port, token, "warm-up") == "result"
            before = rss_mib(pid)
            driver = Driver(port, token, timeout=10)
            started = time.perf_counter()
            for frame in Fuzzer(args.seed).frames(args.frames):
                driver.send(frame)
            elapsed = time.perf_counter() - started
            driver.close()
            after = rss_mib(pid)
            job = one_job(port, token, "after-fuzz")
            tally = driver.tally
            print(f"seed {args.seed}, {args.frames} frames in {elapsed:.1f} s")
            print("| category | frames |\n|---|---|")
            for category, n in sorted(tally.frames.items()):
                print(f"| {category} | {n} |")
            print("\n| error code | answers |\n|---|---|")
            for code, n in sorted(tally.errors.items()):
                print(f"| `{code}` | {n} |")
            print(f"\nstructured errors {sum(tally.errors.values())}, closes {tally.closes} "
                  f"(each after an error, or a reset by a fatal frame), hangs {tally.hangs}, "
                  f"wrong answers {len(tally.bad)}")
            for category, what in tally.bad[:10]:
                print(f"  wrong: {category}: {what}")
            print(f"server RSS before {before:.0f} MiB, after {after:.0f} MiB; a job afterwards: {job}")
            mem0 = rss_mib(pid)
            print(f"64 MiB hello: {big_payload_hello(port)}; RSS {mem0:.0f} -> {rss_mib(pid):.0f} MiB")
            print(f"dribbled hello cut off after {dribbled_hello(port, token):.1f} s")
            print(idle_flood(port, token))
        finally:
            backend.stop()


if __name__ == "__main__":
    main()
