"""`aidp-metrics doctor`, and the endpoint + auth resolution every CLI command shares.

Doctor resolves the endpoint and credentials exactly as the other commands do, sends one
signed read request (`GET experiments/get-by-name?experiment_name=Default`: even a 404
`RESOURCE_DOES_NOT_EXIST` proves the server is reachable and accepted the credentials) and
prints a checklist with a fix for each failure. It never prints a secret: no header, token,
password, key content or pass phrase (credentials are named by where they came from), and
every line goes through `aidp_metrics.redact`.
"""

from __future__ import annotations

import email.utils
import os
import platform
import sys
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

from ._version import __version__
from .endpoint import Endpoint
from .errors import APIError, ConfigurationError, NoEndpointConfigured
from .redact import redact

if TYPE_CHECKING:
    import httpx

    from .client import MetricsClient

MAX_CLOCK_SKEW = 300.0  # seconds; OCI rejects signed requests whose date is further off
PROBE_PATH = "experiments/get-by-name"
PROBE_PARAMS = {"experiment_name": "Default"}
PROBE_TIMEOUT = 15.0
_PRECEDENCE = "MLflow's order: user:password in the URI, USERNAME/PASSWORD, TOKEN"

# -- resolution shared by all commands -----------------------------------------------------


@dataclass(frozen=True)
class ConnectionOptions:
    """The CLI's global connection flags; None means "from the environment"."""

    auth: str | None = None
    profile: str | None = None
    config_file: str | None = None
    tracking_uri: str | None = None
    endpoint: str | None = None


def resolve_endpoint(options: ConnectionOptions) -> Endpoint:
    """`--tracking-uri`, else `--endpoint` with the AIDP workspace, else `Endpoint.from_env()`."""
    if options.tracking_uri and options.endpoint:
        raise ConfigurationError(
            "--tracking-uri (MLflow) and --endpoint (AIDP) exclude each other; pass one"
        )
    if options.tracking_uri:
        return Endpoint.mlflow(options.tracking_uri, source="--tracking-uri")
    if options.endpoint:
        env = os.environ
        return Endpoint.aidp(
            env.get("AIDP_INSTANCE_ID", "").strip(),
            env.get("AIDP_WORKSPACE_KEY", "").strip(),
            endpoint=options.endpoint,
            user_principal=env.get("AIDP_USER_PRINCIPAL", "").strip() or None,
        )
    return Endpoint.from_env()


def build_auth(endpoint: Endpoint, options: ConnectionOptions) -> httpx.Auth | None:
    """`MLFLOW_TRACKING_AUTH`'s provider, else OCI request signing for AIDP, else for MLflow
    the environment's token/basic auth (or none): `aidp_metrics.auth.endpoint_auth`."""
    from . import auth

    return auth.endpoint_auth(
        endpoint, oci_mode=options.auth, config_file=options.config_file, profile=options.profile
    )


def build_client(options: ConnectionOptions, **kwargs: Any) -> MetricsClient:
    from .client import MetricsClient

    endpoint = resolve_endpoint(options)
    return MetricsClient(endpoint, auth=build_auth(endpoint, options), **kwargs)


# -- clock skew ----------------------------------------------------------------------------


def clock_skew(date_header: str | None, sent: float, received: float) -> float | None:
    """Server clock minus local clock in seconds (positive: the server is ahead).

    `sent` and `received` are local epoch times around the request; the server stamped
    `Date` somewhere in between. `Date` has whole seconds (truncated), hence the +0.5.
    None when the header is missing or unparseable.
    """
    if not date_header:
        return None
    try:
        server = email.utils.parsedate_to_datetime(date_header)
    except (TypeError, ValueError, IndexError):
        return None
    if server.tzinfo is None:  # "-0000" means UTC without a known zone
        return None
    return server.timestamp() + 0.5 - (sent + received) / 2


# -- the probe -----------------------------------------------------------------------------


@dataclass
class _Exchange:
    status: int | None = None
    date: str | None = None
    sent: float = 0.0
    received: float = 0.0
    attempts: int = 0


def _recording_auth(inner: httpx.Auth | None, exchange: _Exchange) -> httpx.Auth:
    """Wraps the real auth to note each raw response's status, `Date` and timing.

    An auth wrapper rather than a custom transport: httpx ignores proxy variables when a
    transport is given, and doctor must take the same network path as the real client.
    """
    import httpx

    class RecordingAuth(httpx.Auth):
        requires_request_body = bool(getattr(inner, "requires_request_body", False))

        def auth_flow(
            self, request: httpx.Request
        ) -> Generator[httpx.Request, httpx.Response, None]:
            flow = inner.auth_flow(request) if inner is not None else _unchanged(request)
            outgoing = next(flow)
            while True:
                exchange.attempts += 1
                exchange.sent = time.time()
                response = yield outgoing
                exchange.received = time.time()
                exchange.status = response.status_code
                exchange.date = response.headers.get("date")
                try:
                    outgoing = flow.send(response)
                except StopIteration:
                    return

    return RecordingAuth()


