"""A real backend on loopback against frames and handshakes that once wedged or hurt it (issue 13)."""

import json
import os
import select
import socket
import stat
import struct
import sys
import threading
import time

import numpy as np
import pytest

from dream_addon import protocol
from dream_addon.client import BackendConnection
from tests.backend.fuzz_frames import Driver, Fuzzer

HELLO_TIMEOUT = 2.0
SERVER_ARGS = ["--hello-timeout", str(HELLO_TIMEOUT)]
SMALL = {"prompt": "red bricks", "width": 64, "height": 64, "steps": 2, "preview_interval": 0.0}


@pytest.fixture(scope="module")
def server(tmp_path_factory, models_dir):
    from dream_addon.supervisor import BackendProcess

    process = BackendProcess(sys.executable, 0, models=("tiny",), output_dir=tmp_path_factory.mktemp("outputs") / "out",
                             device="cpu", max_restarts=0,
                             extra_args=["--models-dir", str(models_dir), "--preload", *SERVER_ARGS])
    process.start()
    assert process.wait_ready(120), "\n".join(process.tail)
    yield process
    process.stop()


def connect(server):
    conn = BackendConnection("127.0.0.1", server.ready_info["port"], server.token, client="pytest")
    conn.sock.settimeout(30)  # a reply that never comes fails the test instead of hanging it
    return conn


def raw(server):
    sock = socket.create_connection(("127.0.0.1", server.ready_info["port"]), timeout=30)
    return sock


def frame(body: bytes, payload=b"", flags=0, payload_len=None):
    n = len(payload) if payload_len is None else payload_len
    return struct.pack("!4sHHIQ", b"DREM", 1, flags, len(body), n) + body + payload


def closed(sock) -> bool:
    """True once the peer has closed (EOF or reset), within the socket's timeout."""
    try:
        while True:
            if sock.recv(65536) == b"":
                return True
    except ConnectionResetError:
        return True


def test_frames_that_killed_the_reader_get_errors_and_the_connection_lives(server):
    conn = connect(server)
    deep = b'{"type":"status","x":' + b"[" * 1000 + b"]" * 1000 + b"}"
    conn.sock.sendall(frame(deep))
    assert conn.recv()[0]["code"] == "bad_json"
    conn.sock.sendall(frame(b'{"type":"status","n":' + b"9" * 4301 + b"}"))
    assert conn.recv()[0]["code"] == "bad_json"
    for dtype in ([], {}):
        body = json.dumps({"type": "submit", "job_id": "dt-1", "params": SMALL,
                           "arrays": [{"name": "init_image", "dtype": dtype, "shape": [2]}]}).encode()
        conn.sock.sendall(frame(body, b"\x00\x00"))
        error = conn.recv()[0]
        assert (error["code"], error["field"], error["job_id"]) == ("bad_array", "arrays[0].dtype", "dt-1")
    conn.send({"type": "ping"})
    assert conn.recv()[0]["type"] == "pong"
    conn.close()


def test_hello_with_a_lone_surrogate_token_gets_an_error_and_a_close(server):
    with raw(server) as sock:
        protocol.send_frame(sock, {"type": "hello", "protocol": 1, "token": "\ud800", "client": "x"})
        error = protocol.recv_frame(sock)[0]
        assert error["type"] == "error" and error["field"] == "token"
        assert closed(sock)


@pytest.mark.parametrize("version", [True, 1.0, "1", [1]])
def test_protocol_must_be_the_integer_1(server, version):
    with raw(server) as sock:
        protocol.send_frame(sock, {"type": "hello", "protocol": version, "token": server.token})
        error = protocol.recv_frame(sock)[0]
        assert (error["code"], error["field"], error["allowed"]) == ("version_mismatch", "protocol", [1])
        assert closed(sock)


