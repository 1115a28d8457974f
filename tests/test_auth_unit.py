"""OCI request signing and MLflow auth, checked offline: signatures are verified here."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from aidp_metrics import Endpoint
from aidp_metrics._connection import auth, oci_config
from aidp_metrics._errors import ConfigurationError

pytest.importorskip("oci")

TENANCY = "ocid1.tenancy.oc1..aaaatenancy"
USER = "ocid1.user.oc1..aaaauser"
FINGERPRINT = "12:34:56:78:9a:bc:de:f0:12:34:56:78:9a:bc:de:f0"
URL = "https://aidp.us-ashburn-1.oci.example.com/20260430/mlops/log-metric?x=1&y=a%20b"
OCI_ENV = ("OCI_CLI_AUTH", "OCI_CLI_PROFILE", "OCI_CLI_CONFIG_FILE", "OCI_CONFIG_FILE")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_jwt(subject: str = "session") -> str:
    """JWT-shaped like an OCI session token; oci's SecurityTokenContainer reads exp and iat."""
    now = int(time.time())
    header = _b64url(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    payload = _b64url(json.dumps({"sub": subject, "iat": now, "exp": now + 3600}).encode())
    return f"{header}.{payload}.{_b64url(b'not-a-real-signature')}"


@pytest.fixture(scope="module")
def private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def oci_home(
    tmp_path: Path, private_key: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A config file with an api_key DEFAULT, a SESSION token profile and broken profiles."""
    for name in OCI_ENV:
        monkeypatch.delenv(name, raising=False)
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(
        private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    (tmp_path / "token").write_text(make_jwt() + "\n")
    config = tmp_path / "config"
    config.write_text(
        f"[DEFAULT]\nuser={USER}\nfingerprint={FINGERPRINT}\ntenancy={TENANCY}\n"
        f"key_file={key_file}\nregion=us-ashburn-1\n\n"
        f"[SESSION]\nsecurity_token_file={tmp_path / 'token'}\n\n"
        f"[NOKEY]\nkey_file=\nsecurity_token_file={tmp_path / 'token'}\n\n"
        f"[BADKEY]\nkey_file={tmp_path / 'missing.pem'}\n"
    )
    monkeypatch.setenv("OCI_CLI_CONFIG_FILE", str(config))
    return tmp_path


def sign(
    signer: httpx.Auth, request: httpx.Request
) -> Generator[httpx.Request, httpx.Response, None]:
    flow = signer.auth_flow(request)
    assert next(flow) is request
    return flow


def verify(request: httpx.Request, key: rsa.RSAPrivateKey) -> dict[str, str]:
    """Rebuild the signing string from the headers as sent and check the RSA signature."""
    scheme, _, params_text = request.headers["authorization"].partition(" ")
    assert scheme == "Signature"
    params = dict(re.findall(r'(\w+)="([^"]*)"', params_text))
    assert params["version"] == "1"
    assert params["algorithm"] == "rsa-sha256"
    lines = []
    for name in params["headers"].split():
        if name == "(request-target)":
            target = f"{request.method.lower()} {request.url.raw_path.decode()}"
            lines.append(f"(request-target): {target}")
        else:
            lines.append(f"{name}: {request.headers[name]}")
    key.public_key().verify(
        base64.b64decode(params["signature"]),
        "\n".join(lines).encode(),
        padding.PKCS1v15(),
        hashes.SHA256(),
    )
    return params


@pytest.mark.usefixtures("oci_home")
def test_api_key_post_signs_body_headers(private_key: rsa.RSAPrivateKey) -> None:
    body = {"run_id": "r1", "key": "loss", "value": 0.5, "timestamp": 1, "step": 0}
    request = httpx.Request("POST", URL, json=body)
    sign(auth.oci_signer_auth("api_key"), request)

    params = verify(request, private_key)
    assert params["headers"] == (
        "date (request-target) host content-length content-type x-content-sha256"
    )
    assert params["keyId"] == f"{TENANCY}/{USER}/{FINGERPRINT}"
    digest = base64.b64encode(hashlib.sha256(request.content).digest()).decode()
    assert request.headers["x-content-sha256"] == digest
    assert request.headers["content-type"] == "application/json"
    assert request.headers["content-length"] == str(len(request.content))
    assert request.headers["host"] == "aidp.us-ashburn-1.oci.example.com"


@pytest.mark.usefixtures("oci_home")
def test_get_signs_only_date_target_host(private_key: rsa.RSAPrivateKey) -> None:
    request = httpx.Request("GET", URL)
    sign(auth.oci_signer_auth("api_key"), request)

    assert verify(request, private_key)["headers"] == "date (request-target) host"
    assert "x-content-sha256" not in request.headers


@pytest.mark.usefixtures("oci_home")
def test_stale_signature_headers_are_replaced(private_key: rsa.RSAPrivateKey) -> None:
    headers = {
        "date": "Thu, 01 Jan 1970 00:00:00 GMT",
        "authorization": "Signature stale",
        "x-content-sha256": "c3RhbGU=",
    }
    request = httpx.Request("POST", URL, content=b'{"a": 1}', headers=headers)
    sign(auth.oci_signer_auth("api_key"), request)

    verify(request, private_key)
    assert request.headers["date"] != headers["date"]
    assert request.headers["x-content-sha256"] != headers["x-content-sha256"]


def test_security_token_key_id_and_one_retry_on_401(
    oci_home: Path, private_key: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OCI_CLI_PROFILE", "SESSION")
    signer = auth.oci_signer_auth("security_token")
    token = (oci_home / "token").read_text().strip()
    request = httpx.Request("POST", URL, json={"a": 1})
    flow = sign(signer, request)
    assert verify(request, private_key)["keyId"] == f"ST${token}"

    # `oci session refresh` rewrites the file; the retry must pick the new token up.
    new_token = make_jwt("refreshed")
    (oci_home / "token").write_text(new_token)
    retried = flow.send(httpx.Response(401, request=request))
    assert retried is request
    assert verify(request, private_key)["keyId"] == f"ST${new_token}"
    with pytest.raises(StopIteration):
        flow.send(httpx.Response(401, request=request))


@pytest.mark.usefixtures("oci_home")
def test_api_key_does_not_retry_401() -> None:
    request = httpx.Request("GET", URL)
    flow = sign(auth.oci_signer_auth("api_key"), request)
    with pytest.raises(StopIteration):
        flow.send(httpx.Response(401, request=request))


class FakeTokenSigner:
    """Stands in for an oci principal signer: callable on a prepared request, refreshable."""

    def __init__(self) -> None:
        self.refreshes = 0

    def __call__(self, prepared: Any) -> Any:
        prepared.headers["authorization"] = f"Signature gen={self.refreshes}"
        return prepared

    def refresh_security_token(self) -> str:
        self.refreshes += 1
        return "token"


def test_concurrent_401s_refresh_once() -> None:
    fake = FakeTokenSigner()
    signer = auth.OCIRequestSigner(fake, mode="instance_principal")
    first, second = httpx.Request("GET", URL), httpx.Request("GET", URL)
    flow1, flow2 = sign(signer, first), sign(signer, second)

    flow1.send(httpx.Response(401, request=first))
    flow2.send(httpx.Response(401, request=second))
    assert fake.refreshes == 1
    assert first.headers["authorization"] == second.headers["authorization"] == ("Signature gen=1")


@pytest.mark.usefixtures("oci_home")
def test_auto_mode_picks_security_token_when_profile_has_token_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert auth.oci_signer_auth().mode == "api_key"
    monkeypatch.setenv("OCI_CLI_PROFILE", "SESSION")
    assert auth.oci_signer_auth().mode == "security_token"
    # OCI_CLI_AUTH wins over auto-detection.
    monkeypatch.setenv("OCI_CLI_PROFILE", "DEFAULT")
    monkeypatch.setenv("OCI_CLI_AUTH", "security-token")
    with pytest.raises(ConfigurationError, match="security_token_file"):
        auth.oci_signer_auth()


@pytest.mark.usefixtures("oci_home")
def test_missing_key_file_is_named_with_security_token_hint() -> None:
    with pytest.raises(ConfigurationError) as info:
        auth.oci_signer_auth("api_key", profile="NOKEY")
    message = str(info.value)
    assert "Missing: key_file" in message
    assert "retry with OCI_CLI_AUTH=security_token" in message


def test_unreadable_key_file_is_named(oci_home: Path) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(str(oci_home / "missing.pem"))):
        auth.oci_signer_auth("api_key", profile="BADKEY")


@pytest.mark.usefixtures("oci_home")
def test_unknown_profile_names_profile_and_alternatives() -> None:
    with pytest.raises(ConfigurationError, match=r"'NOPE' not found.*DEFAULT, SESSION"):
        auth.oci_signer_auth("api_key", profile="NOPE")


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ConfigurationError, match=re.escape(str(missing))):
        auth.oci_signer_auth("api_key", config_file=missing)


def test_unknown_mode_lists_modes() -> None:
    with pytest.raises(ConfigurationError) as info:
        auth.oci_signer_auth("password")
    assert "'password'" in str(info.value)
    assert all(mode in str(info.value) for mode in auth.AUTH_MODES)


def test_missing_oci_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "oci", None)
    with pytest.raises(ConfigurationError, match=r'pip install "aidp-metrics\[oci\]"'):
        auth.oci_signer_auth("instance_principal")


def test_principal_failure_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OCI_RESOURCE_PRINCIPAL_VERSION", raising=False)
    with pytest.raises(ConfigurationError, match="resource_principal auth failed"):
        auth.oci_signer_auth("resource_principal")


def test_repr_has_no_secrets(oci_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert repr(auth.oci_signer_auth("api_key")) == (
        "OCIRequestSigner(mode='api_key', profile='DEFAULT')"
    )
    monkeypatch.setenv("OCI_CLI_PROFILE", "SESSION")
    text = repr(auth.oci_signer_auth())
    assert (oci_home / "token").read_text().strip() not in text
    assert "token=" not in text
    assert "hunter2" not in repr(auth.BearerToken("hunter2"))


def test_import_does_not_import_oci() -> None:
    code = (
        "import sys, aidp_metrics._connection.auth, aidp_metrics._connection.oci_config; "
        "print('oci' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ
    )
    assert out.stdout.strip() == "False"


def test_profiles_inherit_default(oci_home: Path) -> None:
    session = oci_config.read_profile(profile="SESSION")
    assert session["region"] == "us-ashburn-1"
    assert session["security_token_file"] == str(oci_home / "token")
    assert oci_config.profile_region(profile="SESSION") == "us-ashburn-1"
    assert oci_config.profile_region(profile="NOPE") is None
    assert oci_config.profile_region(config_file=oci_home / "nowhere") is None


def test_config_location_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OCI_ENV:
        monkeypatch.delenv(name, raising=False)
    assert oci_config.config_file_path() == Path("~/.oci/config").expanduser()
    assert oci_config.profile_name() == "DEFAULT"
    monkeypatch.setenv("OCI_CONFIG_FILE", "/sdk/config")
    assert oci_config.config_file_path() == Path("/sdk/config")
    monkeypatch.setenv("OCI_CLI_CONFIG_FILE", "/cli/config")
    monkeypatch.setenv("OCI_CLI_PROFILE", "WORK")
    assert oci_config.config_file_path() == Path("/cli/config")
    assert oci_config.profile_name() == "WORK"


@pytest.fixture
def mlflow_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("TOKEN", "USERNAME", "PASSWORD"):
        monkeypatch.delenv(f"MLFLOW_TRACKING_{name}", raising=False)
    return monkeypatch


def _authorization(auth_: httpx.Auth) -> str:
    request = httpx.Request("GET", "http://mlflow.local/api/2.0/mlflow/experiments/search")
    next(auth_.auth_flow(request))
    return request.headers["authorization"]


def test_mlflow_bearer_token(mlflow_env: pytest.MonkeyPatch) -> None:
    mlflow_env.setenv("MLFLOW_TRACKING_TOKEN", "tok")
    mlflow_env.setenv("MLFLOW_TRACKING_USERNAME", "ignored")  # half a pair: the token wins
    found = auth.mlflow_auth()
    assert isinstance(found, auth.BearerToken)
    assert _authorization(found) == "Bearer tok"
    assert repr(found) == "BearerToken(source='MLFLOW_TRACKING_TOKEN')"


def test_mlflow_basic_auth(mlflow_env: pytest.MonkeyPatch) -> None:
    mlflow_env.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    mlflow_env.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret")
    found = auth.mlflow_auth()
    assert isinstance(found, httpx.BasicAuth)
    assert _authorization(found) == "Basic " + base64.b64encode(b"alice:s3cret").decode()
    assert repr(found) == f"BasicAuth(source={auth.ENV_BASIC_SOURCE!r})"


def test_mlflow_precedence_is_mlflows_uri_then_basic_then_token(
    mlflow_env: pytest.MonkeyPatch,
) -> None:
    # MLflow 3.17's client (requests) sends the URI's user:password over the env's Basic
    # header, and Basic from USERNAME/PASSWORD over the token.
    mlflow_env.setenv("MLFLOW_TRACKING_TOKEN", "tok")
    mlflow_env.setenv("MLFLOW_TRACKING_USERNAME", "envuser")
    mlflow_env.setenv("MLFLOW_TRACKING_PASSWORD", "envpass")
    basic = "Basic " + base64.b64encode(b"envuser:envpass").decode()
    assert _authorization(auth.mlflow_auth()) == basic  # type: ignore[arg-type]
    endpoint = Endpoint.mlflow("http://uri%40user:p%3Ass@mlflow.local", source="X")
    found = auth.mlflow_auth(endpoint.credential)
    assert isinstance(found, auth.BasicAuth)
    assert found.source == "X"
    assert _authorization(found) == "Basic " + base64.b64encode(b"uri@user:p:ss").decode()


def test_mlflow_no_auth_and_half_basic(mlflow_env: pytest.MonkeyPatch) -> None:
    assert auth.mlflow_auth() is None
    mlflow_env.setenv("MLFLOW_TRACKING_USERNAME", "alice")
    with pytest.raises(ConfigurationError, match="MLFLOW_TRACKING_PASSWORD"):
        auth.mlflow_auth()


def test_wrong_pass_phrase_is_named_not_shown(
    tmp_path: Path, private_key: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in OCI_ENV:
        monkeypatch.delenv(name, raising=False)
    key_file = tmp_path / "encrypted.pem"
    key_file.write_bytes(
        private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"the-right-phrase"),
        )
    )
    config = tmp_path / "config"
    config.write_text(
        f"[DEFAULT]\nuser={USER}\nfingerprint={FINGERPRINT}\ntenancy={TENANCY}\n"
        f"key_file={key_file}\npass_phrase=Wr0ng-Phrase-7f3a\n"
    )
    with pytest.raises(ConfigurationError) as info:
        auth.oci_signer_auth("api_key", config_file=config)
    message = str(info.value)
    assert str(key_file) in message
    assert "Wr0ng-Phrase-7f3a" not in message
    assert "the-right-phrase" not in message


def test_through_httpx_client_401_is_retried_once_with_a_fresh_signature(
    oci_home: Path, private_key: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OCI_CLI_PROFILE", "SESSION")
    key_ids: list[str] = []

    def server(request: httpx.Request) -> httpx.Response:
        key_ids.append(verify(request, private_key)["keyId"])
        if len(key_ids) == 1:
            (oci_home / "token").write_text(make_jwt("refreshed"))
            return httpx.Response(401)
        return httpx.Response(200, json={})

    with httpx.Client(transport=httpx.MockTransport(server)) as client:
        response = client.post(URL, json={"a": 1}, auth=auth.oci_signer_auth())
    assert response.status_code == 200
    assert len(key_ids) == 2
    assert key_ids[0] != key_ids[1]