def _unchanged(request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
    yield request


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


def _marks(stream: TextIO) -> dict[str, str]:
    encoding = getattr(stream, "encoding", None) or "ascii"
    try:
        "✓✗!".encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return {"ok": "[ok]  ", "fail": "[FAIL]", "warn": "[warn]"}
    return {"ok": "✓", "fail": "✗", "warn": "!"}


def run(options: ConnectionOptions, out: TextIO | None = None) -> int:
    """Print the diagnosis; 0 only when logging to the resolved endpoint would work."""
    stream = out if out is not None else sys.stdout
    report = Report(stream, _marks(stream))
    stream.write(f"aidp-metrics {__version__} doctor (Python {platform.python_version()})\n")
    _diagnose(options, report)
    if report.ok:
        stream.write("\nOK: metrics logged with this configuration will be accepted.\n")
        return 0
    stream.write(f"\nNOT OK: {len(report.failures)} check(s) failed; see the fix: lines above.\n")
    return 1


def _diagnose(options: ConnectionOptions, report: Report) -> None:
    # 1. endpoint
    try:
        endpoint = resolve_endpoint(options)
    except NoEndpointConfigured as exc:
        report.check(
            False,
            "endpoint: none configured",
            str(exc),
            "or pass --tracking-uri URL (MLflow) / --endpoint URL (AIDP) on the command line",
        )
        return
    except ConfigurationError as exc:
        report.check(False, "endpoint: configuration incomplete", str(exc))
        return
    report.info("endpoint", endpoint.describe())
    report.info("base URL", endpoint.public_url())
    if endpoint.kind == "aidp":
        if endpoint.region:
            report.info("region", endpoint.region)
        else:
            report.info("region", "- (explicit endpoint URL)")
        if (
            os.environ.get("MLFLOW_TRACKING_URI")
            and not options.tracking_uri
            and os.environ.get("AIDP_INSTANCE_ID", "").strip()
        ):
            report.info("note", "MLFLOW_TRACKING_URI is set but ignored: AIDP_* settings win")
        if endpoint.user_principal:
            report.info("principal", endpoint.user_principal)

    # 2. credentials
    try:
        auth = build_auth(endpoint, options)
    except ConfigurationError as exc:
        report.info("auth", _auth_wanted(endpoint, options))
        fixes = [str(exc)]
        if endpoint.kind == "aidp":
            fixes.append(
                "choose the mode with --auth MODE or OCI_CLI_AUTH, the profile with "
                "--profile or OCI_CLI_PROFILE, the file with --config-file or OCI_CLI_CONFIG_FILE"
            )
        report.check(False, "auth: credentials could not be loaded", *fixes)
        return
    report.info("auth", _auth_description(endpoint, auth, options))
    for name in _ignored_mlflow_credentials(endpoint, auth):
        report.info("note", f"{name} is set but not used: {_source(auth)} wins ({_PRECEDENCE})")

    # 3. one read request
    from .client import MetricsClient

    exchange = _Exchange()
    recorder = _recording_auth(auth, exchange)
    report.info("request", f"GET {PROBE_PATH}?experiment_name=Default")
    with MetricsClient(endpoint, auth=recorder, timeout=PROBE_TIMEOUT) as client:
        started = time.monotonic()
        error: APIError | None = None
        reply: dict[str, Any] = {}
        try:
            reply = client.send("GET", PROBE_PATH, params=PROBE_PARAMS)
        except ConfigurationError as exc:  # e.g. a token refresh after 401 failed
            report.check(False, "auth: credentials could not be refreshed", str(exc))
            return
        except APIError as exc:
            error = exc
        elapsed_ms = (time.monotonic() - started) * 1000
    report.out.write("\n")
    skew = (
        clock_skew(exchange.date, exchange.sent, exchange.received)
        if exchange.status is not None
        else None
    )
    _judge(report, endpoint, auth, options, error, reply, elapsed_ms, exchange, skew)


def _judge(
    report: Report,
    endpoint: Endpoint,
    auth: httpx.Auth | None,
    options: ConnectionOptions,
    error: APIError | None,
    reply: dict[str, Any],
    elapsed_ms: float,
    exchange: _Exchange,
    skew: float | None,
) -> None:
    from .errors import NotFound, TooManyRequests, TransportError, Unauthorized

    aidp = endpoint.kind == "aidp"
    report.check(True, "configuration: endpoint and credentials resolved")
    if isinstance(error, TransportError):
        report.check(
            False,
            f"reachable: no HTTP answer from {_host(endpoint)} ({error.message})",
            *_unreachable_fixes(endpoint),
        )
        return
    status = exchange.status if error is None else error.status
    report.check(True, f"reachable: HTTP {status} in {elapsed_ms:.0f} ms")

    skew_bad = skew is not None and abs(skew) > MAX_CLOCK_SKEW
    if error is None or (isinstance(error, NotFound) and _missing_resource(error)):
        if error is None and "experiment" not in reply:
            report.check(
                False,
                "API: the server answered 200 but not like an MLflow tracking API",
                "the URL points at something else: check "
                + ("AIDP_ENDPOINT" if aidp else "MLFLOW_TRACKING_URI (the server's root URL)"),
            )
            return
        report.check(True, "auth: accepted" if auth is not None else "auth: none required")
        report.check(True, "path: the MLflow API answers at this endpoint")
    elif isinstance(error, Unauthorized):
        report.check(
            False,
            f"auth: rejected ({error})",
            *_unauthorized_fixes(endpoint, auth, options, skew_bad),
        )
    elif isinstance(error, NotFound):
        report.check(None, "auth: not verified (the path was refused first)")
        report.check(False, f"path: not found ({error})", *_not_found_fixes(endpoint))
    elif isinstance(error, TooManyRequests):
        wait = f" (Retry-After {error.retry_after:g} s)" if error.retry_after else ""
        report.check(
            False,
            f"rate limited: HTTP 429{wait}",
            "try again later; lower the logging rate (log less often, or batch more points "
            "per request) if this persists",
        )
    elif error is not None and error.status == 403:
        report.check(
            False,
            f"auth: accepted but not allowed ({error})",
            "an IAM policy must allow your user/group (or dynamic group) to use the AIDP "
            "workspace's MLOps API",
        )
    elif error is not None:
        report.check(
            False,
            f"server error: {error}",
            "the service failed the request; retry later and quote the opc-request-id to support",
        )

    if skew is None:
        report.check(None, "clock skew: unknown (the server sent no usable Date header)")
    elif skew_bad:
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


def _host(endpoint: Endpoint) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(endpoint.public_url())
    return parts.netloc


def _unreachable_fixes(endpoint: Endpoint) -> list[str]:
    proxy = "check the network and any proxy (HTTPS_PROXY / NO_PROXY)"
    if endpoint.kind == "aidp":
        source = (
            f"OCI_CLI_REGION / the profile's region (now {endpoint.region})"
            if endpoint.region
            else "AIDP_ENDPOINT (or --endpoint)"
        )
        return [f"check {source}", proxy]
    return [
        "is the MLflow server running at that address? check MLFLOW_TRACKING_URI "
        "(or --tracking-uri); `aidp-metrics local-server` starts one",
        proxy,
    ]


def _unauthorized_fixes(
    endpoint: Endpoint, auth: httpx.Auth | None, options: ConnectionOptions, skew_bad: bool
) -> list[str]:
    fixes: list[str] = []
    if skew_bad:
        fixes.append("the local clock is more than 5 minutes off: OCI rejects the signature")
    if endpoint.kind != "aidp":
        if auth is None:
            fixes.append(
                "the server wants credentials: set MLFLOW_TRACKING_USERNAME and "
                "MLFLOW_TRACKING_PASSWORD (or put user:password@ in the tracking URI), "
                "or MLFLOW_TRACKING_TOKEN"
            )
        else:
            fixes.append(f"the server refused the credentials from {_source(auth)}: check them")
        return fixes
    mode = getattr(auth, "mode", None)
    profile, path = _profile_location(options)
    keys = _profile_keys(options)
    if mode == "api_key":
        fixes.append(
            f"check key_file and fingerprint in profile {profile!r} of {path}: the public key "
            "must be uploaded to that user (Console > My profile > API keys) and the "
            "fingerprint must be that key's; check user and tenancy too"
        )
        if keys.get("security_token_file"):
            fixes.append(
                "this profile has security_token_file: try --auth security_token "
                "(or OCI_CLI_AUTH=security_token)"
            )
    elif mode == "security_token":
        fixes.append(
            f"the session token may have expired: run `oci session refresh --profile {profile}` "
            f"or `oci session authenticate --profile-name {profile}`"
        )
        if keys.get("fingerprint") and keys.get("user"):
            fixes.append("or use the profile's API key: --auth api_key (OCI_CLI_AUTH=api_key)")
    elif mode in ("instance_principal", "resource_principal", "oke_workload_identity"):
        fixes.append(
            f"{mode}: check that the dynamic group matches this resource and a policy allows it "
            "to use the AIDP workspace"
        )
    fixes.append("a wrong AIDP_INSTANCE_ID or region can also answer 401")
    return fixes


def _not_found_fixes(endpoint: Endpoint) -> list[str]:
    if endpoint.kind == "aidp":
        return [
            f"check AIDP_INSTANCE_ID (now {endpoint.instance_id}) and AIDP_WORKSPACE_KEY "
            f"(now {endpoint.workspace_key}); AIDP answers NotAuthorizedOrNotFound also when "
            "your user may not see the workspace",
            "check the region (OCI_CLI_REGION) or AIDP_ENDPOINT: the instance lives in one region",
        ]
    return [
        "MLFLOW_TRACKING_URI must be the tracking server's root URL (the one whose "
        "/api/2.0/mlflow/... answers), without a path such as /api or /#/"
    ]


def _profile_location(options: ConnectionOptions) -> tuple[str, str]:
    from .oci_config import resolve_location

    path, name = resolve_location(options.config_file, options.profile)
    return name, str(path)


def _profile_keys(options: ConnectionOptions) -> dict[str, str]:
    from .oci_config import read_profile

    try:
        return read_profile(options.config_file, options.profile)
    except ConfigurationError:
        return {}


def _auth_wanted(endpoint: Endpoint, options: ConnectionOptions) -> str:
    from .request_auth import AIDP_PROVIDER, tracking_auth_name

    provider = tracking_auth_name()
    if provider is not None and provider != AIDP_PROVIDER:
        return f"MLflow request-auth provider {provider!r} (from MLFLOW_TRACKING_AUTH)"
    if endpoint.kind != "aidp":
        return "MLflow basic / bearer auth from the tracking URI or MLFLOW_TRACKING_* variables"
    mode = options.auth or os.environ.get("OCI_CLI_AUTH") or "auto (api_key or security_token)"
    profile, path = _profile_location(options)
    return f"OCI request signing, mode {mode}, profile {profile} in {path}"


def _auth_description(
    endpoint: Endpoint, auth: httpx.Auth | None, options: ConnectionOptions
) -> str:
    from .auth import OCIRequestSigner
    from .request_auth import AIDP_PROVIDER, ProviderAuth, tracking_auth_name

    if isinstance(auth, ProviderAuth):
        return auth.describe()
    if endpoint.kind != "aidp" and not isinstance(auth, OCIRequestSigner):
        return _mlflow_auth_name(auth)
    mode = str(getattr(auth, "mode", type(auth).__name__))
    text = f"OCI request signing, mode {mode}"
    if mode in ("api_key", "security_token"):
        profile, path = _profile_location(options)
        text += f", profile {profile} in {path}"
        fingerprint = _profile_keys(options).get("fingerprint")
        if fingerprint and mode == "api_key":
            text += f", key fingerprint {fingerprint}"
    if tracking_auth_name() == AIDP_PROVIDER:
        text += " (MLflow request-auth provider 'aidp', from MLFLOW_TRACKING_AUTH)"
    return text


def _mlflow_auth_name(auth: object) -> str:
    if auth is None:
        return (
            "none (no user:password in the tracking URI, no MLFLOW_TRACKING_USERNAME/PASSWORD "
            "or MLFLOW_TRACKING_TOKEN set)"
        )
    from .auth import BearerToken

    kind = "bearer token" if isinstance(auth, BearerToken) else "basic"
    return f"{kind} (from {_source(auth)})"


def _source(auth: object) -> str:
    return str(getattr(auth, "source", None) or type(auth).__name__)


def _ignored_mlflow_credentials(endpoint: Endpoint, auth: object) -> list[str]:
    """The MLFLOW_TRACKING_* credential variables that are set but lose to `auth`."""
    if endpoint.kind != "mlflow" or auth is None:
        return []
    from .auth import ENV_BASIC_SOURCE

    ignored = []
    if _source(auth) != ENV_BASIC_SOURCE and (
        os.environ.get("MLFLOW_TRACKING_USERNAME") or os.environ.get("MLFLOW_TRACKING_PASSWORD")
    ):
        ignored.append("MLFLOW_TRACKING_USERNAME/PASSWORD")
    if _source(auth) != "MLFLOW_TRACKING_TOKEN" and os.environ.get("MLFLOW_TRACKING_TOKEN"):
        ignored.append("MLFLOW_TRACKING_TOKEN")
    return ignored
