"""A fault-injecting HTTP proxy for reliability tests: between the client and a real server.

`ChaosProxy(upstream)` listens on 127.0.0.1 (a free port, `url`) and forwards every method,
path, query, header and body to `upstream` (an MLflow server, or the AIDP gateway: the
`Host` header is forwarded as the client sent it, so OCI signatures, which sign the host
the client used, still verify behind the proxy). Faults are applied to the requests whose
path ends with a suffix, thread-safely, and everything is recorded:

    status(code, times=, duration=, retry_after=,  answer `code` without forwarding
           body_contains=)                         (only to bodies holding those bytes)
    burst(code, duration)                          `status` for every request for a while
    reset_before(times=)                           close the connection, nothing forwarded
    reset_after(times=)                            forward (the server applies the write),
                                                   then close without answering
    hold(seconds, times=)                          forward, then answer `seconds` later
    page(times=, path=)                            answer 200 with an HTML login page, as
                                                   an SSO proxy in front of a server does
    down(duration) / up()                          stop listening (connection refused) and
                                                   drop open connections; `up()` re-listens
                                                   on the same port
    clear()                                        remove every fault (and bring it up)

`times=None` (and `duration=None`) mean "until `clear()`".
"""

from __future__ import annotations

import collections
import json
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Literal

import httpx

FaultKind = Literal["status", "reset_before", "reset_after", "hold", "page"]
LOGIN_PAGE = b"<!DOCTYPE html><html><body><form action='/sso/login'>Sign in</form></body></html>"

# Never forwarded: they describe this hop, not the request (httpx sets its own).
_HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "accept-encoding",
    }
)
_MLFLOW_CODES = {
    429: "REQUEST_LIMIT_EXCEEDED",
    500: "INTERNAL_ERROR",
    502: "TEMPORARILY_UNAVAILABLE",
    503: "TEMPORARILY_UNAVAILABLE",
    504: "TEMPORARILY_UNAVAILABLE",
}


@dataclass
class Fault:
    """One injected fault; active while `hits < times` and before `until` (monotonic)."""

    kind: FaultKind
    path_suffix: str | None
    times: int | None = None
    until: float | None = None
    status: int = 503
    retry_after: str | None = None
    seconds: float = 0.0
    body_contains: bytes | None = None  # only requests whose body holds these bytes
    hits: int = field(default=0, init=False)

    def active(self, now: float) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        return self.until is None or now < self.until

    def matches(self, path: str, now: float, body: bytes = b"") -> bool:
        suffix = self.path_suffix
        if self.body_contains is not None and self.body_contains not in body:
            return False
        return self.active(now) and (suffix is None or path.endswith(suffix))


@dataclass(frozen=True)
class Exchange:
    """One request as the proxy saw it and what it did with it.

    `action` is "forwarded", "status", "reset_before", "reset_after", "hold" or "down";
    `status` is the upstream's (or the injected) status, 0 when nothing was answered.
    """

    at: float
    method: str
    path: str
    body: bytes
    action: str
    status: int
    forwarded: bool


