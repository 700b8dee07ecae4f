"""Dream wire protocol v1, shared by the generator backend and the Blender add-on.

Standard library and numpy only: this module runs inside Blender's Python too.

A frame is a fixed binary header, a UTF-8 JSON object and raw payload bytes::

    magic b"DREM" | version u16 | flags u16 | json_len u32 | payload_len u64   (network order)

The JSON object always has a string ``type``. Arrays (images, masks) travel in the
payload, back to back in the order listed under the JSON key ``arrays``; each entry
names its ``dtype`` and ``shape``, so sizes are checked before any byte is trusted.
The full specification is docs/protocol.md.
"""

from __future__ import annotations

import json
import math
import socket
import struct
import time
from dataclasses import dataclass

import numpy as np

PROTOCOL_VERSION = 1
MAGIC = b"DREM"
HEADER = struct.Struct("!4sHHIQ")
HEADER_SIZE = HEADER.size  # 20 bytes

DTYPES = {"uint8": np.dtype("uint8"), "float16": np.dtype("<f2"), "float32": np.dtype("<f4")}

DEFAULT_PORT = 9470
DEFAULT_MAX_SIZE = 2048  # the largest side a backend accepts unless its welcome says otherwise
DEFAULT_MODEL = "pocket"  # the small offline texture model that ships with the backend
TOKEN_ENV = "DREAM_BACKEND_TOKEN"
READY_PREFIX = "DREAM_BACKEND_READY "  # the line `serve` prints on stdout once it listens


# --------------------------------------------------------------------------- limits
@dataclass(frozen=True)
class Limits:
    """Upper bounds on every size the protocol carries."""

    max_json_bytes: int = 1 << 20  # 1 MiB of JSON per frame
    max_payload_bytes: int = 1 << 30  # 1 GiB: a 8192² float32 RGBA image
    max_arrays: int = 16
    max_array_dim: int = 8192
    max_array_ndim: int = 4
    max_json_depth: int = 32  # objects and lists nested deeper are refused (the protocol needs 4)


DEFAULT_LIMITS = Limits()
HELLO_LIMITS = Limits(max_json_bytes=4096, max_payload_bytes=0)  # before authentication: small, no payload


# --------------------------------------------------------------------------- errors
class ProtocolError(Exception):
    """A structured error that can be sent to the peer as an ``error`` message.

    ``fatal`` errors leave the stream out of step (bad header, truncated frame):
    the connection must be closed after reporting them.
    """

    def __init__(self, code, message, *, field=None, allowed=None, fatal=False, job_id=None, **extra):
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.allowed = allowed
        self.fatal = fatal
        self.job_id = job_id
        self.extra = extra  # further details of some codes (output_unwritable: path, hint)

    def to_message(self):
        msg = {"type": "error", "code": self.code, "message": self.message}
        if self.field is not None:
            msg["field"] = self.field
        if self.allowed is not None:
            msg["allowed"] = self.allowed
        if self.job_id is not None:
            msg["job_id"] = self.job_id
        msg.update(self.extra)
        return msg


class ConnectionClosed(Exception):
    """The peer closed the connection cleanly between two frames."""


# --------------------------------------------------------------------------- framing
def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (the backend listens nowhere else unless told to)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _describe_arrays(arrays):
    descriptors, buffers, total = [], [], 0
    for name, array in (arrays or {}).items():
        array = np.ascontiguousarray(array)
        dtype_name = next((k for k, v in DTYPES.items() if v == array.dtype), None)
        if dtype_name is None:
            raise ProtocolError("bad_array", f"array {name!r}: dtype {array.dtype} is not one of {sorted(DTYPES)}",
                                field=f"arrays.{name}", allowed=sorted(DTYPES))
        descriptors.append({"name": name, "dtype": dtype_name, "shape": list(array.shape)})
        buffers.append(memoryview(array).cast("B"))
        total += array.nbytes
    return descriptors, buffers, total


def encode_frame(message: dict, arrays: dict | None = None) -> list:
    """Return the buffers of one frame (header, JSON, then each array, uncopied)."""
    descriptors, buffers, payload_len = _describe_arrays(arrays)
    body = dict(message)
    if descriptors:
        body["arrays"] = descriptors
    else:
        body.pop("arrays", None)
    data = json.dumps(body, separators=(",", ":"), allow_nan=False).encode("utf-8")
    return [HEADER.pack(MAGIC, PROTOCOL_VERSION, 0, len(data), payload_len), data, *buffers]


def send_frame(sock: socket.socket, message: dict, arrays: dict | None = None) -> None:
    for buffer in encode_frame(message, arrays):
        if len(buffer):
            sock.sendall(buffer)


def frame_bytes(message: dict, arrays: dict | None = None) -> bytes:
    return b"".join(bytes(b) for b in encode_frame(message, arrays))


def _recv_exactly(sock, view, *, at_boundary=False, deadline=None):
    """Fill ``view``; with a ``deadline`` (time.monotonic()) the whole read must finish by then
    (socket.timeout otherwise), however the bytes dribble in."""
    got = 0
    while got < len(view):
        if deadline is not None:
            sock.settimeout(max(deadline - time.monotonic(), 1e-3))
        n = sock.recv_into(view[got:])
        if n == 0:
            if at_boundary and got == 0:
                raise ConnectionClosed()
            raise ProtocolError("truncated_frame", f"connection closed after {got} of {len(view)} bytes",
                                fatal=True)
        got += n


def parse_header(raw: bytes, limits: Limits = DEFAULT_LIMITS):
    """Check a 20-byte header; return (version, flags, json_len, payload_len)."""
    magic, version, flags, json_len, payload_len = HEADER.unpack(raw)
    if magic != MAGIC:
        raise ProtocolError("bad_magic", f"frame does not start with {MAGIC!r}: not a Dream peer", fatal=True)
    if json_len == 0 or json_len > limits.max_json_bytes:
        raise ProtocolError("frame_too_large", f"JSON part of {json_len} bytes; allowed 1..{limits.max_json_bytes}",
                            field="json_len", allowed={"min": 1, "max": limits.max_json_bytes}, fatal=True)
    if payload_len > limits.max_payload_bytes:
        raise ProtocolError("frame_too_large",
                            f"payload of {payload_len} bytes; allowed at most {limits.max_payload_bytes}",
                            field="payload_len", allowed={"max": limits.max_payload_bytes}, fatal=True)
    return version, flags, json_len, payload_len


