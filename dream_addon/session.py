"""Main-thread state of the add-on: the backend connection, the jobs, and the drain function.

The client worker thread never touches bpy. Everything that changes Blender data
happens here, in ``drain()``, which a persistent ``bpy.app.timers`` callback calls in
the UI (and which scripts and tests call directly: timers never fire in background mode).
"""

from __future__ import annotations

import json
import os
import queue
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

import bpy

import numpy as np

from . import bindings, blender_images, history, protocol, walk_frames
from .client import ClientWorker, describe_error
from .supervisor import BackendProcess

ACTIVE_STATES = ("submitting", "queued", "running")
ENDED_STATES = ("done", "cancelled", "error")
STARTING_MESSAGE = "Starting backend…"
# Blender float images hold linear light, rows bottom to top: the backend converts on its device.
BLENDER_OUTPUT = {"output_dtype": "float32", "flip_y": True, "linear": True}


@dataclass
class JobView:
    """What the add-on knows of one job it submitted."""

    job_id: str
    params: dict
    image_name: str
    kind: str = "txt2img"
    operator: str = "dream.generate_texture"  # what Re-run calls
    scene_name: str = ""
    settings: dict = field(default_factory=dict)  # the panel's settings, for history and Recall
    crop: tuple | None = None  # (width, height) of the image when the job was padded to multiples of 8
    mask: object = None  # (h, w) bool: pixels that may change (mask + feather); the rest is pasted back exactly
    original: object = None  # (h, w, 4) pixels the mask composites onto
    restore: object = None  # (h, w, 4) pixels a Replace target gets back if no result comes (default: original)
    backup_name: str = ""  # a copy of an image that the result replaces
    source_name: str = ""  # img2img and inpaint: the image repainted (history's Re-run starts from it)
    repaint_mask: object = None  # inpaint: (h, w) bool, the mask as given (history keeps it for Re-run)
    walk_target: dict = field(default_factory=dict)  # walks: where frames go (sequencer or texture)
    arrays: dict | None = None
    state: str = "submitting"
    step: int = 0
    total: int = 0
    stage: str = ""
    eta: float | None = None
    position: int = 0
    previews: int = 0
    message: str = ""
    latent_path: str = ""  # the latent codec: where Save as Latent writes the file (or Open read it)
    warning: str = ""  # the backend's warning events (words of the prompt the model ignores)
    submitted: float = field(default_factory=time.time)
    blend_path: str = ""  # the .blend it was started in: its datablocks live there
    refs: dict = field(default_factory=dict)  # role -> bindings.ref: the datablocks it writes, by identity
    created: tuple = ()  # roles of datablocks it made: deleted again if it gives no result
    moved_faces: object = ()  # faces it gave its new material slot: given the old one back then
    accepted: bool = False  # the backend answered its submit
    resumed: bool = False
    last_event: str = ""  # type of the newest backend event about it
    recovered: bool = False  # known from its file's record (another Blender process submitted it)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    def datablock(self, role):
        """The datablock bound to ``role`` (scene, image, backup, object, material), or None."""
        reference = self.refs.get(role)
        found = bindings.resolve(reference)
        if found is not None and found.name != reference[2]:  # renamed: remember it for a reload
            self.refs[role] = bindings.ref(found)
            if role == "image":
                self.image_name = found.name
        return found

    def progress_text(self) -> str:
        if self.state == "submitting" and self.message:
            return self.message
        if self.state == "queued":
            return f"Queued (position {self.position})"
        if self.state == "running":
            eta = f", {self.eta:.1f} s left" if self.eta is not None else ""
            return f"{self.stage.capitalize() or 'Running'} {self.step}/{self.total}{eta}"
        return self.message or self.state.capitalize()