class ChaosProxy:
    """A threaded forwarding proxy with injectable faults (see the module docstring)."""

    def __init__(self, upstream: str, *, upstream_timeout: float = 60.0) -> None:
        self.upstream = upstream.rstrip("/")
        self.port = 0
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._log: list[Exchange] = []
        self._bodies: collections.Counter[tuple[str, bytes]] = collections.Counter()
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._client = httpx.Client(timeout=upstream_timeout, follow_redirects=False)
        self._up_timer: threading.Timer | None = None
        self._release = threading.Event()  # set to cut every `hold` short
        self._holding = 0

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def is_down(self) -> bool:
        return self._server is None

    def start(self) -> None:
        with self._lock:
            self._listen()

    def stop(self) -> None:
        """Stop for good (faults and recordings are kept for inspection)."""
        self._release.set()
        with self._lock:
            self._cancel_timer()
            self._close_listener()
        self._client.close()

    def __enter__(self) -> ChaosProxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _listen(self) -> None:
        """Called with the lock held."""
        if self._server is not None:
            return
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _make_handler(self))
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name=f"chaos-proxy-{self.port}",
            daemon=True,
        )
        self._thread.start()

    def _close_listener(self) -> None:
        """Called with the lock held: stop listening and drop every open connection."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        for conn in list(self._connections):
            _abort(conn)
        if thread is not None:
            thread.join(10)

    def _cancel_timer(self) -> None:
        if self._up_timer is not None:
            self._up_timer.cancel()
            self._up_timer = None

    # -- faults ----------------------------------------------------------------------------------

    def status(
        self,
        code: int,
        *,
        times: int | None = 1,
        duration: float | None = None,
        retry_after: float | str | None = None,
        path: str | None = "runs/log-batch",
        body_contains: bytes | None = None,
    ) -> Fault:
        """Answer `code` (MLflow-style JSON error, `Retry-After` if given) without forwarding
        (only to requests whose body holds `body_contains`, when given)."""
        after = None if retry_after is None else str(retry_after)
        fault = Fault("status", path, times, _deadline(duration), status=code, retry_after=after)
        fault.body_contains = body_contains
        return self._add(fault)

    def burst(
        self,
        code: int,
        duration: float | None,
        *,
        retry_after: float | str | None = None,
        path: str | None = "runs/log-batch",
    ) -> Fault:
        """Every matching request gets `code` for `duration` seconds (None: until `clear()`)."""
        return self.status(code, times=None, duration=duration, retry_after=retry_after, path=path)

    def reset_before(
        self, *, times: int | None = 1, duration: float | None = None, path: str | None = None
    ) -> Fault:
        """Read the request, then reset the connection: the upstream never sees it."""
        return self._add(Fault("reset_before", _default(path), times, _deadline(duration)))

    def reset_after(
        self, *, times: int | None = 1, duration: float | None = None, path: str | None = None
    ) -> Fault:
        """Forward the request (the upstream applies it), then reset without answering."""
        return self._add(Fault("reset_after", _default(path), times, _deadline(duration)))

    def hold(
        self,
        seconds: float,
        *,
        times: int | None = 1,
        duration: float | None = None,
        path: str | None = None,
    ) -> Fault:
        """Forward the request, then hold the answer `seconds` (cut short by `clear()`)."""
        fault = Fault("hold", _default(path), times, _deadline(duration), seconds=seconds)
        return self._add(fault)

    def page(
        self, *, times: int | None = 1, duration: float | None = None, path: str | None = None
    ) -> Fault:
        """Answer 200 with an HTML page (an SSO login page) without forwarding."""
        return self._add(Fault("page", path, times, _deadline(duration), status=200))

    def down(self, duration: float | None = None) -> None:
        """Go fully down: connections are refused and open ones dropped, for `duration`
        seconds (None: until `up()` or `clear()`)."""
        with self._lock:
            self._cancel_timer()
            self._close_listener()
            self._record(Exchange(time.monotonic(), "-", "-", b"", "down", 0, False))
            if duration is not None:
                self._up_timer = threading.Timer(duration, self.up)
                self._up_timer.daemon = True
                self._up_timer.start()

    def up(self) -> None:
        """Listen again, on the same port."""
        with self._lock:
            self._cancel_timer()
            self._listen()

    def clear(self) -> None:
        """Remove every fault, release held answers and come back up (recordings stay)."""
        with self._lock:
            self._faults.clear()
            self._cancel_timer()
            self._listen()
        self._release.set()

    def _add(self, fault: Fault) -> Fault:
        with self._lock:
            self._release.clear()
            self._faults.append(fault)
        return fault

    # -- inspection ------------------------------------------------------------------------------

    @property
    def exchanges(self) -> list[Exchange]:
        with self._lock:
            return list(self._log)

    def faulted(self, path: str | None = None) -> list[Exchange]:
        """Requests that met a fault (not plainly forwarded and answered)."""
        return [
            e
            for e in self.exchanges
            if e.action not in ("forwarded", "down") and (path is None or e.path.endswith(path))
        ]

    def forwarded(self, path: str | None = None) -> list[Exchange]:
        """Requests the upstream received (including those whose answer was then lost)."""
        return [
            e for e in self.exchanges if e.forwarded and (path is None or e.path.endswith(path))
        ]

    def body_counts(self, path: str) -> collections.Counter[bytes]:
        """How many times each distinct body was forwarded to paths ending with `path`."""
        with self._lock:
            return collections.Counter(
                {body: n for (p, body), n in self._bodies.items() if p.endswith(path)}
            )

    @property
    def holding(self) -> int:
        """Answers being held right now."""
        with self._lock:
            return self._holding

    def wait_for(self, predicate_count: int, path: str | None = None, timeout: float = 30) -> bool:
        """Wait until at least `predicate_count` requests met a fault; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.faulted(path)) >= predicate_count:
                return True
            time.sleep(0.01)
        return False

    # -- request handling ------------------------------------------------------------------------

    def _take_fault(self, path: str, body: bytes = b"") -> Fault | None:
        now = time.monotonic()
        with self._lock:
            for fault in self._faults:
                if fault.matches(path, now, body):
                    fault.hits += 1
                    return fault
        return None

    def _record(self, exchange: Exchange) -> None:
        """Called with or without the lock (the list append is atomic)."""
        self._log.append(exchange)

    def _note_forwarded(self, path: str, body: bytes) -> None:
        with self._lock:
            self._bodies[(path, body)] += 1

    def _forward(
        self, method: str, target: str, headers: list[tuple[str, str]], body: bytes
    ) -> httpx.Response | None:
        forwarded = [(k, v) for k, v in headers if k.lower() not in _HOP_HEADERS]
        try:
            return self._client.request(
                method,
                self.upstream + target,
                content=body if body or method in ("POST", "PUT", "PATCH") else None,
                headers=forwarded,
            )
        except httpx.HTTPError:
            return None

    def _track(self, conn: socket.socket, open_: bool) -> None:
        with self._lock:
            if open_:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _hold(self, seconds: float) -> None:
        with self._lock:
            self._holding += 1
        try:
            self._release.wait(seconds)
        finally:
            with self._lock:
                self._holding -= 1