def _is_text(value: str) -> bool:
    """False for strings holding lone surrogates (JSON escapes allow them; UTF-8 does not)."""
    try:
        value.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def check_tree(message: dict, max_depth: int):
    """Refuse nesting deeper than ``max_depth`` and strings that are not Unicode text, naming the field."""
    stack = [(message, "", 1)]
    while stack:
        node, where, depth = stack.pop()
        if depth > max_depth:
            raise ProtocolError("bad_json", f"{where} is nested deeper than {max_depth} levels", field=where,
                                allowed={"max_depth": max_depth})
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in items:
            if isinstance(key, str) and not _is_text(key):
                raise ProtocolError("bad_json", f"a key in {where or 'the message'} is not valid Unicode text "
                                    "(a lone surrogate)", field=where or None)
            path = f"{where}[{key}]" if isinstance(key, int) else (f"{where}.{key}" if where else key)
            if isinstance(value, str):
                if not _is_text(value):
                    raise ProtocolError("bad_json", f"{path} is not valid Unicode text (a lone surrogate)",
                                        field=path)
            elif isinstance(value, (dict, list)):
                stack.append((value, path, depth + 1))


def parse_json(raw: bytes, limits: Limits = DEFAULT_LIMITS) -> dict:
    try:
        message = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:  # ValueError: bad JSON, or an integer of over 4300 digits
        raise ProtocolError("bad_json", f"JSON part is not valid UTF-8 JSON: {str(exc)[:200]}") from None
    except RecursionError:
        raise ProtocolError("bad_json", f"JSON part is nested deeper than {limits.max_json_depth} levels",
                            allowed={"max_depth": limits.max_json_depth}) from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("bad_json", "JSON part must be an object with a string 'type'", field="type")
    try:
        check_tree(message, limits.max_json_depth)
    except ProtocolError as exc:
        exc.job_id = frame_job_id(message)
        raise
    return message


def frame_job_id(message: dict):
    """The message's job id when it is a valid one (errors about the frame then name the job)."""
    job_id = message.get("job_id")
    try:
        return validate_job_id(job_id)
    except ProtocolError:
        return None


def split_payload(message: dict, payload: np.ndarray, limits: Limits = DEFAULT_LIMITS) -> dict:
    """Turn the payload into named numpy views following message['arrays']."""
    descriptors = message.pop("arrays", [])
    if not isinstance(descriptors, list) or len(descriptors) > limits.max_arrays:
        raise ProtocolError("bad_array", f"'arrays' must be a list of at most {limits.max_arrays} entries",
                            field="arrays", allowed={"max_items": limits.max_arrays})
    arrays, offset = {}, 0
    for i, d in enumerate(descriptors):
        where = f"arrays[{i}]"
        if not isinstance(d, dict) or not isinstance(d.get("name"), str) or d["name"] in arrays:
            raise ProtocolError("bad_array", f"{where} needs a unique string 'name'", field=f"{where}.name")
        if not isinstance(d.get("dtype"), str) or d["dtype"] not in DTYPES:
            raise ProtocolError("bad_array", f"{where}.dtype must be one of {sorted(DTYPES)}",
                                field=f"{where}.dtype", allowed=sorted(DTYPES))
        shape = d.get("shape")
        if (not isinstance(shape, list) or not 1 <= len(shape) <= limits.max_array_ndim
                or not all(isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= limits.max_array_dim
                           for s in shape)):
            raise ProtocolError("bad_array",
                                f"{where}.shape ({d['name']!r}) must be 1..{limits.max_array_ndim} integers in "
                                f"1..{limits.max_array_dim}", field=f"{where}.shape",
                                allowed={"ndim": [1, limits.max_array_ndim], "dim": [1, limits.max_array_dim]})
        dtype = DTYPES[d["dtype"]]
        nbytes = math.prod(shape) * dtype.itemsize
        if offset + nbytes > payload.nbytes:
            raise ProtocolError("bad_array", f"{where} needs {nbytes} bytes but the payload ends first",
                                field=f"{where}.shape")
        arrays[d["name"]] = payload[offset:offset + nbytes].view(dtype).reshape(shape)
        offset += nbytes
    if offset != payload.nbytes:
        raise ProtocolError("bad_array", f"payload has {payload.nbytes} bytes but arrays describe {offset}",
                            field="arrays")
    return arrays


def _parse_body(version, flags, raw_json, read_payload, payload_len, limits):
    """JSON, then the payload; errors found after the JSON is read name the frame's job."""
    message = None
    try:
        if version != PROTOCOL_VERSION:  # read whole first: its lengths are in the fixed header
            read_payload(payload_len)
            raise ProtocolError("version_mismatch",
                                f"peer speaks protocol {version}; this side speaks {PROTOCOL_VERSION}",
                                field="protocol", allowed=[PROTOCOL_VERSION])
        message = parse_json(raw_json, limits)
        payload = read_payload(payload_len)
        if flags != 0:
            raise ProtocolError("bad_header", f"header flags are {flags:#06x}; protocol 1 reserves them as 0",
                                field="flags", allowed=[0])
        return message, split_payload(message, payload, limits)
    except ProtocolError as exc:
        if exc.job_id is None and message is not None:
            exc.job_id = frame_job_id(message)
        raise


def recv_frame(sock: socket.socket, limits: Limits = DEFAULT_LIMITS, deadline=None):
    """Read one frame; return (message, arrays). Raises ConnectionClosed at a clean EOF.

    A frame of another protocol version is still read whole (its lengths are in the
    fixed header) and reported as a non-fatal ``version_mismatch`` error. With a
    ``deadline`` (time.monotonic()) the whole frame must arrive by then (socket.timeout).
    """
    raw = bytearray(HEADER_SIZE)
    _recv_exactly(sock, memoryview(raw), at_boundary=True, deadline=deadline)
    version, flags, json_len, payload_len = parse_header(bytes(raw), limits)
    raw_json = bytearray(json_len)
    _recv_exactly(sock, memoryview(raw_json), deadline=deadline)

    def read_payload(n):
        payload = np.empty(n, dtype=np.uint8)
        if n:
            _recv_exactly(sock, memoryview(payload), deadline=deadline)
        return payload

    return _parse_body(version, flags, bytes(raw_json), read_payload, payload_len, limits)


def decode_frame(data: bytes, limits: Limits = DEFAULT_LIMITS):
    """Decode one whole frame held in memory (tests, tools)."""
    if len(data) < HEADER_SIZE:
        raise ProtocolError("truncated_frame", f"{len(data)} bytes is shorter than the header", fatal=True)
    version, flags, json_len, payload_len = parse_header(data[:HEADER_SIZE], limits)
    end = HEADER_SIZE + json_len + payload_len
    if len(data) != end:
        raise ProtocolError("truncated_frame", f"frame announces {end} bytes but has {len(data)}", fatal=True)

    def read_payload(n):
        return np.frombuffer(data, dtype=np.uint8, offset=HEADER_SIZE + json_len, count=n)

    return _parse_body(version, flags, data[HEADER_SIZE:HEADER_SIZE + json_len], read_payload, payload_len, limits)


