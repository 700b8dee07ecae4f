"""Framing and validation of protocol v1, over real sockets (socketpair)."""

import json
import socket
import struct
import threading

import numpy as np
import pytest

from dream_addon import protocol
from dream_addon.protocol import ConnectionClosed, ProtocolError


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def send_raw(sock, data):
    # A writer thread: frames larger than the socket buffer must not deadlock the test.
    t = threading.Thread(target=sock.sendall, args=(data,))
    t.start()
    return t


def test_roundtrip_with_arrays(pair):
    a, b = pair
    img = np.random.default_rng(0).random((48, 32, 4), dtype=np.float32)
    mask = (np.arange(48 * 32, dtype=np.uint8) % 7).reshape(48, 32, 1)
    half = img.astype(np.float16)
    t = send_raw(a, protocol.frame_bytes({"type": "submit", "job_id": "x"}, {"image": img, "mask": mask, "h": half}))
    message, arrays = protocol.recv_frame(b)
    t.join()
    assert message == {"type": "submit", "job_id": "x"}
    assert np.array_equal(arrays["image"], img) and arrays["image"].dtype == np.float32
    assert np.array_equal(arrays["mask"], mask) and np.array_equal(arrays["h"], half)


def test_large_frame_over_socket(pair):
    a, b = pair
    img = np.arange(1024 * 1024 * 4, dtype=np.float32).reshape(1024, 1024, 4)
    t = threading.Thread(target=protocol.send_frame, args=(a, {"type": "result"}, {"image": img}))
    t.start()
    message, arrays = protocol.recv_frame(b)
    t.join()
    assert np.array_equal(arrays["image"], img)


def test_header_layout_is_fixed():
    data = protocol.frame_bytes({"type": "ping"})
    magic, version, flags, json_len, payload_len = struct.unpack("!4sHHIQ", data[:20])
    assert (magic, version, flags, payload_len) == (b"DREM", 1, 0, 0)
    assert json.loads(data[20:20 + json_len]) == {"type": "ping"}


def test_clean_eof_between_frames(pair):
    a, b = pair
    a.close()
    with pytest.raises(ConnectionClosed):
        protocol.recv_frame(b)


@pytest.mark.parametrize("cut", [5, 20, 27])
def test_truncated_frame_is_fatal(pair, cut):
    a, b = pair
    data = protocol.frame_bytes({"type": "x"}, {"a": np.zeros(4, np.uint8)})
    a.sendall(data[:cut])
    a.close()
    with pytest.raises(ProtocolError) as info:
        protocol.recv_frame(b)
    assert info.value.code == "truncated_frame" and info.value.fatal


def test_bad_magic_is_fatal(pair):
    a, b = pair
    a.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with pytest.raises(ProtocolError) as info:
        protocol.recv_frame(b)
    assert info.value.code == "bad_magic" and info.value.fatal


def test_oversized_json_and_payload_are_refused_before_reading(pair):
    a, b = pair
    limits = protocol.Limits(max_json_bytes=100, max_payload_bytes=1000)
    a.sendall(struct.pack("!4sHHIQ", b"DREM", 1, 0, 101, 0))
    with pytest.raises(ProtocolError) as info:
        protocol.recv_frame(b, limits)
    assert info.value.code == "frame_too_large" and info.value.field == "json_len"
    a.sendall(struct.pack("!4sHHIQ", b"DREM", 1, 0, 10, 2**40))
    with pytest.raises(ProtocolError) as info:
        protocol.recv_frame(b, limits)
    assert info.value.field == "payload_len" and info.value.allowed == {"max": 1000}


def test_malformed_json_is_not_fatal(pair):
    a, b = pair
    body = b"{not json"
    a.sendall(struct.pack("!4sHHIQ", b"DREM", 1, 0, len(body), 0) + body)
    a.sendall(protocol.frame_bytes({"type": "ping"}))
    with pytest.raises(ProtocolError) as info:
        protocol.recv_frame(b)
    assert info.value.code == "bad_json" and not info.value.fatal
    assert protocol.recv_frame(b)[0] == {"type": "ping"}  # the stream is still in step


def test_json_must_be_object_with_type():
    for body in (b"[1,2]", b'{"x":1}', b'{"type":3}', b"\xff\xfe"):
        frame = struct.pack("!4sHHIQ", b"DREM", 1, 0, len(body), 0) + body
        with pytest.raises(ProtocolError) as info:
            protocol.decode_frame(frame)
        assert info.value.code == "bad_json"


