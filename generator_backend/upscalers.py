"""Upscaler files served by the backend: named on the command line, described in the welcome,
loaded through spandrel (imported only when one is loaded) on first use and kept.

Files: ``.safetensors`` (preferred: plain tensors, nothing runs when it is read) or ``.pth`` /
``.pt`` / ``.ckpt`` read with ``torch.load(weights_only=True)``, which refuses pickled code.
The architecture (ESRGAN, Real-ESRGAN and its compact net, SwinIR, HAT, DAT...) and the scale are
what spandrel detects from the weights.
"""

from __future__ import annotations

import json
import logging
import struct
import threading
from pathlib import Path

log = logging.getLogger("generator_backend.upscalers")

DEFAULT_UPSCALER = "pocket-x4"
POCKET_UPSCALER = Path(__file__).resolve().parent / "upscaler_model" / "pocket-x4.safetensors"
SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt")
MAX_HEADER_BYTES = 100 << 20  # a safetensors header larger than this is not a model's


class UpscalerError(ValueError):
    """An upscaler file that cannot be served or loaded; the message says which and why."""


def parse_upscaler_specs(specs) -> dict:
    """``NAME=PATH``, ``PATH`` (named after the file) or a folder (each model file in it) -> {name: path}."""
    out = {}
    for spec in specs or ():
        name, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
        path = Path(path.strip()).expanduser()
        if path.is_dir() and not name:
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES)
            if not found:
                raise UpscalerError(f"--upscaler {spec}: the folder holds no {'/'.join(SUFFIXES)} file")
            out.update((p.stem, p) for p in found)
            continue
        if path.suffix.lower() not in SUFFIXES:
            raise UpscalerError(f"--upscaler {spec}: {path.name} is not an upscaler file; allowed: "
                                f"{', '.join(SUFFIXES)} (or a folder of them)")
        if not path.is_file():
            raise UpscalerError(f"--upscaler {spec}: no such file {path}")
        out[name.strip() or path.stem] = path
    return out


def safetensors_metadata(path: Path) -> dict:
    """The ``__metadata__`` of a .safetensors file, read from its header alone (no tensors, no torch)."""
    with open(path, "rb") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        if size > MAX_HEADER_BYTES:
            raise ValueError(f"a header of {size} bytes")
        return json.loads(f.read(size)).get("__metadata__") or {}


def read_state_dict(path: Path) -> dict:
    """The file's tensors: safetensors, or a weights-only torch load; pickled code is refused."""
    import torch

    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            raise UpscalerError(f"{path} is not a readable safetensors file: {exc}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UpscalerError(f"{path} holds more than weights, or is not a torch file ({first}); only weights-only "
                            ".pth files are loaded, since unpickling code can run anything: convert it to "
                            ".safetensors, or use a release that ships weights only") from None


def load_descriptor(path: Path):
    """spandrel's model descriptor for the file (architecture detected from the weights), in eval mode."""
    from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError

    state = read_state_dict(path)
    try:
        descriptor = ModelLoader().load_from_state_dict(state)
    except UnsupportedModelError:
        raise UpscalerError(f"{path}: spandrel does not recognise this architecture") from None
    except Exception as exc:
        raise UpscalerError(f"{path}: its weights do not load into the architecture spandrel detected: "
                            f"{str(exc)[:200]}") from None
    if not isinstance(descriptor, ImageModelDescriptor) or descriptor.input_channels != 3 or \
            descriptor.output_channels != 3:
        raise UpscalerError(f"{path}: not an RGB image-to-image model ({descriptor.architecture.name})")
    return descriptor.eval()


class UpscalerManager:
    """Maps upscaler names to files; describes each for the welcome; loads each on first use and keeps it."""

    def __init__(self, paths: dict | None = None, device: str = "cpu"):
        self.paths = {DEFAULT_UPSCALER: POCKET_UPSCALER, **(paths or {})}
        self.default = DEFAULT_UPSCALER
        self.device = device
        self._early = {}  # descriptors loaded to describe them, kept for the first get
        self._info = {name: self._describe(name, path) for name, path in self.paths.items()}
        self._loaded = {}
        self._lock = threading.Lock()

    def _describe(self, name: str, path: Path) -> dict:
        """Name, architecture and scale: from the file's metadata when it states them (ours does), else
        from loading it now (spandrel is imported at start-up only for such files)."""
        try:
            meta = safetensors_metadata(path) if path.suffix.lower() == ".safetensors" else {}
        except (OSError, ValueError, struct.error) as exc:
            raise UpscalerError(f"upscaler {name!r}: {path} is not a readable safetensors file ({exc})") from None
        if "architecture" in meta and "scale" in meta:
            return {"name": name, "architecture": meta["architecture"], "scale": int(meta["scale"]),
                    "default": name == self.default}
        descriptor = load_descriptor(path)
        self._early[name] = descriptor
        return {"name": name, "architecture": descriptor.architecture.name, "scale": int(descriptor.scale),
                "default": name == self.default}

    def names(self) -> list:
        return list(self.paths)

    def describe(self) -> list:
        """The welcome's ``upscalers`` list."""
        return [dict(info) for info in self._info.values()]

    def scale(self, name: str = "") -> int:
        return self._info[self.resolve(name)]["scale"]

    def digest(self, name: str) -> str:
        """What identifies the file's weights for a job's saved tiles: its path, size and modification time."""
        stat = self.paths[self.resolve(name)].stat()
        return f"{self.paths[self.resolve(name)]}:{stat.st_size}:{stat.st_mtime_ns}"

    def resolve(self, name: str) -> str:
        return name or self.default

    def check_job(self, params: dict, name_field: str = "upscaler", factor_field: str = "factor"):
        """A job's upscaler is served here and its factor within the upscaler's scale (invalid_param); the
        detail pass names them enlarge_with and scale."""
        from dream_addon.protocol import ProtocolError

        name = self.resolve(params[name_field])
        if name not in self.paths:
            raise ProtocolError("invalid_param", f"params.{name_field} {name!r} is not served here; allowed: "
                                f"{self.names()} (start the backend with --upscaler NAME=FILE to add one)",
                                field=f"params.{name_field}", allowed=self.names())
        if params[factor_field] > self.scale(name):
            raise ProtocolError("invalid_param", f"params.{factor_field} {params[factor_field]} is more than the "
                                f"scale of upscaler {name!r} ({self.scale(name)})", field=f"params.{factor_field}",
                                allowed={"min": 1, "max": self.scale(name)})

    def get(self, name: str = ""):
        """The loaded descriptor of ``name`` on this manager's device."""
        name = self.resolve(name)
        with self._lock:
            if name not in self._loaded:
                early = self._early.pop(name, None)
                log.info("loading upscaler %s from %s on %s", name, self.paths[name], self.device)
                self._loaded[name] = (early or load_descriptor(self.paths[name])).to(self.device)
            return self._loaded[name]