# --------------------------------------------------------------------------- job parameters
@dataclass(frozen=True)
class Field:
    """One job parameter: its type, bounds and default. ``None`` default means required."""

    kind: str  # "str", "int", "float", "bool", "choice"
    default: object = None
    min: float | None = None
    max: float | None = None
    multiple_of: int | None = None
    choices: tuple = ()
    max_length: int | None = None
    required: bool = False
    doc: str = ""

    def nearest(self, value: int) -> int:
        """The allowed int nearest ``value``: within the bounds, on a multiple (what a panel may offer)."""
        if self.multiple_of:
            value = math.floor(value / self.multiple_of + 0.5) * self.multiple_of  # halves round up
        low = self.min if self.min is not None else value
        high = self.max if self.max is not None else value
        return int(min(max(value, low), high))

    def allowed(self):
        if self.kind == "choice":
            return list(self.choices)
        if self.kind in ("strings", "ints"):
            return {"min_items": 2, "max_items": 16}
        out = {}
        for key in ("min", "max", "multiple_of", "max_length"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out or None


SCHEDULERS = ("default", "ddim", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras", "unipc", "pndm")
OUTPUT_DTYPES = ("uint8", "float16", "float32")
MAX_SEED = 2**32 - 1


ENSEMBLE_MODES = ("noise", "embedding")
TILE_AXES = ("", "x", "y", "xy")
LAYER_NAME_MAX = 16
MAX_INFUSION_IMAGES = 4
# Checkpoint kinds the models folder lists but no job can run, and why (both sides refuse them).
REFUSED_KINDS = {"depth": "a depth-conditioned model (5 input channels: the latents and a depth map); Dream has no "
                          "depth technique yet, so no job can give it the depth map input it needs: pick a txt2img "
                          "or inpainting checkpoint, or set its kind in Preferences > Model Types if it is none",
                 "upscaler": "a diffusion upscaler (7 input channels: the latents and a low-resolution image), "
                             "which Dream does not run as a checkpoint: upscale with the Upscale panel's upscalers"}
MAX_MODELS = 4
MAX_PROMPTS = 8
PROMPT_TERM_FIELDS = {
    "text": Field("str", required=True, max_length=4000),
    "weight": Field("float", None, min=-10.0, max=10.0),
    "guidance": Field("float", None, min=0.0, max=50.0),
}


LAYOUTS = ("auto", "on", "off")


def txt2img_fields(max_size: int = 2048) -> dict:
    """The txt2img parameters; ``max_size`` is the server's configured largest side."""
    return {**common_fields(max_size),
            "layout": Field("choice", "auto", choices=LAYOUTS,
                            doc="Layout pass: start from a seamless half-size sample, tiled, so large canvases keep "
                                "a pattern's lattice; auto: from twice the model's native size")}


def common_fields(max_size: int = 2048) -> dict:
    """The parameters of every kind of job; ``max_size`` is the server's configured largest side."""
    return {
        "prompt": Field("str", "", max_length=4000, doc="What to generate (or give 'prompts')"),
        "prompts": Field("prompts", None, doc="Prompt ensemble: [{text, weight?, guidance?}], 1..8 entries"),
        "ensemble_mode": Field("choice", "noise", choices=ENSEMBLE_MODES,
                               doc="noise: combine predictions each step; embedding: average text embeddings"),
        "negative_prompt": Field("str", "", max_length=4000, doc="What to steer away from"),
        "seed": Field("int", 0, min=0, max=MAX_SEED, doc="Starting-noise seed"),
        "steps": Field("int", 20, min=1, max=200, doc="Denoising steps"),
        "guidance": Field("float", 7.5, min=0.0, max=50.0, doc="Classifier-free guidance scale"),
        "width": Field("int", 512, min=64, max=max_size, multiple_of=8, doc="Width in pixels"),
        "height": Field("int", 512, min=64, max=max_size, multiple_of=8, doc="Height in pixels"),
        "scheduler": Field("choice", "default", choices=SCHEDULERS, doc="Sampler"),
        "model": Field("str", "", max_length=1000, doc="Model name from the welcome message; empty = default"),
        "preview_interval": Field("float", 0.5, min=0.0, max=60.0,
                                  doc="Seconds between previews; 0 turns previews off"),
        "output_dtype": Field("choice", "float32", choices=OUTPUT_DTYPES, doc="dtype of result arrays"),
        "flip_y": Field("bool", False, doc="Send rows bottom to top (Blender's order)"),
        "linear": Field("bool", False, doc="Send linear-light values instead of sRGB (Blender float images)"),
        "input_linear": Field("bool", False, doc="Image arrays hold linear light (Blender float images)"),
        "input_flip_y": Field("bool", False, doc="Image arrays' rows run bottom to top (Blender's order)"),
        "seamless": Field("choice", "", choices=TILE_AXES, doc="Tile seamlessly along x, y or both"),
        "infusion_weights": Field("layer_weights", None,
                                  doc="Infusion: {layer: weight} for down0.., mid, up0..; images as arrays "
                                      "infusion_0..infusion_3"),
        "infusion_decay": Field("float", 1.0, min=0.0, max=1.0, doc="Infusion weights are multiplied by decay^step"),
        "infusion_cond_only": Field("bool", False, doc="Add infused features to the conditional rows only"),
        "models": Field("models", None, doc="Model ensemble: [{name, weight}], 2..4 models sharing a latent space"),
        "offload": Field("bool", False, doc="Model ensemble: keep one UNet on the device at a time"),
        "loras": Field("loras", None, doc=f"LoRAs from the models folder: [{{name, weight}}], 1..{MAX_LORAS} "
                                          "entries, names from the welcome's library.loras"),
        "lora_fuse": Field("bool", False, doc="LoRA: add the weight deltas into the layers for the job (faster "
                                              "steps; restored exactly afterwards) instead of extra matmuls"),
    }


def validate_params(params, fields: dict, name_in_message: str = "params") -> dict:
    """Check ``params`` against ``fields``; return a complete dict with defaults filled in. Errors name the
    fields under ``name_in_message`` (a fetch's "output", an export's "options")."""
    top = name_in_message
    if not isinstance(params, dict):
        raise ProtocolError("invalid_param", f"'{top}' must be an object", field=top)
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise ProtocolError("invalid_param", f"{top}.{unknown[0]} is not a parameter; allowed: {sorted(fields)}",
                            field=f"{top}.{unknown[0]}", allowed=sorted(fields))
    out = {}
    for name, spec in fields.items():
        where = f"{top}.{name}"
        if name not in params:
            if spec.required:
                raise ProtocolError("invalid_param", f"{where} is required", field=where, allowed=spec.allowed())
            out[name] = spec.default
            continue
        value = params[name]
        if value is None and spec.default is None and not spec.required:
            out[name] = None  # an optional field sent as null: the same as leaving it out
            continue
        bad = lambda what: ProtocolError("invalid_param", f"{where} {what}", field=where,  # noqa: E731
                                         allowed=spec.allowed())
        if spec.kind == "str":
            if not isinstance(value, str):
                raise bad("must be a string")
            if not _is_text(value):
                raise bad("is not valid Unicode text (it holds a lone surrogate)")
            if spec.max_length is not None and len(value) > spec.max_length:
                raise bad(f"is longer than {spec.max_length} characters")
        elif spec.kind == "bool":
            if not isinstance(value, bool):
                raise bad("must be true or false")
        elif spec.kind == "choice":
            if value not in spec.choices:
                raise bad(f"must be one of {list(spec.choices)}, got {value!r}")
        elif spec.kind == "prompts":
            value = validate_prompt_terms(value, where)
        elif spec.kind in ("strings", "ints"):
            item_type = str if spec.kind == "strings" else int
            if (not isinstance(value, list) or not 2 <= len(value) <= 16 or not all(
                    isinstance(v, item_type) and not isinstance(v, bool) for v in value)
                    or (item_type is str and any(len(v) > 4000 or not _is_text(v) for v in value))
                    or (item_type is int and any(not 0 <= v <= MAX_SEED for v in value))):
                raise bad(f"must be a list of 2..16 {'prompts' if item_type is str else 'seeds'}")
        elif spec.kind == "layer_weights":
            value = validate_layer_weights(value, where)
        elif spec.kind == "models":
            value = validate_model_terms(value, where)
        elif spec.kind == "loras":
            value = validate_lora_terms(value, where)
        elif spec.kind in ("int", "float"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad(f"must be a number, got {type(value).__name__}")
            if spec.kind == "int":
                if not isinstance(value, int):  # strict: 2.0 is a float, not an integer
                    raise bad(f"must be an integer, got {value!r}")
            else:
                if isinstance(value, int) and not -1e300 < value < 1e300:  # float() would overflow
                    raise bad(f"must be between {spec.min} and {spec.max}")
                value = float(value)
                if not math.isfinite(value):
                    raise bad("must be finite")
            if (spec.min is not None and value < spec.min) or (spec.max is not None and value > spec.max):
                extra = f" and a multiple of {spec.multiple_of}" if spec.multiple_of else ""
                raise bad(f"must be between {spec.min} and {spec.max}{extra}, got {value}")
            if spec.multiple_of and value % spec.multiple_of:
                raise bad(f"must be a multiple of {spec.multiple_of}, got {value}")
        out[name] = value
    return out


def validate_prompt_terms(value, where="params.prompts") -> list:
    """A prompt ensemble; weights left out share 1 equally among the prompts."""
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_PROMPTS:
        raise ProtocolError("invalid_param", f"{where} must be a list of 1..{MAX_PROMPTS} prompts", field=where,
                            allowed={"min_items": 1, "max_items": MAX_PROMPTS})
    return _validate_terms(value, where, PROMPT_TERM_FIELDS)


LAYER_WEIGHT = Field("float", None, min=-5.0, max=5.0, doc="Infusion weight of one UNet layer group")


def validate_layer_weights(value, where) -> dict:
    """{layer name: weight}; which names a model has is checked where the model is known."""
    low, high = LAYER_WEIGHT.min, LAYER_WEIGHT.max
    if not isinstance(value, dict) or not 1 <= len(value) <= 32 or not all(
            isinstance(k, str) and 0 < len(k) <= LAYER_NAME_MAX for k in value):
        raise ProtocolError("invalid_param", f"{where} must map 1..32 layer names (down0.., mid, up0..) to weights",
                            field=where, allowed={"keys": "down<i>, mid, up<i>", "min": low, "max": high})
    for name, weight in value.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not low <= weight <= high:
            raise ProtocolError("invalid_param", f"{where}.{name} must be a number between {low:g} and {high:g}",
                                field=f"{where}.{name}", allowed={"min": low, "max": high})
    return {k: float(v) for k, v in value.items()}


MODEL_TERM_FIELDS = {"name": Field("str", required=True, max_length=1000), "weight": Field("float", None, min=-5.0,
                                                                                            max=5.0)}


MAX_LORAS = 8
LORA_TERM_FIELDS = {"name": Field("str", required=True, max_length=1000),
                    "weight": Field("float", 1.0, min=-4.0, max=4.0, doc="LoRA strength; 0 leaves the model as it is")}


def validate_lora_terms(value, where) -> list:
    """LoRAs with a weight each (1 when left out); which names exist is checked against the listing."""
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_LORAS:
        raise ProtocolError("invalid_param", f"{where} must be a list of 1..{MAX_LORAS} LoRAs", field=where,
                            allowed={"min_items": 1, "max_items": MAX_LORAS})
    terms = _validate_terms(value, where, LORA_TERM_FIELDS)
    names = [t["name"] for t in terms]
    for i, name in enumerate(names):
        if not name.strip() or names.index(name) != i:
            raise ProtocolError("invalid_param", f"{where}[{i}].name {name!r} is empty or listed twice",
                                field=f"{where}[{i}].name")
    return terms


def validate_model_terms(value, where) -> list:
    """A model ensemble; weights left out share 1 equally."""
    if not isinstance(value, list) or not 2 <= len(value) <= MAX_MODELS:
        raise ProtocolError("invalid_param", f"{where} must be a list of 2..{MAX_MODELS} models", field=where,
                            allowed={"min_items": 2, "max_items": MAX_MODELS})
    return _validate_terms(value, where, MODEL_TERM_FIELDS)


def _validate_terms(value, where, fields) -> list:
    terms = []
    for i, term in enumerate(value):
        if not isinstance(term, dict):
            raise ProtocolError("invalid_param", f"{where}[{i}] must be an object", field=f"{where}[{i}]",
                                allowed=sorted(fields))
        try:
            terms.append(validate_params(term, fields))
        except ProtocolError as exc:
            exc.field = f"{where}[{i}]." + exc.field.split(".", 1)[1]
            exc.message = f"{where}[{i}]." + exc.message.split(".", 1)[1]
            raise
    for term in terms:
        if term["weight"] is None:
            term["weight"] = 1.0 / len(terms)
    return terms


def img2img_fields(max_size: int = 2048) -> dict:
    """The common parameters plus the init image's strength; the image travels as the array 'init_image'."""
    return {**common_fields(max_size),
            "strength": Field("float", 0.75, min=0.0, max=1.0,
                              doc="How much of the schedule runs on the init image: 0 keeps it, 1 replaces it")}


def max_size_of(welcome) -> int:
    """The largest side a backend accepts, from its welcome (the default when not connected)."""
    return ((welcome or {}).get("capabilities") or {}).get("max_size", DEFAULT_MAX_SIZE)


def feather_reach(radius: float) -> int:
    """How many pixels beyond the mask a feathered paste-back blends (Chebyshev distance):
    the radius, rounded; farther pixels keep the original exactly."""
    return int(radius + 0.5) if radius > 0 else 0


def inpaint_fields(max_size: int = 2048) -> dict:
    """img2img plus the mask's feather; strength defaults to 1 (repaint the masked region fully)."""
    fields = img2img_fields(max_size)
    fields["strength"] = Field("float", 1.0, min=0.0, max=1.0, doc=fields["strength"].doc)
    fields["feather"] = Field("float", 0.0, min=0.0, max=64.0, doc="Soft edge in pixels when pasting back")
    return fields


WALKS = ("prompts", "seeds", "random", "direction", "circular")
EMBEDDING_WALKS = ("prompts", "random", "direction")  # the others move only the starting noise
MAX_FRAMES = 2000


def walk_fields(max_size: int = 2048) -> dict:
    """A sequence of frames; an optional 'init_image' array makes every frame img2img of it."""
    return {**img2img_fields(max_size),
            "walk": Field("choice", "prompts", choices=WALKS, doc="What moves from frame to frame"),
            "frames": Field("int", 24, min=2, max=MAX_FRAMES, doc="Number of frames"),
            "walk_prompts": Field("strings", None, doc="prompts walk: 2..16 prompts, visited in order"),
            "interpolation": Field("choice", "slerp", choices=("slerp", "lerp"),
                                   doc="prompts walk: how embeddings are interpolated"),
            "walk_seeds": Field("ints", None, doc="seeds walk: 2..16 seeds, their noise slerped in order"),
            "step_size": Field("float", 0.05, min=0.0, max=2.0, doc="random/direction walk: step per frame"),
            "walk_seed": Field("int", 0, min=0, max=MAX_SEED, doc="random/direction walk: the directions' seed"),
            "period": Field("int", 0, min=0, max=MAX_FRAMES, doc="circular walk: frames per loop (0 = frames)"),
            "batch_size": Field("int", 4, min=1, max=32, doc="Frames per UNet batch"),
            "fps": Field("int", 12, min=1, max=120, doc="Frames per second of the sequence and exports")}


def output_fields() -> dict:
    """How result arrays are delivered (every kind that returns an image)."""
    return {k: v for k, v in common_fields().items() if k in ("output_dtype", "flip_y", "linear")}


def compress_fields(max_size: int = 2048) -> dict:
    """The latent codec's encoder (docs/techniques.md): the image travels as the array 'init_image'."""
    from .latent_format import BITS_RANGE, PALETTE_RANGE

    common = common_fields(max_size)
    return {
        **output_fields(), **{k: common[k] for k in ("model", "input_linear", "input_flip_y", "seamless")},
        "width": Field("int", None, min=8, max=max_size, required=True, doc="Width of the image in pixels"),
        "height": Field("int", None, min=8, max=max_size, required=True, doc="Height of the image in pixels"),
        "bits": Field("int", 8, min=BITS_RANGE[0], max=BITS_RANGE[1], doc="Bits per latent channel"),
        "palette": Field("int", 256, min=0, max=PALETTE_RANGE[1],
                         doc=f"Palette colours ({PALETTE_RANGE[0]}..{PALETTE_RANGE[1]}); 0 stores the channels"),
        "dither": Field("bool", True, doc="Floyd-Steinberg error diffusion when palettising"),
    }


def decompress_fields(max_size: int = 2048) -> dict:
    """The latent codec's decoder: the file travels as the array 'latent_file' (latent_format.to_rows)."""
    from .latent_format import MAX_FILE_BYTES

    return {
        **output_fields(),
        "model": Field("str", "", max_length=1000, doc="Model to decode with; empty = the one the file names"),
        "latent_bytes": Field("int", None, min=1, max=MAX_FILE_BYTES, required=True,
                              doc="Length of the file in 'latent_file'"),
        "denoise_steps": Field("int", 0, min=0, max=50,
                               doc="UNet steps that remove the quantisation noise; 0 is the plain VAE decode"),
    }


def validate_latent_file(params, arrays):
    """The decoder's one array: (blocks, 64, 64) uint8 holding params.latent_bytes bytes."""
    from .latent_format import BLOCK, BLOCK_BYTES

    array = arrays.get("latent_file")
    shape = [-(-params["latent_bytes"] // BLOCK_BYTES), *BLOCK]
    if array is None or list(array.shape) != shape or array.dtype != np.uint8:
        got = "none" if array is None else f"{array.dtype} {list(array.shape)}"
        raise ProtocolError("bad_array", f"arrays.latent_file must be uint8 of shape {shape} for "
                            f"{params['latent_bytes']} bytes, got {got}", field="arrays.latent_file",
                            allowed={"shape": shape, "dtype": "uint8"})


# --------------------------------------------------------------------------- tiled kinds (docs/techniques.md)
TILE_KINDS = ("mosaic", "detail", "enhance")  # planned as lists of tile tasks (generator_backend/tiles.py)
FRAME_KINDS = ("walk", "mosaic")  # kinds whose frames go where walk frames go
MAX_GRID = 16
COLOR_MATCHES = ("off", "mean", "full")  # mosaic tiles' colour against their cells' (tiles.color_matched)
MAX_LEVELS = 6
MAX_TILED_SIDE = 8192  # the largest side a tiled result may have (an array dimension)


UPSCALE_MAX_SIDE = 8192  # the largest upscaled side: the protocol's largest array side (a 1 GiB float32 RGBA result)


def upscale_fields(max_size: int = 2048) -> dict:
    """Tiled model upscaling (docs/techniques.md, "Upscaling"): the image travels as the array 'init_image'."""
    common = common_fields(max_size)
    return {
        **output_fields(), **{k: common[k] for k in ("input_linear", "input_flip_y", "seamless")},
        "width": Field("int", None, min=8, max=max_size, required=True, doc="Width of the input image in pixels"),
        "height": Field("int", None, min=8, max=max_size, required=True, doc="Height of the input image in pixels"),
        "upscaler": Field("str", "", max_length=1000, doc="Upscaler name from the welcome; empty = the default"),
        "factor": Field("int", 4, min=1, max=8, doc="Output size over input size; at most the upscaler's scale "
                        f"(the net runs once, then Lanczos to the factor); sides up to {UPSCALE_MAX_SIDE}"),
        "tile_size": Field("int", 256, min=32, max=1024, doc="Input pixels per tile side: memory holds one tile"),
        "tile_overlap": Field("int", 16, min=0, max=128,
                              doc="Input pixels neighbouring tiles share and blend over (at most tile_size / 2)"),
    }


def validate_upscale(params, arrays):
    """The result fits the protocol (each side at most UPSCALE_MAX_SIDE) and the overlap its tiles."""
    side = max(params["width"], params["height"])
    if side * params["factor"] > UPSCALE_MAX_SIDE:
        raise ProtocolError("invalid_param", f"params.factor {params['factor']} makes a {side * params['factor']} "
                            f"pixel side; the largest result side is {UPSCALE_MAX_SIDE}", field="params.factor",
                            allowed={"min": 1, "max": max(1, UPSCALE_MAX_SIDE // side)})
    if params["tile_overlap"] > params["tile_size"] // 2:
        raise ProtocolError("invalid_param", f"params.tile_overlap must be at most half of params.tile_size "
                            f"({params['tile_size'] // 2}), got {params['tile_overlap']}", field="params.tile_overlap",
                            allowed={"min": 0, "max": params["tile_size"] // 2})


def _tiled_fields(max_size: int, strength: float, strength_doc: str) -> dict:
    """img2img's parameters with a strength default of the kind's own, plus the tiles' size."""
    fields = img2img_fields(max_size)
    fields["strength"] = Field("float", strength, min=0.0, max=1.0, doc=strength_doc)
    fields["tile_size"] = Field("int", 0, min=0, max=max_size, multiple_of=8,
                                doc="Side of the square tile the model sees, in pixels; 0 = the model's native size")
    fields["batch_size"] = walk_fields(max_size)["batch_size"]
    return fields


def mosaic_fields(max_size: int = 2048) -> dict:
    """Photomosaic and hypermosaic: a primary image (the array 'init_image', or generated at width x height)
    cut into a grid; every cell img2img'd at the tile size; levels zoom into one cell."""
    walk = walk_fields(max_size)
    return {**_tiled_fields(max_size, 0.3, "How much each tile is repainted: 0 keeps the upsampled cell"),
            "grid_x": Field("int", 4, min=1, max=MAX_GRID, doc="Cells across"),
            "grid_y": Field("int", 4, min=1, max=MAX_GRID, doc="Cells down"),
            "cell_prompts": Field("strings", None, doc="Prompts given to the cells in turn (row by row); "
                                                       "default: the prompt"),
            "color_match": Field("choice", "mean", choices=COLOR_MATCHES,
                                 doc="Each tile's colour against its cell's: mean = the cell's mean per channel, "
                                     "the tile's own detail kept; full = mean and spread; off = as painted"),
            "levels": Field("int", 1, min=1, max=MAX_LEVELS,
                            doc="Hypermosaic levels: a cell of level k is the primary image of level k+1"),
            "zoom_cell_x": Field("int", -1, min=-1, max=MAX_GRID - 1, doc="Column of the cell zoomed into; -1 = centre"),
            "zoom_cell_y": Field("int", -1, min=-1, max=MAX_GRID - 1, doc="Row of the cell zoomed into; -1 = centre"),
            "zoom_frames": Field("int", 24, min=0, max=240, doc="Zoom animation: frames per level; 0 = no animation"),
            "loop": Field("bool", False, doc="The zoom ends where it began (the last level hands over to the first)"),
            "fps": walk["fps"]}


def detail_fields(max_size: int = 2048) -> dict:
    """The diffusion detail pass ("SD upscale"): the image enlarged, then img2img tile by tile at a low
    strength, tiles overlapping and blended (wrapping around on seamless axes)."""
    return {**_tiled_fields(max_size, 0.3, "How much each tile is repainted: 0 returns the enlarged image"),
            "scale": Field("int", 2, min=1, max=4, doc="Enlargement before the pass; 1 = the image as sent"),
            "enlarge_with": Field("str", "", max_length=1000,
                                  doc="Enlarge with this upscaler (a name from the welcome's upscalers, its scale at "
                                      "least params.scale); empty = Lanczos"),
            "enlarge_tile": Field("int", 256, min=32, max=1024,
                                  doc="enlarge_with: input pixels per upscaler tile side (as upscale's tile_size)"),
            "enlarge_overlap": Field("int", 16, min=0, max=128,
                                     doc="enlarge_with: input pixels neighbouring upscaler tiles share"),
            "overlap": Field("int", 32, min=0, max=256, doc="Pixels neighbouring tiles share, blended smoothly")}


def enhance_fields(max_size: int = 2048) -> dict:
    """Region enhance: a rectangle (or the array 'mask') cropped, scaled and padded to the tile size,
    img2img'd, scaled back and pasted with a feathered edge; pixels outside stay the input's."""
    return {**_tiled_fields(max_size, 0.5, "How much the region is repainted: 0 keeps it"),
            "region_x": Field("int", 0, min=0, max=max_size, doc="Region's left column (pixels)"),
            "region_y": Field("int", 0, min=0, max=max_size, doc="Region's top row (pixels, from the top)"),
            "region_width": Field("int", 0, min=0, max=max_size, doc="Region's width; 0 = the mask's extent"),
            "region_height": Field("int", 0, min=0, max=max_size, doc="Region's height; 0 = the mask's extent"),
            "region_feather": Field("float", 8.0, min=0.0, max=64.0,
                                    doc="Soft edge inside the region, in pixels, when pasting back"),
            **upscale_after_fields()}


def upscale_after_fields() -> dict:
    """Enhance's optional upscale of the whole result: the detail pass's enlargement fields, scale 1 = none."""
    detail = detail_fields()
    return {"scale": Field("int", 1, min=1, max=8, doc="Upscale the result this many times after the enhance "
                           "(with params.enlarge_with, else Lanczos); 1 = no upscale"),
            **{k: detail[k] for k in ("enlarge_with", "enlarge_tile", "enlarge_overlap")}}


def validate_tiled(params, arrays):
    """What a tiled job needs besides its fields: no infusion, a deterministic sampler, one text encoder
    for per-cell prompts, tile sizes the model can take."""
    if params["infusion_weights"]:
        raise ProtocolError("invalid_param", "tiled jobs take no infusion", field="params.infusion_weights")
    if params["scheduler"] == "euler_a":
        raise ProtocolError("invalid_param", "tiled jobs need a deterministic sampler: the fresh noise of Euler "
                            "ancestral would differ between batched and single tiles", field="params.scheduler",
                            allowed=[s for s in SCHEDULERS if s != "euler_a"])
    if 0 < params["tile_size"] < 32:
        raise ProtocolError("invalid_param", "params.tile_size must be 0 (the model's size) or 32 and more",
                            field="params.tile_size", allowed={"choices": [0], "min": 32, "multiple_of": 8})
    if "grid_x" in params and max(params["grid_x"], params["grid_y"]) * params["tile_size"] > MAX_TILED_SIDE:
        raise ProtocolError("invalid_param", f"params.grid_x/grid_y x params.tile_size ({params['tile_size']}) "
                            f"makes a mosaic side longer than {MAX_TILED_SIDE}: fewer cells or smaller tiles",
                            field="params.tile_size", allowed={"max_side": MAX_TILED_SIDE})
    if params.get("cell_prompts") and params["models"]:
        raise ProtocolError("invalid_param", "per-cell prompts use one text encoder: params.models (an ensemble) "
                            "cannot join them", field="params.cell_prompts")
    if params.get("levels", 1) > 1 and params["grid_x"] * params["grid_y"] < 2:
        raise ProtocolError("invalid_param", "a hypermosaic needs at least two cells", field="params.grid_x",
                            allowed={"min": 2})
    for axis in ("x", "y"):
        cell = params.get(f"zoom_cell_{axis}", -1)
        if cell >= params.get(f"grid_{axis}", MAX_GRID):
            raise ProtocolError("invalid_param", f"params.zoom_cell_{axis} must be -1 (centre) or below "
                                f"params.grid_{axis}", field=f"params.zoom_cell_{axis}",
                                allowed={"min": -1, "max": params[f"grid_{axis}"] - 1})
    if "scale" in params and max(params["width"], params["height"]) * params["scale"] > MAX_TILED_SIDE:
        raise ProtocolError("invalid_param", f"params.scale makes a side longer than {MAX_TILED_SIDE}",
                            field="params.scale", allowed={"max_side": MAX_TILED_SIDE})
    if "enlarge_tile" in params and params["enlarge_overlap"] > params["enlarge_tile"] // 2:
        raise ProtocolError("invalid_param", f"params.enlarge_overlap must be at most half of params.enlarge_tile "
                            f"({params['enlarge_tile'] // 2})", field="params.enlarge_overlap",
                            allowed={"min": 0, "max": params["enlarge_tile"] // 2})
    if "region_x" in params and not (params["region_width"] and params["region_height"]) and "mask" not in arrays:
        raise ProtocolError("invalid_param", "region enhance needs params.region_width and region_height, or the "
                            "array mask", field="params.region_width", allowed={"min": 1})
    if "region_x" in params:
        for start, length, size in (("region_x", "region_width", "width"), ("region_y", "region_height", "height")):
            if params[start] + params[length] > params[size]:
                raise ProtocolError("invalid_param", f"params.{start} + params.{length} must be within "
                                    f"params.{size} ({params[size]})", field=f"params.{length}",
                                    allowed={"max": params[size] - params[start]})


CONCEPT_ARRAYS = tuple(f"concept_{i}" for i in range(10))  # teach_concept: 3..10 images of the job's size
CONCEPT_IMAGES = (3, 10)
CONCEPT_WORD = r"[a-z0-9][a-z0-9_-]{0,63}"  # also the embedding file's name


def teach_fields(max_size: int = 2048) -> dict:
    """Teach a concept (textual inversion): a new word learned from the arrays concept_0..concept_9."""
    common = common_fields(max_size)
    return {
        **output_fields(), **{k: common[k] for k in ("model", "seed", "input_linear", "input_flip_y")},
        "width": Field("int", 512, min=64, max=max_size, multiple_of=8, doc="Width of the images and previews"),
        "height": Field("int", 512, min=64, max=max_size, multiple_of=8, doc="Height of the images and previews"),
        "word": Field("str", None, required=True, max_length=64,
                      doc="The new word: lower-case letters, digits, '-' or '_' (the embedding file's name)"),
        "initializer": Field("str", "", max_length=200,
                             doc="Known words the new one starts from; empty: the model picks those closest to the "
                                 "images"),
        "train_steps": Field("int", 1000, min=1, max=5000, doc="Training steps"),
        "learning_rate": Field("float", 0.02, min=1e-5, max=1.0, doc="Adam's step size for the word's vectors"),
        "vectors": Field("int", 2, min=0, max=8,
                         doc="Vectors (tokens) the word stands for; 0: one per token of the words it starts from"),
        "preview_every": Field("int", 100, min=0, max=5000, doc="Steps between preview images; 0: at the end only"),
    }


def validate_concept(params, arrays=None):
    """The word's spelling and, with the arrays, 3..10 concept images."""
    import re

    if not re.fullmatch(CONCEPT_WORD, params["word"]):
        raise ProtocolError("invalid_param", "params.word must be 1..64 lower-case letters, digits, '-' or '_', "
                            "starting with a letter or digit", field="params.word", allowed={"pattern": CONCEPT_WORD})
    if arrays is not None:
        count = sum(name in arrays for name in CONCEPT_ARRAYS)
        low, high = CONCEPT_IMAGES
        if not low <= count <= high:
            raise ProtocolError("bad_array", f"a teach_concept job needs {low}..{high} images as arrays "
                                f"concept_0..concept_9, got {count}", field="arrays.concept_0",
                                allowed={"min_items": low, "max_items": high})


def validate_palette(params, arrays):
    """A palette of one colour says nothing: 0 (none) or 2..256."""
    from .latent_format import PALETTE_RANGE

    if params["palette"] == 1:
        raise ProtocolError("invalid_param", f"params.palette must be 0 (no palette) or "
                            f"{PALETTE_RANGE[0]}..{PALETTE_RANGE[1]}", field="params.palette",
                            allowed={"choices": [0], "min": PALETTE_RANGE[0], "max": PALETTE_RANGE[1]})


INFUSION_ARRAYS = tuple(f"infusion_{i}" for i in range(MAX_INFUSION_IMAGES))


@dataclass(frozen=True)
class JobKind:
    """What one kind of job takes: its fields, its arrays and the rules across them.

    A new technique with a job of its own registers one of these in JOB_KINDS (and its runner in
    ``generator_backend.runner.EXECUTORS``); validate_job reads only this, never the kind's name.
    """

    fields: object  # max_size -> {name: Field}
    arrays: tuple = ()  # image arrays of the job's size it needs
    optional_arrays: tuple = ()  # image arrays of the job's size it may take
    prompted: bool = True  # needs params.prompt or params.prompts (validate_one_prompt)
    check: object = None  # (params, arrays) -> None: rules across its fields, after the arrays are checked
    raw_arrays: object = None  # (params, arrays) -> None: for arrays that are not images (replaces the image checks)
    raw_array_names: tuple = ()  # the arrays raw_arrays checks
    zero_strength: bool = False  # strength 0 is a valid job (it returns the input): no one-step minimum

    def accepts(self, params) -> tuple:
        """Every image array this kind may take with ``params`` (infusion images where it has infusion)."""
        infusion = INFUSION_ARRAYS if "infusion_weights" in params else ()
        return self.arrays + self.optional_arrays + infusion


def validate_walk_job(params, arrays):
    validate_walk(params)


JOB_KINDS = {
    "txt2img": JobKind(txt2img_fields),
    "img2img": JobKind(img2img_fields, arrays=("init_image",)),
    "inpaint": JobKind(inpaint_fields, arrays=("init_image", "mask")),
    "walk": JobKind(walk_fields, optional_arrays=("init_image",), prompted=False, check=validate_walk_job),
    "compress": JobKind(compress_fields, arrays=("init_image",), prompted=False, check=validate_palette),
    "decompress": JobKind(decompress_fields, prompted=False, raw_arrays=validate_latent_file,
                          raw_array_names=("latent_file",)),
    "teach_concept": JobKind(teach_fields, optional_arrays=CONCEPT_ARRAYS, prompted=False, check=validate_concept),
    "mosaic": JobKind(mosaic_fields, optional_arrays=("init_image",), check=validate_tiled, zero_strength=True),
    "detail": JobKind(detail_fields, arrays=("init_image",), check=validate_tiled, zero_strength=True),
    "enhance": JobKind(enhance_fields, arrays=("init_image",), optional_arrays=("mask",), check=validate_tiled,
                       zero_strength=True),
    "upscale": JobKind(upscale_fields, arrays=("init_image",), prompted=False, check=validate_upscale),
}
MASK_ARRAYS = ("mask",)  # one channel; every other image array has 3 or 4


def validate_job(kind, params, arrays, max_size: int = 2048):
    """Check a submit's kind, parameters and arrays together; return (params, arrays)."""
    if not isinstance(kind, str) or kind not in JOB_KINDS:
        raise ProtocolError("invalid_param", f"kind must be one of {sorted(JOB_KINDS)}", field="kind",
                            allowed=sorted(JOB_KINDS))
    spec = JOB_KINDS[kind]
    params = validate_params(params, spec.fields(max_size))
    arrays = dict(arrays)
    if spec.prompted:
        validate_one_prompt(params)
    if spec.raw_arrays is not None:
        extra = sorted(set(arrays) - set(spec.raw_array_names))
        if extra:
            raise ProtocolError("bad_array", f"a {kind} job takes only the arrays {list(spec.raw_array_names)}",
                                field=f"arrays.{extra[0]}", allowed=list(spec.raw_array_names))
        spec.raw_arrays(params, arrays)
    else:
        validate_image_arrays(kind, spec, params, arrays)
    if spec.check is not None:
        spec.check(params, arrays)
    if not spec.zero_strength:
        validate_strength(params, arrays)
    return params, arrays


def validate_image_arrays(kind, spec, params, arrays):
    """The kind's image arrays, each height x width of the job (masks one channel, images 3 or 4)."""
    if bool(params.get("infusion_weights")) != any(name in arrays for name in INFUSION_ARRAYS):
        raise ProtocolError("invalid_param", "infusion needs both params.infusion_weights and at least one array "
                            f"of {list(INFUSION_ARRAYS)}", field="params.infusion_weights")
    accepted = spec.accepts(params)
    for name in arrays:
        if name not in accepted:
            raise ProtocolError("bad_array", f"arrays.{name} is not used by a {kind} job", field=f"arrays.{name}",
                                allowed=list(accepted))
    for name in spec.arrays + tuple(name for name in accepted if name in arrays and name not in spec.arrays):
        array = arrays.get(name)
        shape = [params["height"], params["width"], "3 or 4"]
        if array is None:
            raise ProtocolError("bad_array", f"a {kind} job needs the array {name}", field=f"arrays.{name}",
                                allowed={"shape": shape})
        channels = (1,) if name in MASK_ARRAYS else (3, 4)
        if name in MASK_ARRAYS and array.ndim == 2:
            array = arrays[name] = array[..., None]
        if (array.ndim != 3 or array.shape[:2] != (params["height"], params["width"])
                or array.shape[2] not in channels):
            shape[2] = " or ".join(map(str, channels))
            raise ProtocolError("bad_array", f"arrays.{name} has shape {list(array.shape)}; it must be "
                                f"height x width x {shape[2]} = {shape} (resize it to the job's size)",
                                field=f"arrays.{name}", allowed={"shape": shape})


def validate_strength(params, arrays):
    """Where an init image is repainted, strength x steps must leave at least one denoising step."""
    if "strength" in params and "init_image" in arrays and int(params["steps"] * params["strength"]) < 1:
        raise ProtocolError("invalid_param", "params.strength x params.steps must be at least 1 so that one "
                            "denoising step runs", field="params.strength",
                            allowed={"min": 1 / params["steps"], "max": 1.0})


def validate_one_prompt(params):
    """Exactly one of params.prompt and params.prompts, with words in it (spaces alone say nothing)."""
    if params["prompt"] and params["prompts"]:
        raise ProtocolError("invalid_param", "give either params.prompt or params.prompts (an ensemble), not both",
                            field="params.prompt")
    if not params["prompts"] and not params["prompt"].strip():
        raise ProtocolError("invalid_param", "params.prompt is empty: say what to generate (or give "
                            "params.prompts, an ensemble)", field="params.prompt", allowed={"min_length": 1})
    for i, term in enumerate(params["prompts"] or ()):
        if not term["text"].strip():
            raise ProtocolError("invalid_param", f"params.prompts[{i}].text is empty: say what to generate",
                                field=f"params.prompts[{i}].text", allowed={"min_length": 1})


def validate_walk(params):
    """What a walk needs besides its fields: its key points, one model, a deterministic sampler."""
    needs = {"prompts": "walk_prompts", "seeds": "walk_seeds"}.get(params["walk"])
    if needs and not params[needs]:
        raise ProtocolError("invalid_param", f"a {params['walk']} walk needs params.{needs} (2..16 entries)",
                            field=f"params.{needs}", allowed={"min_items": 2, "max_items": 16})
    if params["walk"] == "prompts" and (params["prompts"] or params["prompt"]):
        raise ProtocolError("invalid_param", "a prompts walk takes its prompts from params.walk_prompts only",
                            field="params.prompt")
    if params["walk"] != "prompts":
        validate_one_prompt(params)
    if params["walk"] in EMBEDDING_WALKS and (params["models"] or params["prompts"]):
        field = "params.models" if params["models"] else "params.prompts"
        raise ProtocolError("invalid_param", f"a {params['walk']} walk moves one text embedding, so {field} "
                            "(an ensemble) cannot join it; seeds and circular walks take ensembles", field=field)
    if params["scheduler"] == "euler_a":
        raise ProtocolError("invalid_param", "walks need a deterministic sampler: the fresh noise of Euler "
                            "ancestral would differ between batched and single frames", field="params.scheduler",
                            allowed=[s for s in SCHEDULERS if s != "euler_a"])


JOB_ID_MAX = 128


def validate_job_id(job_id) -> str:
    if (not isinstance(job_id, str) or not 1 <= len(job_id) <= JOB_ID_MAX
            or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in job_id) or job_id.startswith(".")):
        raise ProtocolError("invalid_param",
                            f"job_id must be 1..{JOB_ID_MAX} characters of letters, digits, '-', '_' or '.', "
                            "not starting with '.'", field="job_id")
    return job_id


# --------------------------------------------------------------------------- message types
CLIENT_MESSAGES = ("hello", "submit", "cancel", "status", "fetch", "export", "shutdown", "ping", "rescan")
EXPORT_FIELDS = {
    "format": Field("choice", "gif", choices=("gif", "mp4", "png"), doc="File type (png: a folder of numbered frames)"),
    "fps": Field("int", None, min=1, max=120, doc="Frames per second (default: the walk's)"),
    "rubber_band": Field("bool", False, doc="Play forward, then backward without repeating the ends"),
}
TERMINAL_EVENTS = ("result", "error", "cancelled")
