"""The `aidp` MLflow request-auth provider: MLflow's own client (fluent API, Lightning's
`MLFlowLogger`) with `MLFLOW_TRACKING_AUTH=aidp` and an AIDP workspace URL as
`MLFLOW_TRACKING_URI`, against the signature-verifying AIDP gateway in front of the real
MLflow server. Every request must verify, the run must end FINISHED with its points (read
back from the server), and AIDP's `{"code", "message"}` errors must read to MLflow as its
own (a new experiment name is created, not an error).

MLflow runs in a child process (tests/support/mlflow_client_job.py): its registry finds
the provider through the installed distribution's entry point, as in a user's environment.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import httpx
import pytest
import tomllib

from tests.support.aidp_env import ROOT, assert_every_request_signed, child_env
from tests.support.gateway import AIDPGateway
from tests.support.mlflow_server import MLflowServer, get_metric_history, get_run
from tests.support.oci_keys import OCICredentials
from tests.support.scripts import run_script

pytest.importorskip("oci")
pytest.importorskip("mlflow")


def run_job(job: str, experiment: str, env: dict[str, str], *args: str) -> dict[str, Any]:
    job_args = ["-m", "tests.support.mlflow_client_job", job, experiment, *args]
    result = run_script(job_args, env, ROOT, label=job)
    output = f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
    assert "Could not find any registered plugin" not in result.stderr, output
    ids: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return ids


def points(server: MLflowServer, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m["step"], m["value"]) for m in get_metric_history(server.url, run_id, key)]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["api_key", "security_token"])
def test_mlflow_fluent_api_through_the_aidp_provider(
    mode: str,
    aidp_gateway: AIDPGateway,
    oci_api_key: OCICredentials,
    oci_security_token: OCICredentials,
    mlflow_server: MLflowServer,
    fresh_experiment: str,
) -> None:
    creds = oci_api_key if mode == "api_key" else oci_security_token
    # AIDP's own not-found code (not MLflow's) on the lookup of the new experiment name: it
    # must still read as RESOURCE_DOES_NOT_EXIST, so that set_experiment creates it.
    aidp_gateway.inject(
        "experiments/get-by-name", status=404, code="NotAuthorizedOrNotFound", times=1
    )
    if mode == "security_token":  # an expired session: refreshed once, the write re-sent
        aidp_gateway.inject("runs/log-metric", status=401, code="NotAuthenticated", times=1)

    ids = run_job("fluent", fresh_experiment, child_env(aidp_gateway, creds, mode))

    assert_every_request_signed(aidp_gateway, creds)
    injected = [r.path.rsplit("/", 1)[-1] for r in aidp_gateway.requests if r.injected]
    assert injected == ["get-by-name"] + (["log-metric"] if mode == "security_token" else [])
    assert aidp_gateway.requests_to("experiments/create")
    run = get_run(mlflow_server.url, ids["run_id"])
    assert run["info"]["status"] == "FINISHED"
    assert run["info"]["experiment_id"] == ids["experiment_id"]
    assert run["data"]["params"] == [{"key": "lr", "value": "0.1"}]
    assert points(mlflow_server, ids["run_id"], "loss") == [(1, 0.5), (2, 0.25)]
    assert points(mlflow_server, ids["run_id"], "acc") == [(2, 0.75)]


@pytest.mark.slow
@pytest.mark.lightning
def test_lightning_mlflow_logger_through_the_aidp_provider(
    aidp_gateway: AIDPGateway,
    oci_api_key: OCICredentials,
    mlflow_server: MLflowServer,
    fresh_experiment: str,
) -> None:
    if importlib.util.find_spec("lightning") is None:
        pytest.skip("lightning is not installed")
    env = child_env(aidp_gateway, oci_api_key, "api_key")
    ids = run_job("lightning", fresh_experiment, env)

    assert_every_request_signed(aidp_gateway, oci_api_key)
    run = get_run(mlflow_server.url, ids["run_id"])
    assert run["info"]["status"] == "FINISHED"
    assert {p["key"]: p["value"] for p in run["data"]["params"]} == {"lr": "0.1"}
    steps = [step for step, _ in points(mlflow_server, ids["run_id"], "train_loss")]
    assert steps == [0, 1, 2, 3]


@pytest.mark.slow
def test_mlflow_client_uploads_and_downloads_artifacts_through_the_aidp_provider(
    aidp_gateway: AIDPGateway,
    oci_api_key: OCICredentials,
    mlflow_server: MLflowServer,
    fresh_experiment: str,
    tmp_path: Path,
) -> None:
    """MLflow's own `log_artifact` (proxied `mlflow-artifacts:` URIs) through the gateway.
    An empty file used to go out with both `Transfer-Encoding: chunked` (requests, for a
    zero-length stream) and `Content-Length: 0` (the OCI signer): the gateway refuses that."""
    files = {"empty.txt": b"", "weights.bin": bytes(range(256)) * 4096 + b"tail"}
    upload = tmp_path / "upload"
    upload.mkdir()
    for name, data in files.items():
        (upload / name).write_bytes(data)

    env = child_env(aidp_gateway, oci_api_key, "api_key")
    ids = run_job("artifacts", fresh_experiment, env, str(tmp_path))

    assert_every_request_signed(aidp_gateway, oci_api_key)
    assert ids["artifact_uri"].startswith("mlflow-artifacts:/")
    puts = {r.path.rsplit("/", 1)[-1]: r for r in aidp_gateway.requests if r.method == "PUT"}
    assert sorted(puts) == sorted(files)
    for name, data in files.items():
        assert puts[name].status == 200
        assert puts[name].body == data
        assert "transfer-encoding" not in puts[name].headers
        assert (tmp_path / "download" / name).read_bytes() == data  # through the gateway
        # and straight from the server, not through the code under test
        root = ids["artifact_uri"].removeprefix("mlflow-artifacts:")
        stored = httpx.get(
            f"{mlflow_server.url}/api/2.0/mlflow-artifacts/artifacts{root}/{name}", timeout=30
        )
        assert stored.status_code == 200
        assert stored.content == data
    downloads = [r for r in aidp_gateway.requests if r.method == "GET" and "artifacts/" in r.path]
    assert downloads


def test_the_gateway_refuses_both_content_length_and_transfer_encoding(
    aidp_gateway: AIDPGateway,
) -> None:
    """As a real gateway does (RFC 9112 6.3): the body's framing would be ambiguous."""
    head = (
        f"PUT {aidp_gateway.tracking_uri.removeprefix(aidp_gateway.url)}"
        "/api/2.0/mlflow-artifacts/artifacts/x HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{aidp_gateway.port}\r\n"
        "Content-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", aidp_gateway.port), timeout=30) as sock:
        sock.sendall(head.encode())
        answer = sock.makefile("rb").readline()
    assert answer.split()[1] == b"400"


