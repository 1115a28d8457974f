"""The `aidp-metrics` argument parser: the global options, and one sub-parser per command.

Each command module has a `register(subparsers)` that calls `add_command` (and adds its own
arguments); `build_parser` calls the registrars it is given, in order.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from typing import Any

from aidp_metrics._connection.oci_config import AUTH_MODES
from aidp_metrics._version import __version__

PROG = "aidp-metrics"
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

Handler = Callable[[argparse.Namespace], int]
# argparse's sub-parser collection; its class (argparse._SubParsersAction) is private.
Subparsers = Any
Registrar = Callable[[Subparsers], None]


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


def add_command(
    subparsers: Subparsers, name: str, handler: Handler, help_text: str, description: str
) -> argparse.ArgumentParser:
    """A command's parser, with the global options; `main` calls `handler(args)`."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        name,
        help=help_text,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=handler)
    _add_global_options(parser, in_command=True)
    return parser


def add_run_id_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-id", required=True, metavar="ID", help="the run's id")


def add_keys_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--key", action="append", metavar="KEY", help="a metric key (repeatable; default: all)"
    )


def build_parser(commands: Iterable[Registrar]) -> argparse.ArgumentParser:
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
    for register in commands:
        register(subparsers)
    return parser
