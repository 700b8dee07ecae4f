"""Seeded malformed frames and a driver that sends them to a backend (the fuzz test and
benchmarks/bench_fuzz.py share it). Every frame is wrong by construction, so the only
good answers are a structured error (never ``internal``) or a clean close after one."""

from __future__ import annotations

import json
import random
import socket
import struct
from collections import Counter
from dataclasses import dataclass, field

from dream_addon import protocol

FATAL_CODES = {"bad_magic", "frame_too_large", "truncated_frame"}
# Errors about a frame that is read but cannot be tied to a job: no job id expected.
UNATTRIBUTED = {"bad_magic", "frame_too_large", "truncated_frame", "version_mismatch"}
# A fatal frame whose unread bytes are still in the server's buffer when it closes: the
# reset may overtake the error frame, so a bare close is a clean answer for these alone.
MAY_CLOSE_UNANSWERED = {"header", "before_auth"}
BASE = {"prompt": "red bricks", "width": 64, "height": 64, "steps": 2, "preview_interval": 0.0}


@dataclass
class Frame:
    category: str
    data: bytes
    job_id: str | None = None  # the error must name this job
    before_auth: bool = False  # sent as the first frame of a fresh connection
    half_close: bool = False  # we stop sending after it (a truncated frame)


def header(json_len, payload_len, version=1, flags=0, magic=b"DREM"):
    return struct.pack("!4sHHIQ", magic, version, flags, json_len, payload_len)


def raw(body: bytes, payload: bytes = b"", **kw) -> bytes:
    return header(len(body), len(payload), **kw) + body + payload


def dumps(message) -> bytes:
    return json.dumps(message).encode()  # lone surrogates come out as \\udXXX escapes: valid JSON, bad text


def invalid_values(spec: protocol.Field, rng: random.Random) -> list:
    """Values that ``spec`` refuses, whatever its bounds."""
    common = [[], {}, [1, 2], {"a": 1}]
    if spec.kind == "str":
        return common + [5, True, 2.5, "x" * ((spec.max_length or 4000) + 1), "ok \ud800", "\udfff"]
    if spec.kind == "int":
        return common + [True, False, 2.0, 2.5, "3", None, (spec.min or 0) - rng.randint(1, 10 ** 6),
                         int(spec.max) + rng.randint(1, 10 ** 6), -(10 ** rng.randint(20, 4000))]
    if spec.kind == "float":
        return common + [True, "1.0", None, spec.max + 1 + rng.random(), 10 ** rng.randint(309, 4000)]
    if spec.kind == "bool":
        return common + [0, 1, "true", None, 1.0]
    if spec.kind == "choice":
        return common + ["nope", 0, True, None, "\ud800", spec.choices[0] + " "]
    if spec.kind in ("prompts", "models"):
        return [5, "x", [], [{}], [{"text": 5}], [[]], [{"name": "tiny", "weight": "w"}], [{"text": "a\ud800"}]]
    if spec.kind == "layer_weights":
        return [5, [], {}, {"mid": "x"}, {"mid": 99}, {"": 1.0}, {"x" * 40: 1.0}]
    return [5, "x", [1], [True, False]]  # strings / ints lists


def nested(depth: int, rng: random.Random) -> bytes:
    opener, closer = (b"[", b"]") if rng.random() < 0.5 else (b'{"a":', b"}")
    return opener * depth + b"0" + closer * depth