class Session:
    def __init__(self):
        self.worker: ClientWorker | None = None
        self.backend: BackendProcess | None = None
        self.welcome: dict | None = None
        self.jobs: dict[str, JobView] = {}
        self.status = "Not connected"
        self.longest_drain_s = 0.0
        self.events = queue.Queue()  # events of the supervisor (ready) for the main thread
        self.unanswered = deque()  # ids of submits on this connection the backend has not answered yet

    # ------------------------------------------------------------------ connection
    def connection_settings(self, prefs):
        """(host, port, token): a backend we launched wins over the typed address."""
        if self.backend is not None and self.backend.state == BackendProcess.RUNNING:
            info = self.backend.ready_info
            return info["host"], info["port"], self.backend.token
        return prefs.host, prefs.port, prefs.token

    def backend_starting(self) -> bool:
        return self.backend is not None and self.backend.state == BackendProcess.STARTING

    def connect(self, prefs):
        """Open a new connection on the worker thread (never blocks the UI).

        Every job of this file that is in flight or lost is sent again on it: a submit the
        backend never answered, a fetch by id for the others (the backend never runs a job twice).
        """
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
        self.welcome = None
        self.unanswered.clear()
        if self.backend_starting():  # its ready event connects
            self.status = STARTING_MESSAGE
            return
        host, port, token = self.connection_settings(prefs)
        self.status = f"Connecting to {host}:{port}"
        self.worker = ClientWorker(host, port, token).start()
        for job in self.jobs.values():
            if job.active or job.state == "lost":
                self._send_job(job)

    def _send_job(self, job):
        """Submit ``job`` on the current connection, or ask for it by id if the backend has it."""
        if not job.accepted:
            job.state, job.message = "submitting", ""
            self.unanswered.append(job.job_id)
            self.worker.send({"type": "submit", "job_id": job.job_id, "kind": job.kind, "params": job.params,
                              **({"resume": True} if job.resumed else {})}, job.arrays)
        else:
            job.state, job.message = "running", "Reconnected; fetching"
            # The output the job asked for (a byte image takes sRGB, not the default linear light).
            output = {name: job.params.get(name, value) for name, value in BLENDER_OUTPUT.items()}
            self.worker.send({"type": "fetch", "job_id": job.job_id, "output": output})

    def ensure_connected(self, prefs):
        if self.backend_starting():
            return
        if self.worker is None or (not self.worker.connected and not self.worker.thread.is_alive()):
            self.connect(prefs)

    def start_backend(self, prefs, log_path=None):
        if self.worker is not None:  # jobs submitted from now on wait for the new backend
            self.worker.stop()
            self.worker = None
        if self.backend is not None:
            self.backend.stop()
        self.backend = BackendProcess(
            prefs.python_path or "python3", prefs.port,
            models=[m.strip() for m in prefs.model.split(",") if m.strip()] or [protocol.DEFAULT_MODEL],
            output_dir=prefs.output_dir or None, device=prefs.device, log_path=log_path,
            extra_args=backend_model_args(prefs),
            on_ready=lambda info: self.events.put(("backend_ready", info)))
        self.backend.start()
        self.status = STARTING_MESSAGE
        for job in self.active_jobs():
            job.message = STARTING_MESSAGE

    def stop_backend(self):
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
        if self.backend is not None:
            self.backend.stop()
        self.status = "Backend stopped"
        for job in self.active_jobs():
            self._end_or_wait(job, describe_error({"code": "backend_stopped"}))

    # ------------------------------------------------------------------ jobs
    def submit(self, prefs, params: dict, image_name: str, arrays=None, datablocks=None, **view) -> JobView:
        """Send a job; ``view`` fills the JobView (kind, operator, mask, original, created, ...).

        ``datablocks`` (role -> ID) are what the job writes to: it is bound to them by identity.
        While the backend starts, the job waits for it.
        """
        self.ensure_connected(prefs)
        view.setdefault("total", params.get("steps", 1))
        job = JobView(job_id=f"blender-{uuid.uuid4().hex[:16]}", params=params, image_name=image_name, **view)
        job.blend_path = bpy.data.filepath
        job.refs = {role: bindings.ref(d) for role, d in (datablocks or {}).items() if d is not None}
        for role, datablock in (datablocks or {}).items():
            if datablock is not None:
                bindings.tag(datablock, job.job_id, role)
        remember(job)
        self.jobs[job.job_id] = job
        job.arrays = arrays  # kept for a resume
        if self.worker is not None:
            self._send_job(job)
        else:
            job.message = STARTING_MESSAGE
        return job

    def resume(self, prefs, job_id: str) -> bool:
        """Run a cancelled or failed job again under its id; a walk keeps its finished frames."""
        job = self.jobs.get(job_id)
        if job is None or job.state not in ("cancelled", "error", "lost"):
            return False
        self.ensure_connected(prefs)
        job.accepted, job.resumed = False, True
        if self.worker is not None:
            self._send_job(job)
        job.state, job.message = "submitting", "Resuming" if self.worker is not None else STARTING_MESSAGE
        return True

    def export(self, job_id: str, options: dict):
        """Ask the backend to export a finished walk or mosaic zoom (GIF, MP4 or PNG sequence); the answer
        arrives as 'exported'."""
        job = self.jobs.get(job_id)
        if job is None or job.kind not in protocol.FRAME_KINDS or job.state != "done" or self.worker is None:
            return False
        self.worker.send({"type": "export", "job_id": job_id, "options": options})
        job.message = "Exporting"
        return True

    def rescan(self, types: str = "") -> bool:
        """Ask the backend to re-read its models folder, with the preferences' model types
        ('NAME=FAMILY[/KIND], ...'); the new listing arrives as 'library'."""
        if self.worker is None or self.welcome is None:
            return False
        self.worker.send({"type": "rescan", "types": types})
        return True

    def cancel(self, job_id: str):
        job = self.jobs.get(job_id)
        if job is not None and job.state == "detached":  # stopped on the backend; its file is restored when open
            if self.worker is None or not self.worker.connected:
                return False
            self.worker.send({"type": "cancel", "job_id": job_id})
            job.message = "Stopped: its file gets back what the job touched when it is open again"
            return True
        if job is None or not job.active:
            return False
        if self.worker is None:  # nothing runs it yet (the backend is starting): it ends here
            self._end(job, "cancelled", "Cancelled before it started")
            return True
        self.worker.send({"type": "cancel", "job_id": job_id})
        job.message = "Cancelling"
        return True

    def active_jobs(self):
        return [job for job in self.jobs.values() if job.active]

    def stoppable_jobs(self):
        """Running, queued, and waiting for their file (the backend runs those on)."""
        return [job for job in self.jobs.values() if job.active or job.state == "detached"]

    # ------------------------------------------------------------------ files
    def detach_file(self):
        """``load_pre``: the open file's jobs stop writing into Blender; the backend keeps them.

        A file that was never saved cannot be opened again: its jobs are stopped on the backend instead
        of running on for nobody (their datablocks go with the file)."""
        name = os.path.basename(bpy.data.filepath)
        for job in self.jobs.values():
            if not (job.active or job.state == "lost"):
                continue
            for role in list(job.refs):
                job.datablock(role)  # the names as they are now (renamed since the last write)
            if not job.blend_path:
                if self.worker is not None:  # sent once the connection is up, if it is still opening
                    self.worker.send({"type": "cancel", "job_id": job.job_id})
                job.state, job.message = "cancelled", "Stopped: its file was closed without being saved"
                if job.job_id in self.unanswered:
                    self.unanswered.remove(job.job_id)
                continue
            job.state = "detached"
            job.message = (f"Waiting for {name}: applied when it is open again "
                           f"(the backend keeps job {job.job_id})")

    def file_saved(self):
        for job in self.jobs.values():
            if job.state != "detached":
                job.blend_path = bpy.data.filepath

    def reattach_file(self, prefs):
        """``load_post``: jobs started in the file just opened are bound to it again and fetched.

        A job knows its file by the tags on its datablocks (renamed, or the file moved or saved under
        another name), or else by the path it was saved at and the datablocks' names."""
        path = bpy.data.filepath
        jobs = []
        for job in self.jobs.values():
            if job.state != "detached":
                continue
            tagged = {role: bindings.find_tagged(r, job.job_id, role) for role, r in job.refs.items()}
            if tagged.get("scene") is not None:  # its own scene is in this file: each role by its tag, else name
                refs = {role: bindings.ref(d) if d is not None else bindings.rebind(job.refs[role])
                        for role, d in tagged.items()}
            elif path and job.blend_path == path:
                refs = {role: bindings.rebind(r) for role, r in job.refs.items()}
            else:
                continue
            job.refs = {role: r for role, r in refs.items() if r is not None}
            job.blend_path = path
            image = job.datablock("image")
            if image is not None:
                job.image_name = image.name
            jobs.append(job)
        for job in recovered_jobs(self.jobs, path):
            self.jobs[job.job_id] = job
            jobs.append(job)
        prune_tags(self.jobs)
        for job in jobs:
            job.state, job.message = "lost", "Re-attached to its file; fetching"
        if jobs:
            if self.worker is None or not self.worker.thread.is_alive():
                self.ensure_connected(prefs)
            elif self.worker is not None:
                for job in jobs:
                    self._send_job(job)

    # ------------------------------------------------------------------ draining
    def drain(self, timeout: float = 0.0, max_seconds: float = 0.04) -> int:
        """Apply queued events on the main thread; return how many were handled.

        ``timeout`` > 0 waits that long for the first event (scripts and tests); the UI
        timer passes 0. Previews are coalesced: only the newest one per job is written.
        """
        handled = 0
        batch = []
        supervisor = []
        worker = self.worker
        if timeout > 0:  # waiting is not main-thread work: not timed
            try:
                if worker is not None:
                    batch.append(worker.events.get(timeout=timeout))
                elif self.backend_starting():
                    supervisor.append(self.events.get(timeout=timeout))
            except queue.Empty:
                pass
        started = time.perf_counter()
        while True:
            try:
                supervisor.append(self.events.get_nowait())
            except queue.Empty:
                break
        for kind, info in supervisor:
            if kind == "backend_ready":
                self.status = f"Backend running on {info['host']}:{info['port']} ({info['device']})"
                self._reconnect_after_start()
        if self.worker is not worker:  # a new connection: events of the old one are stale
            batch, worker = [], self.worker
        if worker is not None:
            try:
                while time.perf_counter() - started < max_seconds:
                    batch.append(worker.events.get_nowait())
            except queue.Empty:
                pass
        newest_preview = {m.get("job_id"): i for i, (m, _) in enumerate(batch) if m["type"] == "preview"}
        for i, (message, arrays) in enumerate(batch):
            if message["type"] == "preview" and newest_preview.get(message.get("job_id")) != i:
                continue
            self._apply(message, arrays)
            handled += 1
        self._check_alive()
        self.longest_drain_s = max(self.longest_drain_s, time.perf_counter() - started)
        return handled

    def _check_alive(self):
        """No job stays active without a connection that can still bring its events."""
        if not self.active_jobs() or self.backend_starting():
            return
        worker = self.worker
        if worker is not None and (worker.thread.is_alive() or not worker.events.empty()):
            return
        if self.backend is not None and self.backend.state == BackendProcess.EXITED:
            last = self.backend.tail[-1] if self.backend.tail else f"code {self.backend.returncode}"
            message = f"The backend exited ({last}); see its log in the preferences"
            for job in self.active_jobs():
                self._end_or_wait(job, message)
            return
        for job in self.active_jobs():
            self._end(job, "lost", describe_error({"code": "connection_lost", "message": "no connection"}),
                      final=False)

    def _reconnect_after_start(self):
        from .preferences import get_preferences

        self.connect(get_preferences())

    def wait_for(self, job_id: str, timeout: float = 120.0) -> JobView:
        """Drain until ``job_id`` finishes (scripts and tests; the UI never waits)."""
        deadline = time.monotonic() + timeout
        job = self.jobs[job_id]
        while job.active and time.monotonic() < deadline:
            self.drain(timeout=min(0.5, max(deadline - time.monotonic(), 0.01)))
        return job

    def _apply(self, message, arrays):
        kind = message["type"]
        if kind == "connected":
            self.welcome = message["welcome"]
            self.status = f"Connected to backend {self.welcome['server_version']} on {self.welcome['device']}"
            return
        if kind == "connection_error":
            self.status = message["message"]
            for job in self.active_jobs():
                self._end_or_wait(job, message["message"])
            show_error(message["message"])
            return
        if kind == "disconnected":
            self.status = "Disconnected: " + message["message"]
            for job in self.active_jobs():  # never frozen: the job says what happened, and is fetched later
                self._end(job, "lost", describe_error({"code": "connection_lost", **message}), final=False)
            return
        if kind == "error" and not message.get("job_id") and self.unanswered:
            # An error about a frame the backend could not read (no job id in it): it answers
            # the oldest submit on this connection that has no answer yet.
            message = {**message, "job_id": self.unanswered[0]}
        if kind == "library" and self.welcome is not None:  # the answer to a rescan
            self.welcome = {**self.welcome, "models": message["models"], "library": message["library"]}
            self.status = f"Models folder: {len(message['library'].get('checkpoints', []))} checkpoints, " \
                          f"{len(message['library'].get('loras', []))} LoRAs"
            return
        job = self.jobs.get(message.get("job_id"))
        if job is None:
            if kind == "error":  # not about a job of ours: show it where the connection status is
                self.status = describe_error(message)
            return
        job.last_event = kind
        if kind in ("accepted", "error") and job.job_id in self.unanswered:
            self.unanswered.remove(job.job_id)
        if kind == "accepted":
            job.accepted = True
            return
        if kind != "exported" and not job.active:  # detached, or a late duplicate of its ending
            return
        if kind == "warning":  # operators/notices.py
            from .operators.notices import show_job_warning

            show_job_warning(job, message)
        elif kind == "queued":
            job.state, job.position = "queued", message["position"]
        elif kind == "started":
            job.state = "running"
        elif kind == "progress":
            job.state = "running"
            job.step, job.total, job.stage, job.eta = message["step"], message["total"], message["stage"], message["eta"]
        elif kind == "preview":
            if self._write(job, arrays["image"], message, final=False):
                job.previews += 1
        elif kind == "frame":
            walk_frames.place(job, message)
        elif kind == "exported":
            job.message = f"Exported {message['frames']} frames to {message['path']}"
            self.status = job.message
        elif kind == "result" and job.kind == "walk":
            walk_frames.fill(job, message["folder"], message["frames"])  # any it missed while away
            job.state, job.step = "done", job.total
            job.message = f"{message['frames']} frames in {message['folder']}"
            history.record(job)
        elif kind == "result" and job.kind == "compress":  # operators/latent.py: a file, not pixels
            from .operators.latent import save_latent_result

            job.state, job.message = save_latent_result(job, message, arrays)
            job.step, self.status = job.total, job.message
        elif kind == "result":
            job.state, job.step, job.message = "done", job.total, f"Done in {sum(message['timings'].values()):.1f} s"
            if "word" in message:  # a taught concept (operators/concept.py)
                job.message += f": type {message['word']!r} in any prompt"
            self._write(job, arrays["image"], message, final=True)
            if job.walk_target and "folder" in message:  # a mosaic's zoom frames, placed as a walk's are
                walk_frames.fill(job, message["folder"], message["frames"])
            history.record(job)
        elif kind == "cancelled":
            self._end(job, "cancelled", f"Cancelled at step {message.get('step', 0)}")
        elif kind == "error":
            self._end(job, "error", describe_error(message))
            show_error(job.message)
        if job.state in ENDED_STATES:
            self._release(job)

    def _release(self, job):
        """An ended job's tags come off its datablocks (the file no longer waits for anything)."""
        forget(job)
        for role in list(job.refs):
            bindings.untag(job.datablock(role), job.job_id)

    def _write(self, job, rgba, message, final):
        """Crop the padding away, paste the original back outside the mask, write the image."""
        flipped = message.get("flip_y", False)
        if job.crop is not None:
            width, height = job.crop
            rgba = rgba[:height, :width] if flipped else rgba[rgba.shape[0] - height:, :width]
        if job.mask is not None:
            if not flipped:
                rgba = rgba[::-1]
                flipped = True
            rgba = np.where(job.mask[..., None], rgba, job.original)
        image = job.datablock("image")
        if image is None and final:  # its image is gone (deleted, undone, or not in the saved file)
            image = blender_images.new_result_image(job.image_name or "Dream result", rgba.shape[1], rgba.shape[0])
            job.refs["image"], job.image_name = bindings.ref(image), image.name
            job.message += f"; kept as the new image {image.name!r} (its target was gone)"
        return blender_images.write_pixels(image, rgba, flipped=flipped, final=final)

    def _end_or_wait(self, job, message):
        """The backend is gone: a job ends in error, but one its file remembers waits for a backend that
        has its result on disk (its placeholder stays)."""
        if job.recovered:
            self._end(job, "lost", message, final=False)
        else:
            self._end(job, "error", message)

    def _end(self, job, state, message, final=True):
        """A job ends without a result (or is lost for now): put back what it touched."""
        job.state, job.message = state, message
        if job.job_id in self.unanswered and final:
            self.unanswered.remove(job.job_id)
        image = job.datablock("image")
        before = job.restore if job.restore is not None else job.original
        if job.refs.get("backup") and before is not None and image is not None:
            blender_images.write_pixels(image, before, flipped=True)  # a replaced image gets its pixels back
        if final:
            self._release(job)
            blender_images.remove_created(job.datablock("object"), [job.datablock(role) for role in job.created],
                                          job.moved_faces)


