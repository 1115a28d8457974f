"""`aidp-metrics log`: one metric point, one `runs/log-metric` call."""

from __future__ import annotations

import argparse

from ._connection import client_for
from ._parser import EXIT_OK, Subparsers, add_command, add_run_id_option


def register(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers,
        "log",
        _log,
        "log one metric point (one POST runs/log-metric)",
        "Log one metric point to an existing run: exactly one runs/log-metric call\n"
        "(retried on 429/5xx/timeouts with the same opc-retry-token). Silent on success.",
    )
    add_run_id_option(parser)
    parser.add_argument("--key", required=True, help="metric key, e.g. loss or val/acc")
    parser.add_argument(
        "--value", required=True, type=float, help="a number (nan, inf and -inf allowed)"
    )
    parser.add_argument("--step", type=int, default=0, help="the step (default 0)")
    parser.add_argument(
        "--timestamp", type=int, metavar="MS", help="ms since the epoch (default: now)"
    )


def _log(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        client.log_metric(
            args.run_id, args.key, args.value, step=args.step, timestamp=args.timestamp
        )
    return EXIT_OK
