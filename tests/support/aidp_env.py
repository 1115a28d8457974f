"""Child processes that use MLflow's own client against the AIDP gateway, and the check
that every request they sent was signed with the expected key and carried AIDP's headers."""

from __future__ import annotations

import os
import re
from pathlib import Path

from tests.support.gateway import AIDPGateway, RecordedRequest
from tests.support.oci_keys import OCICredentials

ROOT = Path(__file__).resolve().parent.parent.parent
USER_PRINCIPAL = "alice@example.com"
_KEY_ID = re.compile(r'keyId="([^"]*)"')


def child_env(gateway: AIDPGateway, creds: OCICredentials, mode: str) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("MLFLOW_", "OCI_", "AIDP_")) or name == "AIDP_METRICS_DIR"
    }
    env.update(
        MLFLOW_TRACKING_URI=gateway.tracking_uri,
        MLFLOW_TRACKING_AUTH="aidp",
        OCI_CLI_CONFIG_FILE=str(creds.config_file),
        OCI_CLI_PROFILE=creds.profile,
        OCI_CLI_AUTH=mode,
        AIDP_USER_PRINCIPAL=USER_PRINCIPAL,
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
    )
    return env


def assert_every_request_signed(gateway: AIDPGateway, creds: OCICredentials) -> None:
    sent = gateway.requests
    assert sent
    assert gateway.auth_failures == []
    for request in sent:
        assert key_id(request) == creds.key_id
        assert request.headers.get("opc-request-id")
        assert request.headers["dh-user-principal"] == USER_PRINCIPAL
        assert request.method == "GET" or request.retry_token


def _key_id(request: RecordedRequest) -> str | None:
    found = _KEY_ID.search(request.headers.get("authorization", ""))
    return found.group(1) if found else None


def key_id(request: RecordedRequest) -> str | None:
    """The keyId of the request's OCI signature."""
    found = _KEY_ID.search(request.headers.get("authorization", ""))
    return found.group(1) if found else None