class Fuzzer:
    """Makes the frames, category by category, from one seed."""

    def __init__(self, seed: int, max_size: int = 2048):
        self.rng = random.Random(seed)
        self.max_size = max_size
        self.count = 0

    def job_id(self):
        self.count += 1
        return f"fz-{self.count}"

    def frames(self, n: int):
        makers = [self.header, self.truncated, self.bad_json, self.deep, self.huge_int, self.surrogate,
                  self.arrays, self.params, self.kinds, self.job_ids, self.other_messages, self.before_auth]
        return [self.rng.choice(makers)() for _ in range(n)]

    # ------------------------------------------------------------------ frame level
    def header(self):
        rng = self.rng
        body = b'{"type":"ping"}'
        choice = rng.randrange(6)
        if choice == 0:
            return Frame("header", bytes(rng.getrandbits(8) for _ in range(20)).replace(b"DREM", b"DREX"))
        if choice == 1:
            return Frame("header", header(0, 0))
        if choice == 2:
            return Frame("header", header(rng.randint((1 << 20) + 1, (1 << 32) - 1), 0))
        if choice == 3:
            return Frame("header", header(len(body), rng.randint(1 << 31, (1 << 64) - 1)) + body)
        if choice == 4:
            return Frame("header", raw(body, version=rng.choice([0, 2, 7, 65535])))
        return Frame("header", raw(body, flags=rng.randint(1, 65535)))

    def truncated(self):
        data = protocol.frame_bytes({"type": "status", "job_id": "t"})
        return Frame("truncated", data[:self.rng.randint(1, len(data) - 1)], half_close=True)

    def bad_json(self):
        rng = self.rng
        choice = rng.randrange(5)
        if choice == 0:
            body = bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64)))
            body = body if body[:1] not in (b"{", b"[") else b"\xff" + body
        elif choice == 1:
            body = rng.choice([b"[1,2]", b"3", b'"str"', b"null", b"true"])
        elif choice == 2:
            body = dumps({"kind": "txt2img"} if rng.random() < 0.5 else {"type": rng.choice([3, None, [], {}, 1.5])})
        elif choice == 3:
            body = b'{"type":"ping"' + bytes([rng.choice(b",:]{[")]) * rng.randint(1, 5)
        else:
            body = b'{"type":"ping","x":' + rng.choice([b"NaN", b"Infinity", b"-Infinity", b"1e99999"]) + b"}x"
        return Frame("bad_json", raw(body))

    def deep(self):
        depth = self.rng.choice([33, 100, 999, 1000, 5000, 50_000])
        return Frame("deep_nesting", raw(b'{"type":"status","x":' + nested(depth, self.rng) + b"}"))

    def huge_int(self):
        digits = self.rng.randint(4301, 20_000)
        where = self.rng.choice([b'{"type":"status","n":%s}', b'{"type":"submit","job_id":"h","params":{"seed":%s}}'])
        return Frame("huge_int", raw(where % (b"9" * digits)))

    def surrogate(self):
        rng = self.rng
        bad = rng.choice(["\ud800", "\udbff", "\udc00", "a\udfffb"])
        job_id = self.job_id()
        message = rng.choice([
            {"type": bad},
            {"type": "submit", "job_id": job_id, "params": dict(BASE, prompt=bad)},
            {"type": "submit", "job_id": job_id, "params": dict(BASE, negative_prompt=bad)},
            {"type": "submit", "job_id": job_id, "params": {**BASE, bad: 1}},
            {"type": "fetch", "job_id": bad},
            {"type": "submit", "job_id": job_id, "kind": bad, "params": BASE},
        ])
        return Frame("surrogate", raw(dumps(message)), job_id if message.get("job_id") == job_id else None)

    # ------------------------------------------------------------------ arrays
    def arrays(self):
        rng = self.rng
        job_id = self.job_id()
        good = {"name": "init_image", "dtype": "uint8", "shape": [64, 64, 3]}
        payload_len = 64 * 64 * 3
        choice = rng.randrange(9)
        junk = rng.choice([[], {}, None, 5, 2.5, True, "int64", "float64", ["uint8"], {"a": 1}])
        if choice == 0:
            descriptors = rng.choice(["x", 5, {"a": 1}, None, True])
        elif choice == 1:
            descriptors, payload_len = [dict(good, name=f"a{i}", shape=[1]) for i in range(17)], 17
        elif choice == 2:
            descriptors = [rng.choice([5, "x", [], None])]
        elif choice == 3:
            descriptors = [{k: v for k, v in good.items() if k != "name"} if rng.random() < 0.5 else dict(good, name=junk)]
        elif choice == 4:
            descriptors, payload_len = [good, good], payload_len * 2
        elif choice == 5:
            descriptors = [dict(good, dtype=junk)]
        elif choice == 6:
            shape = rng.choice([[], [0], [-1], [True], [1.5], ["3"], [1, 1, 1, 1, 1], None, 7, [self.max_size + 1],
                                [10 ** 30], [64, 64, 2 ** 40]])
            descriptors = [dict(good, shape=shape)]
        elif choice == 7:  # the payload is longer or shorter than the descriptors say
            descriptors, payload_len = [good], payload_len + rng.choice([-1, 1, -payload_len + 1, 1000])
        else:  # a valid descriptor the job does not use, or an image of the wrong size
            descriptors = [rng.choice([dict(good, name="extra"), dict(good, shape=[32, 64, 3]),
                                       dict(good, shape=[64, 64, 2])])]
            payload_len = 64 * 64 * descriptors[0]["shape"][2] // (2 if descriptors[0]["shape"][0] == 32 else 1)
        message = {"type": "submit", "job_id": job_id, "kind": "img2img", "params": BASE, "arrays": descriptors}
        return Frame("arrays", raw(dumps(message), bytes(payload_len)), job_id)

    # ------------------------------------------------------------------ messages
    def params(self):
        rng = self.rng
        kind = rng.choice(sorted(protocol.JOB_KINDS))
        fields = protocol.JOB_KINDS[kind].fields(self.max_size)
        name = rng.choice(sorted(fields))
        value = rng.choice(invalid_values(fields[name], rng))
        params = dict(BASE, **{name: value})
        if rng.random() < 0.1:
            params = rng.choice([None, 5, "x", [], [BASE]])  # params itself of a wrong type
        elif rng.random() < 0.1:
            params = dict(BASE, **{rng.choice(["colour", "Width", "", "x" * 50]): 1})
        job_id = self.job_id()
        return Frame("params", raw(dumps({"type": "submit", "job_id": job_id, "kind": kind, "params": params})), job_id)

    def kinds(self):
        job_id = self.job_id()
        kind = self.rng.choice([[], {}, None, 5, True, "video", "TXT2IMG", "txt2img ", ["txt2img"]])
        return Frame("kind", raw(dumps({"type": "submit", "job_id": job_id, "kind": kind, "params": BASE})), job_id)

    def job_ids(self):
        job_id = self.rng.choice([None, 5, True, [], {}, "", "a" * 129, "../x", ".x", "a/b", "é", "a b", 1.5])
        kind = self.rng.choice(["submit", "cancel", "fetch", "export"])
        message = {"type": kind, "job_id": job_id}
        if kind == "submit":
            message["params"] = BASE
        return Frame("job_id", raw(dumps(message)))

    def other_messages(self):
        rng = self.rng
        job_id = self.job_id()  # never submitted: every answer is an error naming it
        message = rng.choice([
            {"type": rng.choice(["dance", "hello", "", "SUBMIT", "x" * 1000, "on_ping", "__class__"])},
            {"type": "fetch", "job_id": job_id, "output": rng.choice([5, [], {"flip_y": 3}, {"colour": 1},
                                                                       {"output_dtype": "int8"}])},
            {"type": "fetch", "job_id": job_id},
            {"type": "cancel", "job_id": job_id},
            {"type": "export", "job_id": job_id, "options": rng.choice([5, {"format": "avi"}, {"fps": 0},
                                                                         {"fps": 2.0}, {}])},
            {"type": "status", "job_id": job_id},
        ])
        return Frame("messages", raw(dumps(message)), job_id if message.get("job_id") == job_id else None)

    def before_auth(self):
        rng = self.rng
        hello = {"type": "hello", "protocol": 1, "token": "wrong-token", "client": "fuzz"}
        choice = rng.randrange(6)
        if choice == 0:
            hello["token"] = rng.choice([None, 5, [], {}, True, "\ud800", "x" * 3000])
        elif choice == 1:
            hello["protocol"] = rng.choice([True, 1.0, "1", None, 2, [1], 10 ** 100])
        elif choice == 2:
            return Frame("before_auth", raw(dumps(hello), bytes(rng.randint(1, 4096))), before_auth=True)
        elif choice == 3:
            body = dumps(dict(hello, pad="x" * rng.randint(4096, 100_000)))
            return Frame("before_auth", raw(body), before_auth=True)
        elif choice == 4:
            hello = {"type": rng.choice(["submit", "ping", "status", "shutdown"]), "params": BASE}
        else:
            return Frame("before_auth", header(50, rng.randint(1, 1 << 40)) + b"{", before_auth=True)
        return Frame("before_auth", raw(dumps(hello)), before_auth=True)


