"""An AIDP workspace URL as the tracking URI, and MLflow request-auth providers
(`MLFLOW_TRACKING_AUTH`) on our requests: against the signature-verifying AIDP gateway in
front of the real MLflow server, read back from the server.

The third-party provider is a test-only distribution (tests/support/auth_providers.py)
whose dist-info each test writes to a temporary `sys.path` entry (PYTHONPATH for the CLI).
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from aidp_metrics import Endpoint, MetricsClient, Run
from aidp_metrics._connection.auth import OCIRequestSigner
from aidp_metrics._connection.request_auth import ProviderAuth
from aidp_metrics._errors import ConfigurationError
from tests.support.auth_providers import (
    BROKEN_PROVIDER,
    ENTRY_POINTS,
    PROFILE_VARIABLE,
    SESSION_TOKEN_PROVIDER,
    install_providers,
)
from tests.support.gateway import AIDPGateway, RecordedRequest
from tests.support.mlflow_server import MLflowServer, get_metric_history, get_run
from tests.support.oci_keys import OCICredentials

pytest.importorskip("oci")

ROOT = Path(__file__).resolve().parent.parent
AIDP_URL = (
    "https://aidp.us-ashburn-1.oci.oraclecloud.com/20260430/aiDataPlatforms/"
    "ocid1.aidataplatform.oc1.iad.aaaa/workspaces/ws-1/mlops"
)
RUN_OPTIONS = {"end_timeout": 30.0, "flush_interval": 0.05}
_KEY_ID = re.compile(r'keyId="([^"]*)"')


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No endpoint or credential setting inherited from the machine."""
    for name in list(os.environ):
        if name.startswith(("MLFLOW_", "OCI_", "AIDP_")) and name != "AIDP_METRICS_DIR":
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.fixture
def providers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test providers, installed as a distribution on a temporary sys.path entry."""
    site = install_providers(tmp_path / "site", ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(site))
    return site


def oci_env(env: pytest.MonkeyPatch, creds: OCICredentials, mode: str = "api_key") -> None:
    env.setenv("OCI_CLI_CONFIG_FILE", str(creds.config_file))
    env.setenv("OCI_CLI_PROFILE", creds.profile)
    env.setenv("OCI_CLI_AUTH", mode)


def key_id(request: RecordedRequest) -> str | None:
    found = _KEY_ID.search(request.headers.get("authorization", ""))
    return found.group(1) if found else None


def points(server: MLflowServer, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m["step"], m["value"]) for m in get_metric_history(server.url, run_id, key)]


# -- endpoint resolution -------------------------------------------------------------------


def test_aidp_workspace_url_as_tracking_uri_is_an_aidp_endpoint(env: pytest.MonkeyPatch) -> None:
    env.setenv("AIDP_USER_PRINCIPAL", "alice@example.com")
    endpoint = Endpoint.mlflow(AIDP_URL + "/")
    assert endpoint.kind == "aidp"
    assert endpoint.base_url == AIDP_URL
    assert endpoint.url("runs/log-metric") == AIDP_URL + "/api/2.0/mlflow/runs/log-metric"
    assert endpoint.region == "us-ashburn-1"
    assert endpoint.instance_id == "ocid1.aidataplatform.oc1.iad.aaaa"
    assert endpoint.workspace_key == "ws-1"
    assert endpoint.user_principal == "alice@example.com"

    env.setenv("MLFLOW_TRACKING_URI", AIDP_URL)
    assert Endpoint.from_env() == endpoint
    # The same path on a plain MLflow server's address stays MLflow; other paths too.
    assert Endpoint.mlflow("http://127.0.0.1:5000").kind == "mlflow"
    assert Endpoint.mlflow("https://mlflow.example.com/mlops").kind == "mlflow"


@pytest.mark.parametrize(
    "url",
    [
        AIDP_URL.replace("https://", "http://"),  # AIDP is https only (loopback excepted)
        AIDP_URL.replace("https://", "https://user:pw@"),  # signed, never a password
    ],
)
def test_aidp_tracking_uri_must_be_https_without_userinfo(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Endpoint.mlflow(url)
    assert "pw" not in str(caught.value)


def test_run_url_is_none_for_aidp_and_built_for_mlflow() -> None:
    assert Endpoint.mlflow(AIDP_URL).run_page_url("abc", "1") is None
    mlflow = Endpoint.mlflow("http://127.0.0.1:5000/prefix/")
    assert (
        mlflow.run_page_url("abc", "7") == "http://127.0.0.1:5000/prefix/#/experiments/7/runs/abc"
    )
    assert mlflow.run_page_url("abc") == "http://127.0.0.1:5000/prefix/#/runs/abc"


# -- a Run with only MLFLOW_TRACKING_URI=<AIDP URL> ------------------------------------------


def test_run_with_only_an_aidp_tracking_uri_is_signed_and_delivered(
    env: pytest.MonkeyPatch,
    aidp_gateway: AIDPGateway,
    oci_api_key: OCICredentials,
    mlflow_server: MLflowServer,
    fresh_experiment: str,
) -> None:
    env.setenv("MLFLOW_TRACKING_URI", aidp_gateway.tracking_uri)
    env.setenv("OCI_CLI_CONFIG_FILE", str(oci_api_key.config_file))
    env.setenv("OCI_CLI_PROFILE", oci_api_key.profile)  # OCI_CLI_AUTH unset: detected
    env.setenv("AIDP_USER_PRINCIPAL", "alice@example.com")

    with Run.start(experiment_name=fresh_experiment, **RUN_OPTIONS) as run:
        assert run.client is not None
        assert run.client.endpoint.kind == "aidp"
        assert isinstance(run.client.auth, OCIRequestSigner)
        run.log_metrics({"loss": 0.5, "acc": 0.25}, step=1)
        run.log_metric("loss", 0.125, step=2)
    assert run.url is None  # no documented UI address for AIDP

    sent = aidp_gateway.requests
    assert sent
    assert aidp_gateway.auth_failures == []
    for request in sent:
        assert key_id(request) == oci_api_key.key_id
        assert request.headers["dh-user-principal"] == "alice@example.com"
        assert request.headers.get("opc-request-id")
        assert request.method == "GET" or request.retry_token
    assert get_run(mlflow_server.url, run.run_id)["info"]["status"] == "FINISHED"
    assert points(mlflow_server, run.run_id, "loss") == [(1, 0.5), (2, 0.125)]
    assert points(mlflow_server, run.run_id, "acc") == [(1, 0.25)]


# -- MLFLOW_TRACKING_AUTH ------------------------------------------------------------------


def test_run_signs_with_a_third_party_provider_and_never_shows_its_credential(
    env: pytest.MonkeyPatch,
    providers: Path,
    aidp_gateway: AIDPGateway,
    oci_api_key: OCICredentials,
    oci_security_token: OCICredentials,
    mlflow_server: MLflowServer,
    fresh_experiment: str,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Our own OCI settings name the API key; only the provider signs with the session token.
    oci_env(env, oci_api_key)
    env.setenv(PROFILE_VARIABLE, oci_security_token.profile)
    env.setenv("MLFLOW_TRACKING_AUTH", SESSION_TOKEN_PROVIDER)
    env.setenv("MLFLOW_TRACKING_URI", aidp_gateway.tracking_uri)
    caplog.set_level(logging.DEBUG)  # every logger, httpx's and httpcore's included
    # A 401: the provider is asked for its auth again, which signs the request again.
    aidp_gateway.inject("runs/log-batch", status=401, times=1)

    shown: list[str] = []
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        with Run.start(experiment_name=fresh_experiment, **RUN_OPTIONS) as run:
            assert run.client is not None
            assert isinstance(run.client.auth, ProviderAuth)
            shown += [
                repr(run),
                repr(run.client),
                repr(run.client.auth),
                run.client.auth.describe(),
            ]
            for step in range(5):
                run.log_metric("loss", 1.0 / (step + 1), step=step)
        shown += [repr(run), str(run.stats)]

    sent = aidp_gateway.requests
    assert aidp_gateway.auth_failures == []
    assert {key_id(request) for request in sent} == {oci_security_token.key_id}
    assert [r.path.rsplit("/", 1)[-1] for r in sent if r.injected] == ["log-batch"]
    assert get_run(mlflow_server.url, run.run_id)["info"]["status"] == "FINISHED"
    assert points(mlflow_server, run.run_id, "loss") == [(s, 1.0 / (s + 1)) for s in range(5)]

    out, err = capsys.readouterr()
    text = "\n".join(
        [*shown, out, err, caplog.text]
        + [f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records]
        + [str(w.message) for w in warned]
    )
    assert "test-session-token" in text  # the provider is named ...
    token = oci_security_token.token
    assert token is not None
    for piece in [token, *(token[i : i + 16] for i in range(0, len(token) - 16, 8))]:
        assert piece not in text  # ... its credential never


def test_a_provider_that_fails_gives_a_clear_error_without_its_secret(
    env: pytest.MonkeyPatch, providers: Path, mlflow_server: MLflowServer
) -> None:
    env.setenv("MLFLOW_TRACKING_AUTH", BROKEN_PROVIDER)
    with MetricsClient(mlflow_server.url) as client, pytest.raises(ConfigurationError) as caught:
        client.get_experiment_by_name("Default")
    message = str(caught.value)
    assert BROKEN_PROVIDER in message
    assert "RuntimeError" in message
    assert "hunter2" not in message
    assert caught.value.__cause__ is None


def test_an_unknown_provider_name_is_a_configuration_error(
    env: pytest.MonkeyPatch, providers: Path, mlflow_server: MLflowServer
) -> None:
    env.setenv("MLFLOW_TRACKING_AUTH", "no-such-provider")
    env.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    with pytest.raises(ConfigurationError) as caught:
        Run.start(experiment_name="never-created")
    message = str(caught.value)
    assert "MLFLOW_TRACKING_AUTH='no-such-provider'" in message
    installed = message.split("installed: ", 1)[1]
    assert "aidp" in installed  # ours, from pyproject.toml's entry point
    assert SESSION_TOKEN_PROVIDER in installed


def test_tracking_auth_aidp_signs_for_a_plain_tracking_uri_too(
    env: pytest.MonkeyPatch, oci_api_key: OCICredentials, mlflow_server: MLflowServer
) -> None:
    # As for MLflow's client: MLFLOW_TRACKING_AUTH decides the auth, whatever the URI.
    oci_env(env, oci_api_key)
    env.setenv("MLFLOW_TRACKING_AUTH", "aidp")
    with MetricsClient(mlflow_server.url) as client:
        assert client.endpoint.kind == "mlflow"
        assert isinstance(client.auth, OCIRequestSigner)
        assert client.get_experiment_by_name("Default") is not None


# -- doctor --------------------------------------------------------------------------------


def doctor(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aidp_metrics.cli", "doctor"],
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
        check=False,
    )


def test_doctor_names_the_provider_it_signs_with(
    env: pytest.MonkeyPatch,
    providers: Path,
    aidp_gateway: AIDPGateway,
    oci_api_key: OCICredentials,
    oci_security_token: OCICredentials,
) -> None:
    base = {
        **os.environ,
        "MLFLOW_TRACKING_URI": aidp_gateway.tracking_uri,
        "OCI_CLI_CONFIG_FILE": str(oci_api_key.config_file),
        "OCI_CLI_PROFILE": oci_api_key.profile,
        PROFILE_VARIABLE: oci_security_token.profile,
        "PYTHONPATH": os.pathsep.join([str(providers), str(ROOT)]),
        "PYTHONIOENCODING": "utf-8",
    }
    third_party = doctor({**base, "MLFLOW_TRACKING_AUTH": SESSION_TOKEN_PROVIDER})
    assert third_party.returncode == 0, third_party.stdout + third_party.stderr
    assert "MLflow request-auth provider 'test-session-token'" in third_party.stdout
    assert "aidp-metrics-test-providers 0.1" in third_party.stdout
    assert "auth: accepted" in third_party.stdout
    assert oci_security_token.token is not None
    assert oci_security_token.token not in third_party.stdout + third_party.stderr

    ours = doctor({**base, "MLFLOW_TRACKING_AUTH": "aidp"})
    assert ours.returncode == 0, ours.stdout + ours.stderr
    assert "MLflow request-auth provider 'aidp'" in ours.stdout
    assert "mode api_key" in ours.stdout
    assert "MLFLOW_TRACKING_URI is set but ignored" not in ours.stdout
    assert {key_id(r) for r in aidp_gateway.requests} == {
        oci_security_token.key_id,
        oci_api_key.key_id,
    }