def _default(path: str | None) -> str | None:
    return path if path is not None else "runs/log-batch"


def _deadline(duration: float | None) -> float | None:
    return None if duration is None else time.monotonic() + duration


def _abort(conn: socket.socket) -> None:
    """Reset a connection (RST, not an orderly FIN): what a crashed peer looks like."""
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _error_body(code: int) -> bytes:
    error_code = _MLFLOW_CODES.get(code, "INTERNAL_ERROR")
    return json.dumps({"error_code": error_code, "message": f"chaos proxy: HTTP {code}"}).encode()


def _make_handler(proxy: ChaosProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            proxy._track(self.connection, True)

        def finish(self) -> None:
            proxy._track(self.connection, False)
            try:
                super().finish()
            except OSError:
                pass

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self._serve()

        def do_POST(self) -> None:
            self._serve()

        def do_PUT(self) -> None:
            self._serve()

        def do_PATCH(self) -> None:
            self._serve()

        def do_DELETE(self) -> None:
            self._serve()

        def _serve(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            path = self.path.partition("?")[0]
            now = time.monotonic()
            fault = proxy._take_fault(path, body)
            kind = fault.kind if fault is not None else "forwarded"
            if fault is not None and fault.kind == "reset_before":
                proxy._record(Exchange(now, self.command, path, body, kind, 0, False))
                self._reset()
                return
            if fault is not None and fault.kind == "page":
                proxy._record(Exchange(now, self.command, path, body, kind, 200, False))
                self._answer(200, {"content-type": "text/html; charset=utf-8"}, LOGIN_PAGE)
                return
            if fault is not None and fault.kind == "status":
                proxy._record(Exchange(now, self.command, path, body, kind, fault.status, False))
                headers = {"content-type": "application/json"}
                if fault.retry_after is not None:
                    headers["retry-after"] = fault.retry_after
                self._answer(fault.status, headers, _error_body(fault.status))
                return
            response = proxy._forward(self.command, self.path, list(self.headers.items()), body)
            if response is None:  # the upstream itself is unreachable
                proxy._record(Exchange(now, self.command, path, body, kind, 502, False))
                self._answer(502, {"content-type": "application/json"}, _error_body(502))
                return
            proxy._note_forwarded(path, body)
            status = 0 if kind == "reset_after" else response.status_code
            proxy._record(Exchange(now, self.command, path, body, kind, status, True))
            if fault is not None and fault.kind == "reset_after":
                self._reset()
                return
            if fault is not None and fault.kind == "hold":
                proxy._hold(fault.seconds)
            headers = {
                k: v
                for k, v in response.headers.items()
                if k.lower() not in _HOP_HEADERS and k.lower() != "content-encoding"
            }
            self._answer(response.status_code, headers, response.content)

        def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
            try:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
            except OSError:  # the client went away (e.g. timed out on a held answer)
                self.close_connection = True

        def _reset(self) -> None:
            self.close_connection = True
            _abort(self.connection)

    return Handler