@dataclass
class Tally:
    frames: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)  # by code
    closes: int = 0
    hangs: int = 0
    bad: list = field(default_factory=list)  # (category, what went wrong)


class Driver:
    """Sends frames to a backend and judges each answer."""

    def __init__(self, port: int, token: str, timeout: float = 10.0):
        self.port, self.token, self.timeout = port, token, timeout
        self.sock = None
        self.tally = Tally()

    def _connect(self, authenticate=True):
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        if authenticate:
            protocol.send_frame(sock, {"type": "hello", "protocol": 1, "token": self.token, "client": "fuzz"})
            welcome, _ = protocol.recv_frame(sock)
            assert welcome["type"] == "welcome", welcome
        return sock

    def send(self, frame: Frame):
        tally = self.tally
        tally.frames[frame.category] += 1
        if frame.before_auth:
            sock = self._connect(authenticate=False)
        else:
            if self.sock is None:
                self.sock = self._connect()
            sock = self.sock
        try:
            sock.sendall(frame.data)
            if frame.half_close:
                sock.shutdown(socket.SHUT_WR)
            reply = self._answer(sock)
        except (ConnectionResetError, BrokenPipeError):
            reply = "closed"  # the server closed while we were still sending
        fatal = True
        if reply == "hang":
            tally.hangs += 1
            tally.bad.append((frame.category, "no answer within the timeout"))
        elif reply == "closed":
            tally.closes += 1
            if frame.category not in MAY_CLOSE_UNANSWERED:
                tally.bad.append((frame.category, "closed with no error"))
        else:
            code = reply.get("code")
            if reply.get("type") != "error" or not isinstance(code, str) or not isinstance(reply.get("message"), str):
                tally.bad.append((frame.category, f"not a structured error: {str(reply)[:200]}"))
            else:
                tally.errors[code] += 1
                if code == "internal":
                    tally.bad.append((frame.category, f"internal: {reply}"))
                if frame.job_id and code not in UNATTRIBUTED and reply.get("job_id") != frame.job_id:
                    tally.bad.append((frame.category, f"{code} without the job id {frame.job_id}: {reply}"))
                fatal = code in FATAL_CODES or frame.before_auth or frame.half_close
                if fatal and self._answer(sock) != "closed":
                    tally.bad.append((frame.category, f"{code}: the connection stayed open"))
                    tally.closes -= 1
                if fatal:
                    tally.closes += 1
        if fatal or sock is not self.sock:
            sock.close()
            if sock is self.sock:
                self.sock = None

    def _answer(self, sock):
        """The next message, 'closed' at a clean or reset close, 'hang' when nothing comes in time."""
        try:
            sock.settimeout(self.timeout)
            return protocol.recv_frame(sock)[0]
        except (protocol.ConnectionClosed, ConnectionResetError):
            return "closed"
        except socket.timeout:
            return "hang"
        except protocol.ProtocolError as exc:  # the server's own frame was broken (truncated by a close)
            return "closed" if exc.code == "truncated_frame" else {"type": "client_side", "code": exc.code}

    def close(self):
        if self.sock is not None:
            self.sock.close()
            self.sock = None
