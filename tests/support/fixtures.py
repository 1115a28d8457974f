"""Pytest fixtures: a real MLflow server, OCI credentials and an AIDP gateway in front."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from tests.support.chaos_proxy import ChaosProxy
from tests.support.gateway import AIDPGateway
from tests.support.mlflow_server import MLflowServer
from tests.support.oci_keys import OCICredentials, write_oci_config

if TYPE_CHECKING:
    from aidp_metrics import MetricsClient


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLflowServer]:
    """One real MLflow server per session (per xdist worker)."""
    with MLflowServer(tmp_path_factory.mktemp("mlflow")) as server:
        yield server


@pytest.fixture(scope="session")
def _oci_credentials(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[OCICredentials, OCICredentials]:
    return write_oci_config(tmp_path_factory.mktemp("oci"))


@pytest.fixture(scope="session")
def oci_api_key(_oci_credentials: tuple[OCICredentials, OCICredentials]) -> OCICredentials:
    """The ``API_KEY`` profile of a generated OCI config file."""
    return _oci_credentials[0]


@pytest.fixture(scope="session")
def oci_security_token(
    _oci_credentials: tuple[OCICredentials, OCICredentials],
) -> OCICredentials:
    """The ``SESSION`` (security token) profile of the same config file."""
    return _oci_credentials[1]


@pytest.fixture
def aidp_gateway(
    mlflow_server: MLflowServer, oci_api_key: OCICredentials, oci_security_token: OCICredentials
) -> Iterator[AIDPGateway]:
    """A fresh gateway per test, in front of the session's MLflow server, both keys registered."""
    mlflow_server.start()  # no-op unless an earlier test left it stopped
    with AIDPGateway(mlflow_server.url) as gateway:
        gateway.register_key(oci_api_key.key_id, oci_api_key.public_key_pem)
        gateway.register_key(oci_security_token.key_id, oci_security_token.public_key_pem)
        yield gateway


@pytest.fixture
def fresh_experiment(request: pytest.FixtureRequest) -> str:
    """A unique experiment name for this test."""
    name = re.sub(r"[^\w.-]+", "-", request.node.name)[:60]
    return f"{name}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def chaos_proxy(mlflow_server: MLflowServer) -> Iterator[ChaosProxy]:
    """A fault-injecting proxy in front of the session's MLflow server, fresh per test."""
    mlflow_server.start()  # no-op unless an earlier test left it stopped
    with ChaosProxy(mlflow_server.url) as proxy:
        yield proxy


@pytest.fixture
def gateway_client(
    aidp_gateway: AIDPGateway, oci_api_key: OCICredentials
) -> Iterator[MetricsClient]:
    """A MetricsClient for the AIDP gateway, signing with the API-key profile."""
    from aidp_metrics import Endpoint, MetricsClient
    from aidp_metrics._connection.auth import oci_signer_auth

    endpoint = Endpoint.aidp(
        aidp_gateway.instance_id, aidp_gateway.workspace_key, endpoint=aidp_gateway.url
    )
    auth = oci_signer_auth(
        "api_key", config_file=oci_api_key.config_file, profile=oci_api_key.profile
    )
    with MetricsClient(endpoint, auth=auth) as client:
        yield client