# Jobs a file remembers, so that one saved mid-job gets its result in another Blender process (quit,
# crashed, reopened the next day): a JSON record per job on its scene, kept until the job ends. Only
# jobs whose result is written as it comes (a new texture) are recorded: the others need pixels (masks,
# originals) that live in this process alone.
PENDING_KEY = "dream_pending_jobs"
RECORDED = ("params", "image_name", "kind", "operator", "settings", "crop", "created", "total")


RECOVERABLE_OPERATORS = ("dream.generate_texture", "dream.texture_selected_faces")


def recoverable(job) -> bool:
    return (job.kind == "txt2img" and job.operator in RECOVERABLE_OPERATORS and job.mask is None
            and job.original is None and job.restore is None and not job.backup_name and not job.walk_target)


def _local_scenes():
    return [scene for scene in bpy.data.scenes if scene.library is None]


def _records(scene) -> dict:
    try:
        records = json.loads(scene.get(PENDING_KEY, "{}"))
    except (TypeError, ValueError):
        return {}
    return records if isinstance(records, dict) else {}


def _write_records(scene, records: dict):
    try:
        if records:
            scene[PENDING_KEY] = json.dumps(records)
        elif PENDING_KEY in scene.keys():
            del scene[PENDING_KEY]
    except (TypeError, AttributeError):  # a scene that cannot hold properties (linked): nothing recorded
        pass


