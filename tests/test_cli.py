"""The `aidp-metrics` command, run in a subprocess against the real MLflow server and the
signing AIDP gateway (a stub HTTP server only for a skewed clock, which neither can fake)."""

from __future__ import annotations

import csv
import email.utils
import io
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import types
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from aidp_metrics import Endpoint, MetricsClient
from aidp_metrics._connection.auth import oci_signer_auth
from tests.support.gateway import AIDPGateway
from tests.support.mlflow_server import MLflowServer, free_port, get_metric_history
from tests.support.oci_keys import OCICredentials, write_oci_config

CLI_TIMEOUT = 180


def clean_env() -> dict[str, str]:
    """The parent's environment without any endpoint or credential setting."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("MLFLOW_", "OCI_", "AIDP_")) or name == "AIDP_METRICS_DIR"
    }
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def mlflow_env(server: MLflowServer) -> dict[str, str]:
    return {**clean_env(), "MLFLOW_TRACKING_URI": server.url}


def aidp_env(gateway: AIDPGateway, creds: OCICredentials, mode: str = "api_key") -> dict[str, str]:
    return {
        **clean_env(),
        "AIDP_ENDPOINT": gateway.url,
        "AIDP_INSTANCE_ID": gateway.instance_id,
        "AIDP_WORKSPACE_KEY": gateway.workspace_key,
        "OCI_CLI_CONFIG_FILE": str(creds.config_file),
        "OCI_CLI_PROFILE": creds.profile,
        "OCI_CLI_AUTH": mode,
    }


def cli(
    *args: str, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aidp_metrics.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=CLI_TIMEOUT,
        check=False,
    )


def secrets_of(creds: OCICredentials) -> list[str]:
    pem = creds.private_key_path.read_text()
    body = "".join(line for line in pem.splitlines() if "-----" not in line)
    found = [pem, body[:64], body[-64:]]
    if creds.token:
        found += [creds.token, creds.token.split(".")[1]]
    return found


def assert_no_secret(result: subprocess.CompletedProcess[str], creds: OCICredentials) -> None:
    output = result.stdout + result.stderr
    for secret in secrets_of(creds):
        assert secret not in output
    assert "Signature version" not in output
    assert "authorization" not in output.lower()


def new_run(client: MetricsClient) -> str:
    return client.create_run(experiment_name=f"cli-{uuid.uuid4().hex}", run_name="cli").run_id


@pytest.fixture
def mlflow_run(mlflow_server: MLflowServer) -> str:
    mlflow_server.start()
    with MetricsClient(Endpoint.mlflow(mlflow_server.url)) as client:
        return new_run(client)


# -- doctor --------------------------------------------------------------------------------


def test_doctor_ok_against_mlflow(mlflow_server: MLflowServer) -> None:
    mlflow_server.start()
    result = cli("doctor", env=mlflow_env(mlflow_server))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert f"MLflow tracking server {mlflow_server.url}" in out
    assert "auth" in out
    assert "✓ reachable: HTTP 200" in out
    assert "clock skew" in out
    assert "✗" not in out
    assert result.stderr == ""


@pytest.mark.parametrize("mode", ["api_key", "security_token"])
def test_doctor_ok_against_aidp(
    mode: str, aidp_gateway: AIDPGateway, request: pytest.FixtureRequest
) -> None:
    creds: OCICredentials = request.getfixturevalue(f"oci_{mode}")
    result = cli("doctor", env=aidp_env(aidp_gateway, creds, mode))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert f"AIDP instance {aidp_gateway.instance_id} workspace {aidp_gateway.workspace_key}" in out
    assert f"mode {mode}, profile {creds.profile}" in out
    assert "✓ auth: accepted" in out
    assert "✗" not in out
    assert_no_secret(result, creds)
    # One signed read request to the API first, and it passed verification.
    seen, *probe = aidp_gateway.requests
    assert (seen.method, seen.status) == ("GET", 200)
    assert seen.path.endswith("/experiments/get-by-name")
    # Then the artifact check, through MLflow's client signed by our provider: a probe file
    # written, listed and deleted in the workspace's proxied artifact store.
    assert "✓ artifacts: mlflow-artifacts:/" in out
    artifacts = [(r.method, r.status) for r in probe if "/mlflow-artifacts/" in r.path]
    assert ("PUT", 200) in artifacts
    assert ("DELETE", 200) in artifacts
    assert all(status == 200 for _, status in artifacts), artifacts
    assert aidp_gateway.auth_failures == []


def test_doctor_without_configuration_names_the_variables(tmp_path: Path) -> None:
    result = cli("doctor", env={**clean_env(), "HOME": str(tmp_path)})
    assert result.returncode != 0
    assert "✗ endpoint: none configured" in result.stdout
    for name in ("AIDP_INSTANCE_ID", "AIDP_WORKSPACE_KEY", "MLFLOW_TRACKING_URI"):
        assert name in result.stdout


def test_doctor_unreachable_mlflow() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = cli("doctor", env={**clean_env(), "MLFLOW_TRACKING_URI": url})
    assert result.returncode != 0
    assert "✗ reachable: no HTTP answer" in result.stdout
    assert "fix: is the MLflow server running" in result.stdout


def test_doctor_unreachable_aidp(aidp_gateway: AIDPGateway, oci_api_key: OCICredentials) -> None:
    env = aidp_env(aidp_gateway, oci_api_key)
    env["AIDP_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"
    result = cli("doctor", env=env)
    assert result.returncode != 0
    assert "✗ reachable" in result.stdout
    assert "fix: check AIDP_ENDPOINT" in result.stdout


def test_endpoint_flag_overrides_the_environment(
    aidp_gateway: AIDPGateway, oci_api_key: OCICredentials
) -> None:
    env = aidp_env(aidp_gateway, oci_api_key)
    env["AIDP_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"  # closed
    result = cli("doctor", "--endpoint", aidp_gateway.url, env=env)
    assert result.returncode == 0, result.stdout
    assert f"at 127.0.0.1:{aidp_gateway.port}" in result.stdout


def test_doctor_unknown_key_gets_401_hint(
    aidp_gateway: AIDPGateway, oci_api_key: OCICredentials, tmp_path: Path
) -> None:
    stranger, _ = write_oci_config(tmp_path / "other")  # a key pair the gateway never saw
    result = cli("doctor", env=aidp_env(aidp_gateway, stranger))
    assert result.returncode != 0
    out = result.stdout
    assert "✓ reachable: HTTP 401" in out
    assert "✗ auth: rejected (HTTP 401 NotAuthenticated" in out
    assert "fix: check key_file and fingerprint in profile 'API_KEY'" in out
    assert_no_secret(result, stranger)
    assert len(aidp_gateway.auth_failures) == 1


def test_doctor_wrong_workspace_gets_404_hint(
    aidp_gateway: AIDPGateway, oci_api_key: OCICredentials
) -> None:
    env = aidp_env(aidp_gateway, oci_api_key)
    env["AIDP_WORKSPACE_KEY"] = "no-such-workspace"
    result = cli("doctor", env=env)
    assert result.returncode != 0
    assert "✗ path: not found (HTTP 404 NotAuthorizedOrNotFound" in result.stdout
    assert "fix: check AIDP_INSTANCE_ID" in result.stdout
    assert "AIDP_WORKSPACE_KEY (now no-such-workspace)" in result.stdout


def test_doctor_token_profile_with_api_key_mode_says_which_mode(
    aidp_gateway: AIDPGateway, oci_security_token: OCICredentials
) -> None:
    result = cli("doctor", env=aidp_env(aidp_gateway, oci_security_token, "api_key"))
    assert result.returncode != 0
    out = result.stdout
    assert "✗ auth: credentials could not be loaded" in out
    assert "OCI_CLI_AUTH=security_token" in out
    assert "--auth MODE" in out
    assert aidp_gateway.requests == []  # nothing is sent without credentials
    assert_no_secret(result, oci_security_token)
    # ... and the flag fixes it.
    env = aidp_env(aidp_gateway, oci_security_token, "api_key")
    fixed = cli("doctor", "--auth", "security_token", env=env)
    assert fixed.returncode == 0, fixed.stdout


class _SkewedHandler(BaseHTTPRequestHandler):
    """Answers every request 401 with a `Date` ten minutes ahead, as OCI would for a bad clock."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = json.dumps({"code": "NotAuthenticated", "message": "date out of range"}).encode()
        self.send_response_only(401)
        self.send_header("Date", email.utils.formatdate(time.time() + 600, usegmt=True))
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def skewed_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SkewedHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_doctor_reports_clock_skew_on_401(
    skewed_server: str, aidp_gateway: AIDPGateway, oci_api_key: OCICredentials
) -> None:
    env = aidp_env(aidp_gateway, oci_api_key)
    env["AIDP_ENDPOINT"] = skewed_server
    result = cli("doctor", env=env)
    assert result.returncode != 0
    out = result.stdout
    assert "✗ auth: rejected" in out
    assert "fix: the local clock is more than 5 minutes off" in out
    # The server's clock is ~600 s ahead of ours (less the request's own duration).
    match = re.search(r"✗ clock skew: \+(\d+(?:\.\d+)?) s", out)
    assert match is not None, out
    assert 300 < float(match.group(1)) <= 601
    assert "fix: sync the local clock" in out


