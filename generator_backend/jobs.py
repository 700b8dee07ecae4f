"""Jobs: their state, the on-disk store of results, and the worker that runs them in order."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np

from dream_addon import protocol

log = logging.getLogger("generator_backend.jobs")

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "error", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)
OUTPUT_FIELDS = ("output_dtype", "flip_y", "linear")  # how a result is delivered; a fetch may choose again


class Job:
    def __init__(self, job_id: str, kind: str, params: dict, inputs=None):
        self.job_id = job_id
        self.kind = kind
        self.params = params
        self.inputs = inputs or {}  # arrays sent with the job (init image)
        self.state = QUEUED
        self.created = time.time()
        self.timings = {}
        self.step = 0
        # walks count frames; the codec's decoder its denoise steps, its encoder one step
        self.total = params.get("frames") or params.get("steps") or params.get("denoise_steps") or 1
        self.error = None  # the error message dict when state is FAILED
        self.cancel_requested = threading.Event()
        self.subscribers = {}  # connection -> how it wants the result (None: as the job's params say)
        self._lock = threading.Lock()

    def subscribe(self, connection, output=None):
        with self._lock:
            if output is not None or connection not in self.subscribers:
                self.subscribers[connection] = output

    def unsubscribe(self, connection):
        with self._lock:
            self.subscribers.pop(connection, None)

    def emit_result(self, make_frame):
        """Send the result to each subscriber, encoded once per distinct output format."""
        with self._lock:
            subscribers = list(self.subscribers.items())
        frames = {}
        for connection, output in subscribers:
            output = output or {k: self.params[k] for k in OUTPUT_FIELDS}
            key = tuple(sorted(output.items()))
            if key not in frames:
                frames[key] = make_frame(output)
            connection.send(*frames[key])

    def emit(self, message: dict, arrays=None, coalesce: bool = False):
        """Send an event about this job to every subscribed connection."""
        message = {"job_id": self.job_id, **message}
        with self._lock:
            subscribers = list(self.subscribers)
        for connection in subscribers:
            connection.send(message, arrays, coalesce_key=(self.job_id, message["type"]) if coalesce else None)

    def summary(self) -> dict:
        return {"job_id": self.job_id, "kind": self.kind, "state": self.state, "step": self.step,
                "total": self.total, "created": self.created}


PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600  # prompts and images are the user's alone
UNWRITABLE_HINT = ("free some disk space, or make the folder writable by this user, or start the backend with "
                   "another --output-dir; then submit the job again")


class OutputUnwritable(Exception):
    """The output folder (or a job's folder in it) cannot be written: ``path`` and the OS error."""

    def __init__(self, path, cause: OSError):
        self.path, self.cause = str(path), cause
        super().__init__(f"cannot write {self.path}: {cause.strerror or cause}")

    def to_error(self, job_id=None) -> protocol.ProtocolError:
        return protocol.ProtocolError("output_unwritable", f"the result cannot be saved: {self}", job_id=job_id,
                                      path=self.path, hint=UNWRITABLE_HINT)


def _private_dir(folder: Path):
    folder.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    if folder.stat().st_mode & 0o077:
        os.chmod(folder, PRIVATE_DIR)


def _write_atomic(path: Path, write):
    """Write through a private temporary file renamed over ``path``; a failed write leaves no temporary
    behind (on a full disk it would hold the space the next job needs)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE))  # private before a byte is in
        os.chmod(tmp, PRIVATE_FILE)
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _persisting(method):
    """Turn an OSError of a write into OutputUnwritable naming the path."""
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except OSError as exc:
            raise OutputUnwritable(exc.filename or self.root, exc) from exc
    wrapper.__name__, wrapper.__doc__ = method.__name__, method.__doc__
    return wrapper


class JobStore:
    """Results on disk: <output>/<job_id>/result.png (for people), result.npy (exact floats)
    and result.json (every parameter, seed, model and timings). Written before sending.
    Folders are 0700 and files 0600."""

    def __init__(self, output_dir):
        self.root = Path(output_dir)
        self._frames_on_disk = {}  # job_id -> frame indices, scanned once per run of a walk

    def check_writable(self):
        """Create the output folder if needed and write a probe file; raise OutputUnwritable if that fails."""
        probe = self.root / f".probe-{os.getpid()}-{threading.get_ident()}"
        try:
            if not self.root.is_dir():
                self.root.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE))
            os.unlink(probe)
        except OSError as exc:
            raise OutputUnwritable(exc.filename or self.root, exc) from exc

    def writable(self) -> bool:
        try:
            self.check_writable()
            return True
        except OutputUnwritable:
            return False

    def job_dir(self, job_id: str) -> Path:
        return self.root / protocol.validate_job_id(job_id)

    @_persisting
    def save_result(self, job: Job, image: np.ndarray, model: str) -> dict:
        """Persist a finished job; ``image`` is (H, W, 3) float32 in [0, 1], rows top to bottom."""
        from PIL import Image

        folder = self.job_dir(job.job_id)
        _private_dir(folder)
        def write_array(path):
            with open(path, "wb") as file:  # closed on a failed write too, so the .tmp can go
                np.save(file, image)

        _write_atomic(folder / "result.npy", write_array)
        png = (image * 255).round().clip(0, 255).astype(np.uint8)
        _write_atomic(folder / "result.png", lambda p: Image.fromarray(png).save(p, format="PNG"))
        meta = {"job_id": job.job_id, "kind": job.kind, "state": DONE, "params": job.params, "model": model,
                "seed": job.params.get("seed"), "width": image.shape[1], "height": image.shape[0],
                "created": job.created, "timings": job.timings, "files": ["result.png", "result.npy"]}
        self.save_meta(job.job_id, meta)
        return meta

    @_persisting
    def save_file(self, job_id: str, name: str, data: bytes):
        """A result file beside result.png (the latent codec's .dlat)."""
        folder = self.job_dir(job_id)
        _private_dir(folder)
        _write_atomic(folder / name, lambda p: p.write_bytes(data))

    @_persisting
    def save_png(self, job_id: str, name: str, pixels: np.ndarray) -> Path:
        """A (H, W, 3) uint8 image under the job's folder (``name`` may name a subfolder: tiles/...)."""
        from PIL import Image

        path = self.job_dir(job_id) / name
        _private_dir(path.parent)
        _write_atomic(path, lambda p: Image.fromarray(pixels).save(p, format="PNG"))
        return path

    @_persisting
    def save_meta(self, job_id: str, meta: dict):
        folder = self.job_dir(job_id)
        _private_dir(folder)
        _write_atomic(folder / "result.json", lambda p: p.write_text(json.dumps(meta, indent=1)))

    def load_meta(self, job_id: str):
        try:
            return json.loads((self.job_dir(job_id) / "result.json").read_text())
        except (OSError, ValueError):
            return None

    def load_image(self, job_id: str) -> np.ndarray:
        return np.load(self.job_dir(job_id) / "result.npy")

    # Frames of a walk: frame_000001.png ... and manifest.json, each written as it is done.
    def frame_path(self, job_id: str, index: int) -> Path:
        return self.job_dir(job_id) / f"frame_{index + 1:06d}.png"

    def frames_done(self, job_id: str, count: int):
        """The frames on disk (scanned now); ``save_frame`` adds to them without scanning again."""
        done = [k for k in range(count) if self.frame_path(job_id, k).exists()]
        self._frames_on_disk[job_id] = set(done)
        return done

    @_persisting
    def save_frame(self, job: Job, index: int, image: np.ndarray):
        from PIL import Image

        path = self.frame_path(job.job_id, index)
        _private_dir(path.parent)
        png = (image * 255).round().clip(0, 255).astype(np.uint8)
        _write_atomic(path, lambda p: Image.fromarray(png).save(p, format="PNG"))
        if job.job_id not in self._frames_on_disk:
            self.frames_done(job.job_id, job.params["frames"])
        self._frames_on_disk[job.job_id].add(index)
        done = sorted(self._frames_on_disk[job.job_id])
        manifest = {"job_id": job.job_id, "frames": job.params["frames"], "done": len(done), "fps": job.params["fps"],
                    "width": job.params["width"], "height": job.params["height"],
                    "files": [self.frame_path(job.job_id, k).name for k in done], "params": job.params}
        _write_atomic(self.job_dir(job.job_id) / "manifest.json", lambda p: p.write_text(json.dumps(manifest)))
        return path


class JobQueue:
    """FIFO of queued jobs; one worker takes them one at a time."""

    def __init__(self, max_queued: int = 256):
        self.max_queued = max_queued
        self._queue = deque()
        self._cond = threading.Condition()
        self.running = None
        self.closed = False

    def put(self, job: Job) -> int:
        """Queue ``job``; return its position (0 = next to run)."""
        with self._cond:
            if len(self._queue) >= self.max_queued:
                raise protocol.ProtocolError("queue_full", f"{len(self._queue)} jobs are queued; the limit is "
                                             f"{self.max_queued}", job_id=job.job_id)
            self._queue.append(job)
            self._cond.notify()
            return len(self._queue) - 1 + (self.running is not None)

    def has_room(self) -> bool:
        with self._cond:
            return len(self._queue) < self.max_queued

    def take(self):
        with self._cond:
            while not self._queue and not self.closed:
                self._cond.wait()
            if self.closed:
                return None
            self.running = self._queue.popleft()
            return self.running

    def done(self):
        with self._cond:
            self.running = None

    def remove(self, job: Job) -> bool:
        with self._cond:
            try:
                self._queue.remove(job)
                return True
            except ValueError:
                return False

    def positions(self):
        with self._cond:
            offset = 1 if self.running is not None else 0
            return [(job, i + offset) for i, job in enumerate(self._queue)]

    def close(self):
        with self._cond:
            self.closed = True
            self._cond.notify_all()
