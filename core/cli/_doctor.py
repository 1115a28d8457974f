"""`aidp-metrics doctor`: is the configuration going to work, and if not, what to change.

Doctor resolves the endpoint and credentials exactly as the other commands do, sends one
signed read request (`GET experiments/get-by-name?experiment_name=Default`: even a 404
`RESOURCE_DOES_NOT_EXIST` proves the server is reachable and accepted the credentials),
checks that the artifact store takes a file (`_doctor_artifacts`), and prints a checklist
with a fix for each failure. It never prints a secret: no header, token,
password, key content or pass phrase (credentials are named by where they came from), and
every line goes through `aidp_metrics._redact`.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from aidp_metrics._connection.endpoint import Endpoint
from aidp_metrics._env import AIDP_INSTANCE_ID, MLFLOW_TRACKING_URI
from aidp_metrics._errors import APIError, ConfigurationError, NoEndpointConfigured
from aidp_metrics._redact import redact
from aidp_metrics._version import __version__

from . import _doctor_advice as advice
from ._connection import ConnectionOptions, build_auth, resolve_endpoint
from ._doctor_artifacts import check_artifacts
from ._doctor_probe import MAX_CLOCK_SKEW, Exchange, recording_auth
from ._parser import Subparsers, add_command
from ._terminal import check_marks

if TYPE_CHECKING:
    import httpx

PROBE_PATH = "experiments/get-by-name"
PROBE_PARAMS = {"experiment_name": "Default"}
PROBE_TIMEOUT = 15.0


def register(subparsers: Subparsers) -> None:
    add_command(
        subparsers,
        "doctor",
        _doctor,
        "check endpoint, credentials, reachability and clock skew",
        "Resolve the endpoint and credentials, send one signed read request and report what\n"
        "works and, for what does not, what to change. Prints no secret.\n"
        "Exit status 0 only when logging would work.",
    )


def _doctor(args: argparse.Namespace) -> int:
    return run(ConnectionOptions.from_args(args), sys.stdout)


@dataclass
class Report:
    """The checklist, printed line by line; `ok` is False once any check failed."""

    out: TextIO
    marks: dict[str, str]
    ok: bool = True
    failures: list[str] = field(default_factory=list)

    def info(self, label: str, value: str) -> None:
        self.out.write(f"  {label:<11} {redact(value)}\n")

    def check(self, passed: bool | None, text: str, *fixes: str) -> None:
        mark = self.marks["ok" if passed else "fail" if passed is False else "warn"]
        self.out.write(f"{mark} {redact(text)}\n")
        for fix in fixes:
            self.out.write(f"    fix: {redact(fix)}\n")
        if passed is False:
            self.ok = False
            self.failures.append(text)


@dataclass
class _Answer:
    """What the probe request got back."""

    error: APIError | None
    reply: dict[str, Any]
    elapsed_ms: float
    exchange: Exchange


def run(options: ConnectionOptions, out: TextIO | None = None) -> int:
    """Print the diagnosis; 0 only when logging to the resolved endpoint would work."""
    stream = out if out is not None else sys.stdout
    report = Report(stream, check_marks(stream))
    stream.write(f"aidp-metrics {__version__} doctor (Python {platform.python_version()})\n")
    _diagnose(options, report)
    if report.ok:
        stream.write("\nOK: metrics logged with this configuration will be accepted.\n")
        return 0
    stream.write(f"\nNOT OK: {len(report.failures)} check(s) failed; see the fix: lines above.\n")
    return 1


def _diagnose(options: ConnectionOptions, report: Report) -> None:
    endpoint = _endpoint(options, report)
    if endpoint is None:
        return
    if endpoint.kind == "store":
        from ._doctor_store import diagnose_store

        diagnose_store(endpoint, report)
        return
    try:
        auth = build_auth(endpoint, options)
    except ConfigurationError as exc:
        report.info("auth", advice.auth_wanted(endpoint, options))
        fixes = [str(exc)]
        if endpoint.kind == "aidp":
            fixes.append(
                "choose the mode with --auth MODE or OCI_CLI_AUTH, the profile with "
                "--profile or OCI_CLI_PROFILE, the file with --config-file or OCI_CLI_CONFIG_FILE"
            )
        report.check(False, "auth: credentials could not be loaded", *fixes)
        return
    report.info("auth", advice.auth_description(endpoint, auth, options))
    for note in advice.ignored_credential_notes(endpoint, auth):
        report.info("note", note)
    answer = _probe(endpoint, auth, report)
    if answer is None:
        return
    report.out.write("\n")
    report.check(True, "configuration: endpoint and credentials resolved")
    _judge_answer(report, endpoint, auth, options, answer)
    if report.ok:
        check_artifacts(report, endpoint, auth, answer.reply)


def _endpoint(options: ConnectionOptions, report: Report) -> Endpoint | None:
    """The resolved endpoint, described in the report; None (and a failed check) if none."""
    try:
        endpoint = resolve_endpoint(options)
    except NoEndpointConfigured as exc:
        report.check(
            False,
            "endpoint: none configured",
            str(exc),
            "or pass --tracking-uri URL (MLflow) / --endpoint URL (AIDP) on the command line",
        )
        return None
    except ConfigurationError as exc:
        report.check(False, "endpoint: configuration incomplete", str(exc))
        return None
    report.info("endpoint", endpoint.describe())
    report.info("base URL", endpoint.public_url())
    if endpoint.kind == "aidp":
        report.info("region", endpoint.region or "- (explicit endpoint URL)")
        if (
            os.environ.get(MLFLOW_TRACKING_URI)
            and not options.tracking_uri
            and os.environ.get(AIDP_INSTANCE_ID, "").strip()
        ):
            report.info("note", "MLFLOW_TRACKING_URI is set but ignored: AIDP_* settings win")
        if endpoint.user_principal:
            report.info("principal", endpoint.user_principal)
    return endpoint


def _probe(endpoint: Endpoint, auth: httpx.Auth | None, report: Report) -> _Answer | None:
    """Send the one read request; None (and a failed check) when credentials broke on the way."""
    from aidp_metrics._connection.client import MetricsClient

    exchange = Exchange()
    report.info("request", f"GET {PROBE_PATH}?experiment_name=Default")
    recorder = recording_auth(auth, exchange)
    with MetricsClient(endpoint, auth=recorder, timeout=PROBE_TIMEOUT) as client:
        started = time.monotonic()
        error: APIError | None = None
        reply: dict[str, Any] = {}
        try:
            reply = client.send("GET", PROBE_PATH, params=PROBE_PARAMS)
        except ConfigurationError as exc:  # e.g. a token refresh after 401 failed
            report.check(False, "auth: credentials could not be refreshed", str(exc))
            return None
        except APIError as exc:
            error = exc
        elapsed_ms = (time.monotonic() - started) * 1000
    return _Answer(error, reply, elapsed_ms, exchange)


def _judge_answer(
    report: Report,
    endpoint: Endpoint,
    auth: httpx.Auth | None,
    options: ConnectionOptions,
    answer: _Answer,
) -> None:
    from aidp_metrics._errors import NotFound, TransportError, Unauthorized

    error = answer.error
    if isinstance(error, TransportError):
        report.check(
            False,
            f"reachable: no HTTP answer from {advice.host(endpoint)} ({error.message})",
            *advice.unreachable_fixes(endpoint),
        )
        return
    status = answer.exchange.status if error is None else error.status
    report.check(True, f"reachable: HTTP {status} in {answer.elapsed_ms:.0f} ms")
    skew = answer.exchange.skew()
    skew_bad = skew is not None and abs(skew) > MAX_CLOCK_SKEW
    if error is None or (isinstance(error, NotFound) and _missing_resource(error)):
        if error is None and "experiment" not in answer.reply:
            report.check(
                False,
                "API: the server answered 200 but not like an MLflow tracking API",
                "the URL points at something else: check "
                + (
                    "AIDP_ENDPOINT"
                    if endpoint.kind == "aidp"
                    else "MLFLOW_TRACKING_URI (the server's root URL)"
                ),
            )
            return
        report.check(True, "auth: accepted" if auth is not None else "auth: none required")
        report.check(True, "path: the MLflow API answers at this endpoint")
    elif isinstance(error, Unauthorized):
        report.check(
            False,
            f"auth: rejected ({error})",
            *advice.unauthorized_fixes(endpoint, auth, options, skew_bad),
        )
    else:
        _judge_refusal(report, endpoint, error)
    _judge_clock(report, skew, aidp=endpoint.kind == "aidp")


def _judge_refusal(report: Report, endpoint: Endpoint, error: APIError) -> None:
    """An HTTP error other than 401 or a missing Default experiment."""
    from aidp_metrics._errors import NotFound, TooManyRequests

    if isinstance(error, NotFound):
        report.check(None, "auth: not verified (the path was refused first)")
        report.check(False, f"path: not found ({error})", *advice.not_found_fixes(endpoint))
    elif isinstance(error, TooManyRequests):
        wait = f" (Retry-After {error.retry_after:g} s)" if error.retry_after else ""
        report.check(
            False,
            f"rate limited: HTTP 429{wait}",
            "try again later; lower the logging rate (log less often, or batch more points "
            "per request) if this persists",
        )
    elif error.status == 403:
        report.check(
            False,
            f"auth: accepted but not allowed ({error})",
            "an IAM policy must allow your user/group (or dynamic group) to use the AIDP "
            "workspace's MLOps API",
        )
    else:
        report.check(
            False,
            f"server error: {error}",
            "the service failed the request; retry later and quote the opc-request-id to support",
        )


def _judge_clock(report: Report, skew: float | None, *, aidp: bool) -> None:
    if skew is None:
        report.check(None, "clock skew: unknown (the server sent no usable Date header)")
    elif abs(skew) > MAX_CLOCK_SKEW:
        text = f"clock skew: {skew:+.1f} s against the server (OCI rejects more than 5 min)"
        fix = "sync the local clock (NTP: `timedatectl set-ntp true`, `chronyc makestep`)"
        if aidp:
            report.check(False, text, fix)
        else:
            report.check(None, text + "; metric timestamps will be off", fix)
    else:
        report.check(True, f"clock skew: {skew:+.1f} s (server Date vs local UTC; limit 5 min)")


def _missing_resource(error: APIError) -> bool:
    # The Default experiment may not exist: the request was still routed and authorised.
    return error.code in ("RESOURCE_DOES_NOT_EXIST", "ResourceDoesNotExist")
