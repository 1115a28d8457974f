"""The `aidp-metrics tensorboard LOGDIR [--experiment-name NAME] [--follow]` command.

`register()` adds it to the command line's parser (argparse only: importing this module
costs nothing); the handler imports event files through `tensorboard_import.Importer`, with
a progress bar (tqdm) on a terminal, and with `--follow` keeps reading until Ctrl-C
(SIGINT) or SIGTERM, then ends the runs.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from aidp_metrics._bridges.tensorboard import INSTALL_HINT
from aidp_metrics._env import EXPERIMENT_VARIABLES, first_env
from aidp_metrics._errors import ConfigurationError

from ._connection import client_for
from ._parser import EXIT_INTERRUPTED, EXIT_OK, Subparsers, add_command

if TYPE_CHECKING:
    from aidp_metrics._connection.client import TrackingClient
    from aidp_metrics.cli._tensorboard_import import Importer, Progress

NAME = "tensorboard"
HELP = "import TensorBoard event files as runs (--follow: and keep tailing them)"
DESCRIPTION = (
    "Import the scalars of TensorBoard event files (torch SummaryWriter, tensorboardX,\n"
    "Keras's TensorBoard callback, TF summaries, clu, ...): one run per directory that\n"
    "holds event files, named after its path relative to LOGDIR (LOGDIR's own name for\n"
    "files directly in it); every scalar at its event's step, stamped with its wall time.\n"
    "Running it again imports only what is new (each run records how far each file was\n"
    "read). With --follow it keeps reading new events, files and directories until Ctrl-C,\n"
    "then ends the runs. Images, histograms, text and other non-scalars are skipped.\n"
    'Needs: pip install "aidp-metrics[tensorboard]".'
)


def register(subparsers: Subparsers) -> None:
    parser = add_command(subparsers, NAME, _handle, HELP, DESCRIPTION)
    parser.add_argument("logdir", type=Path, metavar="LOGDIR", help="the TensorBoard log directory")
    parser.add_argument(
        "--experiment-name",
        metavar="NAME",
        help="experiment of the runs (default: AIDP_EXPERIMENT_NAME or MLFLOW_EXPERIMENT_NAME, "
        "else Default)",
    )
    parser.add_argument(
        "--follow", action="store_true", help="keep importing what is written until Ctrl-C"
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="with --follow: seconds between reads (default 1)",
    )


def _handle(args: argparse.Namespace) -> int:
    return command(args, client_for)


def command(
    args: argparse.Namespace,
    make_client: Callable[[argparse.Namespace], TrackingClient],
    out: TextIO | None = None,
) -> int:
    """Run the command: `make_client(args)` builds the client from the global options."""
    out = out or sys.stdout
    logdir: Path = args.logdir.expanduser()
    if not logdir.is_dir():
        raise ConfigurationError(f"{logdir} is not a directory")
    if not args.interval > 0:
        raise ConfigurationError(f"--interval must be positive, got {args.interval}")
    try:
        from aidp_metrics._bridges import tensorboard_events  # noqa: F401 -- TensorBoard's reader: installed?
    except ImportError as exc:
        raise ConfigurationError(
            f"{exc.name or 'tensorboard'} is not installed: {INSTALL_HINT}"
        ) from None
    from aidp_metrics.cli._tensorboard_import import Importer

    experiment = args.experiment_name or first_env(EXPERIMENT_VARIABLES) or "Default"
    stop = threading.Event()
    with make_client(args) as client, _stop_on_signals(stop):
        importer = Importer(client, logdir, experiment)
        status = "FAILED"
        try:
            complete = _import(importer, stop)
            if args.follow and complete:
                print(f"following {logdir} (Ctrl-C to stop)", file=sys.stderr, flush=True)
                while not stop.wait(args.interval):
                    importer.poll(None, stop)
            status = "FINISHED" if complete else "KILLED"
        finally:
            importer.end(status)
    _report(importer, experiment, out)
    if not complete:
        print(
            "aidp-metrics tensorboard: interrupted; run the same command again to import the rest",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if not importer.directories:
        print(f"no TensorBoard event files under {logdir}", file=sys.stderr)
    return EXIT_OK


def _import(importer: Importer, stop: threading.Event) -> bool:
    """The first pass, with a progress bar of the bytes to read; False when stopped."""
    total = importer.unread_bytes()
    with _progress_bar(total) as bar:
        return importer.poll(bar, stop)


@contextmanager
def _progress_bar(total: int) -> Iterator[Progress | None]:
    try:
        from tqdm import tqdm
    except ImportError:  # the bar is a nicety: import without it
        yield None
        return
    # disable=None: no bar unless stderr is a terminal.
    with tqdm(
        total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="importing", disable=None
    ) as bar:
        yield bar


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """Ctrl-C (SIGINT) or SIGTERM sets `stop`: the runs end cleanly; a second one
    interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = (signal.SIGINT, signal.SIGTERM)
    previous: dict[int, Any] = {}

    def on_signal(signum: int, frame: object) -> None:
        stop.set()
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    previous.update({sig: signal.signal(sig, on_signal) for sig in signals})
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _report(importer: Importer, experiment: str, out: TextIO) -> None:
    for entry in sorted(importer.directories.values(), key=lambda e: e.name):
        if entry.opened:
            what = f"{entry.points} point{'s' if entry.points != 1 else ''} imported"
        elif entry.run_id is not None:
            what = "up to date"
        else:
            print(f"{entry.name}: no scalars", file=out)
            continue
        print(f"{entry.name}: run {entry.run_id} (experiment {experiment}): {what}", file=out)
