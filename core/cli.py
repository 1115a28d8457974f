"""The `aidp-metrics` command: doctor, log, history, plot, local-server, sync, tensorboard.

Importing this module loads only argparse and the light part of the package; httpx, oci,
mlflow and matplotlib are imported by the commands that need them. Errors are printed as
one line on stderr with a non-zero exit status; `--debug` adds the traceback.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ._version import __version__
from .errors import AIDPError, ConfigurationError
from .oci_config import AUTH_MODES
from .redact import redact
from .tensorboard_cli import register as register_tensorboard

if TYPE_CHECKING:
    from .client import MetricsClient
    from .doctor import ConnectionOptions
    from .metric import Metric

PROG = "aidp-metrics"
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DEFAULT_SERVER_DIR = "aidp-metrics-mlflow"

Handler = Callable[[argparse.Namespace], int]


# -- parser --------------------------------------------------------------------------------


def _auth_mode(text: str) -> str:
    mode = text.strip().lower().replace("-", "_")
    if mode not in AUTH_MODES:
        raise argparse.ArgumentTypeError(
            f"unknown auth mode {text!r}; expected one of: {', '.join(AUTH_MODES)}"
        )
    return mode


def _add_global_options(parser: argparse.ArgumentParser, *, in_command: bool) -> None:
    """The global flags; accepted before and after the command name.

    In a command's parser they default to SUPPRESS so they do not overwrite a value given
    before the command.
    """

    def default(value: object) -> object:
        return argparse.SUPPRESS if in_command else value

    group = parser.add_argument_group("global options")
    group.add_argument(
        "--debug",
        action="store_true",
        default=default(False),
        help="show the traceback of an error",
    )
    group.add_argument(
        "--auth",
        type=_auth_mode,
        metavar="MODE",
        default=default(None),
        help=f"OCI auth mode for AIDP, overrides OCI_CLI_AUTH ({', '.join(AUTH_MODES)})",
    )
    group.add_argument(
        "--profile",
        default=default(None),
        help="OCI config profile, overrides OCI_CLI_PROFILE (default DEFAULT)",
    )
    group.add_argument(
        "--config-file",
        metavar="PATH",
        default=default(None),
        help="OCI config file, overrides OCI_CLI_CONFIG_FILE (default ~/.oci/config)",
    )
    group.add_argument(
        "--tracking-uri",
        metavar="URI",
        default=default(None),
        help="use this MLflow tracking server, whatever the environment says",
    )
    group.add_argument(
        "--endpoint",
        metavar="URL",
        default=default(None),
        help="AIDP service URL, overrides AIDP_ENDPOINT and the region "
        "(the workspace still comes from AIDP_INSTANCE_ID / AIDP_WORKSPACE_KEY)",
    )


def _command(
    subparsers: Any, name: str, handler: Handler, help_text: str, description: str
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name,
        help=help_text,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=handler)
    _add_global_options(parser, in_command=True)
    return parser


def _run_id_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-id", required=True, metavar="ID", help="the run's id")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Log, inspect and sync training metrics on Oracle AI Data Platform "
        "MLOps or any MLflow tracking server.",
        epilog="The endpoint comes from AIDP_INSTANCE_ID + AIDP_WORKSPACE_KEY (+ OCI_CLI_REGION "
        "or AIDP_ENDPOINT) for AIDP, else MLFLOW_TRACKING_URI. Run `aidp-metrics doctor` to "
        "check the configuration.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_global_options(parser, in_command=False)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    subparsers.required = True

    _command(
        subparsers,
        "doctor",
        _cmd_doctor,
        "check endpoint, credentials, reachability and clock skew",
        "Resolve the endpoint and credentials, send one signed read request and report what\n"
        "works and, for what does not, what to change. Prints no secret.\n"
        "Exit status 0 only when logging would work.",
    )

    log = _command(
        subparsers,
        "log",
        _cmd_log,
        "log one metric point (one POST runs/log-metric)",
        "Log one metric point to an existing run: exactly one runs/log-metric call\n"
        "(retried on 429/5xx/timeouts with the same opc-retry-token). Silent on success.",
    )
    _run_id_option(log)
    log.add_argument("--key", required=True, help="metric key, e.g. loss or val/acc")
    log.add_argument(
        "--value", required=True, type=float, help="a number (nan, inf and -inf allowed)"
    )
    log.add_argument("--step", type=int, default=0, help="the step (default 0)")
    log.add_argument(
        "--timestamp", type=int, metavar="MS", help="ms since the epoch (default: now)"
    )

    history = _command(
        subparsers,
        "history",
        _cmd_history,
        "print the points of a run's metrics",
        "Print every point of the run's metrics (all keys unless --key is given).\n"
        "Columns: key, step, value, timestamp (ms since the epoch).",
    )
    _run_id_option(history)
    history.add_argument(
        "--key", action="append", metavar="KEY", help="a metric key (repeatable; default: all)"
    )
    history.add_argument(
        "--format", choices=("table", "csv", "json"), default="table", help="default: table"
    )

    plot = _command(
        subparsers,
        "plot",
        _cmd_plot,
        "plot metric curves against step (PNG or terminal)",
        "Plot the curves of a run's metrics against step: into a PNG with -o (needs\n"
        'matplotlib: pip install "aidp-metrics[plot]"), else as a chart in the terminal.',
    )
    _run_id_option(plot)
    plot.add_argument(
        "--key", action="append", metavar="KEY", help="a metric key (repeatable; default: all)"
    )
    plot.add_argument("-o", "--output", metavar="FILE.png", type=Path, help="write a PNG")
    plot.add_argument(
        "--width", type=int, help="terminal chart width in characters (default: terminal's)"
    )
    plot.add_argument(
        "--height", type=int, default=16, help="terminal chart height in rows (default 16)"
    )

    server = _command(
        subparsers,
        "local-server",
        _cmd_local_server,
        "run a local MLflow tracking server to try things without an OCI account",
        "Start a real MLflow tracking server (sqlite store, 127.0.0.1, one worker; needs\n"
        'mlflow: pip install "aidp-metrics[local]"), print the MLFLOW_TRACKING_URI to\n'
        "export, and run until Ctrl-C (SIGINT) or SIGTERM, then stop it cleanly.\n"
        "The store survives restarts when --dir is the same.",
    )
    server.add_argument("--port", type=int, default=5000, help="TCP port (default 5000)")
    server.add_argument(
        "--dir",
        type=Path,
        default=Path(DEFAULT_SERVER_DIR),
        metavar="PATH",
        help=f"store and log directory (default ./{DEFAULT_SERVER_DIR})",
    )

    sync = _command(
        subparsers,
        "sync",
        _cmd_sync,
        "upload the on-disk spool of runs not yet delivered",
        "Deliver what the spool holds: creates runs that exist only locally and sends the\n"
        "points the server has not acknowledged. Resumable; safe to run again.\n"
        "Exit status non-zero when any run could not be fully delivered.",
    )
    sync.add_argument(
        "dir",
        nargs="?",
        type=Path,
        metavar="DIR",
        help="spool directory (default: AIDP_METRICS_DIR, else ./aidp-metrics)",
    )
    sync.add_argument(
        "--dry-run", action="store_true", help="list what would be sent; send nothing"
    )
    register_tensorboard(subparsers, _command, _cmd_tensorboard)
    return parser


# -- entry point ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        with _oci_environment(args):
            return handler(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `aidp-metrics history | head`: the reader went away; that is not an error.
        _silence_stdout()
        return EXIT_OK
    except Exception as exc:
        if args.debug:
            traceback.print_exc()
        print(f"{PROG} {args.command}: error: {_one_line(exc, args.debug)}", file=sys.stderr)
        return EXIT_ERROR


def _one_line(exc: BaseException, debug: bool) -> str:
    if isinstance(exc, AIDPError):
        text = str(exc)
    elif isinstance(exc, OSError) and exc.strerror:
        where = f" {exc.filename}" if exc.filename else ""
        text = f"{exc.strerror}{where}"
    else:
        text = f"{type(exc).__name__}: {exc}"
        if not debug:
            text += " (run with --debug for the traceback)"
    return redact(" ".join(text.split()))


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


@contextmanager
def _oci_environment(args: argparse.Namespace) -> Iterator[None]:
    """Let --auth/--profile/--config-file act like the OCI_CLI_* variables for this call.

    Everything that reads the profile (the region lookup of `Endpoint.from_env`, the
    signer) then sees the same choice. Restored afterwards, for callers of `main()`.
    """
    overrides = {
        "OCI_CLI_AUTH": getattr(args, "auth", None),
        "OCI_CLI_PROFILE": getattr(args, "profile", None),
        "OCI_CLI_CONFIG_FILE": getattr(args, "config_file", None),
    }
    saved = {name: os.environ.get(name) for name in overrides}
    try:
        for name, value in overrides.items():
            if value:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _options(args: argparse.Namespace) -> ConnectionOptions:
    from .doctor import ConnectionOptions

    return ConnectionOptions(
        auth=args.auth,
        profile=args.profile,
        config_file=args.config_file,
        tracking_uri=args.tracking_uri,
        endpoint=args.endpoint,
    )


def _client(args: argparse.Namespace) -> MetricsClient:
    from .doctor import build_client

    return build_client(_options(args))


def _symbols(stream: TextIO) -> dict[str, str]:
    encoding = getattr(stream, "encoding", None) or "ascii"
    try:
        "→│└─".encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return {"arrow": "->", "unicode": ""}
    return {"arrow": "→", "unicode": "yes"}


# -- doctor --------------------------------------------------------------------------------


def _cmd_doctor(args: argparse.Namespace) -> int:
    from . import doctor

    return doctor.run(_options(args), sys.stdout)


# -- log -----------------------------------------------------------------------------------


def _cmd_log(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.log_metric(
            args.run_id, args.key, args.value, step=args.step, timestamp=args.timestamp
        )
    return EXIT_OK


# -- history -------------------------------------------------------------------------------


def _histories(
    client: MetricsClient, run_id: str, keys: list[str] | None
) -> dict[str, list[Metric]]:
    """Every point of `keys`, or of all the run's metric keys, in the order asked for."""
    if not keys:
        run = client.get_run(run_id)
        metrics = run.get("data", {}).get("metrics", [])
        keys = sorted({str(m["key"]) for m in metrics})
    else:
        keys = list(dict.fromkeys(keys))
    return {key: client.get_metric_history(run_id, key) for key in keys}


