"""No secret in any output: every credential kind, every command, every failure path.

Each test configures every kind of credential with unique values — an OCI API key whose
PEM is encrypted with a pass phrase, an OCI session token (and its key), an MLflow Bearer
token, MLflow username/password in the environment and user:password in the tracking URI —
then drives the CLI in-process (`aidp_metrics.cli.main`) and training code (`Run`) against
the real MLflow server and the signing AIDP gateway, through success and every failure the
other tests produce (401, 404, 429, server down, offline + sync, bad URL, bad scheme).

What a person or a file could see is collected: stdout, stderr, every `logging` record at
DEBUG (httpx's and httpcore's included), every warning, the reprs and messages of the
objects and exceptions involved, and every file written under the spool directory. None
may hold a secret, its percent-encoding, its base64, the base64 of `user:password`, or any
16-character piece of a long secret (a secret is replaced by a marker, never truncated).
"""

from __future__ import annotations

import base64
import configparser
import logging
import os
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography.hazmat.primitives import serialization

from aidp_metrics import MetricsClient, Run
from aidp_metrics._connection.retry import RetryPolicy
from aidp_metrics._errors import AIDPError, AIDPMetricsWarning
from tests.support.chaos_proxy import ChaosProxy
from tests.support.gateway import AIDPGateway
from tests.support.mlflow_server import MLflowServer, free_port, runs_in_experiment
from tests.support.oci_keys import (
    TENANCY,
    USER,
    OCICredentials,
    fingerprint,
    generate_private_key,
    public_key_pem,
)

pytest.importorskip("oci")

URI_USER = "alice"
ENV_USER = "bob"
PASS_PHRASE_PROFILE = "API_KEY_PASS_PHRASE"
SESSION_PROFILE = "SESSION"
FAST_RETRY = RetryPolicy(max_attempts=2, base_delay=0.05, max_delay=0.1, total_timeout=2.0)
RUN_OPTIONS = {"retry": FAST_RETRY, "end_timeout": 20.0, "flush_interval": 0.05}


@dataclass(frozen=True)
class Credentials:
    """Every secret of one test session, and the OCI config file that holds the OCI ones."""

    uri_password: str
    env_password: str
    token: str
    pass_phrase: str
    api_key_pem: str
    session_token: str
    session_key_pem: str
    config_file: Path
    api_key_id: str
    api_public_key: bytes

    def uri(self, base: str) -> str:
        """`base` (http://host:port) with this session's user:password in it."""
        return base.replace("://", f"://{URI_USER}:{quote(self.uri_password, safe='')}@", 1)

    def fragments(self) -> list[str]:
        found: list[str] = []
        for secret in (
            self.uri_password,
            self.env_password,
            self.token,
            self.pass_phrase,
            self.session_token,
        ):
            found += [secret, quote(secret, safe=""), _b64(secret), _b64url(secret)]
            found += _pieces(secret)
        for user, password in ((URI_USER, self.uri_password), (ENV_USER, self.env_password)):
            found.append(_b64(f"{user}:{password}"))
        for pem in (self.api_key_pem, self.session_key_pem):
            body = "".join(line for line in pem.splitlines() if "-----" not in line)
            found += _pieces(body)
        return found


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode().rstrip("=")


def _b64url(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _pieces(secret: str, size: int = 16, stride: int = 8) -> list[str]:
    if len(secret) <= 2 * size:
        return []
    return [secret[i : i + size] for i in range(0, len(secret) - size + 1, stride)]


@pytest.fixture(scope="module")
def credentials(
    tmp_path_factory: pytest.TempPathFactory, oci_security_token: OCICredentials
) -> Credentials:
    tag = uuid.uuid4().hex
    directory = tmp_path_factory.mktemp("secrets-oci")
    pass_phrase = f"pp-{tag[:12]}-phrase"
    key = generate_private_key()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(pass_phrase.encode()),
    )
    key_file = directory / "api_key.pem"
    key_file.write_bytes(pem)
    key_file.chmod(0o600)
    session = configparser.ConfigParser(interpolation=None)
    session.read(oci_security_token.config_file)
    config = configparser.ConfigParser(interpolation=None)
    config[PASS_PHRASE_PROFILE] = {
        "user": USER,
        "fingerprint": fingerprint(key),
        "tenancy": TENANCY,
        "region": "us-ashburn-1",
        "key_file": str(key_file),
        "pass_phrase": pass_phrase,
    }
    config[SESSION_PROFILE] = dict(session[oci_security_token.profile])
    config_file = directory / "config"
    with config_file.open("w") as handle:
        config.write(handle)
    assert oci_security_token.token is not None
    return Credentials(
        uri_password=f"uri:p@ss/{tag[12:24]}",  # ':', '@' and '/' need percent-encoding
        env_password=f"env-pw-{tag[:12]}",
        token=f"tok-{tag[12:]}-bearer",
        pass_phrase=pass_phrase,
        api_key_pem=pem.decode(),
        session_token=oci_security_token.token,
        session_key_pem=oci_security_token.private_key_path.read_text(),
        config_file=config_file,
        api_key_id=f"{TENANCY}/{USER}/{fingerprint(key)}",
        api_public_key=public_key_pem(key),
    )