def test_clock_skew_computation() -> None:
    from aidp_metrics.cli._doctor_probe import MAX_CLOCK_SKEW, clock_skew

    now = 1_700_000_000.0
    ahead = email.utils.formatdate(now + 600, usegmt=True)
    assert clock_skew(ahead, now - 0.1, now + 0.1) == pytest.approx(600.5, abs=0.01)
    behind = email.utils.formatdate(now - 400, usegmt=True)
    skew = clock_skew(behind, now, now)
    assert skew is not None
    assert skew < -MAX_CLOCK_SKEW
    in_sync = email.utils.formatdate(now, usegmt=True)
    assert abs(clock_skew(in_sync, now - 0.2, now + 0.2) or 99) <= 1
    assert clock_skew(None, now, now) is None
    assert clock_skew("not a date", now, now) is None


def test_redact_hides_token_shaped_text() -> None:
    from aidp_metrics._redact import redact

    token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    text = redact(f"unknown keyId 'ST${token}' and {token} and Bearer abc.def")
    assert token not in text
    assert "abc.def" not in text
    assert "unknown keyId" in text


# -- log and history -----------------------------------------------------------------------


@pytest.mark.parametrize("target", ["mlflow", "aidp"])
def test_log_then_history_round_trip_exact(
    target: str,
    mlflow_server: MLflowServer,
    aidp_gateway: AIDPGateway,
    oci_api_key: OCICredentials,
) -> None:
    if target == "mlflow":
        env = mlflow_env(mlflow_server)
        client = MetricsClient(Endpoint.mlflow(mlflow_server.url))
    else:
        env = aidp_env(aidp_gateway, oci_api_key)
        endpoint = Endpoint.aidp(
            aidp_gateway.instance_id, aidp_gateway.workspace_key, endpoint=aidp_gateway.url
        )
        auth = oci_signer_auth(
            "api_key", config_file=oci_api_key.config_file, profile=oci_api_key.profile
        )
        client = MetricsClient(endpoint, auth=auth)
    with client:
        run_id = new_run(client)
    aidp_gateway.clear()

    points = [("loss", "0.25", "10", "1700000000123"), ("loss", "0.1", "20", "1700000000456")]
    for key, value, step, stamp in points:
        result = cli(
            "log", "--run-id", run_id, "--key", key, "--value", value,
            "--step", step, "--timestamp", stamp, env=env,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout == ""
    if target == "aidp":
        # The seed call: one POST runs/log-metric per `log`, nothing else.
        assert [(r.method, r.path.rsplit("/", 2)[-2:]) for r in aidp_gateway.requests] == [
            ("POST", ["runs", "log-metric"])
        ] * 2
    expected = [(k, int(s), float(v), int(t)) for k, v, s, t in points]
    # Read back independently of the code under test first.
    raw = get_metric_history(mlflow_server.url, run_id, "loss")
    assert [(m["key"], m["step"], m["value"], m["timestamp"]) for m in raw] == expected

    as_json = cli("history", "--run-id", run_id, "--key", "loss", "--format", "json", env=env)
    assert as_json.returncode == 0, as_json.stderr
    rows = json.loads(as_json.stdout)
    assert [(r["key"], r["step"], r["value"], r["timestamp"]) for r in rows] == expected

    as_csv = cli("history", "--run-id", run_id, "--format", "csv", env=env)  # all keys
    assert as_csv.returncode == 0, as_csv.stderr
    table = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [
        (r["key"], int(r["step"]), float(r["value"]), int(r["timestamp"])) for r in table
    ] == expected


def test_history_table_lists_all_keys(mlflow_server: MLflowServer, mlflow_run: str) -> None:
    with MetricsClient(Endpoint.mlflow(mlflow_server.url)) as client:
        client.log_metric(mlflow_run, "b/acc", 0.5, step=1, timestamp=1_700_000_000_000)
        client.log_metric(mlflow_run, "a/loss", float("nan"), step=2, timestamp=1_700_000_000_001)
    result = cli("history", "--run-id", mlflow_run, env=mlflow_env(mlflow_server))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["key", "step", "value", "timestamp", "time", "(UTC)"]
    assert lines[1].split()[:4] == ["a/loss", "2", "NaN", "1700000000001"]
    assert lines[2].split()[:4] == ["b/acc", "1", "0.5", "1700000000000"]
    assert "2023-11-14 22:13:20.000" in lines[2]


# -- plot ----------------------------------------------------------------------------------


@pytest.fixture
def curves_run(mlflow_server: MLflowServer, mlflow_run: str) -> str:
    with MetricsClient(Endpoint.mlflow(mlflow_server.url)) as client:
        for step in range(0, 200, 10):
            client.log_metric(mlflow_run, "loss", 2.0 / (1 + step / 20), step=step)
            client.log_metric(mlflow_run, "val_loss", 2.2 / (1 + step / 30), step=step)
    return mlflow_run


def test_plot_png(mlflow_server: MLflowServer, curves_run: str, tmp_path: Path) -> None:
    image = tmp_path / "curves.png"
    result = cli(
        "plot", "--run-id", curves_run, "--key", "loss", "--key", "val_loss", "-o", str(image),
        "--tracking-uri", mlflow_server.url, env=clean_env(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = image.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 1024
    import matplotlib.image

    pixels = matplotlib.image.imread(image)
    height, width = pixels.shape[:2]
    assert height > 100
    assert width > 100


def test_plot_in_the_terminal(mlflow_server: MLflowServer, curves_run: str) -> None:
    result = cli(
        "plot", "--run-id", curves_run, "--key", "loss", "--key", "val_loss", "--width", "60",
        env=mlflow_env(mlflow_server),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "* loss: 20 points" in out
    assert "+ val_loss: 20 points" in out
    assert "step" in out
    assert max(len(line) for line in out.splitlines()) <= 60
    assert out.count("*") > 20


def test_plot_png_without_matplotlib_names_the_extra(
    mlflow_server: MLflowServer, curves_run: str, tmp_path: Path
) -> None:
    blocker = tmp_path / "blocker" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('matplotlib hidden for this test')\n")
    env = {**mlflow_env(mlflow_server), "PYTHONPATH": str(blocker.parent)}
    result = cli("plot", "--run-id", curves_run, "-o", str(tmp_path / "x.png"), env=env)
    assert result.returncode != 0
    (line,) = result.stderr.splitlines()
    assert 'pip install "aidp-metrics[plot]"' in line
    assert not (tmp_path / "x.png").exists()


def test_render_chart_edge_cases() -> None:
    from aidp_metrics.cli._plot import render_chart

    single = render_chart({"loss": [(5, 1.0)]}, width=40, height=5, unicode=False)
    assert "* loss: 1 point, last 1 at step 5" in single
    odd = render_chart({"x": [(0, float("nan")), (1, 2.0), (2, 2.0)]}, width=40, height=5)
    assert "(1 NaN/Inf not drawn)" in odd
    assert "no finite points" in render_chart({"x": [(0, float("inf"))]})


# -- errors --------------------------------------------------------------------------------


def test_bad_run_id_is_one_line_and_debug_shows_traceback(mlflow_server: MLflowServer) -> None:
    env = mlflow_env(mlflow_server)
    result = cli("history", "--run-id", "no-such-run", env=env)
    assert result.returncode == 1
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("aidp-metrics history: error: HTTP 404")
    assert "no-such-run" in line
    assert "Traceback" not in result.stderr

    debug = cli("history", "--run-id", "no-such-run", "--debug", env=env)
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    last = debug.stderr.rstrip().splitlines()[-1]
    assert last.split(" [opc-request-id")[0] == line.split(" [opc-request-id")[0]


def test_bad_input_and_missing_endpoint_are_one_line(tmp_path: Path) -> None:
    result = cli("log", "--run-id", "r", "--key", "bad//key", "--value", "1", env=clean_env())
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert "No tracking endpoint configured" in line
    usage = cli("log", "--run-id", "r", "--key", "k", "--value", "abc", env=clean_env())
    assert usage.returncode == 2
    assert "invalid float value" in usage.stderr


def test_help_everywhere() -> None:
    for command in ([], ["doctor"], ["log"], ["history"], ["plot"], ["local-server"], ["sync"]):
        result = cli(*command, "--help", env=clean_env())
        assert result.returncode == 0, command
        assert "--tracking-uri" in result.stdout


def test_import_loads_nothing_heavy() -> None:
    code = (
        "import sys, aidp_metrics.cli\n"
        "heavy = ('httpx', 'oci', 'mlflow', 'matplotlib', 'numpy')\n"
        "print([m for m in heavy if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=clean_env()
    )
    assert result.stdout.strip() == "[]"


def test_auth_modes_match_the_library() -> None:
    from aidp_metrics._connection import auth
    from aidp_metrics.cli import _parser

    assert _parser.AUTH_MODES == auth.AUTH_MODES


def test_progress_bar_shows_count_rate_and_eta(monkeypatch: pytest.MonkeyPatch) -> None:
    from aidp_metrics.cli import _sync
    from aidp_metrics.cli._sync import ProgressBar

    # the bar's clock, frozen: under load a real one moves between the two reads
    clock = types.SimpleNamespace(monotonic=lambda: 100.0)
    monkeypatch.setattr(_sync, "time", clock)
    stream = io.StringIO()
    bar = ProgressBar(stream, width=10)
    bar.started -= 2.0  # two seconds in
    bar(500, 1000)
    bar.finish()
    text = stream.getvalue()
    assert text.startswith("\r[#####.....] 500/1000 points  250/s  ETA 2s")
    assert text.endswith("\n")


# -- sync ----------------------------------------------------------------------------------


def test_sync_dry_run_on_empty_dir(tmp_path: Path) -> None:
    pytest.importorskip("aidp_metrics._durability.sync")
    result = cli("sync", str(tmp_path), "--dry-run", env=clean_env())
    assert result.returncode == 0, result.stderr
    assert "nothing to sync" in result.stdout


def test_sync_uploads_a_spooled_run(mlflow_server: MLflowServer, tmp_path: Path) -> None:
    pytest.importorskip("aidp_metrics._durability.sync")
    from aidp_metrics._queue.journal import (
        Journal,
        RunDescriptor,
        encode_metric,
        encode_op,
        new_local_id,
    )

    mlflow_server.start()
    record = RunDescriptor(local_id=new_local_id(), experiment_name=f"sync-{uuid.uuid4().hex}")
    journal = Journal.create(tmp_path, record)
    create = ("create", {"experiment_name": record.experiment_name, "tags": {}})
    points = [("loss", 0.5 - i / 100, 1_700_000_000_000 + i, i) for i in range(25)]
    journal.append(encode_op(create) + b"".join(encode_metric(p) for p in points))
    journal.close()
    env = mlflow_env(mlflow_server)

    dry = cli("sync", str(tmp_path), "--dry-run", env=clean_env())
    assert dry.returncode == 0, dry.stderr
    assert f"{record.local_id} → new run (experiment {record.experiment_name}): 25 points" in (
        dry.stdout
    )

    result = cli("sync", str(tmp_path), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    (line,) = result.stdout.splitlines()
    assert line.startswith(f"{record.local_id} → run ")
    assert line.endswith("25/25 points sent")
    run_id = line.split(" → run ")[1].split()[0]
    history = get_metric_history(mlflow_server.url, run_id, "loss")
    assert [m["step"] for m in history] == list(range(25))


# -- local-server --------------------------------------------------------------------------


def test_local_server_starts_and_stops_on_sigint(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "aidp_metrics.cli", "local-server", "--port", str(port),
         "--dir", str(tmp_path / "server")],
        env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for text in process.stdout:
            lines.put(text)

    threading.Thread(target=pump, daemon=True).start()
    try:
        deadline = time.monotonic() + 150
        seen: list[str] = []
        while not any("MLFLOW_TRACKING_URI=" in text for text in seen):
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            try:
                seen.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue.Empty:
                pytest.fail(f"no MLFLOW_TRACKING_URI line; got {seen}")
        url = f"http://127.0.0.1:{port}"
        assert f"export MLFLOW_TRACKING_URI={url}\n" in seen
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200

        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 0
        assert process.stderr is not None
        assert "stopped" in process.stderr.read()
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/health", timeout=2)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