def _value_text(value: float) -> str:
    from .metric import encode_value

    encoded = encode_value(value)
    return encoded if isinstance(encoded, str) else repr(encoded)


def _cmd_history(args: argparse.Namespace) -> int:
    with _client(args) as client:
        histories = _histories(client, args.run_id, args.key)
    points = [m for history in histories.values() for m in history]
    out = sys.stdout
    if args.format == "json":
        from .metric import encode_value

        rows = [
            {"key": m.key, "step": m.step, "value": encode_value(m.value), "timestamp": m.timestamp}
            for m in points
        ]
        json.dump(rows, out, indent=1)
        out.write("\n")
    elif args.format == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["key", "step", "value", "timestamp"])
        for m in points:
            writer.writerow([m.key, m.step, _value_text(m.value), m.timestamp])
    else:
        if not points:
            what = "the given keys" if args.key else "any metric"
            print(f"run {args.run_id} has no points for {what}", file=sys.stderr)
            return EXIT_OK
        _print_table(
            out,
            ["key", "step", "value", "timestamp", "time (UTC)"],
            [
                [m.key, str(m.step), _value_text(m.value), str(m.timestamp), _utc(m.timestamp)]
                for m in points
            ],
            right_aligned={1, 2, 3},
        )
    return EXIT_OK


