"""The AIDP gateway stand-in, checked against the ``oci`` SDK's own request signers."""

from __future__ import annotations

import email.utils
import json
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import oci
import pytest
import requests

from tests.support.gateway import AIDPGateway
from tests.support.mlflow_server import MLflowServer, get_metric_history, get_run
from tests.support.oci_keys import OCICredentials, generate_private_key, write_private_key


def api_key_signer(creds: OCICredentials) -> Any:
    config = oci.config.from_file(str(creds.config_file), creds.profile)
    oci.config.validate_config(config)
    return oci.signer.Signer.from_config(config)


def token_signer(creds: OCICredentials, **kwargs: Any) -> Any:
    config = oci.config.from_file(str(creds.config_file), creds.profile)
    token = Path(config["security_token_file"]).read_text()
    private_key = oci.signer.load_private_key_from_file(config["key_file"])
    return oci.auth.signers.SecurityTokenSigner(token, private_key, **kwargs)


def signed(
    signer: Any,
    method: str,
    url: str,
    body: Mapping[str, Any] | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
) -> requests.PreparedRequest:
    """A request signed by ``oci``; ``headers`` are set before signing."""
    base = {"opc-request-id": uuid.uuid4().hex}
    if method == "POST":
        base |= {"content-type": "application/json", "opc-retry-token": uuid.uuid4().hex}
    data = json.dumps(body).encode() if body is not None else None
    prepared = requests.Request(
        method, url, data=data, headers=base | dict(headers or {}), params=params
    ).prepare()
    signer(prepared)
    return prepared


def send(prepared: requests.PreparedRequest, *, content: bytes | None = None) -> httpx.Response:
    assert prepared.method is not None
    assert prepared.url is not None
    body = prepared.body if content is None else content
    assert body is None or isinstance(body, bytes)
    headers = {k: v if isinstance(v, str) else v.decode() for k, v in prepared.headers.items()}
    return httpx.request(prepared.method, prepared.url, headers=headers, content=body, timeout=30)


def experiment_exists(server: MLflowServer, name: str) -> bool:
    response = httpx.get(
        f"{server.url}/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": name}
    )
    assert response.status_code in (200, 404), response.text
    return response.status_code == 200


def test_signed_create_reaches_mlflow(
    aidp_gateway: AIDPGateway,
    mlflow_server: MLflowServer,
    oci_api_key: OCICredentials,
    fresh_experiment: str,
) -> None:
    prepared = signed(
        api_key_signer(oci_api_key),
        "POST",
        f"{aidp_gateway.mlflow_url}/experiments/create",
        {"name": fresh_experiment},
        headers={"dh-user-principal": "alice"},
    )
    response = send(prepared)

    assert response.status_code == 200, response.text
    assert response.headers["etag"]
    assert response.headers["opc-request-id"] == prepared.headers["opc-request-id"]
    assert experiment_exists(mlflow_server, fresh_experiment)
    [recorded] = aidp_gateway.requests
    assert recorded.status == 200
    assert recorded.retry_token == prepared.headers["opc-retry-token"]
    assert recorded.headers["dh-user-principal"] == "alice"
    assert recorded.json() == {"name": fresh_experiment}
    assert aidp_gateway.auth_failures == []


def test_signed_get_with_query_and_error_mapping(
    aidp_gateway: AIDPGateway, oci_api_key: OCICredentials, fresh_experiment: str
) -> None:
    signer = api_key_signer(oci_api_key)
    url = f"{aidp_gateway.mlflow_url}/experiments/get-by-name"
    missing = send(signed(signer, "GET", url, params={"experiment_name": fresh_experiment}))
    assert missing.status_code == 404
    assert missing.json()["code"] == "RESOURCE_DOES_NOT_EXIST"
    assert missing.headers["opc-request-id"]

    create = f"{aidp_gateway.mlflow_url}/experiments/create"
    assert send(signed(signer, "POST", create, {"name": fresh_experiment})).status_code == 200
    found = send(signed(signer, "GET", url, params={"experiment_name": fresh_experiment}))
    assert found.status_code == 200
    assert found.json()["experiment"]["name"] == fresh_experiment
    duplicate = send(signed(signer, "POST", create, {"name": fresh_experiment}))
    assert duplicate.status_code == 400
    assert duplicate.json()["code"] == "RESOURCE_ALREADY_EXISTS"


def test_security_token_signer_is_accepted(
    aidp_gateway: AIDPGateway, oci_security_token: OCICredentials, fresh_experiment: str
) -> None:
    assert oci_security_token.token is not None
    # the token is shaped so that oci's own token parsing accepts it
    container = oci.auth.security_token_container.SecurityTokenContainer(
        None, oci_security_token.token
    )
    assert container.valid_with_half_expiration_time()

    signer = token_signer(oci_security_token)
    url = f"{aidp_gateway.mlflow_url}/experiments/create"
    response = send(signed(signer, "POST", url, {"name": fresh_experiment}))
    assert response.status_code == 200, response.text
    assert 'keyId="ST$' in aidp_gateway.requests[0].headers["authorization"]


