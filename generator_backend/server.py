"""The socket server: authenticated connections on loopback, dispatching to the job queue.

Each connection has a reader thread (frames in) and a writer thread (an outbox of
frames out), so a slow client never stalls the worker; a newer preview or progress
event replaces an unsent older one of the same job.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import socket
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

from dream_addon import protocol
from dream_addon.protocol import ProtocolError, is_loopback

from . import __version__
from .jobs import (CANCELLED, DONE, FAILED, FINISHED, OUTPUT_FIELDS, QUEUED, RUNNING, Job, JobQueue, JobStore,
                   OutputUnwritable)
from .runner import Worker, result_frame
from .upscalers import UpscalerManager

log = logging.getLogger("generator_backend.server")

HELLO_TIMEOUT_S = 10.0  # for the whole hello, however slowly its bytes come
MAX_CONNECTIONS = 32  # authenticated
MAX_PENDING = 16  # not yet authenticated; the oldest is dropped for a newcomer, so they never lock clients out
MAX_JOBS_IN_MEMORY = 1000
MAX_OUTBOX_BYTES = 1 << 30


class Connection:
    def __init__(self, server: "Server", sock: socket.socket, address):
        self.server, self.sock, self.address = server, sock, address
        self._outbox = deque()
        self._outbox_bytes = 0
        self._cond = threading.Condition()
        self.closed = False
        self.opened = time.monotonic()
        self.reader = threading.Thread(target=self._read_loop, name=f"dream-read-{address}", daemon=True)
        self.writer = threading.Thread(target=self._write_loop, name=f"dream-write-{address}", daemon=True)

    def start(self):
        self.writer.start()  # first: the reader joins it when it ends
        self.reader.start()

    # ------------------------------------------------------------------ sending
    def send(self, message, arrays=None, coalesce_key=None):
        frame = protocol.encode_frame(message, arrays)
        size = sum(len(b) for b in frame)
        with self._cond:
            if self.closed:
                return
            if coalesce_key is not None:
                for i, (key, old, old_size) in enumerate(self._outbox):
                    if key == coalesce_key:  # replace the stale preview/progress in place
                        self._outbox[i] = (key, frame, size)
                        self._outbox_bytes += size - old_size
                        self._cond.notify()
                        return
                if self._outbox_bytes + size > MAX_OUTBOX_BYTES:
                    return  # previews are optional: drop them for a client that does not keep up
            self._outbox.append((coalesce_key, frame, size))
            self._outbox_bytes += size
            self._cond.notify()

    def _write_loop(self):
        while True:
            with self._cond:
                while not self._outbox and not self.closed:
                    self._cond.wait()
                if not self._outbox:
                    return
                _, frame, size = self._outbox.popleft()
                self._outbox_bytes -= size
            try:
                for buffer in frame:
                    if len(buffer):
                        self.sock.sendall(buffer)
            except OSError:
                self.close()
                return

    def close_after_flush(self):
        """Stop reading; the writer sends what is queued, then the socket closes."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()

    def evict(self, message=None):
        """Send ``message``, if any, then end the connection (its reader is woken from its read)."""
        if message is not None:
            self.send(message)
        self.close_after_flush()
        try:
            self.sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass

    def close(self):
        with self._cond:
            self.closed = True
            self._outbox.clear()
            self._cond.notify_all()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # ------------------------------------------------------------------ reading
    def _read_loop(self):
        try:
            self._handshake()
            while not self.closed:
                try:
                    message, arrays = protocol.recv_frame(self.sock, self.server.limits)
                except ProtocolError as exc:
                    self.send(exc.to_message())
                    if exc.fatal:
                        break
                    continue
                self._dispatch_safely(message, arrays)
        except (protocol.ConnectionClosed, OSError):
            pass
        except ProtocolError as exc:  # handshake failures
            self.send(exc.to_message())
        finally:
            self.close_after_flush()
            self.writer.join(timeout=10)
            try:
                self.sock.close()
            except OSError:
                pass
            self.server.forget(self)

    def _handshake(self):
        """One small hello with no payload, whole within the hello timeout, before anything else is read."""
        timeout = self.server.hello_timeout
        try:
            message, _ = protocol.recv_frame(self.sock, protocol.HELLO_LIMITS, deadline=time.monotonic() + timeout)
        except socket.timeout:
            raise ProtocolError("handshake_timeout", f"no whole hello within {timeout:g} s") from None
        finally:
            self.sock.settimeout(None)
        if message.get("type") != "hello":
            raise ProtocolError("handshake_required", "the first message must be 'hello'", field="type",
                                allowed=["hello"])
        version = message.get("protocol")
        if type(version) is not int or version != protocol.PROTOCOL_VERSION:  # strict: true and 1.0 are not 1
            raise ProtocolError("version_mismatch",
                                f"client speaks protocol {str(version)[:40]!r}; this backend speaks "
                                f"{protocol.PROTOCOL_VERSION}", field="protocol", allowed=[protocol.PROTOCOL_VERSION])
        token = message.get("token")
        if not isinstance(token, str) or not hmac.compare_digest(token.encode(), self.server.token.encode()):
            log.warning("connection from %s refused: wrong token", self.address)
            raise ProtocolError("auth_failed", "wrong or missing token", field="token")
        self.server.admit(self)
        log.info("client %r connected from %s", str(message.get("client"))[:100], self.address)
        self.send(self.server.welcome())

    def _dispatch_safely(self, message, arrays):
        self._answering_errors(message, self._dispatch, message, arrays)

    def _dispatch(self, message, arrays):
        handler = getattr(self, "on_" + message["type"], None)
        if handler is None or message["type"] not in protocol.CLIENT_MESSAGES or message["type"] == "hello":
            raise ProtocolError("unknown_type", f"unknown message type {message['type'][:40]!r}", field="type",
                                allowed=[t for t in protocol.CLIENT_MESSAGES if t != "hello"])
        handler(message, arrays)

    def _answering_errors(self, message, run, *args):
        """Run ``run(*args)`` for ``message``; every failure is sent as an error event, never a traceback."""
        try:
            run(*args)
        except ProtocolError as exc:
            if exc.job_id is None and isinstance(message.get("job_id"), str):
                exc.job_id = message["job_id"][:protocol.JOB_ID_MAX]
            self.send(exc.to_message())
        except OutputUnwritable as exc:
            self.send(exc.to_error(protocol.frame_job_id(message)).to_message())
        except Exception:  # never a traceback over the socket: it goes to the log
            log.exception("error handling %r", message.get("type")[:40])
            error = {"type": "error", "code": "internal", "message": "internal error; see the backend log"}
            job_id = protocol.frame_job_id(message)
            self.send(error if job_id is None else {**error, "job_id": job_id})

    # ------------------------------------------------------------------ handlers
    def on_ping(self, message, arrays):
        self.send({"type": "pong", **self.server.health()})

    def on_submit(self, message, arrays):
        job_id = protocol.validate_job_id(message.get("job_id"))
        try:
            params, inputs = protocol.validate_job(message.get("kind", "txt2img"), message.get("params", {}), arrays,
                                                   self.server.max_size)
        except ProtocolError as exc:
            exc.job_id = job_id
            raise
        upscaled = [("upscaler", "factor")] if "upscaler" in params else \
            [("enlarge_with", "scale")] if params.get("enlarge_with") else []  # upscale; the detail pass
        for name_field, factor_field in upscaled:  # a served upscaler, a factor within its scale
            try:
                self.server.upscalers.check_job(params, name_field, factor_field)
            except ProtocolError as exc:
                exc.job_id = job_id
                raise
        checks = ([("params.model", params["model"])] if params.get("model") else []) + [
            (f"params.models[{i}].name", m["name"]) for i, m in enumerate(params.get("models") or [])]
        for where, name in checks:
            if name not in self.server.models.sources:
                raise ProtocolError("invalid_param", f"{where} {name!r} is not served here (nor a checkpoint in "
                                    "the models folder; rescan after adding files)", field=where,
                                    allowed=self.server.models.names(), job_id=job_id)
            if (why := self.server.models.refusal(name)) is not None:  # detected, listed, cannot run
                raise ProtocolError("invalid_param", f"{where} {name!r} is {why}", field=where,
                                    allowed=self.server.models.usable(), job_id=job_id)
        loras = self.server.models.library.names("lora")
        for i, term in enumerate(params.get("loras") or []):  # before anything is made
            if term["name"] not in loras:
                raise ProtocolError("invalid_param", f"params.loras[{i}].name {term['name']!r} is not a LoRA in "
                                    "the models folder (rescan after adding files)", field=f"params.loras[{i}].name",
                                    allowed=loras, job_id=job_id)
        self.server.submit(self, job_id, message.get("kind", "txt2img"), params, inputs,
                           resume=message.get("resume") is True)

    def on_cancel(self, message, arrays):
        job_id = protocol.validate_job_id(message.get("job_id"))
        self.server.cancel(self, job_id)

    def on_status(self, message, arrays):
        job_id = message.get("job_id")
        if job_id is None:
            self.send({"type": "status", "server": self.server.welcome(), "health": self.server.health(),
                       "jobs": self.server.job_summaries()})
        else:
            self.send({"type": "status", "job": self.server.job_summary(protocol.validate_job_id(job_id))})

    def on_fetch(self, message, arrays):
        job_id = protocol.validate_job_id(message.get("job_id"))
        output = protocol.validate_params(message.get("output", {}), {
            k: v for k, v in protocol.txt2img_fields().items() if k in OUTPUT_FIELDS}, "output")
        self.server.fetch(self, job_id, output)

    def on_export(self, message, arrays):
        from .export import export_frames

        job_id = protocol.validate_job_id(message.get("job_id"))
        options = protocol.validate_params(message.get("options", {}), protocol.EXPORT_FIELDS, "options")
        meta = self.server.store.load_meta(job_id)
        if meta is None or meta.get("kind") not in protocol.FRAME_KINDS or meta.get("state") != DONE \
                or (meta["kind"] == "mosaic" and not meta.get("frames")):  # a walk, or a mosaic with a zoom
            raise ProtocolError("not_found", f"no finished walk {job_id!r} to export", field="job_id", job_id=job_id)
        folder, fps = self.server.store.job_dir(job_id), options["fps"] or meta["params"]["fps"]

        def export():
            path, count = export_frames(folder, options["format"], fps, options["rubber_band"],
                                        "zoom" if meta["kind"] == "mosaic" else "walk")
            self.send({"type": "exported", "job_id": job_id, "path": str(path), "frames": count, **options})

        # Off the reader thread: encoding a long walk takes seconds, and a cancel must not wait for it.
        self.server.exporter.submit(self._answering_errors, message, export)

    def on_rescan(self, message, arrays):
        """Re-read the models folder, with the model types the client overrides (``types``:
        'NAME=FAMILY[/KIND], ...', as --model-type); the answer is the new listing."""
        from .model_library import MAX_NAME, parse_overrides

        types = message.get("types")
        if types is not None:
            if not isinstance(types, str) or len(types) > 100 * (MAX_NAME + 20):
                raise ProtocolError("invalid_param", "types must be a string 'NAME=FAMILY[/KIND], ...'", field="types")
            try:
                self.server.models.library.overrides = parse_overrides(types)
            except ValueError as exc:
                raise ProtocolError("invalid_param", f"types: {exc}", field="types") from None
        self.server.models.rescan()
        welcome = self.server.welcome()
        self.send({"type": "library", "models": welcome["models"], "library": welcome["library"]})

    def on_shutdown(self, message, arrays):
        self.send({"type": "bye"})
        self.server.request_shutdown()