def remember(job):
    scene = job.datablock("scene")
    if scene is None or scene.library is not None or not recoverable(job):
        return
    records = _records(scene)
    records[job.job_id] = {**{name: getattr(job, name) for name in RECORDED},
                           "moved_faces": [int(i) for i in job.moved_faces]}
    _write_records(scene, records)


def forget(job):
    """The job's record goes from every scene that holds it (a copied scene copies its properties)."""
    for scene in _local_scenes():
        records = _records(scene)
        if job.job_id in records:
            del records[job.job_id]
            _write_records(scene, records)


def _job_from_record(job_id, record, path):
    """A JobView from a record this version wrote, or None: anything else a file holds is left alone."""
    try:
        job_id = protocol.validate_job_id(job_id)
        fields = {name: record[name] for name in RECORDED}
        if fields["kind"] != "txt2img" or fields["operator"] not in RECOVERABLE_OPERATORS:
            return None
        if not (isinstance(fields["params"], dict) and isinstance(fields["settings"], dict)
                and isinstance(fields["image_name"], str)):
            return None
        crop = fields.pop("crop")
        if crop is not None and not (len(crop) == 2 and all(isinstance(v, int) and 0 < v <= 65536 for v in crop)):
            return None
        faces = np.array(record.get("moved_faces", []), np.int64).reshape(-1)
        job = JobView(job_id=job_id, **{**fields, "total": max(1, int(fields["total"])),
                                        "created": tuple(r for r in fields["created"] if r in ("image", "material"))},
                      crop=tuple(crop) if crop is not None else None, moved_faces=faces)
    except (TypeError, KeyError, ValueError, OverflowError, protocol.ProtocolError):
        return None
    job.blend_path, job.accepted, job.recovered = path, True, True
    job.state, job.message = "detached", "Remembered by its file"
    return job