def test_other_version_is_read_whole_and_reported(pair):
    a, b = pair
    body = b'{"type":"hello"}'
    a.sendall(struct.pack("!4sHHIQ", b"DREM", 2, 0, len(body), 3) + body + b"abc")
    a.sendall(protocol.frame_bytes({"type": "ping"}))
    with pytest.raises(ProtocolError) as info:
        protocol.recv_frame(b)
    assert info.value.code == "version_mismatch" and info.value.allowed == [1]
    assert protocol.recv_frame(b)[0] == {"type": "ping"}


@pytest.mark.parametrize("arrays, field", [
    ([{"name": "a", "dtype": "int64", "shape": [2]}], "arrays[0].dtype"),
    ([{"name": "a", "dtype": "uint8", "shape": [0]}], "arrays[0].shape"),
    ([{"name": "a", "dtype": "uint8", "shape": [9000]}], "arrays[0].shape"),
    ([{"name": "a", "dtype": "uint8", "shape": [2, 2]}], "arrays[0].shape"),  # more than the payload
    ([{"name": "a", "dtype": "uint8", "shape": [1]}], "arrays"),  # less than the payload
    ([{"dtype": "uint8", "shape": [1]}], "arrays[0].name"),
    ("nope", "arrays"),
])
def test_array_descriptors_are_checked(arrays, field):
    body = json.dumps({"type": "x", "arrays": arrays}).encode()
    frame = struct.pack("!4sHHIQ", b"DREM", 1, 0, len(body), 2) + body + b"\x00\x00"
    with pytest.raises(ProtocolError) as info:
        protocol.decode_frame(frame)
    assert info.value.code == "bad_array" and info.value.field == field


def test_unsupported_dtype_is_refused_when_sending():
    with pytest.raises(ProtocolError) as info:
        protocol.frame_bytes({"type": "x"}, {"a": np.zeros(3, np.int64)})
    assert info.value.field == "arrays.a"


FIELDS = protocol.txt2img_fields(max_size=1024)


def test_params_defaults_are_filled():
    params = protocol.validate_params({"prompt": "wood"}, FIELDS)
    assert params["prompt"] == "wood" and params["width"] == 512 and params["scheduler"] == "default"
    assert set(params) == set(FIELDS)


@pytest.mark.parametrize("params, field, allowed", [
    ({"prompt": "a", "width": 100}, "params.width", {"min": 64, "max": 1024, "multiple_of": 8}),
    ({"prompt": "a", "height": 2048}, "params.height", {"min": 64, "max": 1024, "multiple_of": 8}),
    ({"prompt": "a", "steps": 0}, "params.steps", {"min": 1, "max": 200}),
    ({"prompt": "a", "steps": 2.5}, "params.steps", {"min": 1, "max": 200}),
    ({"prompt": "a", "steps": True}, "params.steps", {"min": 1, "max": 200}),
    ({"prompt": "a", "seed": -1}, "params.seed", {"min": 0, "max": 2**32 - 1}),
    ({"prompt": "a", "guidance": float("nan")}, "params.guidance", {"min": 0.0, "max": 50.0}),
    ({"prompt": "a", "scheduler": "magic"}, "params.scheduler", list(protocol.SCHEDULERS)),
    ({"prompt": 3}, "params.prompt", {"max_length": 4000}),
    ({"prompt": "a", "colour": 1}, "params.colour", sorted(FIELDS)),
])
def test_params_errors_name_field_and_allowed(params, field, allowed):
    with pytest.raises(ProtocolError) as info:
        protocol.validate_params(params, FIELDS)
    assert info.value.field == field and info.value.allowed == allowed
    assert info.value.code == "invalid_param" and field in info.value.message


@pytest.mark.parametrize("job_id", ["", "a" * 129, "../x", ".hidden", "a/b", "é", 5, None])
def test_bad_job_ids(job_id):
    with pytest.raises(ProtocolError) as info:
        protocol.validate_job_id(job_id)
    assert info.value.field == "job_id"


def test_prompt_ensemble_validation_and_default_weights():
    params, _ = protocol.validate_job("txt2img", {"prompts": [{"text": "a"}, {"text": "b", "guidance": 3}]}, {})
    assert params["prompts"] == [{"text": "a", "weight": 0.5, "guidance": None},
                                 {"text": "b", "weight": 0.5, "guidance": 3.0}]
    with pytest.raises(ProtocolError) as info:
        protocol.validate_job("txt2img", {"prompts": [{"text": "a", "weight": 99}]}, {})
    assert info.value.field == "params.prompts[0].weight" and info.value.allowed == {"min": -10.0, "max": 10.0}
    with pytest.raises(ProtocolError) as info:
        protocol.validate_job("txt2img", {"prompts": [{"text": "a"}] * 9}, {})
    assert info.value.field == "params.prompts"
    with pytest.raises(ProtocolError, match="not both") as info:
        protocol.validate_job("txt2img", {"prompt": "a", "prompts": [{"text": "b"}]}, {})
    assert info.value.field == "params.prompt"


