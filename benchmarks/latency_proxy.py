"""An HTTP proxy on 127.0.0.1 that adds a fixed delay each way, to stand in for a far server.

    python -m benchmarks.latency_proxy --target http://127.0.0.1:5000 [--delay 0.05] [--port N]

Per request: read it, sleep `delay`, forward it over a shared keep-alive `httpx.Client`,
sleep `delay`, answer. Clients keep their connections alive (HTTP/1.1) and are served
concurrently (one thread per connection), so a request costs `2 * delay` more than against
the server directly, like a round trip to a remote endpoint, while several requests in
flight overlap as they would over a real network.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

# Headers that describe one connection, never forwarded (RFC 9110 7.6.1), plus the ones the
# proxy sets itself.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "accept-encoding",
        "content-encoding",
    }
)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], target: str, delay: float) -> None:
        self.target = target.rstrip("/")
        self.delay = delay
        self.upstream = httpx.Client(
            timeout=httpx.Timeout(300.0),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
            headers={"accept-encoding": "identity"},
        )
        self.requests = 0
        self.failures = 0
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def cut_connections(self) -> None:
        """Close every accepted connection, idle kept-alive ones included."""
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def count(self, *, failed: bool) -> None:
        with self._lock:
            self.requests += 1
            if failed:
                self.failures += 1


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _forward(self) -> None:
        body = self._body()
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        server = self.server
        time.sleep(server.delay)
        try:
            reply = server.upstream.request(
                self.command, server.target + self.path, content=body, headers=headers
            )
            status, content = reply.status_code, reply.content
            reply_headers = [
                (k, v) for k, v in reply.headers.items() if k.lower() not in _HOP_BY_HOP
            ]
            failed = False
        except httpx.HTTPError as exc:
            status, content = 502, f"latency proxy: {exc!r}".encode()
            reply_headers = [("content-type", "text/plain")]
            failed = True
        server.count(failed=failed)
        time.sleep(server.delay)
        self.send_response(status)
        for key, value in reply_headers:
            self.send_header(key, value)
        self.send_header("content-length", str(len(content)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(content)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _forward


class LatencyProxy:
    """`with LatencyProxy(target, delay) as proxy: ... proxy.url ...` (threads, in process)."""

    def __init__(self, target: str, delay: float = 0.05, port: int = 0) -> None:
        self._server = _Server(("127.0.0.1", port), target, delay)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="latency-proxy", daemon=True
        )
        self._stopped = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def delay(self) -> float:
        return self._server.delay

    @property
    def requests(self) -> int:
        return self._server.requests

    @property
    def failures(self) -> int:
        return self._server.failures

    def start(self) -> LatencyProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection: from here on each request to the
        proxy is refused, as if the server were down. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._server.shutdown()
        self._server.server_close()
        self._server.cut_connections()
        self._server.upstream.close()
        self._thread.join(timeout=5)

    def __enter__(self) -> LatencyProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def latency_proxy(target: str, delay: float = 0.05) -> Iterator[LatencyProxy]:
    with LatencyProxy(target, delay) as proxy:
        yield proxy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--target", required=True, help="server base URL, e.g. http://127.0.0.1:5000"
    )
    parser.add_argument("--delay", type=float, default=0.05, help="seconds added each way")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    args = parser.parse_args(argv)
    proxy = LatencyProxy(args.target, args.delay, args.port).start()
    print(f"{proxy.url} -> {args.target} (+{args.delay * 1e3:.0f} ms each way)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        proxy.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
