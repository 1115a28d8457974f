"""Where requests go: an AIDP workspace's MLOps API or a plain MLflow tracking server."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote, urlsplit

from .errors import ConfigurationError, NoEndpointConfigured

DEFAULT_API_VERSION = "20260430"
MLFLOW_API_PREFIX = "api/2.0/mlflow"

EndpointKind = Literal["aidp", "mlflow"]

_AIDP_VARIABLES = "AIDP_INSTANCE_ID and AIDP_WORKSPACE_KEY (plus OCI_CLI_REGION or AIDP_ENDPOINT)"


@dataclass(frozen=True)
class Endpoint:
    """The root of the MLflow REST API the client talks to.

    `base_url` ends where the MLflow path (`api/2.0/mlflow/...`) begins: the workspace's
    `.../mlops` for AIDP, the tracking URI for MLflow.
    """

    kind: EndpointKind
    base_url: str
    user_principal: str | None = None
    region: str | None = None
    instance_id: str | None = None
    workspace_key: str | None = None

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
            host = endpoint.rstrip("/")
            _check_aidp_scheme(host)
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
    def mlflow(cls, tracking_uri: str) -> Endpoint:
        uri = tracking_uri.strip().rstrip("/")
        scheme = urlsplit(uri).scheme
        if scheme not in ("http", "https"):
            raise ConfigurationError(
                f"MLflow tracking URI {tracking_uri!r} is not an http(s) URL; aidp-metrics talks "
                "to a tracking server's REST API (e.g. http://127.0.0.1:5000)"
            )
        return cls(kind="mlflow", base_url=uri)

    @classmethod
    def from_env(cls) -> Endpoint:
        """Resolve the endpoint from the environment, read now (never at import)."""
        env = os.environ
        instance_id = env.get("AIDP_INSTANCE_ID", "").strip()
        workspace_key = env.get("AIDP_WORKSPACE_KEY", "").strip()
        explicit = (env.get("AIDP_ENDPOINT") or env.get("OCI_CLI_ENDPOINT") or "").strip()
        if instance_id or workspace_key:
            missing = [
                name
                for name, value in (
                    ("AIDP_INSTANCE_ID", instance_id),
                    ("AIDP_WORKSPACE_KEY", workspace_key),
                )
                if not value
            ]
            if missing:
                names = " and ".join(missing)
                raise ConfigurationError(f"AIDP endpoint is incomplete: set {names}")
            region = env.get("OCI_CLI_REGION", "").strip() or None
            if region is None and not explicit:
                from .oci_config import profile_region

                region = profile_region()
            return cls.aidp(
                instance_id,
                workspace_key,
                region=region,
                endpoint=explicit or None,
                user_principal=env.get("AIDP_USER_PRINCIPAL", "").strip() or None,
            )
        tracking_uri = env.get("MLFLOW_TRACKING_URI", "").strip()
        if tracking_uri:
            return cls.mlflow(tracking_uri)
        if explicit:
            raise ConfigurationError(
                f"AIDP_ENDPOINT is set but the workspace is not: set {_AIDP_VARIABLES}"
            )
        raise NoEndpointConfigured(
            f"No tracking endpoint configured: set {_AIDP_VARIABLES} for Oracle AI Data "
            "Platform, or MLFLOW_TRACKING_URI for an MLflow tracking server"
        )

    def __repr__(self) -> str:
        return f"Endpoint(kind={self.kind!r}, base_url={_without_userinfo(self.base_url)!r})"

    def url(self, path: str) -> str:
        """Absolute URL of an MLflow REST call such as `runs/log-metric`."""
        return f"{self.base_url}/{MLFLOW_API_PREFIX}/{path}"

    def public_url(self) -> str:
        """`base_url` without any user:password part, safe to print or store."""
        return _without_userinfo(self.base_url)

    def describe(self) -> str:
        """One line for humans; holds no secret (endpoints never carry credentials)."""
        if self.kind == "aidp":
            return (
                f"AIDP instance {self.instance_id} workspace {self.workspace_key} "
                f"at {urlsplit(self.base_url).netloc}"
            )
        return f"MLflow tracking server {_without_userinfo(self.base_url)}"


def _check_aidp_scheme(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == "https":
        return
    if parts.scheme == "http" and _is_loopback(parts.hostname or ""):
        return
    raise ConfigurationError(
        f"AIDP endpoint {url!r} must use https:// (plain http is only accepted for a "
        "loopback test gateway)"
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()
