"""Main-thread state of the add-on: the backend connection, the jobs, and the drain function.

The client worker thread never touches bpy. Everything that changes Blender data
happens here, in ``drain()``, which a persistent ``bpy.app.timers`` callback calls in
the UI (and which scripts and tests call directly: timers never fire in background mode).
"""

from __future__ import annotations

import queue
import time
import uuid
from dataclasses import dataclass, field

import bpy

import numpy as np

from . import blender_images, history, protocol, walk_frames
from .client import ClientWorker, describe_error
from .supervisor import BackendProcess

ACTIVE_STATES = ("submitting", "queued", "running")
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
    mask: object = None  # (h, w) bool: only these pixels change; the rest is pasted back exactly
    original: object = None  # (h, w, 4) pixels the mask composites onto
    backup_name: str = ""  # a copy of an image that the result replaces
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
    warning: str = ""  # the backend's warning events (words of the prompt the model ignores)
    submitted: float = field(default_factory=time.time)

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    def progress_text(self) -> str:
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

    # ------------------------------------------------------------------ connection
    def connection_settings(self, prefs):
        """(host, port, token): a backend we launched wins over the typed address."""
        if self.backend is not None and self.backend.state == BackendProcess.RUNNING:
            info = self.backend.ready_info
            return info["host"], info["port"], self.backend.token
        return prefs.host, prefs.port, prefs.token

    def connect(self, prefs):
        """Open a new connection on the worker thread (never blocks the UI)."""
        if self.worker is not None:
            self.worker.stop()
        host, port, token = self.connection_settings(prefs)
        self.welcome = None
        self.status = f"Connecting to {host}:{port}"
        self.worker = ClientWorker(host, port, token).start()
        # Jobs that were in flight when a connection dropped: ask for them again by id.
        for job in self.jobs.values():
            if job.state == "lost":
                self.worker.send({"type": "fetch", "job_id": job.job_id, "output": BLENDER_OUTPUT})
                job.state, job.message = "running", "Reconnected; fetching"

    def ensure_connected(self, prefs):
        if self.worker is None or (not self.worker.connected and not self.worker.thread.is_alive()):
            self.connect(prefs)

    def start_backend(self, prefs, log_path=None):
        if self.backend is not None:
            self.backend.stop()
        self.backend = BackendProcess(
            prefs.python_path or "python3", prefs.port,
            models=[m.strip() for m in prefs.model.split(",") if m.strip()] or [protocol.DEFAULT_MODEL],
            output_dir=prefs.output_dir or None, device=prefs.device, log_path=log_path,
            on_ready=lambda info: self.events.put(("backend_ready", info)))
        self.backend.start()
        self.status = "Starting backend"

    def stop_backend(self):
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
        if self.backend is not None:
            self.backend.stop()
        self.status = "Backend stopped"
        for job in self.active_jobs():
            job.state, job.message = "error", describe_error({"code": "backend_stopped"})

    # ------------------------------------------------------------------ jobs
    def submit(self, prefs, params: dict, image_name: str, arrays=None, **view) -> JobView:
        """Send a job; ``view`` fills the JobView (kind, operator, mask, original, ...)."""
        self.ensure_connected(prefs)
        job = JobView(job_id=f"blender-{uuid.uuid4().hex[:16]}", params=params, image_name=image_name,
                      total=params["steps"], **view)
        self.jobs[job.job_id] = job
        job.arrays = arrays  # kept for a resume
        self.worker.send({"type": "submit", "job_id": job.job_id, "kind": job.kind, "params": params}, arrays)
        return job

    def resume(self, prefs, job_id: str) -> bool:
        """Run a cancelled or failed job again under its id; a walk keeps its finished frames."""
        job = self.jobs.get(job_id)
        if job is None or job.state not in ("cancelled", "error", "lost"):
            return False
        self.ensure_connected(prefs)
        job.state, job.message = "submitting", "Resuming"
        self.worker.send({"type": "submit", "job_id": job_id, "kind": job.kind, "params": job.params,
                          "resume": True}, job.arrays)
        return True

    def export(self, job_id: str, options: dict):
        """Ask the backend to export a finished walk (GIF or MP4); the answer arrives as 'exported'."""
        job = self.jobs.get(job_id)
        if job is None or job.kind != "walk" or job.state != "done" or self.worker is None:
            return False
        self.worker.send({"type": "export", "job_id": job_id, "options": options})
        job.message = "Exporting"
        return True

    def cancel(self, job_id: str):
        job = self.jobs.get(job_id)
        if job is None or not job.active:
            return False
        if self.worker is not None:
            self.worker.send({"type": "cancel", "job_id": job_id})
        job.message = "Cancelling"
        return True

    def active_jobs(self):
        return [job for job in self.jobs.values() if job.active]

    # ------------------------------------------------------------------ draining
    def drain(self, timeout: float = 0.0, max_seconds: float = 0.04) -> int:
        """Apply queued events on the main thread; return how many were handled.

        ``timeout`` > 0 waits that long for the first event (scripts and tests); the UI
        timer passes 0. Previews are coalesced: only the newest one per job is written.
        """
        handled = 0
        batch = []
        if self.worker is not None and timeout > 0:  # waiting is not main-thread work: not timed
            try:
                batch.append(self.worker.events.get(timeout=timeout))
            except queue.Empty:
                pass
        started = time.perf_counter()
        while True:
            try:
                kind, info = self.events.get_nowait()
            except queue.Empty:
                break
            if kind == "backend_ready":
                self.status = f"Backend running on {info['host']}:{info['port']} ({info['device']})"
                self._reconnect_after_start()
        if self.worker is not None:
            try:
                while time.perf_counter() - started < max_seconds:
                    batch.append(self.worker.events.get_nowait())
            except queue.Empty:
                pass
        newest_preview = {m.get("job_id"): i for i, (m, _) in enumerate(batch) if m["type"] == "preview"}
        for i, (message, arrays) in enumerate(batch):
            if message["type"] == "preview" and newest_preview.get(message.get("job_id")) != i:
                continue
            self._apply(message, arrays)
            handled += 1
        self.longest_drain_s = max(self.longest_drain_s, time.perf_counter() - started)
        return handled

    def _reconnect_after_start(self):
        from .preferences import get_preferences

        self.connect(get_preferences())

    def wait_for(self, job_id: str, timeout: float = 120.0) -> JobView:
        """Drain until ``job_id`` finishes (scripts and tests; the UI never waits)."""
        deadline = time.monotonic() + timeout
        job = self.jobs[job_id]
        while job.active and time.monotonic() < deadline:
            self.drain(timeout=min(0.5, max(deadline - time.monotonic(), 0.01)))
            if self.worker is None or (not self.worker.thread.is_alive() and self.worker.events.empty()):
                self.drain()
                break
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
                job.state, job.message = "error", message["message"]
            show_error(message["message"])
            return
        if kind == "disconnected":
            self.status = "Disconnected: " + message["message"]
            for job in self.active_jobs():  # never frozen: the job says what happened, and is fetched later
                job.state, job.message = "lost", describe_error({"code": "connection_lost", **message})
            return
        job = self.jobs.get(message.get("job_id"))
        if job is None:
            if kind == "error":  # not about a job of ours: show it where the connection status is
                self.status = describe_error(message)
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
            job.state, job.step = "done", job.total
            job.message = f"{message['frames']} frames in {message['folder']}"
            history.record(job)
        elif kind == "result":
            self._write(job, arrays["image"], message, final=True)
            job.state, job.step, job.message = "done", job.total, f"Done in {sum(message['timings'].values()):.1f} s"
            history.record(job)
        elif kind == "cancelled":
            job.state, job.message = "cancelled", f"Cancelled at step {message.get('step', 0)}"
            self._restore(job)
        elif kind == "error":
            job.state, job.message = "error", describe_error(message)
            self._restore(job)
            show_error(job.message)

    @staticmethod
    def _write(job, rgba, message, final):
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
        return blender_images.write_pixels(job.image_name, rgba, flipped=flipped, final=final)

    @staticmethod
    def _restore(job):
        """A replaced image gets its pixels back when its job does not finish."""
        if job.backup_name and job.original is not None:
            blender_images.write_pixels(job.image_name, job.original, flipped=True)


def show_error(text: str):
    """A popup at the mouse in the UI (background mode has no windows to show it in)."""
    if bpy.app.background:
        return
    bpy.context.window_manager.popup_menu(lambda menu, _context: menu.layout.label(text=text),
                                          title="Dream", icon="ERROR")


SESSION = Session()


def drain_timer():
    """The persistent timer: drain, redraw what shows progress, come back soon while busy."""
    handled = SESSION.drain()
    if handled:
        for window in bpy.context.window_manager.windows:
            for area in window.screen.areas:
                if area.type in ("VIEW_3D", "IMAGE_EDITOR", "PREFERENCES", "STATUSBAR"):
                    area.tag_redraw()
    return 0.05 if SESSION.active_jobs() else 0.25