def test_wrongly_typed_kind_and_invalid_text_name_the_field_and_create_nothing(server):
    conn = connect(server)
    for kind in ([], {}, 7):
        conn.send({"type": "submit", "job_id": "kind-1", "kind": kind, "params": SMALL})
        error = conn.recv()[0]
        assert (error["code"], error["field"], error["job_id"]) == ("invalid_param", "kind", "kind-1")
    conn.send({"type": "submit", "job_id": "text-1", "params": dict(SMALL, prompt="bricks \ud800")})
    error = conn.recv()[0]
    assert error["type"] == "error" and error["field"] == "params.prompt" and error["job_id"] == "text-1"
    conn.send({"type": "submit", "job_id": "int-1", "params": dict(SMALL, steps=2.0)})
    error = conn.recv()[0]
    assert (error["code"], error["field"], error["job_id"]) == ("invalid_param", "params.steps", "int-1")
    for job_id in ("kind-1", "text-1", "int-1"):
        conn.send({"type": "status", "job_id": job_id})
        assert conn.recv()[0]["code"] == "not_found"
    assert conn.run_job("after-text", SMALL)[0]["type"] == "result"
    conn.close()


def test_header_flags_must_be_zero(server):
    conn = connect(server)
    conn.sock.sendall(frame(b'{"type":"ping"}', flags=0x8000))
    error = conn.recv()[0]
    assert (error["code"], error["field"], error["allowed"]) == ("bad_header", "flags", [0])
    conn.send({"type": "ping"})
    assert conn.recv()[0]["type"] == "pong"  # the stream stayed in step
    conn.close()


def test_a_too_large_image_names_the_field_the_max_and_the_job(server):
    conn = connect(server)
    side = conn.welcome["capabilities"]["max_size"]
    conn.send({"type": "submit", "job_id": "big-1", "kind": "img2img", "params": SMALL},
              {"init_image": np.zeros((side * 2, 8, 3), np.uint8)})
    error = conn.recv()[0]
    assert (error["code"], error["field"], error["job_id"]) == ("bad_array", "arrays[0].shape", "big-1")
    assert error["allowed"]["dim"] == [1, side] and "init_image" in error["message"]
    conn.close()


def test_the_whole_hello_has_one_deadline(server):
    hello = protocol.frame_bytes({"type": "hello", "protocol": 1, "token": server.token, "client": "slow"})
    with raw(server) as sock:
        started = time.monotonic()
        answered = False
        for byte in hello[:-1]:  # one byte each 0.4 s: every read is quick, the whole hello is not
            sock.sendall(bytes([byte]))
            if select.select([sock], [], [], 0.4)[0]:
                answered = True
                break
            assert time.monotonic() - started < HELLO_TIMEOUT + 10, "still open long after the hello deadline"
        elapsed = time.monotonic() - started
        assert answered
        assert protocol.recv_frame(sock)[0]["code"] == "handshake_timeout"
        assert elapsed < HELLO_TIMEOUT + 2


def test_no_payload_is_read_before_authentication(server):
    with raw(server) as sock:
        body = json.dumps({"type": "hello", "protocol": 1, "token": "wrong"}).encode()
        sock.sendall(frame(body, payload_len=64 << 20))  # the 64 MiB never come
        error = protocol.recv_frame(sock)[0]
        assert (error["code"], error["field"], error["allowed"]) == ("frame_too_large", "payload_len", {"max": 0})
        assert closed(sock)
    with raw(server) as sock:
        sock.sendall(frame(b'{"type":"hello","pad":"' + b"x" * 5000 + b'"}'))
        error = protocol.recv_frame(sock)[0]
        assert (error["code"], error["field"]) == ("frame_too_large", "json_len")


def test_unauthenticated_connections_cannot_take_the_clients_slots(server):
    idle = [raw(server) for _ in range(40)]  # more than every slot, none says hello
    try:
        conn = connect(server)
        assert conn.welcome["type"] == "welcome"
        conn.send({"type": "ping"})
        assert conn.recv()[0]["type"] == "pong"
        conn.close()
        busy = 0
        for sock in idle[:24]:  # the oldest were dropped for newcomers, each told why
            message = protocol.recv_frame(sock)[0]
            busy += message["code"] == "busy"
        assert busy == 24
    finally:
        for sock in idle:
            sock.close()