class Server:
    def __init__(self, models, output_dir, token: str, host="127.0.0.1", port=protocol.DEFAULT_PORT,
                 allow_remote=False, max_size=2048, hello_timeout=HELLO_TIMEOUT_S, upscalers=None):
        if not is_loopback(host) and not allow_remote:
            raise ValueError(f"refusing to listen on {host}: only loopback addresses are allowed "
                             "unless --allow-remote is given")
        if not is_loopback(host):
            log.warning("listening on %s: any machine that reaches it and knows the token can run jobs", host)
        self.models = models
        self.store = JobStore(output_dir)
        self.store.check_writable()  # OutputUnwritable: a backend that cannot save results does not start
        self.token = token
        self.hello_timeout = hello_timeout
        self.max_size = max_size
        self.limits = protocol.Limits(max_payload_bytes=min(protocol.DEFAULT_LIMITS.max_payload_bytes,
                                                            8 * 16 * max_size * max_size),
                                      max_array_dim=max(max_size, 64))
        self.jobs = {}
        self.queue = JobQueue()
        self.worker = Worker(self.queue, models, self.store)
        self.worker.upscalers = self.upscalers = upscalers or UpscalerManager(device=models.device)
        self.exporter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dream-export")  # one at a time
        self.connections = set()  # authenticated
        self.pending = set()  # accepted, not yet authenticated
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, port))
        self.listener.listen(16)
        self.host, self.port = self.listener.getsockname()[:2]

    def welcome(self) -> dict:
        return {"type": "welcome", "protocol": protocol.PROTOCOL_VERSION, "server_version": __version__,
                "device": self.models.device,
                "models": [{"name": n, "default": n == self.models.default, "family": self.models.family(n),
                            "size": self.models.native_size(n), **self.models.detected(n)} for n in self.models.served],
                "library": self.models.library.listing(),
                "upscalers": self.upscalers.describe(),
                "capabilities": {"job_kinds": sorted(protocol.JOB_KINDS), "schedulers": list(protocol.SCHEDULERS),
                                 "output_dtypes": list(protocol.OUTPUT_DTYPES), "max_size": self.max_size,
                                 "max_payload_bytes": self.limits.max_payload_bytes}}

    def health(self) -> dict:
        """Whether this backend can run and save jobs now; ``problems`` says why not."""
        problems = []
        worker_alive = self.worker.is_alive()
        if not worker_alive:
            problems.append("the job worker has stopped, so no job can run: restart the backend")
        try:
            self.store.check_writable()
        except OutputUnwritable as exc:
            problems.append(f"results cannot be saved: {exc}")
        return {"ok": not problems, "worker": "running" if worker_alive else "stopped",
                "output_dir": str(self.store.root), "output_writable": not any("saved" in p for p in problems),
                "problems": problems}

    # ------------------------------------------------------------------ lifecycle
    def serve_forever(self):
        self.worker.start()
        self.listener.settimeout(0.5)
        log.info("listening on %s:%s", self.host, self.port)
        while not self._stopped.is_set():
            try:
                sock, address = self.listener.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection = Connection(self, sock, address)
            with self._lock:
                oldest = min(self.pending, key=lambda c: c.opened) if len(self.pending) >= MAX_PENDING else None
                self.pending.discard(oldest)
                self.pending.add(connection)
            if oldest is not None:
                oldest.evict({"type": "error", "code": "busy", "message": f"more than {MAX_PENDING} connections "
                              "are waiting to authenticate; the oldest is dropped"})
            connection.start()
        self._teardown()

    def admit(self, connection):
        """An authenticated connection takes one of the MAX_CONNECTIONS slots, or gets ``busy``."""
        with self._lock:
            self.pending.discard(connection)
            if len(self.connections) >= MAX_CONNECTIONS:
                raise ProtocolError("busy", f"at most {MAX_CONNECTIONS} connections")
            self.connections.add(connection)

    def request_shutdown(self, reason=None):
        if reason:
            log.info("%s: stopping (the running job is cancelled and saved, resumable)", reason)
        self._stopped.set()

    def _teardown(self):
        self.listener.close()
        with self._lock:
            running = self.queue.running
            queued = [job for job, _ in self.queue.positions()]
            connections = list(self.connections | self.pending)
        for job in queued:  # saved as cancelled, so a restarted backend resumes them on request
            job.cancel_requested.set()
            if self.queue.remove(job):
                self.worker.cancel_unstarted(job)
        if running:
            running.cancel_requested.set()
        self.queue.close()
        self.worker.join(timeout=60)
        self.exporter.shutdown(wait=False, cancel_futures=True)
        for connection in connections:
            connection.evict()
        for connection in connections:
            connection.writer.join(timeout=5)
        log.info("backend stopped")

    def forget(self, connection):
        with self._lock:
            self.connections.discard(connection)
            self.pending.discard(connection)
            jobs = list(self.jobs.values())
        for job in jobs:
            job.unsubscribe(connection)

    # ------------------------------------------------------------------ jobs
    def _remember(self, job):
        self.jobs[job.job_id] = job
        if len(self.jobs) > MAX_JOBS_IN_MEMORY:  # older finished jobs stay reachable on disk
            for old_id, old in list(self.jobs.items()):
                if old.state in FINISHED:
                    del self.jobs[old_id]
                    break

    def submit(self, connection, job_id, kind, params, inputs, resume=False):
        with self._lock:
            job = self.jobs.get(job_id)
            meta = None if job else self.store.load_meta(job_id)
            state = job.state if job else (meta or {}).get("state")
            unfinished = state in (CANCELLED, FAILED) or (job is None and state == QUEUED)  # QUEUED on disk: lost
            if resume and unfinished and (job.params if job else meta["params"]) == params:
                job = meta = None  # run it again under the same id; a walk keeps its finished frames
            if job is None and meta is None:
                if not self.worker.is_alive():
                    raise ProtocolError("worker_stopped", "the job worker has stopped; restart the backend",
                                        job_id=job_id)
                if not self.queue.has_room():
                    raise ProtocolError("queue_full", f"the limit of {self.queue.max_queued} queued jobs is reached",
                                        job_id=job_id)
                job = Job(job_id, kind, params, inputs)
                try:  # on disk at once: after a crash, a fetch of this id says the job was lost
                    self.store.save_meta(job_id, {"job_id": job_id, "kind": kind, "state": QUEUED, "params": params})
                except OutputUnwritable as exc:  # nothing is kept: the same id can be submitted again
                    log.error("job %s refused: %s", job_id, exc)
                    raise exc.to_error(job_id) from None
                job.subscribe(connection)
                self._remember(job)
                connection.send({"type": "accepted", "job_id": job_id, "duplicate": False})
                position = self.queue.put(job)
                job.emit({"type": "queued", "position": position})
                return
        # The same job id again: never run it twice; replay its state to this connection.
        original = job.params if job else meta.get("params")
        if original != params:
            raise ProtocolError("job_id_conflict", f"job {job_id!r} exists with other parameters; use a new job_id",
                                field="job_id", job_id=job_id)
        connection.send({"type": "accepted", "job_id": job_id, "duplicate": True})
        self.fetch(connection, job_id, {k: params[k] for k in OUTPUT_FIELDS})

    def cancel(self, connection, job_id):
        with self._lock:
            job = self.jobs.get(job_id)
        if job is None:
            raise ProtocolError("not_found", f"no running or queued job {job_id!r}", field="job_id", job_id=job_id)
        job.subscribe(connection)
        if job.state in FINISHED:
            raise ProtocolError("not_cancellable", f"job {job_id!r} has already finished ({job.state})",
                                field="job_id", job_id=job_id)
        job.cancel_requested.set()
        if self.queue.remove(job):  # still queued: cancel at once; a running job stops at its next step
            self.worker.cancel_unstarted(job)

    def fetch(self, connection, job_id, output):
        """Send the finished result of ``job_id``, or its state and later events if it is still going."""
        with self._lock:
            job = self.jobs.get(job_id)
            if job is not None and job.state in (QUEUED, RUNNING):
                job.subscribe(connection, output)
                connection.send({"type": "status", "job": job.summary()})
                return
        if job is not None and job.state == FAILED:  # memory first: the disk may not have taken the state
            return connection.send({**job.error, "job_id": job_id})
        if job is not None and job.state == CANCELLED:
            return connection.send({"type": "cancelled", "job_id": job_id, "step": job.step})
        meta = self.store.load_meta(job_id)
        if meta is None:
            raise ProtocolError("not_found", f"no job {job_id!r} on this backend", field="job_id", job_id=job_id)
        if meta["state"] == DONE:
            try:
                image = self.store.load_image(job_id)
            except (OSError, ValueError):
                raise ProtocolError("job_lost", f"the result files of job {job_id!r} are gone from "
                                    f"{self.store.job_dir(job_id)}; submit it again", job_id=job_id) from None
            connection.send(*result_frame(self.store, meta, image, output))
        elif meta["state"] == FAILED:
            connection.send({**meta["error"], "job_id": job_id})
        elif meta["state"] == CANCELLED:
            connection.send({"type": "cancelled", "job_id": job_id, "step": meta.get("step", 0)})
        else:  # written by a backend that stopped mid-job
            connection.send({"type": "error", "job_id": job_id, "code": "job_lost",
                             "message": "the backend stopped before this job finished; submit it again"})

    def job_summaries(self):
        with self._lock:
            return [job.summary() for job in self.jobs.values()]

    def job_summary(self, job_id):
        with self._lock:
            job = self.jobs.get(job_id)
        if job is not None:
            return job.summary()
        meta = self.store.load_meta(job_id)
        if meta is None:
            raise ProtocolError("not_found", f"no job {job_id!r} on this backend", field="job_id", job_id=job_id)
        return {"job_id": job_id, "kind": meta.get("kind"), "state": meta["state"]}