def test_wrong_key_is_rejected(
    aidp_gateway: AIDPGateway,
    mlflow_server: MLflowServer,
    oci_api_key: OCICredentials,
    tmp_path: Path,
    fresh_experiment: str,
) -> None:
    other = write_private_key(generate_private_key(), tmp_path / "other.pem")
    tenancy, user, fingerprint = oci_api_key.key_id.split("/")
    signer = oci.signer.Signer(tenancy, user, fingerprint, str(other))  # right keyId, wrong key
    url = f"{aidp_gateway.mlflow_url}/experiments/create"
    response = send(signed(signer, "POST", url, {"name": fresh_experiment}))

    assert response.status_code == 401
    assert response.json() == {"code": "NotAuthenticated", "message": "signature does not verify"}
    assert aidp_gateway.auth_failures == ["signature does not verify"]
    assert not experiment_exists(mlflow_server, fresh_experiment)


def test_unknown_key_id_is_rejected(
    aidp_gateway: AIDPGateway, oci_api_key: OCICredentials, fresh_experiment: str
) -> None:
    signer = oci.signer.Signer(
        "ocid1.tenancy.oc1..other", "ocid1.user.oc1..other", "00", str(oci_api_key.private_key_path)
    )
    url = f"{aidp_gateway.mlflow_url}/experiments/create"
    response = send(signed(signer, "POST", url, {"name": fresh_experiment}))
    assert response.status_code == 401
    assert "unknown keyId" in response.json()["message"]


def test_rejections_never_echo_credentials(
    aidp_gateway: AIDPGateway, oci_security_token: OCICredentials, tmp_path: Path
) -> None:
    # A session token the gateway does not know: its keyId is `ST$<token>`.
    token = oci_security_token.token
    assert token is not None
    other = write_private_key(generate_private_key(), tmp_path / "other.pem")
    signer = oci.auth.signers.SecurityTokenSigner(
        token[::-1], oci.signer.load_private_key_from_file(str(other))
    )
    url = f"{aidp_gateway.mlflow_url}/experiments/get-by-name"
    unknown = send(signed(signer, "GET", url, params={"experiment_name": "x"}))
    bare = httpx.get(url, headers={"authorization": "not-a-scheme-S3cretT0ken"}, timeout=30)
    basic = httpx.get(url, auth=("alice", "S3cretPW"), timeout=30)

    assert [unknown.status_code, bare.status_code, basic.status_code] == [401, 401, 401]
    assert unknown.json()["message"] == "unknown keyId"
    assert bare.json()["message"] == "unsupported authorization scheme"
    assert basic.json()["message"] == "unsupported authorization scheme 'Basic'"
    replies = unknown.text + bare.text + basic.text + " ".join(aidp_gateway.auth_failures)
    for secret in (token[::-1][:16], "S3cretT0ken", "S3cretPW", "YWxpY2U6UzNjcmV0UFc"):
        assert secret not in replies


def test_tampered_body_is_rejected(
    aidp_gateway: AIDPGateway,
    mlflow_server: MLflowServer,
    oci_api_key: OCICredentials,
    fresh_experiment: str,
) -> None:
    url = f"{aidp_gateway.mlflow_url}/experiments/create"
    prepared = signed(api_key_signer(oci_api_key), "POST", url, {"name": fresh_experiment})
    tampered = json.dumps({"name": fresh_experiment[::-1]}).encode()  # same length
    response = send(prepared, content=tampered)

    assert response.status_code == 401
    assert "x-content-sha256" in response.json()["message"]
    assert not experiment_exists(mlflow_server, fresh_experiment[::-1])


@pytest.mark.parametrize(
    ("drop_header", "generic_headers", "expected"),
    [
        ("x-content-sha256", None, "'x-content-sha256' is missing"),
        (None, ["date", "host"], "not signed: (request-target)"),
    ],
)
def test_missing_signed_header_is_rejected(
    aidp_gateway: AIDPGateway,
    oci_security_token: OCICredentials,
    fresh_experiment: str,
    drop_header: str | None,
    generic_headers: list[str] | None,
    expected: str,
) -> None:
    kwargs = {"generic_headers": generic_headers} if generic_headers else {}
    signer = token_signer(oci_security_token, **kwargs)
    url = f"{aidp_gateway.mlflow_url}/experiments/create"
    prepared = signed(signer, "POST", url, {"name": fresh_experiment})
    if drop_header:
        del prepared.headers[drop_header]
    response = send(prepared)

    assert response.status_code == 401
    assert expected in response.json()["message"]


