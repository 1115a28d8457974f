"""Where requests go: an AIDP workspace's MLOps API or a plain MLflow tracking server."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote, unquote, urlsplit

from aidp_metrics._env import (
    AIDP_ENDPOINT,
    AIDP_INSTANCE_ID,
    AIDP_USER_PRINCIPAL,
    AIDP_WORKSPACE_KEY,
    MLFLOW_TRACKING_URI,
    OCI_CLI_ENDPOINT,
    OCI_CLI_REGION,
)
from aidp_metrics._errors import ConfigurationError, NoEndpointConfigured
from aidp_metrics._redact import redact_url

DEFAULT_API_VERSION = "20260430"
MLFLOW_API_PREFIX = "api/2.0/mlflow"

EndpointKind = Literal["aidp", "mlflow"]

_AIDP_USERINFO = (
    "AIDP endpoint {url!r} must not contain a user name or password: AIDP requests are "
    "signed with your OCI credentials"
)
_AIDP_VARIABLES = "AIDP_INSTANCE_ID and AIDP_WORKSPACE_KEY (plus OCI_CLI_REGION or AIDP_ENDPOINT)"
# An AIDP workspace's MLOps root, as a tracking URI: `{host}/{api version}/aiDataPlatforms/
# {id}/workspaces/{key}/mlops` (any path before the version is kept: one Oracle page has `/api`).
_AIDP_WORKSPACE_PATH = re.compile(
    r"/\d{8}/aiDataPlatforms/(?P<instance>[^/]+)/workspaces/(?P<workspace>[^/]+)"
    r"/mlops/?$"
)
# aidp-cli's host (`aidp.{region}...`) and the generated SDK's (`datalake.{region}...`).
_AIDP_HOST = re.compile(r"^(?:aidp|datalake)\.(?P<region>[a-z0-9-]+)\.oci\.")


class BasicCredential:
    """A username and password for HTTP Basic auth, and where they came from.

    Neither value ever appears in `repr`, `str` or `dataclasses.asdict` output (the object
    is kept whole, so it cannot be serialised by accident).
    """

    __slots__ = ("_password", "_username", "source")

    def __init__(self, username: str, password: str, *, source: str) -> None:
        self._username = username
        self._password = password
        self.source = source

    @property
    def username(self) -> str:
        return self._username

    @property
    def password(self) -> str:
        return self._password

    def __repr__(self) -> str:
        return f"BasicCredential(source={self.source!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BasicCredential):
            return NotImplemented
        return (self._username, self._password) == (other._username, other._password)

    def __hash__(self) -> int:
        return hash((self._username, self._password))


@dataclass(frozen=True)
class Endpoint:
    """The root of the MLflow REST API the client talks to.

    `base_url` ends where the MLflow path (`api/2.0/mlflow/...`) begins: the workspace's
    `.../mlops` for AIDP, the tracking URI for MLflow. It never holds credentials: a
    tracking URI's `user:password@` becomes `credential` (HTTP Basic auth) when the
    endpoint is built, so no request URL, log line, error or file can carry it.
    """

    kind: EndpointKind
    base_url: str
    user_principal: str | None = None
    region: str | None = None
    instance_id: str | None = None
    workspace_key: str | None = None
    credential: BasicCredential | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # Also for endpoints built directly or with dataclasses.replace().
        bare, userinfo = _split_userinfo(self.base_url, "base URL")
        if userinfo is None:
            return
        if self.kind == "aidp":
            raise ConfigurationError(_AIDP_USERINFO.format(url=redact_url(self.base_url)))
        object.__setattr__(self, "base_url", bare)
        object.__setattr__(self, "credential", _credential(userinfo, "the base URL"))

    @classmethod
    def aidp(
        cls,
        instance_id: str,
        workspace_key: str,
        *,
        region: str | None = None,
        endpoint: str | None = None,
        api_version: str = DEFAULT_API_VERSION,
        user_principal: str | None = None,
    ) -> Endpoint:
        if not instance_id:
            raise ConfigurationError("AIDP instance id is empty: set AIDP_INSTANCE_ID")
        if not workspace_key:
            raise ConfigurationError("AIDP workspace key is empty: set AIDP_WORKSPACE_KEY")
        if endpoint:
            host = endpoint.strip().rstrip("/")
            _check_aidp_url(host)
        elif region:
            host = f"https://aidp.{region}.oci.oraclecloud.com"
        else:
            raise ConfigurationError(
                "AIDP endpoint needs a region or an explicit endpoint: "
                "set OCI_CLI_REGION (or `region` in the OCI profile) or AIDP_ENDPOINT"
            )
        version_suffix = f"/{api_version}"
        root = host if host.endswith(version_suffix) else host + version_suffix
        base = (
            f"{root}/aiDataPlatforms/{quote(instance_id, safe='')}"
            f"/workspaces/{quote(workspace_key, safe='')}/mlops"
        )
        return cls(
            kind="aidp",
            base_url=base,
            user_principal=user_principal or None,
            region=region,
            instance_id=instance_id,
            workspace_key=workspace_key,
        )

    @classmethod
    def mlflow(cls, tracking_uri: str, *, source: str = "the tracking URI") -> Endpoint:
        """The endpoint a tracking URI names: an MLflow tracking server, where
        `http://user:password@host` gives Basic auth, or an AIDP workspace's MLOps URL
        (`https://aidp.{region}.oci.oraclecloud.com/20260430/aiDataPlatforms/{id}/workspaces/
        {key}/mlops`), which is an AIDP endpoint (OCI request signing, AIDP headers).

        `source` names where the URI came from (`MLFLOW_TRACKING_URI`, `--tracking-uri`),
        for doctor's "basic (from ...)" line.
        """
        uri = tracking_uri.strip().rstrip("/")
        scheme, separator, _ = uri.partition("://")
        if not separator or scheme.lower() not in ("http", "https"):
            raise ConfigurationError(
                f"MLflow tracking URI {redact_url(uri)!r} is not an http(s) URL; aidp-metrics "
                "talks to a tracking server's REST API (e.g. http://127.0.0.1:5000)"
            )
        workspace = _AIDP_WORKSPACE_PATH.search(urlsplit(uri).path)
        if workspace is not None:
            return cls._aidp_workspace(uri, workspace)
        bare, userinfo = _split_userinfo(uri, "MLflow tracking URI")
        credential = _credential(userinfo, source) if userinfo is not None else None
        return cls(kind="mlflow", base_url=bare, credential=credential)

    @classmethod
    def _aidp_workspace(cls, uri: str, workspace: re.Match[str]) -> Endpoint:
        """An AIDP workspace's MLOps URL given as a tracking URI: OCI-signed like any AIDP
        endpoint (`dh-user-principal` from `AIDP_USER_PRINCIPAL`)."""
        _check_aidp_url(uri)
        host = urlsplit(uri).hostname or ""
        region = _AIDP_HOST.match(host)
        return cls(
            kind="aidp",
            base_url=uri,
            user_principal=os.environ.get(AIDP_USER_PRINCIPAL, "").strip() or None,
            region=region.group("region") if region else None,
            instance_id=unquote(workspace.group("instance")),
            workspace_key=unquote(workspace.group("workspace")),
        )

    @classmethod
    def from_env(cls) -> Endpoint:
        """Resolve the endpoint from the environment, read now (never at import)."""
        env = os.environ
        instance_id = env.get(AIDP_INSTANCE_ID, "").strip()
        workspace_key = env.get(AIDP_WORKSPACE_KEY, "").strip()
        explicit = (env.get(AIDP_ENDPOINT) or env.get(OCI_CLI_ENDPOINT) or "").strip()
        if instance_id or workspace_key:
            missing = [
                name
                for name, value in (
                    (AIDP_INSTANCE_ID, instance_id),
                    (AIDP_WORKSPACE_KEY, workspace_key),
                )
                if not value
            ]
            if missing:
                names = " and ".join(missing)
                raise ConfigurationError(f"AIDP endpoint is incomplete: set {names}")
            region = env.get(OCI_CLI_REGION, "").strip() or None
            if region is None and not explicit:
                from .oci_config import profile_region

                region = profile_region()
            return cls.aidp(
                instance_id,
                workspace_key,
                region=region,
                endpoint=explicit or None,
                user_principal=env.get(AIDP_USER_PRINCIPAL, "").strip() or None,
            )
        tracking_uri = env.get(MLFLOW_TRACKING_URI, "").strip()
        if tracking_uri:
            return cls.mlflow(tracking_uri, source=MLFLOW_TRACKING_URI)
        if explicit:
            raise ConfigurationError(
                f"AIDP_ENDPOINT is set but the workspace is not: set {_AIDP_VARIABLES}"
            )
        raise NoEndpointConfigured(
            f"No tracking endpoint configured: set {_AIDP_VARIABLES} for Oracle AI Data "
            "Platform, or MLFLOW_TRACKING_URI for an MLflow tracking server"
        )

    def __repr__(self) -> str:
        credential = f", credential={self.credential!r}" if self.credential else ""
        return f"Endpoint(kind={self.kind!r}, base_url={self.base_url!r}{credential})"

    def url(self, path: str) -> str:
        """Absolute URL of an MLflow REST call such as `runs/log-metric`."""
        return f"{self.base_url}/{MLFLOW_API_PREFIX}/{path}"

    def run_page_url(self, run_id: str, experiment_id: str | None = None) -> str | None:
        """The run's page in the tracking server's web UI, safe to print; None for AIDP,
        whose UI address cannot be derived from the API's.

        Without the experiment id it is MLflow's direct run route (`#/runs/{run_id}`),
        which the UI redirects to the run's page in its experiment.
        """
        if self.kind != "mlflow":
            return None
        run = quote(run_id, safe="")
        if experiment_id is None:
            return f"{self.base_url}/#/runs/{run}"
        return f"{self.base_url}/#/experiments/{quote(experiment_id, safe='')}/runs/{run}"

    def public_url(self) -> str:
        """The base URL, safe to print or store: it never holds credentials."""
        return self.base_url

    def describe(self) -> str:
        """One line for humans; holds no secret."""
        if self.kind == "aidp":
            return (
                f"AIDP instance {self.instance_id} workspace {self.workspace_key} "
                f"at {urlsplit(self.base_url).netloc}"
            )
        return f"MLflow tracking server {self.base_url}"


def _check_aidp_url(url: str) -> None:
    _, userinfo = _split_userinfo(url, "AIDP endpoint")
    if userinfo is not None:
        raise ConfigurationError(_AIDP_USERINFO.format(url=redact_url(url)))
    parts = urlsplit(url)
    if parts.scheme == "https":
        return
    if parts.scheme == "http" and _is_loopback(parts.hostname or ""):
        return
    raise ConfigurationError(
        f"AIDP endpoint {redact_url(url)!r} must use https:// (plain http is only accepted for "
        "a loopback test gateway)"
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _split_userinfo(url: str, label: str) -> tuple[str, str | None]:
    """`url` without its `user:password@` part, and that part (None when there is none).

    Also checks that the host and port can be read: httpx's own errors for a bad
    authority quote it, and a mistyped one (`http://alice:S3cret/`) holds a password.
    """
    try:
        parts = urlsplit(url)
        hostname, _ = parts.hostname, parts.port
    except ValueError:
        raise ConfigurationError(
            f"{label} has an unreadable host or port (not shown: it may hold a password); "
            "expected scheme://host[:port][/path]"
        ) from None
    if not hostname:
        raise ConfigurationError(f"{label} {redact_url(url)!r} has no host name")
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return url, None
    return parts._replace(netloc=host).geturl(), userinfo


def _credential(userinfo: str, source: str) -> BasicCredential:
    # As httpx and curl do, a user name alone is sent with an empty password.
    username, _, password = userinfo.partition(":")
    return BasicCredential(unquote(username), unquote(password), source=source)
