"""Launches and supervises the backend process. Standard library only; never touches bpy.

The add-on starts ``python -m generator_backend serve`` from the extension folder with
the user's chosen interpreter (the one with torch and diffusers), hands it a fresh token
through the environment, reads its ready line, keeps the tail of its log, and restarts it
if it dies on its own (a bounded number of times). Its stdin is a pipe from this process:
when Blender exits or crashes the pipe closes and the backend stops (``--exit-with-parent``).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import threading
from collections import deque
from pathlib import Path

from . import protocol

PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # holds generator_backend/ beside dream_addon/


class BackendProcess:
    STARTING, RUNNING, STOPPED, EXITED = "starting", "running", "stopped", "exited"

    def __init__(self, python, port, models=(protocol.DEFAULT_MODEL,), output_dir=None, device="auto",
                 extra_args=(), max_restarts=3, log_path=None, on_ready=None):
        self.python = python
        self.port = port
        self.models = list(models)
        self.output_dir = output_dir
        self.device = device
        self.extra_args = list(extra_args)
        self.max_restarts = max_restarts
        self.log_path = Path(log_path) if log_path else None
        self.on_ready = on_ready  # called from the reader thread with the ready info
        self.token = secrets.token_urlsafe(32)
        self.tail = deque(maxlen=40)
        self.state = self.STOPPED
        self.ready_info = None
        self.returncode = None
        self.restarts = 0
        self._ready = threading.Event()
        self._wanted = False
        self._process = None
        self._lock = threading.Lock()

    def command(self):
        cmd = [self.python, "-u", "-m", "generator_backend", "serve", "--port", str(self.port),
               "--device", self.device, "--exit-with-parent"]  # stdin is our pipe: it closes when we die
        for model in self.models:
            cmd += ["--model", model]
        if self.output_dir:
            cmd += ["--output-dir", str(self.output_dir)]
        return cmd + self.extra_args

    def start(self):
        with self._lock:
            if self._process is not None and self._process.poll() is None:
                return
            self._wanted = True
            self._spawn()

    def _spawn(self):
        env = dict(os.environ, PYTHONUNBUFFERED="1", **{protocol.TOKEN_ENV: self.token})
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), env.get("PYTHONPATH")]))
        self._ready.clear()
        self.ready_info = None
        self.state = self.STARTING
        self.tail.append(f"$ {' '.join(self.command())}")
        try:
            self._process = subprocess.Popen(
                self.command(), cwd=str(PACKAGE_ROOT), env=env, stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        except OSError as exc:
            self.state = self.EXITED
            self.tail.append(f"could not start {self.python!r}: {exc}")
            self._wanted = False
            return
        threading.Thread(target=self._read_output, args=(self._process,), name="dream-backend-log",
                         daemon=True).start()

    def _read_output(self, process):
        log = open(self.log_path, "a", encoding="utf-8") if self.log_path else None
        try:
            for line in process.stdout:
                line = line.rstrip("\n")
                if line.startswith(protocol.READY_PREFIX):
                    self.ready_info = json.loads(line[len(protocol.READY_PREFIX):])
                    self.state = self.RUNNING
                    self._ready.set()
                    if self.on_ready is not None:
                        self.on_ready(self.ready_info)
                    continue
                self.tail.append(line)
                if log:
                    log.write(line + "\n")
                    log.flush()
        finally:
            if log:
                log.close()
        self.returncode = process.wait()
        if process.stdin:
            process.stdin.close()
        self._ready.set()  # wake anyone waiting: it will not become ready
        with self._lock:
            if process is not self._process:
                return
            if self._wanted and self.restarts < self.max_restarts and self.ready_info is not None:
                self.restarts += 1  # died on its own after it had been up: supervise with restart
                self.tail.append(f"backend exited with code {self.returncode}; restarting "
                                 f"({self.restarts}/{self.max_restarts})")
                self._spawn()
            else:
                self.state = self.STOPPED if not self._wanted else self.EXITED
                self._wanted = False

    def wait_ready(self, timeout=120.0) -> bool:
        """Block until the ready line or exit (scripts and tests; the UI polls ``state``)."""
        self._ready.wait(timeout)
        return self.state == self.RUNNING

    def stop(self, timeout=10.0):
        with self._lock:
            self._wanted = False
            process = self._process
        if process is None or process.poll() is not None:
            self.state = self.STOPPED
            return
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self.state = self.STOPPED

    def kill(self):
        """Hard kill without restart (tests of a backend dying mid-job use the OS instead)."""
        with self._lock:
            self._wanted = False
        if self._process is not None:
            self._process.kill()
            self._process.wait()

    @property
    def pid(self):
        return self._process.pid if self._process else None

    def describe(self) -> str:
        if self.state == self.RUNNING and self.ready_info:
            return f"running on {self.ready_info['host']}:{self.ready_info['port']} ({self.ready_info['device']})"
        if self.state == self.EXITED:
            return f"exited with code {self.returncode}"
        return self.state
