"""A local stand-in for the Oracle AIDP MLOps endpoint in front of a real MLflow server.

It checks OCI request signatures for real, records every request, can inject faults, and
forwards the rest to MLflow's REST API (``api/2.0/mlflow/...``) and its artifact proxy
(``api/2.0/mlflow-artifacts/...``: uploads and downloads), translating error bodies to
AIDP's ``{code, message}``. Like a real gateway it is strict about framing: a chunked body
gets 411, and a request with both ``Content-Length`` and ``Transfer-Encoding`` (which HTTP
forbids) gets 400. Large bodies stream: an upload is spooled to a temporary file while its
SHA-256 is computed (the signature is verified before anything is forwarded), a download is
relayed as it arrives.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import json
import re
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import IO
from urllib.parse import unquote

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

MAX_CLOCK_SKEW = 300.0
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_KEPT_BODY = 8 << 20  # bodies up to this size are kept in memory (and recorded)
_CHUNK = 1 << 20
_GENERIC_SIGNED = ("(request-target)", "host")
_BODY_SIGNED = ("content-length", "content-type", "x-content-sha256")
_AUTH_PARAM = re.compile(r'(\w+)="([^"]*)"')
_APIS = (("api", "2.0", "mlflow"), ("api", "2.0", "mlflow-artifacts"))  # what is forwarded
_KNOWN_SCHEMES = frozenset({"Basic", "Bearer", "Digest", "Negotiate", "AWS4-HMAC-SHA256"})
_DEFAULT_CODES = {
    400: "InvalidParameter",
    401: "NotAuthenticated",
    404: "NotAuthorizedOrNotFound",
    409: "IncorrectState",
    429: "TooManyRequests",
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the gateway saw it; ``status`` is 0 when the connection was dropped."""

    method: str
    path: str  # as sent, without the query string
    query: str
    headers: dict[str, str]  # lower-case names
    body: bytes  # b"" for a body over 8 MiB (a large artifact upload): see `size`
    status: int
    opc_request_id: str  # as sent, or the one the gateway generated
    injected: bool = False
    size: int = 0  # the body's length

    @property
    def retry_token(self) -> str | None:
        return self.headers.get("opc-retry-token")

    def json(self) -> object:
        return json.loads(self.body)


@dataclass
class Fault:
    """An injected failure for the next ``times`` requests whose path ends with ``path_suffix``."""

    path_suffix: str | None
    status: int = 503
    times: int = 1
    retry_after: str | None = None
    code: str | None = None
    delay: float = 0.0
    drop: bool = False
    forward_first: bool = False
    hits: int = field(default=0, init=False)

    def matches(self, path: str) -> bool:
        suffix = self.path_suffix
        return self.hits < self.times and (suffix is None or path.endswith(suffix))


class _AuthError(Exception):
    pass


@dataclass
class _Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    drop: bool = False
    injected: bool = False
    stream: httpx.Response | None = None  # relayed as it arrives (an artifact download)


class _Body:
    """A request body read off the socket: in memory when small, else in a temporary file;
    its SHA-256 computed on the way."""

    def __init__(self, source: IO[bytes], length: int) -> None:
        self.data = b""
        self._file: IO[bytes] | None = None
        digest = hashlib.sha256()
        if length <= _KEPT_BODY:
            self.data = source.read(length)
            digest.update(self.data)
            self.received = len(self.data)
        else:
            self._file = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
            self.received = 0
            while self.received < length:
                chunk = source.read(min(_CHUNK, length - self.received))
                if not chunk:
                    break
                digest.update(chunk)
                self._file.write(chunk)
                self.received += len(chunk)
        self.sha256 = base64.b64encode(digest.digest()).decode()

    def content(self) -> bytes | Iterator[bytes]:
        if self._file is None:
            return self.data
        return self._chunks(self._file)

    @staticmethod
    def _chunks(file: IO[bytes]) -> Iterator[bytes]:
        file.seek(0)
        while chunk := file.read(_CHUNK):
            yield chunk

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _error(status: int, message: str, code: str | None = None) -> _Reply:
    payload = {"code": code or _DEFAULT_CODES.get(status, "UnknownError"), "message": message}
    return _Reply(status, json.dumps(payload).encode())


