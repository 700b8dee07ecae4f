"""Client side of the Dream protocol. Standard library and numpy only; never touches bpy.

``BackendConnection`` is a plain blocking connection (tests, benchmarks, scripts).
``ClientWorker`` is what Blender uses: one thread owns the socket, takes commands from
a queue and puts every event on another queue that the main thread drains.
"""

from __future__ import annotations

import queue
import selectors
import socket
import threading

from . import protocol
from .protocol import ProtocolError

CLIENT_NAME = "dream-blender"


class BackendError(Exception):
    """A failure a user should read: ``code`` is machine-readable, ``str()`` is the sentence."""

    def __init__(self, code, message, **details):
        super().__init__(message)
        self.code = code
        self.details = details


# What a user reads for each error code; {text} is the backend's message, {address} host:port.
ERROR_SENTENCES = {
    "not_running": "Backend not running at {address}. Start it in Preferences > Add-ons > Dream, "
                   "or check the address and port.",
    "auth_failed": "The backend refused the token. Use Start in the preferences, or paste the backend's token there.",
    "version_mismatch": "Protocol version mismatch: {text}. Install the add-on and backend from the same release.",
    "backend_stopped": "The backend was stopped; generate again once it runs.",
    "connection_lost": "Lost the connection to the backend while generating ({text}). It is fetched again by "
                       "its id when the backend is back (Start or Reconnect).",
    "job_lost": "The backend stopped before this job finished (it crashed or was killed). Generate again.",
    "invalid_param": "Invalid setting: {text}.",
    "model_load_failed": "Model could not be loaded: {text}",
}


def describe_error(message: dict, address: str = "") -> str:
    """One clear sentence for an error event, for the panel and the status bar."""
    code, text = message.get("code", ""), message.get("message", "")
    if code in ERROR_SENTENCES:
        return ERROR_SENTENCES[code].format(text=text, address=address)
    return f"Backend error ({code}): {text}" if code else text


class BackendConnection:
    """One authenticated, blocking connection to a backend."""

    def __init__(self, host, port, token, client=CLIENT_NAME, timeout=10.0, limits=protocol.DEFAULT_LIMITS):
        self.address = f"{host}:{port}"
        self.limits = limits
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise BackendError("not_running", describe_error({"code": "not_running"}, self.address),
                               reason=str(exc)) from None
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self.send({"type": "hello", "protocol": protocol.PROTOCOL_VERSION, "token": token, "client": client})
            message, _ = self.recv()
        except (OSError, protocol.ConnectionClosed, ProtocolError) as exc:
            self.close()
            if isinstance(exc, ProtocolError):
                code, text = exc.code, exc.message
            else:
                code, text = "handshake_failed", f"{self.address} accepted the connection but did not answer " \
                                                 f"as a Dream backend ({type(exc).__name__}: {exc})"
            raise BackendError(code, describe_error({"code": code, "message": text}, self.address)) from None
        if message["type"] != "welcome":
            self.close()
            raise BackendError(message.get("code", "handshake_failed"), describe_error(message, self.address))
        self.sock.settimeout(None)
        self.welcome = message

    def send(self, message, arrays=None):
        protocol.send_frame(self.sock, message, arrays)

    def recv(self):
        return protocol.recv_frame(self.sock, self.limits)

    def fileno(self):
        return self.sock.fileno()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def run_job(self, job_id, params, kind="txt2img", on_event=None, arrays=None):
        """Submit and wait for the terminal event; return (message, arrays) of the result."""
        self.send({"type": "submit", "job_id": job_id, "kind": kind, "params": params}, arrays)
        while True:
            message, arrays = self.recv()
            if message.get("job_id") not in (job_id, None):
                continue
            if on_event is not None:
                on_event(message, arrays)
            if message["type"] in protocol.TERMINAL_EVENTS:
                return message, arrays


class ClientWorker:
    """Owns one connection on its own thread; the main thread talks to it through queues.

    Events put on ``events`` are ``(message, arrays)``; besides the server's messages the
    worker adds ``connected`` (with the welcome), ``connection_error`` and ``disconnected``.
    """

    def __init__(self, host, port, token, client=CLIENT_NAME):
        self.host, self.port, self.token, self.client = host, port, token, client
        self.address = f"{host}:{port}"
        self.events = queue.Queue()
        self._commands = queue.Queue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._stop = threading.Event()
        self.connected = False
        self.thread = threading.Thread(target=self._run, name="dream-client", daemon=True)

    def start(self):
        self.thread.start()
        return self

    def send(self, message, arrays=None):
        """Queue a message for the backend; safe from any thread, never blocks."""
        self._commands.put((message, arrays))
        self._wake()

    def stop(self):
        self._stop.set()
        self._wake()

    def _wake(self):
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _run(self):
        try:
            connection = BackendConnection(self.host, self.port, self.token, self.client)
        except BackendError as exc:
            self.events.put(({"type": "connection_error", "code": exc.code, "message": str(exc)}, {}))
            return
        self.connected = True
        self.events.put(({"type": "connected", "welcome": connection.welcome}, {}))
        reason = None
        with selectors.DefaultSelector() as selector:
            selector.register(connection.sock, selectors.EVENT_READ, "socket")
            selector.register(self._wake_r, selectors.EVENT_READ, "wake")
            try:
                while not self._stop.is_set():
                    for key, _ in selector.select():
                        if key.data == "wake":
                            self._wake_r.recv(4096)
                            while not self._commands.empty():
                                connection.send(*self._commands.get_nowait())
                        else:
                            self.events.put(connection.recv())
            except protocol.ConnectionClosed:
                reason = "the backend closed the connection"
            except (OSError, ProtocolError) as exc:
                reason = str(exc)
        connection.close()
        self.connected = False
        if not self._stop.is_set():
            self.events.put(({"type": "disconnected", "message": reason or "connection lost"}, {}))