def test_results_are_readable_by_the_user_alone(server):
    conn = connect(server)
    result = conn.run_job("private-1", SMALL)[0]
    folder = result["path"]
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    for name in ("result.png", "result.npy", "result.json"):
        assert stat.S_IMODE(os.stat(os.path.join(folder, name)).st_mode) == 0o600, name
    assert stat.S_IMODE(os.stat(os.path.dirname(folder)).st_mode) == 0o700  # the output folder it created
    conn.close()


def test_ping_reports_the_health_of_worker_and_output(server):
    conn = connect(server)
    conn.send({"type": "ping"})
    pong = conn.recv()[0]
    assert pong["ok"] is True and pong["worker"] == "running" and pong["output_writable"] is True
    assert pong["problems"] == [] and pong["output_dir"] == str(server.output_dir)
    conn.close()


FUZZ_SEED, FUZZ_FRAMES = 13, 3000


def test_seeded_fuzz_every_frame_gets_a_structured_error_or_a_close(server):
    """3000 malformed frames of every category: no hang, no internal error, no frame left
    unanswered, the job id on every error about a job; then a job still runs to its result."""
    driver = Driver(server.ready_info["port"], server.token, timeout=10)
    try:
        for fuzz_frame in Fuzzer(FUZZ_SEED).frames(FUZZ_FRAMES):
            driver.send(fuzz_frame)
    finally:
        driver.close()
    tally = driver.tally
    assert sum(tally.frames.values()) == FUZZ_FRAMES and len(tally.frames) == 12
    assert tally.bad == [] and tally.hangs == 0, tally.bad[:5]
    assert "internal" not in tally.errors and sum(tally.errors.values()) >= FUZZ_FRAMES - tally.closes
    conn = connect(server)
    assert conn.run_job("after-fuzz", SMALL)[0]["type"] == "result"
    conn.close()


class BrokenConnection:
    """A subscriber whose socket fails on every send."""

    def send(self, *args, **kwargs):
        raise OSError("the socket went away")


class Recorder:
    """A subscriber that keeps every message and says when the job has ended."""

    def __init__(self):
        self.messages, self.terminal = [], threading.Event()

    def send(self, message, arrays=None, coalesce_key=None):
        self.messages.append(message)
        if message["type"] in protocol.TERMINAL_EVENTS:
            self.terminal.set()


def test_no_failure_ends_the_worker_and_health_tells_a_stopped_one(tmp_path, models_dir):
    from generator_backend.jobs import FINISHED, Job, JobQueue, JobStore
    from generator_backend.models import ModelManager
    from generator_backend.runner import Worker
    from generator_backend.server import Server

    models = ModelManager(["tiny"], device="cpu", models_dir=models_dir)
    server = Server(models, tmp_path / "out", "token", port=0)
    try:
        health = server.health()  # never started: a worker that cannot run jobs
        assert health["ok"] is False and health["worker"] == "stopped" and "restart" in health["problems"][0]
        with pytest.raises(protocol.ProtocolError) as info:
            server.submit(None, "j-0", "txt2img", {}, {})
        assert info.value.code == "worker_stopped" and info.value.job_id == "j-0"
    finally:
        server.listener.close()
    queue, store = JobQueue(), JobStore(tmp_path / "out")
    worker = Worker(queue, models, store)
    params = protocol.validate_job("txt2img", SMALL, {})[0]
    doomed, fine = Job("doomed", "txt2img", params), Job("fine", "txt2img", params)
    doomed.subscribe(BrokenConnection())  # every event of it raises, its failure report too
    ended = Recorder()
    fine.subscribe(ended)
    worker.start()
    queue.put(doomed)
    queue.put(fine)
    try:
        assert ended.terminal.wait(120)
        assert worker.is_alive() and doomed.state in FINISHED and fine.state == "done"
        assert ended.messages[-1]["type"] == "result"
    finally:
        queue.close()
        worker.join(60)