@dataclass
class Seen:
    """Everything the code under test showed, as text."""

    capsys: pytest.CaptureFixture[str]
    caplog: pytest.LogCaptureFixture
    warned: list[warnings.WarningMessage]
    texts: list[str] = field(default_factory=list)
    files: list[tuple[str, str]] = field(default_factory=list)

    def add(self, *texts: object) -> None:
        self.texts.extend(str(text) for text in texts)

    def cli(self, *args: str) -> tuple[int, str, str]:
        """`aidp-metrics ARGS` in-process; returns (exit status, stdout, stderr)."""
        from aidp_metrics import cli

        try:
            status = cli.main(list(args))
        except SystemExit as exc:  # argparse usage errors
            status = int(exc.code or 0)
        out, err = self.capsys.readouterr()
        self.add(out, err)
        return status, out, err

    def spool_files(self) -> int:
        """Reads every file under the spool dir now (journals may be deleted later)."""
        root = Path(os.environ["AIDP_METRICS_DIR"])
        count = 0
        for path in sorted(root.rglob("*")):
            if path.is_file():
                self.files.append((str(path), path.read_bytes().decode("latin-1")))
                count += 1
        return count

    def assert_no_secret(self, credentials: Credentials) -> None:
        self.spool_files()
        out, err = self.capsys.readouterr()
        self.add(out, err)
        channels = {
            "stdout/stderr/reprs": "\n".join(self.texts),
            "logging": self.caplog.text
            + "\n".join(
                f"{r.getMessage()} {r.exc_text or ''} {r.stack_info or ''}"
                for r in self.caplog.records
            ),
            "warnings": "\n".join(f"{w.category.__name__}: {w.message}" for w in self.warned),
            **{f"file {path}": text for path, text in self.files},
        }
        pieces = credentials.fragments()
        leaks = [
            f"{name}: ...{text[max(0, text.index(piece) - 60) : text.index(piece) + 60]!r}..."
            for name, text in channels.items()
            for piece in pieces
            if piece in text
        ]
        assert not leaks, "secret in output:\n" + "\n".join(leaks[:10])


@pytest.fixture
def seen(
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Seen]:
    for name in list(os.environ):
        if name.startswith(("MLFLOW_", "OCI_", "AIDP_")) and name != "AIDP_METRICS_DIR":
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))  # no ~/.oci, ~/.netrc
    caplog.set_level(logging.DEBUG)  # the root logger: httpx, httpcore, aidp_metrics, ...
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield Seen(capsys, caplog, caught)


def _every_credential(monkeypatch: pytest.MonkeyPatch, credentials: Credentials) -> None:
    """MLflow's env credentials and the OCI config are present in every test."""
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", ENV_USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", credentials.env_password)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", credentials.token)
    monkeypatch.setenv("OCI_CLI_CONFIG_FILE", str(credentials.config_file))
    monkeypatch.setenv("OCI_CLI_PROFILE", PASS_PHRASE_PROFILE)


def _log_a_run(seen: Seen, experiment: str, **options: object) -> Run:
    run = Run.start(experiment_name=experiment, run_name="secrets", **RUN_OPTIONS, **options)
    for step in range(5):
        run.log_metrics({"loss": 1.0 / (step + 1), "acc": step / 10}, step=step)
    run.log_params({"lr": 0.1})
    run.end()
    seen.add(repr(run), repr(run.stats), run.stats)
    return run


