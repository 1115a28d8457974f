"""`aidp-metrics artifacts`: the files a run holds in its artifact store.

Listed through MLflow's own artifact repository for the run's `artifact_uri` (needs
`aidp-metrics[artifacts]`), with the same credentials the other commands use.
"""

from __future__ import annotations

import argparse
import json
import sys

from ._connection import client_for
from ._parser import EXIT_OK, Subparsers, add_command, add_run_id_option


def register(subparsers: Subparsers) -> None:
    parser = add_command(
        subparsers,
        "artifacts",
        _artifacts,
        "list the files in a run's artifacts",
        "List every file of the run's artifacts (under --path if given) with its size in\n"
        'bytes. Needs MLflow\'s artifact client: pip install "aidp-metrics[artifacts]".',
    )
    add_run_id_option(parser)
    parser.add_argument("--path", metavar="PATH", help="a folder inside the run's artifacts")
    parser.add_argument(
        "--format", choices=("table", "json"), default="table", help="default: table"
    )


def _artifacts(args: argparse.Namespace) -> int:
    from aidp_metrics._errors import ConfigurationError
    from aidp_metrics._uploads.store import MISSING, ArtifactStore, mlflow_available

    if not mlflow_available():
        raise ConfigurationError(MISSING)
    with client_for(args) as client:
        store = ArtifactStore.for_run(client, args.run_id)
        files = store.list(args.path)
    if args.format == "json":
        json.dump([{"path": f.path, "size": f.size} for f in files], sys.stdout, indent=1)
        sys.stdout.write("\n")
        return EXIT_OK
    if not files:
        print(f"run {args.run_id} has no artifacts in {store.describe()}", file=sys.stderr)
        return EXIT_OK
    width = max(len("path"), *(len(f.path) for f in files))
    print(f"{'path':<{width}}  size")
    for f in files:
        print(f"{f.path:<{width}}  {'-' if f.size is None else f.size}")
    return EXIT_OK
