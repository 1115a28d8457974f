"""Where requests go: an AIDP workspace's MLOps API, a plain MLflow tracking server, or an
MLflow store that MLflow's own client opens (`file:`, `sqlite:`, `postgresql:`, `databricks`)."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
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

EndpointKind = Literal["aidp", "mlflow", "store"]

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
# `localhost:5000`, `127.0.0.1:5000/`: a server address without its `http://`, which MLflow
# would take for a scheme (or a local directory) and fail on, or log into, far from here.
_HOST_PORT = re.compile(r"^[\w.-]+:\d+(?:/.*)?$")
# The stores MLflow's client opens itself (its tracking store registry, `+driver` allowed for
# the databases); a plugin's scheme is found through its `mlflow.tracking_store` entry point.
_MLFLOW_STORE_SCHEMES = frozenset(
    {"file", "sqlite", "postgresql", "mysql", "mssql", "databricks", "databricks-uc", "uc"}
)
_STORE_PLUGINS = "mlflow.tracking_store"


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


class StoreURI:
    """The tracking URI MLflow's client opens, whole (a database URI's password included).

    Only the store client reads `uri`; `repr` and `str` show it redacted.
    """

    __slots__ = ("_uri",)

    def __init__(self, uri: str) -> None:
        self._uri = uri

    @property
    def uri(self) -> str:
        return self._uri

    def __repr__(self) -> str:
        return f"StoreURI({redact_url(self._uri)!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StoreURI):
            return NotImplemented
        return self._uri == other._uri

    def __hash__(self) -> int:
        return hash(self._uri)


@dataclass(frozen=True)
class Endpoint:
    """The root of the MLflow REST API the client talks to.

    `base_url` ends where the MLflow path (`api/2.0/mlflow/...`) begins: the workspace's
    `.../mlops` for AIDP, the tracking URI for MLflow. It never holds credentials: a
    tracking URI's `user:password@` becomes `credential` (HTTP Basic auth) when the
    endpoint is built, so no request URL, log line, error or file can carry it.

    A `store` endpoint is a tracking URI MLflow's own client opens (no REST API of ours):
    `store_uri` holds it whole, `base_url` redacted (a database URI's password masked).
    """

    kind: EndpointKind
    base_url: str
    user_principal: str | None = None
    region: str | None = None
    instance_id: str | None = None
    workspace_key: str | None = None
    credential: BasicCredential | None = field(default=None, repr=False)
    store_uri: StoreURI | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # Also for endpoints built directly or with dataclasses.replace().
        if self.kind == "store":
            if self.store_uri is None:
                object.__setattr__(self, "store_uri", StoreURI(self.base_url))
                object.__setattr__(self, "base_url", redact_url(self.base_url))
            return
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
        {key}/mlops`), which is an AIDP endpoint (OCI request signing, AIDP headers). Any
        other URI (`file:`, a local path, `sqlite:`, `postgresql:`, `databricks`, ...) is a
        store MLflow's own client opens (`kind == "store"`; see `store_endpoint`).

        `source` names where the URI came from (`MLFLOW_TRACKING_URI`, `--tracking-uri`),
        for doctor's "basic (from ...)" line.
        """
        uri = tracking_uri.strip()
        scheme, separator, _ = uri.partition("://")
        if not separator or scheme.lower() not in ("http", "https"):
            return store_endpoint(uri)
        uri = uri.rstrip("/")
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
        if self.kind == "store":
            raise ConfigurationError(
                f"{self.describe()} has no REST API (MLflow's client opens it)"
            )
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
        if self.kind == "store":
            return f"MLflow store {self.base_url}"
        if self.kind == "aidp":
            return (
                f"AIDP instance {self.instance_id} workspace {self.workspace_key} "
                f"at {urlsplit(self.base_url).netloc}"
            )
        return f"MLflow tracking server {self.base_url}"


def store_endpoint(uri: str) -> Endpoint:
    """A tracking URI that MLflow's own client opens. A local one (`file:`, a bare path,
    `sqlite:///`) is made absolute against the working directory now, as MLflow makes its
    default one: a later `chdir` (Hydra's) must not move the store."""
    if not uri:
        raise ConfigurationError("MLflow tracking URI is empty")
    if _HOST_PORT.match(uri):
        raise ConfigurationError(
            f"MLflow tracking URI {redact_url(uri)!r} looks like a server address without "
            f"its scheme: use http://{redact_url(uri)}"
        )
    if uri.lower() in _MLFLOW_STORE_SCHEMES:  # `databricks`: MLflow's name, not a path
        scheme = uri.lower()
    else:
        scheme = urlsplit(uri).scheme.lower() if ":" in uri else ""
    if not _is_store_scheme(scheme):
        raise ConfigurationError(
            f"MLflow tracking URI {redact_url(uri)!r} is neither an http(s) URL (a tracking "
            "server, e.g. http://127.0.0.1:5000) nor a store MLflow's client opens (a local "
            "path, file:, sqlite:, postgresql:, mysql:, mssql:, databricks)"
        )
    if scheme in ("", "file"):
        uri = _local_file_uri(uri, scheme)
    elif scheme == "sqlite":
        uri = _absolute_sqlite_uri(uri)
    return Endpoint(kind="store", base_url=uri)


def _is_store_scheme(scheme: str) -> bool:
    if scheme in ("", "http", "https"):  # here `http:` is an http URL without its `//`
        return scheme == ""
    if scheme.partition("+")[0] in _MLFLOW_STORE_SCHEMES:
        return True
    from importlib.metadata import entry_points

    return any(plugin.name == scheme for plugin in entry_points(group=_STORE_PLUGINS))


def _local_file_uri(uri: str, scheme: str) -> str:
    """`file:./mlruns`, `file:///abs`, `./mlruns`, `/abs` as `file:///absolute/path`."""
    if scheme == "file":
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            return uri  # a network share: MLflow's to judge
        path = unquote(parts.path)
    else:
        path = uri
    return Path(os.path.abspath(os.path.expanduser(path))).as_uri()


def _absolute_sqlite_uri(uri: str) -> str:
    """`sqlite:///relative.db` as `sqlite:////absolute/relative.db` (what MLflow does with
    its default `sqlite:///mlflow.db`); `sqlite://` (in memory) and absolute ones as given."""
    prefix = "sqlite:///"
    if not uri.lower().startswith(prefix):
        return uri
    path, question, query = uri[len(prefix) :].partition("?")
    if not path or path.startswith("/") or path == ":memory:":
        return uri
    return f"{prefix}{os.path.abspath(path)}{question}{query}"


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
