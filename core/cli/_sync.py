"""`aidp-metrics sync`: upload what the on-disk spool holds, with a progress bar on a terminal."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from aidp_metrics._redact import redact

from ._connection import client_for
from ._parser import EXIT_ERROR, EXIT_OK, PROG, Subparsers, add_command
from ._terminal import symbols

if TYPE_CHECKING:
    from aidp_metrics._durability.sync import RunSyncResult


def register(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers,
        "sync",
        _sync,
        "upload the on-disk spool of runs not yet delivered",
        "Deliver what the spool holds: creates runs that exist only locally, sends the\n"
        "points the server has not acknowledged and uploads the artifacts not uploaded yet.\n"
        "Resumable; safe to run again.\n"
        "Exit status non-zero when any run could not be fully delivered.",
    )
    parser.add_argument(
        "dir",
        nargs="?",
        type=Path,
        metavar="DIR",
        help="spool directory (default: AIDP_METRICS_DIR, else ./aidp-metrics)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="list what would be sent; send nothing"
    )


class ProgressBar:
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


def _sync(args: argparse.Namespace) -> int:
    from aidp_metrics._durability.sync import sync_directory
    from aidp_metrics._queue.journal import spool_root

    root = spool_root(args.dir)
    if not root.exists():
        print(f"nothing to sync: {root} does not exist")
        return EXIT_OK
    client = None if args.dry_run else client_for(args)
    progress = ProgressBar(sys.stderr) if sys.stderr.isatty() and client is not None else None
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
    failed = sum(_print_result(result, args.dry_run) for result in results)
    if failed:
        print(
            f"{PROG} sync: {failed} of {len(results)} run(s) not fully delivered; "
            "fix the error and run sync again (it resumes)",
            file=sys.stderr,
        )
        return EXIT_ERROR
    return EXIT_OK


def _print_result(result: RunSyncResult, dry_run: bool) -> bool:
    """One line for the run (plus up to five skipped records); True when it failed."""
    target = f"run {result.run_id}" if result.run_id else "new run"
    if result.experiment:
        target += f" (experiment {result.experiment})"
    if dry_run:
        done = f"{result.points} point{'s' if result.points != 1 else ''} to send"
        if result.artifacts:
            done += f", {result.artifacts} artifact(s) to upload"
    else:
        done = f"{result.sent}/{result.points} points sent"
        if result.artifacts:
            done += f", {result.artifacts_sent}/{result.artifacts} artifact(s) uploaded"
    if result.skipped:
        done += f", {len(result.skipped)} record(s) skipped"
    line = f"{result.local_id} {symbols(sys.stdout)['arrow']} {target}: {done}"
    if result.error:
        line += f"; error: {result.error}"
    print(redact(line))
    for reason in result.skipped[:5]:
        print(f"    skipped: {redact(reason)}")
    if len(result.skipped) > 5:
        print(f"    ... and {len(result.skipped) - 5} more")
    return bool(result.error)