def _start_fails(seen: Seen, failures: list[str]) -> None:
    """Training code whose configuration is broken: format the error as integrations do."""
    try:
        run = Run.start(experiment_name="never", **RUN_OPTIONS)
    except AIDPError as exc:
        seen.add(str(exc), repr(exc), f"could not create the run: {exc}")
    else:
        run.end()
        seen.add(repr(run), run.stats)
        failures.append("Run.start accepted a broken configuration")


def _expect(condition: bool, what: str, failures: list[str]) -> None:
    if not condition:
        failures.append(what)


# -- MLflow ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sent", ["uri_basic", "env_basic", "token"])
def test_mlflow_every_command_and_failure(
    sent: str,
    seen: Seen,
    credentials: Credentials,
    mlflow_server: MLflowServer,
    chaos_proxy: ChaosProxy,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    _every_credential(monkeypatch, credentials)
    if sent == "token":
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")

    def target(base: str) -> None:
        uri = credentials.uri(base) if sent == "uri_basic" else base
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)

    failures: list[str] = []
    target(mlflow_server.url)
    experiment = f"secrets-{sent}-{uuid.uuid4().hex[:8]}"

    status, doctor, _ = seen.cli("doctor")
    _expect(status == 0, f"doctor failed:\n{doctor}", failures)
    with MetricsClient() as client:
        run_id = client.create_run(experiment_name=experiment, run_name="cli").run_id
        seen.add(repr(client), repr(client.endpoint), repr(client.auth), client.endpoint)
    for args in (
        ["log", "--run-id", run_id, "--key", "loss", "--value", "0.5", "--step", "1"],
        ["history", "--run-id", run_id],
        ["history", "--run-id", run_id, "--format", "json"],
        ["history", "--run-id", run_id, "--format", "csv", "--debug"],
        ["plot", "--run-id", run_id, "--width", "60"],
        ["plot", "--run-id", run_id, "-o", str(tmp_path / "curves.png")],
    ):
        status, _, err = seen.cli(*args)
        _expect(status == 0, f"{args[0]} failed: {err}", failures)
    png = tmp_path / "curves.png"
    if png.exists():
        seen.files.append((str(png), png.read_bytes().decode("latin-1")))
    for args in (
        ["history", "--run-id", "no-such-run"],  # 404
        ["history", "--run-id", "no-such-run", "--debug"],
        ["local-server", "--port", mlflow_server.url.rsplit(":", 1)[1]],  # port taken
    ):
        status, _, err = seen.cli(*args)
        _expect(status == 1 and "error:" in err, f"{args} did not fail: {err}", failures)
    _log_a_run(seen, experiment)

    # Offline, then sync.
    monkeypatch.setenv("AIDP_METRICS_MODE", "offline")
    _log_a_run(seen, experiment)
    monkeypatch.delenv("AIDP_METRICS_MODE")
    _expect(seen.spool_files() >= 2, "the offline run wrote no journal", failures)
    seen.cli("sync", "--dry-run")
    status, out, err = seen.cli("sync")
    _expect(status == 0, f"sync failed: {out} {err}", failures)

    # Through the fault proxy: 401, 429, then down.
    target(chaos_proxy.url)
    chaos_proxy.status(401, times=None, path=None)
    for args in (["doctor"], ["history", "--run-id", run_id], ["log", "--run-id", run_id,
                 "--key", "k", "--value", "1"]):  # fmt: skip
        status, out, err = seen.cli(*args)
        _expect(status == 1 and "401" in out + err, f"{args}: no 401 in {out} {err}", failures)
    monkeypatch.setenv("AIDP_METRICS_MODE", "offline")
    _log_a_run(seen, experiment)
    monkeypatch.delenv("AIDP_METRICS_MODE")
    status, out, _ = seen.cli("sync")
    _expect(status == 1 and "401" in out, f"sync to a 401 server: {out}", failures)
    chaos_proxy.clear()
    chaos_proxy.status(429, times=1, retry_after="0", path="runs/log-metric")
    status, _, err = seen.cli("log", "--run-id", run_id, "--key", "after429", "--value", "2")
    _expect(status == 0, f"log after one 429 failed: {err}", failures)
    chaos_proxy.status(429, times=None, retry_after="0", path=None)
    seen.cli("doctor")
    seen.cli("history", "--run-id", run_id)
    chaos_proxy.clear()
    chaos_proxy.down()
    seen.cli("doctor")
    _log_a_run(seen, experiment, spool="on_failure")  # starts locally, spools at end()
    _expect(seen.spool_files() >= 2, "nothing spooled while the server was down", failures)
    chaos_proxy.up()
    status, out, err = seen.cli("sync")
    _expect(status == 0, f"sync after the outage failed: {out} {err}", failures)

    seen.assert_no_secret(credentials)
    # The channels were live, and the redacted forms are what a person sees.
    loggers = {record.name.split(".")[0] for record in seen.caplog.records}
    assert {"httpx", "httpcore"} <= loggers, loggers
    # aidp-metrics speaks through warnings only (notice.py): the outage path said something.
    assert any(w.category is AIDPMetricsWarning for w in seen.warned), seen.warned
    assert not failures, "\n".join(failures)
    source = {
        "uri_basic": "basic (from MLFLOW_TRACKING_URI)",
        "env_basic": "basic (from MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD)",
        "token": "bearer token (from MLFLOW_TRACKING_TOKEN)",
    }[sent]
    assert source in doctor
    assert "✓ auth: accepted" in doctor
    runs = runs_in_experiment(mlflow_server.url, experiment)
    assert len(runs) == 5  # the CLI's, two online, the offline one synced, the outage one synced


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("htps://{userinfo}@127.0.0.1:5000", "'htps://alice:***@127.0.0.1:5000'"),  # typo
        ("http:/{userinfo}@127.0.0.1:5000", "'http:/alice:***@127.0.0.1:5000'"),
        ("{userinfo}@127.0.0.1:5000", "'alice:***@127.0.0.1:5000'"),  # no scheme
        ("http://{userinfo}@", "'http://alice:***@'"),  # no host
        ("http://{userinfo}", "not shown"),  # no '@': the password reads as a port
        ("http://{userinfo}/api", "not shown"),
    ],
)
def test_bad_tracking_uri(
    uri: str, shown: str, seen: Seen, credentials: Credentials, monkeypatch: pytest.MonkeyPatch
) -> None:
    _every_credential(monkeypatch, credentials)
    failures: list[str] = []
    bad = uri.format(userinfo=f"{URI_USER}:{quote(credentials.uri_password, safe='')}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", bad)
    lines = []
    for args in (
        ["doctor"],
        ["history", "--run-id", "r"],
        ["log", "--run-id", "r", "--key", "k", "--value", "1", "--debug"],
        ["sync"],
        ["plot", "--run-id", "r", "--tracking-uri", bad],
    ):
        status, out, err = seen.cli(*args)
        _expect(status == 1, f"{args} did not fail: {out} {err}", failures)
        lines.append(out + err)
    _start_fails(seen, failures)
    try:
        MetricsClient().close()
        failures.append("MetricsClient accepted a broken tracking URI")
    except AIDPError as exc:
        seen.add(exc, repr(exc))

    seen.assert_no_secret(credentials)
    assert not failures, "\n".join(failures)
    for text in lines:
        assert shown in text, text