def test_stale_date_is_rejected(
    aidp_gateway: AIDPGateway, oci_api_key: OCICredentials, fresh_experiment: str
) -> None:
    stale = email.utils.formatdate(time.time() - 360, usegmt=True)
    url = f"{aidp_gateway.mlflow_url}/experiments/create"
    prepared = signed(
        api_key_signer(oci_api_key),
        "POST",
        url,
        {"name": fresh_experiment},
        headers={"date": stale},
    )
    response = send(prepared)

    assert response.status_code == 401
    assert "5 minutes" in response.json()["message"]


def test_wrong_workspace_is_not_found(
    aidp_gateway: AIDPGateway, oci_api_key: OCICredentials, fresh_experiment: str
) -> None:
    url = aidp_gateway.mlflow_url.replace("/ws-test/", "/ws-other/") + "/experiments/create"
    response = send(signed(api_key_signer(oci_api_key), "POST", url, {"name": fresh_experiment}))
    assert response.status_code == 404
    assert response.json()["code"] == "NotAuthorizedOrNotFound"


def test_missing_retry_token_on_write(
    aidp_gateway: AIDPGateway, oci_api_key: OCICredentials, fresh_experiment: str
) -> None:
    url = f"{aidp_gateway.mlflow_url}/experiments/create"
    prepared = signed(api_key_signer(oci_api_key), "POST", url, {"name": fresh_experiment})
    del prepared.headers["opc-retry-token"]  # not a signed header
    response = send(prepared)
    assert response.status_code == 400
    assert response.json()["code"] == "MissingParameter"


def test_injected_503_with_retry_after(
    aidp_gateway: AIDPGateway,
    mlflow_server: MLflowServer,
    oci_api_key: OCICredentials,
    fresh_experiment: str,
) -> None:
    aidp_gateway.inject("experiments/create", status=503, retry_after="2")
    signer = api_key_signer(oci_api_key)
    url = f"{aidp_gateway.mlflow_url}/experiments/create"
    token = uuid.uuid4().hex
    first = signed(
        signer, "POST", url, {"name": fresh_experiment}, headers={"opc-retry-token": token}
    )
    response = send(first)

    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"
    assert response.json()["code"] == "ServiceUnavailable"
    assert not experiment_exists(mlflow_server, fresh_experiment)

    retry = signed(
        signer, "POST", url, {"name": fresh_experiment}, headers={"opc-retry-token": token}
    )
    assert send(retry).status_code == 200
    attempts = aidp_gateway.requests_to("experiments/create")
    assert [(r.status, r.injected) for r in attempts] == [(503, True), (200, False)]
    assert {r.retry_token for r in attempts} == {token}
    assert len({r.opc_request_id for r in attempts}) == 2


def test_dropped_connection_after_forwarding(
    aidp_gateway: AIDPGateway,
    mlflow_server: MLflowServer,
    oci_api_key: OCICredentials,
    fresh_experiment: str,
) -> None:
    aidp_gateway.inject("experiments/create", drop=True, forward_first=True)
    url = f"{aidp_gateway.mlflow_url}/experiments/create"
    with pytest.raises(httpx.RemoteProtocolError):
        send(signed(api_key_signer(oci_api_key), "POST", url, {"name": fresh_experiment}))

    assert experiment_exists(mlflow_server, fresh_experiment)  # applied, never acknowledged
    [recorded] = aidp_gateway.requests
    assert (recorded.status, recorded.injected) == (0, True)


def test_mlflow_server_restarts_on_same_port_and_database(
    aidp_gateway: AIDPGateway,
    mlflow_server: MLflowServer,
    oci_api_key: OCICredentials,
    fresh_experiment: str,
) -> None:
    signer = api_key_signer(oci_api_key)
    base = aidp_gateway.mlflow_url
    created = send(signed(signer, "POST", f"{base}/experiments/create", {"name": fresh_experiment}))
    experiment_id = created.json()["experiment_id"]
    run = send(signed(signer, "POST", f"{base}/runs/create", {"experiment_id": experiment_id}))
    run_id = run.json()["run"]["info"]["run_id"]
    point = {"run_id": run_id, "key": "loss", "value": 0.5, "timestamp": 1, "step": 1}
    assert send(signed(signer, "POST", f"{base}/runs/log-metric", point)).status_code == 200

    port = mlflow_server.port
    mlflow_server.stop()
    outage = send(signed(signer, "POST", f"{base}/runs/log-metric", point | {"step": 2}))
    assert outage.status_code == 503
    mlflow_server.start()

    assert mlflow_server.port == port
    assert send(signed(signer, "POST", f"{base}/runs/log-metric", point | {"step": 3})).is_success
    history = get_metric_history(mlflow_server.url, run_id, "loss")
    assert [m["step"] for m in history] == [1, 3]
    assert get_run(mlflow_server.url, run_id)["info"]["experiment_id"] == experiment_id