def _utc(timestamp_ms: int) -> str:
    try:
        moment = datetime.fromtimestamp(timestamp_ms / 1000, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return "-"
    return moment.strftime("%Y-%m-%d %H:%M:%S.") + f"{timestamp_ms % 1000:03d}"


def _print_table(
    out: TextIO, header: list[str], rows: list[list[str]], *, right_aligned: set[int]
) -> None:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        parts = [
            cell.rjust(widths[i]) if i in right_aligned else cell.ljust(widths[i])
            for i, cell in enumerate(cells)
        ]
        return "  ".join(parts).rstrip()

    out.write(line(header) + "\n")
    for row in rows:
        out.write(line(row) + "\n")


# -- plot ----------------------------------------------------------------------------------


def _cmd_plot(args: argparse.Namespace) -> int:
    from . import cli_plot

    with _client(args) as client:
        histories = _histories(client, args.run_id, args.key)
    if not histories:
        raise ConfigurationError(f"run {args.run_id} has no metrics to plot")
    series = {key: [(m.step, m.value) for m in points] for key, points in histories.items()}
    if args.output is not None:
        cli_plot.write_png(series, args.output, title=f"run {args.run_id}")
        print(f"wrote {args.output}", file=sys.stderr)
        return EXIT_OK
    import shutil

    width = args.width or min(shutil.get_terminal_size((80, 24)).columns, 120) - 1
    unicode = bool(_symbols(sys.stdout)["unicode"])
    sys.stdout.write(
        cli_plot.render_chart(series, width=width, height=args.height, unicode=unicode)
    )
    return EXIT_OK


# -- local-server --------------------------------------------------------------------------


def _cmd_local_server(args: argparse.Namespace) -> int:
    import signal

    from .local_server import LocalMLflowServer, port_accepts

    if not 0 < args.port < 65536:
        raise ConfigurationError(f"--port {args.port} is not a TCP port")
    if port_accepts(args.port):
        raise ConfigurationError(
            f"port {args.port} on 127.0.0.1 is already in use; pick another with --port"
        )
    directory = args.dir.expanduser().absolute()
    server = LocalMLflowServer(directory, port=args.port)
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        received.append(signum)
        stop.set()

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    print(f"starting MLflow tracking server (store in {directory}) ...", file=sys.stderr)
    # Until it is up, SIGTERM interrupts like Ctrl-C, so that start() stops the child.
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, interrupt)}
    try:
        server.start()
    except RuntimeError as exc:
        # Its message carries the server log's tail; keep the one-line promise.
        raise ConfigurationError(
            f"mlflow server did not start ({str(exc).splitlines()[0]}); see {server.log_path}"
        ) from None
    finally:
        signal.signal(signal.SIGTERM, previous[signal.SIGTERM])
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