def test_the_provider_is_registered_and_constructing_it_imports_nothing() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = pyproject["project"]["entry-points"]["mlflow.request_auth_provider"]
    assert declared == {"aidp": "aidp_metrics._mlflow_plugin:AIDPRequestAuthProvider"}
    installed = {ep.name: ep.value for ep in entry_points(group="mlflow.request_auth_provider")}
    assert installed.get("aidp") == declared["aidp"], "reinstall the project: pip install -e ."

    # MLflow instantiates every provider when its registry is imported: that must be free
    # and must not fail, even with no OCI configuration at all.
    code = (
        "import sys\n"
        "from aidp_metrics._mlflow_plugin import AIDPRequestAuthProvider\n"
        "provider = AIDPRequestAuthProvider()\n"
        "assert provider.get_name() == 'aidp'\n"
        "print(sorted(m for m in ('mlflow', 'oci', 'requests', 'httpx') if m in sys.modules))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OCI_", "MLFLOW_"))}
    env["OCI_CLI_CONFIG_FILE"] = "/nonexistent/config"
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_get_auth_without_oci_configuration_says_what_to_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from aidp_metrics._errors import ConfigurationError
    from aidp_metrics._mlflow_plugin import AIDPRequestAuthProvider

    monkeypatch.delenv("OCI_CLI_AUTH", raising=False)
    monkeypatch.setenv("OCI_CLI_CONFIG_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigurationError, match=r"OCI config file .* not found"):
        AIDPRequestAuthProvider().get_auth()


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (404, {"code": "NotAuthorizedOrNotFound", "message": "m"}, "RESOURCE_DOES_NOT_EXIST"),
        (404, {"code": "RESOURCE_DOES_NOT_EXIST", "message": "m"}, "RESOURCE_DOES_NOT_EXIST"),
        (400, {"code": "InvalidParameter", "message": "m"}, "InvalidParameter"),
        (409, {"code": "RESOURCE_ALREADY_EXISTS", "message": "m"}, "RESOURCE_ALREADY_EXISTS"),
        (401, {"code": "NotAuthenticated", "message": "m"}, "NotAuthenticated"),
    ],
)
def test_aidp_error_bodies_get_mlflow_error_codes(
    status: int, body: dict[str, str], expected: str
) -> None:
    import requests

    from aidp_metrics._connection.oci_requests_auth import make_error_readable

    response = requests.Response()
    response.status_code = status
    response._content = json.dumps(body).encode()
    make_error_readable(response)
    assert response.json() == {**body, "error_code": expected}


@pytest.mark.parametrize(
    ("status", "content"),
    [
        (200, b'{"code": "x", "message": "ok"}'),  # a success is never touched
        (404, b'{"error_code": "ENDPOINT_NOT_FOUND", "message": "m"}'),  # MLflow's shape
        (502, b"<html>bad gateway</html>"),  # not JSON
        (500, b'["code"]'),  # not an object
    ],
)
def test_other_bodies_are_left_alone(status: int, content: bytes) -> None:
    import requests

    from aidp_metrics._connection.oci_requests_auth import make_error_readable

    response = requests.Response()
    response.status_code = status
    response._content = content
    make_error_readable(response)
    assert response.content == content
