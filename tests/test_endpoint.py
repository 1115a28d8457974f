from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import pytest

from aidp_metrics import ConfigurationError, Endpoint

OCID = "ocid1.aidataplatform.oc1.iad.aaaa"
ENV_VARS = (
    "AIDP_ENDPOINT",
    "OCI_CLI_ENDPOINT",
    "AIDP_INSTANCE_ID",
    "AIDP_WORKSPACE_KEY",
    "OCI_CLI_REGION",
    "AIDP_USER_PRINCIPAL",
    "MLFLOW_TRACKING_URI",
    "OCI_CLI_CONFIG_FILE",
    "OCI_CONFIG_FILE",
    "OCI_CLI_PROFILE",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OCI_CLI_CONFIG_FILE", f"{tmp_path}/no-such-config")


def test_aidp_url_from_region() -> None:
    endpoint = Endpoint.aidp(OCID, "ws1", region="us-ashburn-1")
    assert endpoint.url("runs/log-metric") == (
        "https://aidp.us-ashburn-1.oci.oraclecloud.com/20260430/aiDataPlatforms/"
        f"{OCID}/workspaces/ws1/mlops/api/2.0/mlflow/runs/log-metric"
    )


def test_explicit_endpoint_replaces_host_and_path_parts_are_encoded() -> None:
    endpoint = Endpoint.aidp("id/with space", "ws?x", endpoint="https://example.test/")
    assert endpoint.base_url == (
        "https://example.test/20260430/aiDataPlatforms/id%2Fwith%20space/workspaces/ws%3Fx/mlops"
    )


def test_explicit_endpoint_with_version_is_not_doubled() -> None:
    endpoint = Endpoint.aidp(OCID, "ws", endpoint="https://example.test/20260430")
    assert endpoint.base_url.count("20260430") == 1


@pytest.mark.parametrize("host", ["http://127.0.0.1:8080", "http://localhost:1", "http://[::1]:9"])
def test_plain_http_allowed_only_for_loopback(host: str) -> None:
    assert Endpoint.aidp(OCID, "ws", endpoint=host).base_url.startswith(host)


def test_plain_http_refused_for_remote_host() -> None:
    with pytest.raises(ConfigurationError, match="https"):
        Endpoint.aidp(OCID, "ws", endpoint="http://aidp.example.com")


def test_mlflow_endpoint() -> None:
    endpoint = Endpoint.mlflow("http://127.0.0.1:5000/")
    assert endpoint.kind == "mlflow"
    assert endpoint.url("runs/log-batch") == "http://127.0.0.1:5000/api/2.0/mlflow/runs/log-batch"


@pytest.mark.parametrize(
    ("uri", "opened"),
    [
        ("file:///tmp/mlruns", "file:///tmp/mlruns"),
        ("/tmp/mlruns/", "file:///tmp/mlruns"),
        ("sqlite:////tmp/mlflow.db", "sqlite:////tmp/mlflow.db"),
        ("sqlite://", "sqlite://"),
        (
            "postgresql+psycopg2://db.example.com/mlflow",
            "postgresql+psycopg2://db.example.com/mlflow",
        ),
        ("databricks", "databricks"),
        ("databricks://profile", "databricks://profile"),
    ],
)
def test_an_mlflow_store_uri_is_a_store_endpoint(uri: str, opened: str) -> None:
    endpoint = Endpoint.mlflow(uri)
    assert endpoint.kind == "store"
    assert endpoint.store_uri is not None
    assert endpoint.store_uri.uri == opened
    assert endpoint.run_page_url("r") is None
    assert endpoint.describe() == f"MLflow store {opened}"


def test_a_relative_store_path_is_resolved_against_the_working_directory_now(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    resolved = {
        uri: Endpoint.mlflow(uri).store_uri.uri  # type: ignore[union-attr]
        for uri in (
            "sqlite:///mlflow.db",
            "sqlite:///sub/x.db?timeout=20",
            "file:./mlruns",
            "mlruns",
        )
    }
    assert resolved == {
        "sqlite:///mlflow.db": f"sqlite:///{tmp_path}/mlflow.db",
        "sqlite:///sub/x.db?timeout=20": f"sqlite:///{tmp_path}/sub/x.db?timeout=20",
        "file:./mlruns": (tmp_path / "mlruns").as_uri(),
        "mlruns": (tmp_path / "mlruns").as_uri(),
    }


def test_a_database_password_stays_out_of_everything_shown() -> None:
    endpoint = Endpoint.mlflow("postgresql://alice:S3cretPW@db:5432/mlflow?password=S3cretPW")
    assert endpoint.store_uri is not None
    assert endpoint.store_uri.uri.count("S3cretPW") == 2  # what MLflow's client is given
    shown = [repr(endpoint), str(endpoint), endpoint.describe(), endpoint.public_url()]
    shown += [repr(endpoint.store_uri), pickle.loads(pickle.dumps(endpoint)).describe()]
    assert all("S3cretPW" not in text for text in shown), shown


@pytest.mark.parametrize("uri", ["localhost:5000", "127.0.0.1:5000/", "ftp://host/x"])
def test_a_uri_that_is_neither_a_server_nor_a_store_is_refused(uri: str) -> None:
    with pytest.raises(ConfigurationError, match="http"):
        Endpoint.mlflow(uri)


def test_from_env_prefers_aidp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIDP_INSTANCE_ID", OCID)
    monkeypatch.setenv("AIDP_WORKSPACE_KEY", "ws")
    monkeypatch.setenv("OCI_CLI_REGION", "eu-frankfurt-1")
    monkeypatch.setenv("AIDP_USER_PRINCIPAL", "alice")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    endpoint = Endpoint.from_env()
    assert endpoint.kind == "aidp"
    assert endpoint.base_url.startswith("https://aidp.eu-frankfurt-1.oci.oraclecloud.com/20260430/")
    assert endpoint.user_principal == "alice"


def test_from_env_endpoint_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIDP_INSTANCE_ID", OCID)
    monkeypatch.setenv("AIDP_WORKSPACE_KEY", "ws")
    monkeypatch.setenv("OCI_CLI_ENDPOINT", "https://custom.test")
    assert Endpoint.from_env().base_url.startswith("https://custom.test/20260430/")


def test_from_env_region_from_oci_profile(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pytest.TempPathFactory
) -> None:
    config = f"{tmp_path}/config"
    with open(config, "w") as handle:
        handle.write("[DEFAULT]\nregion = ap-tokyo-1\n[other]\nregion = uk-london-1\n")
    monkeypatch.setenv("OCI_CLI_CONFIG_FILE", config)
    monkeypatch.setenv("OCI_CLI_PROFILE", "other")
    monkeypatch.setenv("AIDP_INSTANCE_ID", OCID)
    monkeypatch.setenv("AIDP_WORKSPACE_KEY", "ws")
    assert "aidp.uk-london-1." in Endpoint.from_env().base_url


def test_from_env_missing_workspace_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIDP_INSTANCE_ID", OCID)
    with pytest.raises(ConfigurationError, match="AIDP_WORKSPACE_KEY"):
        Endpoint.from_env()


def test_from_env_missing_region_names_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIDP_INSTANCE_ID", OCID)
    monkeypatch.setenv("AIDP_WORKSPACE_KEY", "ws")
    with pytest.raises(ConfigurationError, match="OCI_CLI_REGION"):
        Endpoint.from_env()


def test_from_env_mlflow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert Endpoint.from_env() == Endpoint.mlflow("http://127.0.0.1:5000")


def test_from_env_nothing_configured_names_every_variable() -> None:
    with pytest.raises(ConfigurationError) as info:
        Endpoint.from_env()
    message = str(info.value)
    for name in ("AIDP_INSTANCE_ID", "AIDP_WORKSPACE_KEY", "MLFLOW_TRACKING_URI"):
        assert name in message


def test_from_env_reads_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    first = Endpoint.from_env()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:2")
    assert Endpoint.from_env() != first


def test_describe_hides_userinfo() -> None:
    endpoint = Endpoint.mlflow("http://user:secret@127.0.0.1:5000")
    assert "secret" not in endpoint.describe()
    assert "secret" not in repr(endpoint)


SECRET = "S3cret%40PW"  # percent-encoded in the URI: the password is "S3cret@PW"


def test_userinfo_becomes_a_credential_and_leaves_every_url() -> None:
    endpoint = Endpoint.mlflow(f"http://alice:{SECRET}@127.0.0.1:5000/")
    assert endpoint.base_url == "http://127.0.0.1:5000"
    assert endpoint.url("runs/get") == "http://127.0.0.1:5000/api/2.0/mlflow/runs/get"
    assert endpoint.public_url() == "http://127.0.0.1:5000"
    assert endpoint.credential is not None
    assert (endpoint.credential.username, endpoint.credential.password) == ("alice", "S3cret@PW")
    assert endpoint.credential.source == "the tracking URI"
    shown = [repr(endpoint), str(endpoint), endpoint.describe(), repr(endpoint.credential)]
    shown.append(repr(dataclasses.asdict(endpoint)))
    for text in shown:
        assert "S3cret" not in text
        assert "alice" not in text
    assert "credential=BasicCredential(source='the tracking URI')" in repr(endpoint)


def test_username_alone_is_a_credential_with_an_empty_password() -> None:
    endpoint = Endpoint.mlflow("https://tok3n-abc@mlflow.example.com")
    assert endpoint.base_url == "https://mlflow.example.com"
    assert endpoint.credential is not None
    assert (endpoint.credential.username, endpoint.credential.password) == ("tok3n-abc", "")


def test_from_env_names_the_variable_as_the_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:{SECRET}@127.0.0.1:5000")
    endpoint = Endpoint.from_env()
    assert endpoint.credential is not None
    assert endpoint.credential.source == "MLFLOW_TRACKING_URI"
    assert endpoint == Endpoint.mlflow(f"http://alice:{SECRET}@127.0.0.1:5000")
    assert endpoint != Endpoint.mlflow("http://127.0.0.1:5000")


def test_built_directly_or_replaced_the_base_url_still_holds_no_userinfo() -> None:
    direct = Endpoint(kind="mlflow", base_url="http://bob:hunter2@127.0.0.1:1")
    assert direct.base_url == "http://127.0.0.1:1"
    assert direct.credential is not None
    assert direct.credential.password == "hunter2"
    replaced = dataclasses.replace(Endpoint.mlflow("http://h:1"), base_url="http://c:pw2@h:2")
    assert replaced.base_url == "http://h:2"
    assert replaced.credential is not None
    assert replaced.credential.password == "pw2"
    assert pickle.loads(pickle.dumps(replaced)) == replaced


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("htps://alice:S3cretPW@host:5000", "'htps://alice:***@host:5000'"),
        ("http:/alice:S3cretPW@host", "'http:/alice:***@host'"),
        ("alice:S3cretPW@host:5000", "'alice:***@host:5000'"),
        ("ftp://S3cretPW@host", "'ftp://***@host'"),
    ],
)
def test_bad_scheme_error_shows_the_uri_redacted(uri: str, shown: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Endpoint.mlflow(uri)
    message = str(info.value)
    assert shown in message
    assert "S3cret" not in message


@pytest.mark.parametrize(
    "uri", ["http://alice:S3cretPW", "http://alice:S3cretPW/path", "http://alice:S3cretPW@"]
)
def test_unreadable_authority_error_never_shows_a_password(uri: str) -> None:
    # Without the '@' the password reads as a port; httpx's own error would quote it.
    with pytest.raises(ConfigurationError) as info:
        Endpoint.mlflow(uri)
    assert "S3cret" not in str(info.value)


@pytest.mark.parametrize(
    "url", ["https://alice:S3cretPW@aidp.example.com", "http://u:S3cretPW@[::1]:9"]
)
def test_aidp_endpoint_with_userinfo_is_refused_redacted(url: str) -> None:
    with pytest.raises(
        ConfigurationError, match="must not contain a user name or password"
    ) as info:
        Endpoint.aidp(OCID, "ws", endpoint=url)
    assert "S3cret" not in str(info.value)
    assert ":***@" in str(info.value)


def test_aidp_bad_scheme_error_is_redacted() -> None:
    with pytest.raises(ConfigurationError, match="https") as info:
        Endpoint.aidp(OCID, "ws", endpoint="htps://aidp.example.com")
    assert "'htps://aidp.example.com'" in str(info.value)