# -- tensorboard ---------------------------------------------------------------------------


def _cmd_tensorboard(args: argparse.Namespace) -> int:
    from .tensorboard_cli import command

    return command(args, _client)


# -- sync ----------------------------------------------------------------------------------


class _ProgressBar:
    """`[#####.....] 1200/5000 points  850/s  ETA 4s` on one rewritten stderr line."""

    def __init__(self, stream: TextIO, width: int = 30) -> None:
        self.stream = stream
        self.width = width
        self.started = time.monotonic()
        self.drawn = 0.0
        self.visible = False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - self.drawn < 0.1:
            return
        self.drawn = now
        fraction = done / total if total else 1.0
        filled = int(fraction * self.width)
        elapsed = max(now - self.started, 1e-6)
        rate = done / elapsed
        eta = f"ETA {_duration((total - done) / rate)}" if rate > 0 and done < total else ""
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r[{bar}] {done}/{total} points  {rate:,.0f}/s  {eta}".rstrip() + " ")
        self.stream.flush()
        self.visible = True

    def finish(self) -> None:
        if self.visible:
            self.stream.write("\n")
            self.stream.flush()
            self.visible = False


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _cmd_sync(args: argparse.Namespace) -> int:
    from .journal import spool_root
    from .sync import sync_directory

    root = spool_root(args.dir)
    arrow = _symbols(sys.stdout)["arrow"]
    if not root.exists():
        print(f"nothing to sync: {root} does not exist")
        return EXIT_OK
    client = None if args.dry_run else _client(args)
    progress = _ProgressBar(sys.stderr) if sys.stderr.isatty() and client is not None else None
    try:
        results = sync_directory(root, client, dry_run=args.dry_run, progress=progress)
    finally:
        if progress is not None:
            progress.finish()
        if client is not None:
            client.close()
    if not results:
        print(f"nothing to sync in {root}")
        return EXIT_OK
    failed = 0
    for result in results:
        target = f"run {result.run_id}" if result.run_id else "new run"
        if result.experiment:
            target += f" (experiment {result.experiment})"
        if args.dry_run:
            done = f"{result.points} point{'s' if result.points != 1 else ''} to send"
        else:
            done = f"{result.sent}/{result.points} points sent"
        if result.skipped:
            done += f", {len(result.skipped)} record(s) skipped"
        line = f"{result.local_id} {arrow} {target}: {done}"
        if result.error:
            failed += 1
            line += f"; error: {result.error}"
        print(redact(line))
        for reason in result.skipped[:5]:
            print(f"    skipped: {redact(reason)}")
        if len(result.skipped) > 5:
            print(f"    ... and {len(result.skipped) - 5} more")
    if failed:
        print(
            f"{PROG} sync: {failed} of {len(results)} run(s) not fully delivered; "
            "fix the error and run sync again (it resumes)",
            file=sys.stderr,
        )
        return EXIT_ERROR
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