class AIDPGateway:
    """``/{api_version}/aiDataPlatforms/{id}/workspaces/{key}/mlops/api/2.0/mlflow/...``."""

    def __init__(
        self,
        upstream: str,
        *,
        instance_id: str = "ocid1.aidataplatform.oc1.test.aaaa",
        workspace_key: str = "ws-test",
        api_version: str = "20260430",
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.instance_id = instance_id
        self.workspace_key = workspace_key
        self.api_version = api_version
        self.port = 0
        self._keys: dict[str, rsa.RSAPublicKey] = {}
        self._faults: list[Fault] = []
        self._requests: list[RecordedRequest] = []
        self._auth_failures: list[str] = []
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._client: httpx.Client | None = None

    # --- configuration and inspection -------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mlflow_url(self) -> str:
        """Base URL of the MLflow API behind the AIDP prefix (no trailing slash)."""
        return f"{self.tracking_uri}/api/2.0/mlflow"

    @property
    def tracking_uri(self) -> str:
        """The workspace's MLOps root, as `MLFLOW_TRACKING_URI` names an AIDP workspace."""
        return (
            f"{self.url}/{self.api_version}/aiDataPlatforms/{self.instance_id}"
            f"/workspaces/{self.workspace_key}/mlops"
        )

    def register_key(self, key_id: str, public_key_pem: bytes) -> None:
        key = serialization.load_pem_public_key(public_key_pem)
        if not isinstance(key, rsa.RSAPublicKey):
            raise TypeError("only RSA keys are supported")
        with self._lock:
            self._keys[key_id] = key

    def inject(
        self,
        path_suffix: str | None = None,
        *,
        status: int = 503,
        times: int = 1,
        retry_after: str | None = None,
        code: str | None = None,
        delay: float = 0.0,
        drop: bool = False,
        forward_first: bool = False,
    ) -> Fault:
        """Fail the next ``times`` authenticated requests whose path ends with ``path_suffix``.

        The answer is ``status`` with ``{"code", "message"}`` (and ``Retry-After``) after
        ``delay`` seconds; ``drop`` closes the connection without an answer instead.
        ``forward_first`` forwards the request to MLflow before failing: the write is applied
        but the client never learns it.
        """
        fault = Fault(path_suffix, status, times, retry_after, code, delay, drop, forward_first)
        with self._lock:
            self._faults.append(fault)
        return fault

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def auth_failures(self) -> list[str]:
        with self._lock:
            return list(self._auth_failures)

    def requests_to(self, path_suffix: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith(path_suffix)]

    def clear(self) -> None:
        """Forget recorded requests, auth failures and pending faults (keys stay registered)."""
        with self._lock:
            self._requests.clear()
            self._auth_failures.clear()
            self._faults.clear()

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Serve in a background thread; after ``stop()`` it restarts on the same port."""
        if self._server is not None:
            return
        self._client = httpx.Client(timeout=httpx.Timeout(60.0, connect=5.0))
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), _make_handler(self))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"aidp-gateway-{self.port}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        server, thread, client = self._server, self._thread, self._client
        self._server = self._thread = self._client = None
        if server is None:
            return
        server.shutdown()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:  # kept-alive connections would otherwise outlive the server
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        server.server_close()
        if thread is not None:
            thread.join(10)
        if client is not None:
            client.close()

    def __enter__(self) -> AIDPGateway:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- request handling --------------------------------------------------------------------

    def _route(self, path: str) -> str | None:
        """The raw MLflow path (``api/2.0/mlflow/runs/log-metric``, ``api/2.0/mlflow-artifacts
        /artifacts/...``) or None when the prefix is wrong."""
        parts = path.split("/")
        expected = [
            "",
            self.api_version,
            "aiDataPlatforms",
            self.instance_id,
            "workspaces",
            self.workspace_key,
            "mlops",
        ]
        n = len(expected)
        if [unquote(p) for p in parts[:n]] != expected:
            return None
        rest = parts[n:]
        if not any(tuple(rest[: len(api)]) == api and len(rest) > len(api) for api in _APIS):
            return None
        return "/".join(rest)

    def _verify_signature(
        self, method: str, target: str, headers: dict[str, str], body: _Body
    ) -> None:
        auth = headers.get("authorization")
        if auth is None:
            raise _AuthError("missing Authorization header")
        scheme, _, rest = auth.partition(" ")
        if scheme != "Signature":
            # Named only when it is a scheme name: a bare token would be echoed otherwise.
            named = f" {scheme!r}" if scheme in _KNOWN_SCHEMES else ""
            raise _AuthError(f"unsupported authorization scheme{named}")
        params = dict(_AUTH_PARAM.findall(rest))
        missing = {"version", "keyId", "algorithm", "headers", "signature"} - params.keys()
        if missing:
            raise _AuthError(f"Authorization lacks {sorted(missing)}")
        if params["version"] != "1":
            raise _AuthError(f"unsupported signature version {params['version']!r}")
        if params["algorithm"] != "rsa-sha256":
            raise _AuthError(f"unsupported algorithm {params['algorithm']!r}")
        signed = params["headers"].lower().split()
        required = list(_GENERIC_SIGNED) + (list(_BODY_SIGNED) if method in _BODY_METHODS else [])
        if "date" not in signed and "x-date" not in signed:
            required.insert(0, "date")
        unsigned = [name for name in required if name not in signed]
        if unsigned:
            raise _AuthError(f"required headers not signed: {' '.join(unsigned)}")

        lines = []
        for name in signed:
            if name == "(request-target)":
                lines.append(f"(request-target): {method.lower()} {target}")
            elif name in headers:
                lines.append(f"{name}: {headers[name]}")
            else:
                raise _AuthError(f"signed header {name!r} is missing from the request")
        with self._lock:
            key = self._keys.get(params["keyId"])
        if key is None:
            # Never echoed: a session token's keyId is `ST$<token>`.
            raise _AuthError("unknown keyId")
        try:
            signature = base64.b64decode(params["signature"], validate=True)
            key.verify(signature, "\n".join(lines).encode(), padding.PKCS1v15(), hashes.SHA256())
        except (InvalidSignature, ValueError) as exc:
            raise _AuthError("signature does not verify") from exc

        if "x-content-sha256" in signed and headers["x-content-sha256"] != body.sha256:
            raise _AuthError("x-content-sha256 does not match the body")
        if "content-length" in signed and headers["content-length"] != str(body.received):
            raise _AuthError("content-length does not match the body")
        date_header = "x-date" if "x-date" in signed else "date"
        try:
            sent = email.utils.parsedate_to_datetime(headers[date_header]).timestamp()
        except (TypeError, ValueError) as exc:
            raise _AuthError(f"unparseable {date_header} header") from exc
        if abs(time.time() - sent) > MAX_CLOCK_SKEW:
            raise _AuthError(f"{date_header} is more than 5 minutes off the gateway clock")

    def _take_fault(self, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(path):
                    fault.hits += 1
                    return fault
        return None

    def _forward(
        self, method: str, rest: str, query: str, headers: dict[str, str], body: _Body
    ) -> _Reply:
        assert self._client is not None
        url = f"{self.upstream}/{rest}" + (f"?{query}" if query else "")
        forwarded = {}
        for name in ("content-type", "content-length"):
            if name in headers and method in _BODY_METHODS:
                forwarded[name] = headers[name]
        content = body.content() if method in _BODY_METHODS else None
        try:
            request = self._client.build_request(method, url, content=content, headers=forwarded)
            response = self._client.send(request, stream=True)
        except httpx.TransportError as exc:
            return _error(503, f"upstream unavailable: {exc!r}")
        download = rest.startswith("api/2.0/mlflow-artifacts/") and method == "GET"
        if response.status_code == 200 and download:
            return _Reply(200, b"", stream=response)  # a download: relayed as it comes
        try:
            response.read()
        finally:
            response.close()
        reply = _Reply(response.status_code, response.content)
        if "content-type" in response.headers:
            reply.content_type = response.headers["content-type"]
        if response.status_code == 200:
            reply.headers["etag"] = f'"{hashlib.sha256(response.content).hexdigest()[:32]}"'
            return reply
        try:
            payload = response.json()
        except ValueError:
            return reply
        if isinstance(payload, dict) and "error_code" in payload:
            code, message = str(payload["error_code"]), str(payload.get("message", ""))
            return _error(response.status_code, message, code)
        return reply

    def _handle(self, method: str, target: str, headers: dict[str, str], body: _Body) -> _Reply:
        path, _, query = target.partition("?")
        rest = self._route(path)
        if rest is None:
            return _error(404, f"no such resource: {unquote(path)}")
        try:
            self._verify_signature(method, target, headers, body)
        except _AuthError as exc:
            with self._lock:
                self._auth_failures.append(str(exc))
            return _error(401, str(exc))
        if method in _BODY_METHODS and not headers.get("opc-retry-token"):
            return _error(400, "opc-retry-token header is required on writes", "MissingParameter")
        fault = self._take_fault(unquote(path))
        if fault is None:
            return self._forward(method, rest, query, headers, body)
        if fault.forward_first:
            self._forward(method, rest, query, headers, body)
        if fault.delay:
            time.sleep(fault.delay)
        reply = _error(fault.status, f"injected fault for {unquote(path)}", fault.code)
        reply.injected, reply.drop = True, fault.drop
        if fault.retry_after is not None:
            reply.headers["retry-after"] = fault.retry_after
        return reply

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _track(self, conn: socket.socket, open_: bool) -> None:
        with self._lock:
            if open_:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)


def _make_handler(gateway: AIDPGateway) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            gateway._track(self.connection, True)

        def finish(self) -> None:
            gateway._track(self.connection, False)
            super().finish()

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self._serve()

        def do_POST(self) -> None:
            self._serve()

        def do_PUT(self) -> None:
            self._serve()

        def do_DELETE(self) -> None:
            self._serve()

        def _serve(self) -> None:
            headers = {name.lower(): value for name, value in self.headers.items()}
            request_id = headers.get("opc-request-id") or uuid.uuid4().hex.upper()
            if "transfer-encoding" in headers and "content-length" in headers:
                # RFC 9112 6.3: the body's framing is ambiguous (request smuggling); reject.
                self.close_connection = True
                self._send(
                    _error(400, "both Content-Length and Transfer-Encoding", "InvalidParameter"),
                    request_id,
                )
                return
            if "chunked" in headers.get("transfer-encoding", "").lower():
                self.close_connection = True
                self._send(_error(411, "send a content-length", "LengthRequired"), request_id)
                return
            body = _Body(self.rfile, int(headers.get("content-length") or 0))
            try:
                reply = gateway._handle(self.command, self.path, headers, body)
            finally:
                body.close()
            path, _, query = self.path.partition("?")
            status = 0 if reply.drop else reply.status
            gateway._record(
                RecordedRequest(
                    self.command,
                    path,
                    query,
                    headers,
                    body.data,
                    status,
                    request_id,
                    reply.injected,
                    body.received,
                )
            )
            if reply.drop:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self._send(reply, request_id)

        def _send(self, reply: _Reply, request_id: str) -> None:
            if reply.stream is not None:
                self._relay(reply.stream, request_id)
                return
            self.send_response(reply.status)
            self.send_header("content-type", reply.content_type)
            self.send_header("content-length", str(len(reply.body)))
            self.send_header("opc-request-id", request_id)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(reply.body)

        def _relay(self, response: httpx.Response, request_id: str) -> None:
            try:
                self.send_response(response.status_code)
                for name in ("content-type", "content-length", "content-encoding"):
                    if name in response.headers:
                        self.send_header(name, response.headers[name])
                if "content-length" not in response.headers:
                    self.send_header("connection", "close")
                    self.close_connection = True
                self.send_header("opc-request-id", request_id)
                self.end_headers()
                for chunk in response.iter_raw(_CHUNK):
                    self.wfile.write(chunk)
            finally:
                response.close()

    return Handler
