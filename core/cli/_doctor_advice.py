"""What doctor says about the credentials in use and, for each failure, what to change.

Credentials are named by where they came from (a variable, a profile, a file), never shown.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from aidp_metrics._connection.endpoint import Endpoint
from aidp_metrics._env import (
    MLFLOW_TRACKING_PASSWORD,
    MLFLOW_TRACKING_TOKEN,
    MLFLOW_TRACKING_USERNAME,
    OCI_CLI_AUTH,
)
from aidp_metrics._errors import ConfigurationError

from ._connection import ConnectionOptions

if TYPE_CHECKING:
    import httpx

_PRECEDENCE = "MLflow's order: user:password in the URI, USERNAME/PASSWORD, TOKEN"


def host(endpoint: Endpoint) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(endpoint.public_url())
    return parts.netloc


def unreachable_fixes(endpoint: Endpoint) -> list[str]:
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


def unauthorized_fixes(
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
            fixes.append(f"the server refused the credentials from {source(auth)}: check them")
        return fixes
    fixes += _oci_fixes(str(getattr(auth, "mode", None)), options)
    fixes.append("a wrong AIDP_INSTANCE_ID or region can also answer 401")
    return fixes


def _oci_fixes(mode: str, options: ConnectionOptions) -> list[str]:
    """What to check when AIDP refused the OCI signature made in `mode`."""
    profile, path = profile_location(options)
    keys = profile_keys(options)
    fixes: list[str] = []
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
    return fixes


def not_found_fixes(endpoint: Endpoint) -> list[str]:
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


def profile_location(options: ConnectionOptions) -> tuple[str, str]:
    from aidp_metrics._connection.oci_config import resolve_location

    path, name = resolve_location(options.config_file, options.profile)
    return name, str(path)


def profile_keys(options: ConnectionOptions) -> dict[str, str]:
    from aidp_metrics._connection.oci_config import read_profile

    try:
        return read_profile(options.config_file, options.profile)
    except ConfigurationError:
        return {}


def auth_wanted(endpoint: Endpoint, options: ConnectionOptions) -> str:
    from aidp_metrics._connection.request_auth import AIDP_PROVIDER, tracking_auth_name

    provider = tracking_auth_name()
    if provider is not None and provider != AIDP_PROVIDER:
        return f"MLflow request-auth provider {provider!r} (from MLFLOW_TRACKING_AUTH)"
    if endpoint.kind != "aidp":
        return "MLflow basic / bearer auth from the tracking URI or MLFLOW_TRACKING_* variables"
    mode = options.auth or os.environ.get(OCI_CLI_AUTH) or "auto (api_key or security_token)"
    profile, path = profile_location(options)
    return f"OCI request signing, mode {mode}, profile {profile} in {path}"


def auth_description(
    endpoint: Endpoint, auth: httpx.Auth | None, options: ConnectionOptions
) -> str:
    from aidp_metrics._connection.auth import OCIRequestSigner
    from aidp_metrics._connection.request_auth import (
        AIDP_PROVIDER,
        ProviderAuth,
        tracking_auth_name,
    )

    if isinstance(auth, ProviderAuth):
        return auth.describe()
    if endpoint.kind != "aidp" and not isinstance(auth, OCIRequestSigner):
        return _mlflow_auth_name(auth)
    mode = str(getattr(auth, "mode", type(auth).__name__))
    text = f"OCI request signing, mode {mode}"
    if mode in ("api_key", "security_token"):
        profile, path = profile_location(options)
        text += f", profile {profile} in {path}"
        fingerprint = profile_keys(options).get("fingerprint")
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
    from aidp_metrics._connection.auth import BearerToken

    kind = "bearer token" if isinstance(auth, BearerToken) else "basic"
    return f"{kind} (from {source(auth)})"


def source(auth: object) -> str:
    return str(getattr(auth, "source", None) or type(auth).__name__)


def ignored_credential_notes(endpoint: Endpoint, auth: object) -> list[str]:
    """A note for each MLFLOW_TRACKING_* credential variable that is set but loses to `auth`."""
    if endpoint.kind != "mlflow" or auth is None:
        return []
    from aidp_metrics._connection.auth import ENV_BASIC_SOURCE

    ignored = []
    if source(auth) != ENV_BASIC_SOURCE and (
        os.environ.get(MLFLOW_TRACKING_USERNAME) or os.environ.get(MLFLOW_TRACKING_PASSWORD)
    ):
        ignored.append("MLFLOW_TRACKING_USERNAME/PASSWORD")
    if source(auth) != MLFLOW_TRACKING_TOKEN and os.environ.get(MLFLOW_TRACKING_TOKEN):
        ignored.append(MLFLOW_TRACKING_TOKEN)
    return [f"{name} is set but not used: {source(auth)} wins ({_PRECEDENCE})" for name in ignored]