def recovered_jobs(known: dict, path: str) -> list:
    """JobViews of the jobs the open file remembers that this process does not know: fetched like
    any job waiting for its file (the backend keeps results on disk). Only jobs whose scene and image
    carry their tags come back (a copied scene's stale record is left to be forgotten)."""
    jobs = {}
    for scene in _local_scenes():
        for job_id, record in _records(scene).items():
            if job_id in known or job_id in jobs:
                continue
            job = _job_from_record(job_id, record, path)
            if job is None:
                continue
            for collection in bindings.COLLECTIONS.values():
                for datablock in getattr(bpy.data, collection):
                    for role in bindings.tag_roles(datablock, job.job_id):
                        job.refs.setdefault(role, bindings.ref(datablock))
            if "scene" not in job.refs or "image" not in job.refs:
                continue
            obj = job.datablock("object")
            if obj is not None and obj.type == "MESH":
                job.moved_faces = job.moved_faces[(job.moved_faces >= 0) & (job.moved_faces < len(obj.data.polygons))]
            job.scene_name = job.datablock("scene").name
            jobs[job.job_id] = job
    return list(jobs.values())


def prune_tags(known: dict):
    """Tags and records of jobs this process does not know (nor recovered): they wait for nothing."""
    keys = {bindings.tag_key(job_id) for job_id in known}
    for collection in bindings.COLLECTIONS.values():
        for datablock in getattr(bpy.data, collection):
            if datablock.library is not None:
                continue
            for key in [k for k in datablock.keys() if k.startswith(bindings.TAG_PREFIX) and k not in keys]:
                del datablock[key]
    for scene in _local_scenes():
        records = _records(scene)
        if any(job_id not in known for job_id in records):
            _write_records(scene, {job_id: r for job_id, r in records.items() if job_id in known})


