"""The `aidp-metrics` command: doctor, log, history, artifacts, plot, local-server, sync,
tensorboard.

Importing this package loads only argparse and the light part of the library; httpx, oci,
mlflow and matplotlib are imported by the commands that need them. Errors are printed as
one line on stderr with a non-zero exit status; `--debug` adds the traceback.

Adding a command: write a module with `register(subparsers)` that calls
`_parser.add_command(subparsers, name, handler, help, description)` and adds its arguments
(keep its heavy imports inside the handler), then add `register` to `COMMANDS` below.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from aidp_metrics._env import OCI_CLI_AUTH, OCI_CLI_CONFIG_FILE, OCI_CLI_PROFILE
from aidp_metrics._errors import AIDPError
from aidp_metrics._redact import redact

from . import (
    _artifacts,
    _doctor,
    _history,
    _local_server,
    _log,
    _parser,
    _plot,
    _sync,
    _tensorboard,
)
from ._parser import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, PROG, Handler, Registrar

__all__ = ["main"]

# The commands, in the order `--help` lists them: one registrar each.
COMMANDS: tuple[Registrar, ...] = (
    _doctor.register,
    _log.register,
    _history.register,
    _artifacts.register,
    _plot.register,
    _local_server.register,
    _sync.register,
    _tensorboard.register,
)


def build_parser() -> argparse.ArgumentParser:
    return _parser.build_parser(COMMANDS)


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
        OCI_CLI_AUTH: getattr(args, "auth", None),
        OCI_CLI_PROFILE: getattr(args, "profile", None),
        OCI_CLI_CONFIG_FILE: getattr(args, "config_file", None),
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
