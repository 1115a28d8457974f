"""`aidp`: the MLflow request-auth provider that lets MLflow's own client talk to AIDP.

    MLFLOW_TRACKING_URI=https://aidp.{region}.oci.oraclecloud.com/20260430/aiDataPlatforms/{id}/workspaces/{key}/mlops
    MLFLOW_TRACKING_AUTH=aidp

Registered under the entry point group `mlflow.request_auth_provider` (pyproject.toml).
Every request MLflow's client sends (fluent API, `MlflowClient`, async logging, system
metrics, Lightning's `MLFlowLogger`, Transformers' callback, autolog) is then OCI-signed
with the configuration aidp-metrics reads (`OCI_CLI_AUTH`, `OCI_CLI_PROFILE`,
`OCI_CLI_CONFIG_FILE`), and AIDP's `{"code", "message"}` error bodies become readable to
MLflow (see `aidp_metrics._connection.oci_requests_auth`).

MLflow instantiates every registered provider when its registry module is imported, so
constructing the provider does nothing: no import of MLflow, `oci`, `requests` or httpx,
no file read. The signer is built on the first `get_auth()` and kept until the
configuration it was built from changes. While aidp-metrics uploads a run's artifacts through
MLflow's client, that thread's requests are signed with the run's own signer instead
(`aidp_metrics._connection.auth.mlflow_credentials_in_scope`).
"""

from __future__ import annotations

import os
import threading
from typing import Any

from aidp_metrics._env import (
    AIDP_USER_PRINCIPAL,
    OCI_CLI_AUTH,
    OCI_CLI_CONFIG_FILE,
    OCI_CLI_PROFILE,
    OCI_CONFIG_FILE,
)

PROVIDER_NAME = "aidp"
# What the signer is built from; a change (a test, a notebook cell) builds a new one.
_CONFIG_VARIABLES = (
    OCI_CLI_AUTH,
    OCI_CLI_PROFILE,
    OCI_CLI_CONFIG_FILE,
    OCI_CONFIG_FILE,
    AIDP_USER_PRINCIPAL,
)


class AIDPRequestAuthProvider:
    """MLflow's `RequestAuthProvider` interface (`get_name`, `get_auth`), without importing
    MLflow: its registry only instantiates the class and calls these two methods."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._config: tuple[str | None, ...] | None = None
        self._auth: Any = None

    def __repr__(self) -> str:
        return "AIDPRequestAuthProvider()"

    def get_name(self) -> str:
        return PROVIDER_NAME

    def get_auth(self) -> Any:
        """A `requests` auth object (`OCIRequestsAuth`); raises `ConfigurationError` with
        what to set when the OCI configuration cannot be loaded."""
        from aidp_metrics._connection.auth import scoped_mlflow_credentials
        from aidp_metrics._connection.oci_requests_auth import AIDPHeaders, OCIRequestsAuth

        scoped = scoped_mlflow_credentials()
        if scoped is not None and scoped.signer is not None:
            return OCIRequestsAuth(scoped.signer, user_principal=scoped.user_principal)
        if scoped is not None and scoped.provider is not None:
            inner = scoped.provider.get_auth()
            return AIDPHeaders(inner, user_principal=scoped.user_principal)
        config = tuple(os.environ.get(name) for name in _CONFIG_VARIABLES)
        with self._lock:
            if self._auth is None or config != self._config:
                self._auth = OCIRequestsAuth.from_env()
                self._config = config
            return self._auth
