"""Frames and fields that once escaped as exceptions: each must be a structured ProtocolError (issue 13)."""

import json
import socket
import struct
import threading
import time

import numpy as np
import pytest

from dream_addon import protocol
from dream_addon.protocol import ProtocolError


def raw_frame(body: bytes, payload: bytes = b"", flags=0, version=1, payload_len=None):
    length = len(payload) if payload_len is None else payload_len
    return struct.pack("!4sHHIQ", b"DREM", version, flags, len(body), length) + body + payload


def refused(data, limits=protocol.DEFAULT_LIMITS) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        protocol.decode_frame(data, limits)
    return info.value


@pytest.mark.parametrize("depth", [40, 1000, 100_000])
def test_deep_nesting_is_bad_json(depth):
    body = b'{"type":"status","x":' + b"[" * depth + b"]" * depth + b"}"
    error = refused(raw_frame(body))
    assert error.code == "bad_json" and not error.fatal
    assert error.allowed == {"max_depth": 32}


def test_nesting_within_the_limit_is_fine():
    body = b'{"type":"status","x":' + b"[" * 30 + b"]" * 30 + b"}"
    assert protocol.decode_frame(raw_frame(body))[0]["type"] == "status"


def test_integer_of_5000_digits_is_bad_json():
    body = b'{"type":"status","n":' + b"7" * 5000 + b"}"
    assert refused(raw_frame(body)).code == "bad_json"


@pytest.mark.parametrize("dtype", [[], {}, None, 5, ["uint8"]])
def test_dtype_of_wrong_type_is_bad_array(dtype):
    body = json.dumps({"type": "submit", "job_id": "j-1",
                       "arrays": [{"name": "a", "dtype": dtype, "shape": [2]}]}).encode()
    error = refused(raw_frame(body, b"\x00\x00"))
    assert error.code == "bad_array" and error.field == "arrays[0].dtype" and error.job_id == "j-1"


@pytest.mark.parametrize("message, field", [
    ({"type": "hello", "token": "\ud800"}, "token"),
    ({"type": "submit", "job_id": "j-2", "params": {"prompt": "bricks \udfff"}}, "params.prompt"),
    ({"type": "submit", "job_id": "j-2", "params": {"prompts": [{"text": "\ud83d"}]}}, "params.prompts[0].text"),
    ({"type": "\ud800"}, "type"),
])
def test_lone_surrogates_are_refused_naming_the_field(message, field):
    body = json.dumps(message).encode()  # json escapes them as \\udXXX: valid JSON, not valid text
    error = refused(raw_frame(body))
    assert error.code == "bad_json" and error.field == field
    assert error.job_id == message.get("job_id")


def test_a_key_with_a_lone_surrogate_is_refused():
    error = refused(raw_frame(b'{"type":"status","\\ud800":1}'))
    assert error.code == "bad_json"


def test_nonzero_flags_are_refused_and_the_stream_stays_in_step():
    a, b = socket.socketpair()
    try:
        body = b'{"type":"ping","job_id":"j-3"}'
        a.sendall(raw_frame(body, b"abc", flags=1) + protocol.frame_bytes({"type": "ping"}))
        with pytest.raises(ProtocolError) as info:
            protocol.recv_frame(b)
        assert info.value.code == "bad_header" and info.value.field == "flags" and info.value.allowed == [0]
        assert not info.value.fatal and info.value.job_id == "j-3"
        assert protocol.recv_frame(b)[0] == {"type": "ping"}
    finally:
        a.close()
        b.close()


def test_bad_array_names_the_job_and_a_too_large_image_names_field_and_max():
    limits = protocol.Limits(max_array_dim=2048)
    body = json.dumps({"type": "submit", "job_id": "big-1",
                       "arrays": [{"name": "init_image", "dtype": "uint8", "shape": [4096, 8, 3]}]}).encode()
    error = refused(raw_frame(body, bytes(4096 * 8 * 3)), limits)
    assert error.code == "bad_array" and error.job_id == "big-1" and error.field == "arrays[0].shape"
    assert "init_image" in error.message and error.allowed["dim"] == [1, 2048]


def test_the_deadline_covers_the_whole_frame_however_it_dribbles():
    a, b = socket.socketpair()
    data = protocol.frame_bytes({"type": "hello", "token": "x" * 40})
    stop = threading.Event()

    def dribble():  # one byte at a time, each well within any per-read timeout
        for byte in data:
            if stop.wait(0.05):
                return
            try:
                a.sendall(bytes([byte]))
            except OSError:
                return

    writer = threading.Thread(target=dribble)
    writer.start()
    started = time.monotonic()
    try:
        with pytest.raises(socket.timeout):
            protocol.recv_frame(b, protocol.HELLO_LIMITS, deadline=started + 0.5)
        assert time.monotonic() - started < 1.5
    finally:
        stop.set()
        writer.join(5)
        a.close()
        b.close()


def test_hello_limits_allow_no_payload():
    error = refused(raw_frame(b'{"type":"hello"}', b"x"), protocol.HELLO_LIMITS)
    assert error.code == "frame_too_large" and error.field == "payload_len" and error.allowed == {"max": 0}


FIELDS = protocol.txt2img_fields()


@pytest.mark.parametrize("params, field", [
    ({"prompt": "a", "steps": 4.0}, "params.steps"),  # strict: a float is not an integer
    ({"prompt": "a", "seed": True}, "params.seed"),
    ({"prompt": "a", "guidance": 10 ** 400}, "params.guidance"),  # float() would overflow
    ({"prompt": "a", "guidance": -10 ** 4000}, "params.guidance"),
    ({"prompt": "a", "seed": 10 ** 4000}, "params.seed"),
    ({"prompt": "a\ud800"}, "params.prompt"),
    ({"prompt": "a", "negative_prompt": "\udc00"}, "params.negative_prompt"),
])
def test_strict_types_and_text(params, field):
    with pytest.raises(ProtocolError) as info:
        protocol.validate_params(params, FIELDS)
    assert info.value.code == "invalid_param" and info.value.field == field


def test_walk_prompts_with_a_lone_surrogate_are_refused():
    with pytest.raises(ProtocolError) as info:
        protocol.validate_job("walk", {"walk_prompts": ["a", "b\ud800"], "width": 64, "height": 64}, {})
    assert info.value.field == "params.walk_prompts"


@pytest.mark.parametrize("kind", [[], {}, 3, None, True])
def test_kind_of_wrong_type_is_invalid_param(kind):
    with pytest.raises(ProtocolError) as info:
        protocol.validate_job(kind, {"prompt": "a"}, {})
    assert info.value.code == "invalid_param" and info.value.field == "kind"
    assert info.value.allowed == sorted(protocol.JOB_KINDS)


def test_error_extra_details_travel_in_the_message():
    error = ProtocolError("output_unwritable", "x", job_id="j", path="/p", hint="h")
    assert error.to_message() == {"type": "error", "code": "output_unwritable", "message": "x", "job_id": "j",
                                  "path": "/p", "hint": "h"}


def test_roundtrip_still_exact():
    img = np.random.default_rng(0).random((8, 8, 4), dtype=np.float32)
    message, arrays = protocol.decode_frame(protocol.frame_bytes({"type": "result", "job_id": "r"}, {"image": img}))
    assert message == {"type": "result", "job_id": "r"} and np.array_equal(arrays["image"], img)