def backend_model_args(prefs) -> list:
    """serve's --models-dir, --model-type and --upscaler arguments from the preferences."""
    args = ["--models-dir", bpy.path.abspath(prefs.models_dir)] if prefs.models_dir else []
    for item in (part.strip() for part in prefs.model_types.split(",")):
        if item:
            args += ["--model-type", item]
    return args + [f"--upscaler={u.strip()}" for u in prefs.upscalers.split(",") if u.strip()]


def show_error(text: str):
    """A popup at the mouse in the UI (background mode has no windows to show it in)."""
    if bpy.app.background:
        return
    bpy.context.window_manager.popup_menu(lambda menu, _context: menu.layout.label(text=text),
                                          title="Dream", icon="ERROR")


SESSION = Session()


@bpy.app.handlers.persistent
def on_load_pre(*_args):
    """Another file is about to be opened: the jobs of this one must not write into it."""
    SESSION.detach_file()


@bpy.app.handlers.persistent
def on_save_pre(*_args):
    """Ended jobs leave no tag or record in the saved file (an undo may have put them back)."""
    for job in SESSION.jobs.values():
        if job.state in ENDED_STATES:
            SESSION._release(job)


@bpy.app.handlers.persistent
def on_save_post(*_args):
    """Saved (perhaps under a new name): the open file's jobs belong to that path now."""
    SESSION.file_saved()


@bpy.app.handlers.persistent
def on_load_post(*_args):
    """A file was opened: jobs that were started in it are fetched and applied again."""
    from .preferences import get_preferences

    SESSION.reattach_file(get_preferences())


def drain_timer():
    """The persistent timer: drain, redraw what shows progress, come back soon while busy."""
    handled = SESSION.drain()
    if handled:
        for window in bpy.context.window_manager.windows:
            for area in window.screen.areas:
                if area.type in ("VIEW_3D", "IMAGE_EDITOR", "PREFERENCES", "STATUSBAR"):
                    area.tag_redraw()
    return 0.05 if SESSION.active_jobs() else 0.25