# -- AIDP -----------------------------------------------------------------------------------


@pytest.fixture
def gateway(aidp_gateway: AIDPGateway, credentials: Credentials) -> AIDPGateway:
    aidp_gateway.register_key(credentials.api_key_id, credentials.api_public_key)
    return aidp_gateway


def _aidp(
    monkeypatch: pytest.MonkeyPatch, gateway: AIDPGateway, mode: str, url: str | None = None
) -> None:
    monkeypatch.setenv("AIDP_ENDPOINT", url or gateway.url)
    monkeypatch.setenv("AIDP_INSTANCE_ID", gateway.instance_id)
    monkeypatch.setenv("AIDP_WORKSPACE_KEY", gateway.workspace_key)
    monkeypatch.setenv("OCI_CLI_AUTH", mode)
    profile = PASS_PHRASE_PROFILE if mode == "api_key" else SESSION_PROFILE
    monkeypatch.setenv("OCI_CLI_PROFILE", profile)


@pytest.mark.parametrize("mode", ["api_key", "security_token"])
def test_aidp_every_command_and_failure(
    mode: str,
    seen: Seen,
    credentials: Credentials,
    gateway: AIDPGateway,
    mlflow_server: MLflowServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _every_credential(monkeypatch, credentials)
    # Set but ignored (AIDP_* wins): doctor says so, and must not show it.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", credentials.uri(mlflow_server.url))
    _aidp(monkeypatch, gateway, mode)
    failures: list[str] = []
    experiment = f"secrets-aidp-{mode}-{uuid.uuid4().hex[:8]}"

    status, doctor, _ = seen.cli("doctor")
    _expect(status == 0, f"doctor failed:\n{doctor}", failures)
    with MetricsClient() as client:
        run_id = client.create_run(experiment_name=experiment, run_name="cli").run_id
        seen.add(repr(client), repr(client.endpoint), repr(client.auth), client.endpoint)
    for args in (
        ["log", "--run-id", run_id, "--key", "loss", "--value", "0.5", "--step", "1"],
        ["history", "--run-id", run_id, "--format", "json"],
        ["plot", "--run-id", run_id, "--width", "60", "--debug"],
        ["history", "--run-id", "no-such-run", "--debug"],  # 404 RESOURCE_DOES_NOT_EXIST
    ):
        seen.cli(*args)
    _log_a_run(seen, experiment)
    monkeypatch.setenv("AIDP_METRICS_MODE", "offline")
    _log_a_run(seen, experiment)
    monkeypatch.delenv("AIDP_METRICS_MODE")
    _expect(seen.spool_files() >= 2, "the offline run wrote no journal", failures)

    # 401: a gateway that knows none of the keys (sync fails on it, too).
    with AIDPGateway(mlflow_server.url) as stranger:
        _aidp(monkeypatch, gateway, mode, stranger.url)
        for args in (["doctor"], ["history", "--run-id", run_id], ["sync"]):
            status, out, err = seen.cli(*args)
            _expect(status == 1 and "401" in out + err, f"{args}: {out} {err}", failures)
        seen.add(*stranger.auth_failures)
    _aidp(monkeypatch, gateway, mode)
    status, out, err = seen.cli("sync")
    _expect(status == 0, f"sync failed: {out} {err}", failures)

    # 404: wrong workspace.
    monkeypatch.setenv("AIDP_WORKSPACE_KEY", "no-such-workspace")
    for args in (["doctor"], ["log", "--run-id", run_id, "--key", "k", "--value", "1"]):
        status, out, err = seen.cli(*args)
        _expect(status == 1 and "404" in out + err, f"{args}: {out} {err}", failures)
    monkeypatch.setenv("AIDP_WORKSPACE_KEY", gateway.workspace_key)

    # 429: once (retried), then always.
    gateway.inject("runs/log-metric", status=429, retry_after="0", times=1)
    status, _, err = seen.cli("log", "--run-id", run_id, "--key", "after429", "--value", "2")
    _expect(status == 0, f"log after one 429 failed: {err}", failures)
    gateway.inject(None, status=429, retry_after="0", times=1000)
    seen.cli("doctor")
    seen.cli("history", "--run-id", run_id, "--key", "loss")
    gateway.clear()

    # Down: nothing listens there.
    _aidp(monkeypatch, gateway, mode, f"http://127.0.0.1:{free_port()}")
    seen.cli("doctor")
    _log_a_run(seen, experiment, spool="on_failure")

    # Bad scheme, and credentials where AIDP has no use for them.
    for url in (
        f"htps://{URI_USER}:{quote(credentials.uri_password, safe='')}@aidp.example.com",
        credentials.uri(gateway.url),
    ):
        _aidp(monkeypatch, gateway, mode, url)
        for args in (["doctor"], ["history", "--run-id", run_id]):
            status, out, err = seen.cli(*args)
            _expect(status == 1 and ":***@" in out + err, f"{args}: {out} {err}", failures)
        _start_fails(seen, failures)

    seen.assert_no_secret(credentials)
    loggers = {record.name.split(".")[0] for record in seen.caplog.records}
    assert {"httpx", "httpcore"} <= loggers, loggers
    assert not failures, "\n".join(failures)
    assert "MLFLOW_TRACKING_URI is set but ignored" in doctor
    assert f"mode {mode}" in doctor
