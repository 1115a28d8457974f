"""A real MLflow tracking server on loopback: for trying aidp-metrics without an OCI account.

`aidp-metrics local-server` runs one until Ctrl-C; the quickstart and the test suite use
`LocalMLflowServer`. Needs the `mlflow` package in the same environment (`pip install
mlflow`). httpx is imported when a server starts, so that the CLI's import stays light.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO

from aidp_metrics._errors import ConfigurationError

from ._parser import EXIT_OK, Subparsers, add_command

STARTUP_TIMEOUT = 90.0
_LOG_TAIL_CHARS = 4000
DEFAULT_SERVER_DIR = "aidp-metrics-mlflow"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_accepts(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:`port`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class LocalMLflowServer:
    """`mlflow server` with a sqlite store in `directory`, one worker, on 127.0.0.1.

    Artifacts are proxied (`--artifacts-destination <directory>/artifacts`): runs get
    `mlflow-artifacts:/...` URIs, and uploads go through the server's REST API, as a
    remote server (and AIDP) takes them.

    One worker because several uvicorn workers cost ~40 ms per kept-alive request here.
    `stop()` then `start()` keeps the port and the database (tests use it as an outage).
    """

    def __init__(
        self, directory: Path, *, port: int | None = None, startup_timeout: float = STARTUP_TIMEOUT
    ) -> None:
        self.directory = Path(directory)
        self.port = port if port is not None else free_port()
        self.startup_timeout = startup_timeout
        self.log_path = self.directory / "mlflow-server.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def ui_url(self) -> str:
        return self.url

    def _command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{self.directory}/mlflow.db",
            "--artifacts-destination",
            str(self.directory / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            "1",
        ]

    def start(self) -> None:
        """Start the server and wait for ``/health``; a no-op when it is already running."""
        if self.running:
            return
        if importlib.util.find_spec("mlflow") is None:
            raise ConfigurationError(
                'a local MLflow server needs the mlflow package: pip install "aidp-metrics[local]"'
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        self._log = self.log_path.open("ab")
        self._log.write(f"\n==== starting on port {self.port} ====\n".encode())
        self._log.flush()
        self._process = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(self) -> None:
        import httpx

        deadline = time.monotonic() + self.startup_timeout
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self._process is None:
                    break
                code = self._process.poll()
                if code is not None:
                    raise RuntimeError(
                        f"mlflow server exited with {code}; log tail:\n{self.log_tail()}"
                    )
                try:
                    if client.get(f"{self.url}/health").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
        raise RuntimeError(
            f"mlflow server not healthy after {self.startup_timeout:.0f} s; "
            f"log tail:\n{self.log_tail()}"
        )

    def log_tail(self, chars: int = _LOG_TAIL_CHARS) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "<no log>"
        return text[-chars:]

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the whole process group (then kill it) and wait until the port is closed."""
        process, self._process = self._process, None
        if process is not None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                process.wait(timeout)
            # uvicorn runs in a child process of the same group: make sure it is gone too.
            _signal_group(process.pid, signal.SIGKILL)
            deadline = time.monotonic() + timeout
            while port_accepts(self.port) and time.monotonic() < deadline:
                time.sleep(0.05)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> LocalMLflowServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# -- the command ---------------------------------------------------------------------------


def register(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers,
        "local-server",
        _local_server,
        "run a local MLflow tracking server to try things without an OCI account",
        "Start a real MLflow tracking server (sqlite store, 127.0.0.1, one worker; needs\n"
        'mlflow: pip install "aidp-metrics[local]"), print the MLFLOW_TRACKING_URI to\n'
        "export, and run until Ctrl-C (SIGINT) or SIGTERM, then stop it cleanly.\n"
        "The store survives restarts when --dir is the same.",
    )
    parser.add_argument("--port", type=int, default=5000, help="TCP port (default 5000)")
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(DEFAULT_SERVER_DIR),
        metavar="PATH",
        help=f"store and log directory (default ./{DEFAULT_SERVER_DIR})",
    )


def _local_server(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise ConfigurationError(f"--port {args.port} is not a TCP port")
    if port_accepts(args.port):
        raise ConfigurationError(
            f"port {args.port} on 127.0.0.1 is already in use; pick another with --port"
        )
    directory = args.dir.expanduser().absolute()
    server = LocalMLflowServer(directory, port=args.port)
    print(f"starting MLflow tracking server (store in {directory}) ...", file=sys.stderr)
    _start(server)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"export MLFLOW_TRACKING_URI={server.url}")
        print(f"UI: {server.ui_url}")
        print(f"log: {server.log_path}", file=sys.stderr)
        print("Press Ctrl-C to stop.", file=sys.stderr)
        sys.stdout.flush()
        while not stop.wait(0.5):
            if not server.running:
                raise ConfigurationError(
                    f"the mlflow server exited unexpectedly; see {server.log_path}"
                )
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("MLflow tracking server stopped.", file=sys.stderr)
    return EXIT_OK


def _start(server: LocalMLflowServer) -> None:
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # Until it is up, SIGTERM interrupts like Ctrl-C, so that start() stops the child.
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        server.start()
    except RuntimeError as exc:
        # Its message carries the server log's tail; keep the one-line promise.
        raise ConfigurationError(
            f"mlflow server did not start ({str(exc).splitlines()[0]}); see {server.log_path}"
        ) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
