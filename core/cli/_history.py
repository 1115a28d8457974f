"""`aidp-metrics history`: every point of a run's metrics, as a table, CSV or JSON."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from datetime import datetime, timezone
from typing import TYPE_CHECKING, TextIO

from ._connection import client_for
from ._parser import EXIT_OK, Subparsers, add_command, add_keys_option, add_run_id_option

if TYPE_CHECKING:
    from aidp_metrics._connection.client import TrackingClient
    from aidp_metrics._metric import Metric


def register(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers,
        "history",
        _history,
        "print the points of a run's metrics",
        "Print every point of the run's metrics (all keys unless --key is given).\n"
        "Columns: key, step, value, timestamp (ms since the epoch).",
    )
    add_run_id_option(parser)
    add_keys_option(parser)
    parser.add_argument(
        "--format", choices=("table", "csv", "json"), default="table", help="default: table"
    )


def histories(
    client: TrackingClient, run_id: str, keys: list[str] | None
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
    from aidp_metrics._metric import encode_value

    encoded = encode_value(value)
    return encoded if isinstance(encoded, str) else repr(encoded)


def _history(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        points = [m for ms in histories(client, args.run_id, args.key).values() for m in ms]
    out = sys.stdout
    if args.format == "json":
        _write_json(out, points)
    elif args.format == "csv":
        _write_csv(out, points)
    elif not points:
        what = "the given keys" if args.key else "any metric"
        print(f"run {args.run_id} has no points for {what}", file=sys.stderr)
    else:
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


def _write_json(out: TextIO, points: list[Metric]) -> None:
    from aidp_metrics._metric import encode_value

    rows = [
        {"key": m.key, "step": m.step, "value": encode_value(m.value), "timestamp": m.timestamp}
        for m in points
    ]
    json.dump(rows, out, indent=1)
    out.write("\n")


def _write_csv(out: TextIO, points: list[Metric]) -> None:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["key", "step", "value", "timestamp"])
    for m in points:
        writer.writerow([m.key, m.step, _value_text(m.value), m.timestamp])


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