@pytest.mark.parametrize("kind", ["txt2img", "walk"])
@pytest.mark.parametrize("params", [{}, {"prompt": ""}, {"prompt": "   "}, {"prompts": [{"text": " \t"}]}])
def test_a_missing_or_blank_prompt_is_named_as_such(kind, params):
    params = dict(params, walk="circular") if kind == "walk" else params
    with pytest.raises(ProtocolError) as info:
        protocol.validate_job(kind, params, {})
    assert info.value.field.startswith("params.prompt")
    assert "empty" in info.value.message and "not both" not in info.value.message


def test_img2img_needs_an_init_image_of_the_job_size():
    good = np.zeros((64, 96, 3), np.uint8)
    params, arrays = protocol.validate_job("img2img", {"prompt": "a", "width": 96, "height": 64}, {"init_image": good})
    assert params["strength"] == 0.75 and arrays["init_image"] is good
    for arrays, field in (({}, "arrays.init_image"), ({"init_image": np.zeros((64, 64, 3), np.uint8)},
                                                      "arrays.init_image"),
                          ({"init_image": good, "mask": good}, "arrays.mask")):
        with pytest.raises(ProtocolError) as info:
            protocol.validate_job("img2img", {"prompt": "a", "width": 96, "height": 64}, arrays)
        assert info.value.field == field
    with pytest.raises(ProtocolError) as info:
        protocol.validate_job("img2img", {"prompt": "a", "width": 96, "height": 64, "strength": 1.5},
                              {"init_image": good})
    assert info.value.field == "params.strength" and info.value.allowed == {"min": 0.0, "max": 1.0}
    with pytest.raises(ProtocolError) as info:
        protocol.validate_job("img2img", {"prompt": "a", "width": 96, "height": 64, "steps": 4, "strength": 0.2},
                              {"init_image": good})
    assert info.value.field == "params.strength"
    with pytest.raises(ProtocolError) as info:
        protocol.validate_job("txt2img", {"prompt": "a"}, {"init_image": good})
    assert info.value.field == "arrays.init_image"


def test_optional_fields_sent_as_null_mean_left_out():
    params = protocol.validate_params({"prompt": "a", "prompts": None}, FIELDS)
    assert params["prompts"] is None
    with pytest.raises(ProtocolError):
        protocol.validate_params({"prompt": None}, FIELDS)  # a field with a real default must be a value


def test_technique_parameters_are_validated():
    img = np.zeros((64, 64, 3), np.uint8)
    base = {"prompt": "a", "width": 64, "height": 64}
    params, arrays = protocol.validate_job("inpaint", base, {"init_image": img, "mask": np.zeros((64, 64), np.uint8)})
    assert params["strength"] == 1.0 and arrays["mask"].shape == (64, 64, 1)
    cases = [
        ("txt2img", dict(base, seamless="z"), {}, "params.seamless"),
        ("txt2img", dict(base, infusion_weights={"mid": 9}), {"infusion_0": img}, "params.infusion_weights.mid"),
        ("txt2img", dict(base, infusion_weights={"mid": 1}), {}, "params.infusion_weights"),
        ("txt2img", base, {"infusion_0": img}, "params.infusion_weights"),
        ("txt2img", dict(base, infusion_weights={"mid": 1}), {"infusion_0": img[:8]}, "arrays.infusion_0"),
        ("txt2img", dict(base, models=[{"name": "a"}]), {}, "params.models"),
        ("txt2img", dict(base, models=[{"name": "a"}, {"name": "b", "weight": "x"}]), {},
         "params.models[1].weight"),
        ("inpaint", base, {"init_image": img}, "arrays.mask"),
        ("inpaint", dict(base, feather=100), {"init_image": img, "mask": img[..., 0]}, "params.feather"),
    ]
    for kind, params, arrays, field in cases:
        with pytest.raises(ProtocolError) as info:
            protocol.validate_job(kind, params, arrays)
        assert info.value.field == field, (kind, params, info.value.message)
    params, _ = protocol.validate_job("txt2img", dict(base, models=[{"name": "a"}, {"name": "b"}]), {})
    assert [m["weight"] for m in params["models"]] == [0.5, 0.5]
