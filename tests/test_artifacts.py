"""Artifacts: every `log_*` form reaches a real MLflow server with proxied artifacts
(`--artifacts-destination`), directly and through the signing AIDP gateway, read back byte
for byte; snapshots survive what checkpoint writers do to the file afterwards; uploads never
hold up metrics; what a run could not upload, `aidp-metrics sync` finishes."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from aidp_metrics import MetricsClient, Run
from aidp_metrics._uploads.store import ArtifactStore
from tests.support.aidp_env import key_id
from tests.support.chaos_proxy import ChaosProxy
from tests.support.gateway import AIDPGateway
from tests.support.mlflow_server import (
    MLflowServer,
    artifact_bytes,
    artifact_files,
    artifact_sha256,
    get_metric_history,
    runs_in_experiment,
)
from tests.support.oci_keys import OCICredentials

ROOT = Path(__file__).resolve().parent.parent
FAST = {"flush_interval": 0.05}


def _files(tmp_path: Path) -> dict[str, bytes]:
    """A few files of distinct content (the 200 MB test streams through the gateway)."""
    return {
        "model.bin": os.urandom(3 * 1024 * 1024 + 17),
        "config.json": b'{"lr": 0.001}\n',
        "nested/deeper/weights.pt": os.urandom(4096),
    }


def _write(base: Path, files: dict[str, bytes]) -> None:
    for relative, data in files.items():
        path = base / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _log_every_form(run: Run, tmp_path: Path) -> dict[str, bytes]:
    """Log one artifact by each `log_*` form; what each artifact path must hold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import plotly.graph_objects as go
    import yaml

    expected: dict[str, bytes] = {}
    files = _files(tmp_path)
    source = tmp_path / "source"
    _write(source, files)

    run.log_artifact(source / "model.bin")  # the root, a copy
    expected["model.bin"] = files["model.bin"]
    run.log_artifact(source / "config.json", "configs", snapshot="link")
    expected["configs/config.json"] = files["config.json"]
    run.log_artifacts(source / "nested", "tree")
    expected["tree/deeper/weights.pt"] = files["nested/deeper/weights.pt"]

    figure, axes = plt.subplots()
    axes.plot([0, 1, 2], [3, 1, 2])
    run.log_figure(figure, "plots/curve.png")
    local = tmp_path / "curve.png"
    figure.savefig(local)
    expected["plots/curve.png"] = local.read_bytes()
    plt.close(figure)

    chart = go.Figure(go.Scatter(x=[0, 1], y=[2, 3]))
    run.log_figure(chart, "plots/chart.html", div_id="chart")
    local = tmp_path / "chart.html"
    chart.write_html(local, include_plotlyjs="cdn", auto_open=False, div_id="chart")
    expected["plots/chart.html"] = local.read_bytes()

    settings = {"lr": 3e-4, "layers": [64, 32], "name": "ünïcode"}
    run.log_dict(settings, "settings.json")
    expected["settings.json"] = json.dumps(settings, indent=2).encode()
    run.log_dict(settings, "settings.yaml")
    expected["settings.yaml"] = yaml.dump(settings, indent=2, default_flow_style=False).encode()
    run.log_text("epoch 1: ok\n", "logs/train.txt")
    expected["logs/train.txt"] = b"epoch 1: ok\n"
    return expected


def test_every_log_form_arrives_byte_for_byte(
    mlflow_server: MLflowServer, fresh_experiment: str, tmp_path: Path
) -> None:
    mlflow_server.start()
    run = Run.start(experiment_name=fresh_experiment, endpoint=mlflow_server.url, **FAST)
    expected = _log_every_form(run, tmp_path)
    stats = run.end()

    assert artifact_files(mlflow_server.url, run.run_id) == {
        path: len(data) for path, data in expected.items()
    }
    for path, data in expected.items():
        assert artifact_bytes(mlflow_server.url, run.run_id, path) == data, path
    size = sum(len(data) for data in expected.values())
    count = len(expected)
    assert (stats.artifacts, stats.artifacts_uploaded, stats.artifacts_failed) == (count, count, 0)
    assert (stats.artifact_bytes, stats.artifact_bytes_uploaded) == (size, size)
    assert stats.artifacts_pending == stats.artifact_bytes_pending == 0
    # Nothing is left in the spool: every snapshot went once uploaded.
    assert not list(Path(os.environ["AIDP_METRICS_DIR"]).rglob("files/*"))


def test_through_the_signing_aidp_gateway_every_request_is_signed(
    aidp_gateway: AIDPGateway,
    gateway_client: MetricsClient,
    oci_api_key: OCICredentials,
    mlflow_server: MLflowServer,
    fresh_experiment: str,
    tmp_path: Path,
) -> None:
    run = Run.start(experiment_name=fresh_experiment, client=gateway_client, **FAST)
    expected = _log_every_form(run, tmp_path)
    stats = run.end()
    assert stats.artifacts_uploaded == len(expected), stats

    for path, data in expected.items():
        assert artifact_bytes(mlflow_server.url, run.run_id, path) == data, path
    uploads = [r for r in aidp_gateway.requests if "/mlflow-artifacts/" in r.path]
    assert {r.method for r in uploads} >= {"PUT"}
    assert len([r for r in uploads if r.method == "PUT"]) == len(expected)
    assert aidp_gateway.auth_failures == []
    for request in uploads:
        assert key_id(request) == oci_api_key.key_id
        assert request.headers.get("opc-request-id")
        assert request.method != "PUT" or request.retry_token
    # Downloads come back through the gateway too (MLflow's client, the run's signer).
    store = ArtifactStore.for_run(gateway_client, run.run_id)
    listed = {f.path: f.size for f in store.list()}
    assert listed == {path: len(data) for path, data in expected.items()}
    (tmp_path / "back").mkdir()
    fetched = Path(store.download("model.bin", str(tmp_path / "back")))
    assert fetched.read_bytes() == expected["model.bin"]
    assert aidp_gateway.auth_failures == []
    # The download's pool threads are gone with it (one left behind failed the next
    # tests' no-thread-left checks until a garbage collection took the store).
    assert [t.name for t in threading.enumerate() if t.name.startswith("aidp-metrics-art")] == []


def test_a_200_mb_upload_in_flight_does_not_hold_up_the_metrics_logged_after_it(
    aidp_gateway: AIDPGateway,
    gateway_client: MetricsClient,
    mlflow_server: MLflowServer,
    fresh_experiment: str,
    tmp_path: Path,
) -> None:
    big = tmp_path / "checkpoint.ckpt"
    digest = hashlib.sha256()
    with open(big, "wb") as out:
        for _ in range(200):
            block = os.urandom(1 << 20)
            digest.update(block)
            out.write(block)
    run = Run.start(experiment_name=fresh_experiment, client=gateway_client, **FAST)
    try:
        run.log_artifact(big, "checkpoints", snapshot="link")
        logged = time.monotonic()
        run.log_metrics({"loss": 0.5}, step=1)
        # Delivered means the server answered and the sender counted it; the server may
        # hold the point a moment before that, so wait for the count, not the server.
        arrived = None
        while time.monotonic() - logged < 60:
            stats = run.stats
            if stats.delivered:
                arrived = stats
                break
            time.sleep(0.02)
        assert arrived is not None, "the metric was never delivered"
        assert arrived.delivered == 1
        assert arrived.artifacts_uploaded == 0, "the upload was over before the metric arrived"
        history = get_metric_history(mlflow_server.url, run.run_id, "loss")
        assert [(m["step"], m["value"]) for m in history] == [(1, 0.5)]
    finally:
        # Also on a failure: the upload ends with the test, not against the next test's
        # (stopped) gateway while MLflow's client retries for minutes.
        stats = run.end()
    assert stats.artifacts_uploaded == 1
    assert stats.artifact_bytes_uploaded == 200 << 20
    remote = artifact_sha256(mlflow_server.url, run.run_id, "checkpoints/checkpoint.ckpt")
    assert remote == digest.hexdigest()
    (put,) = [r for r in aidp_gateway.requests if r.method == "PUT"]
    assert put.size == 200 << 20
    assert put.status == 200


def test_the_logged_bytes_arrive_whatever_the_script_does_to_the_file_afterwards(
    chaos_proxy: ChaosProxy, mlflow_server: MLflowServer, fresh_experiment: str, tmp_path: Path
) -> None:
    """Checkpoint rotation deletes, Lightning's fsspec replaces by rename, torch.save and
    Keras rewrite in place. The server is down until every file has been changed, so no
    upload can have read a file before it changed."""
    chaos_proxy.down()
    run = Run.start(experiment_name=fresh_experiment, endpoint=chaos_proxy.url, **FAST)
    original = {name: os.urandom(100_000) for name in ("deleted", "rewritten", "renamed", "linked")}
    for name, data in original.items():
        (tmp_path / name).write_bytes(data)

    run.log_artifact(tmp_path / "deleted")  # a copy (reflink where the filesystem can)
    (tmp_path / "deleted").unlink()
    run.log_artifact(tmp_path / "rewritten")
    with open(tmp_path / "rewritten", "r+b") as again:  # torch.save's "wb" on the same inode
        again.write(b"\0" * 100_000)
    run.log_artifact(tmp_path / "renamed", snapshot="link")
    (tmp_path / "renamed.tmp").write_bytes(b"new checkpoint")
    os.replace(tmp_path / "renamed.tmp", tmp_path / "renamed")  # fsspec's commit
    run.log_artifact(tmp_path / "linked", snapshot="link")  # the wrong mode for this writer
    with open(tmp_path / "linked", "wb") as again:
        again.write(b"rewritten in place")

    chaos_proxy.clear()
    with pytest.warns(UserWarning, match="linked changed after it was logged"):
        stats = run.end()

    for name in ("deleted", "rewritten", "renamed"):
        assert artifact_bytes(mlflow_server.url, run.run_id, name) == original[name], name
    assert "linked" not in artifact_files(mlflow_server.url, run.run_id)
    assert (stats.artifacts_uploaded, stats.artifacts_failed) == (3, 1)


def _sync(spool: Path, tracking_uri: str, env: dict[str, str] | None = None) -> str:
    environment = dict(env or os.environ, MLFLOW_TRACKING_URI=tracking_uri)
    environment["AIDP_METRICS_DIR"] = str(spool)
    done = subprocess.run(
        [sys.executable, "-m", "aidp_metrics.cli", "sync", str(spool)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_server_down_then_sync_uploads_what_the_run_left(
    chaos_proxy: ChaosProxy,
    mlflow_server: MLflowServer,
    fresh_experiment: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spool = tmp_path / "spool"
    chaos_proxy.down()
    run = Run.start(
        experiment_name=fresh_experiment, endpoint=chaos_proxy.url, spool_dir=str(spool), **FAST
    )
    data = os.urandom(2_000_000)
    (tmp_path / "weights.bin").write_bytes(data)
    run.log_artifact(tmp_path / "weights.bin", "final")
    run.log_text("done", "notes.txt")
    run.log_metric("loss", 0.25, step=3)
    started = time.monotonic()
    with pytest.warns(UserWarning, match=r"2 artifact\(s\) .* aidp-metrics sync"):
        stats = run.end(timeout=60)
    assert time.monotonic() - started < 20  # a down server is not waited for
    assert (stats.artifacts, stats.artifacts_pending) == (2, 2)
    assert stats.artifact_bytes_pending == len(data) + 4

    chaos_proxy.clear()
    out = _sync(spool, mlflow_server.url)
    assert "2/2 artifact(s) uploaded" in out
    (created,) = [
        r["info"]["run_id"] for r in runs_in_experiment(mlflow_server.url, fresh_experiment)
    ]
    assert artifact_bytes(mlflow_server.url, created, "final/weights.bin") == data
    assert artifact_bytes(mlflow_server.url, created, "notes.txt") == b"done"
    assert [m["value"] for m in get_metric_history(mlflow_server.url, created, "loss")] == [0.25]
    assert not list(spool.rglob("uploads"))
    assert "artifact" not in _sync(spool, mlflow_server.url)  # a second sync: nothing to upload


KILLED_TRAINER = textwrap.dedent(
    """
    import os, sys
    from aidp_metrics import Run

    run = Run.start(experiment_name=os.environ["EXPERIMENT"], spool="always")
    run.log_metric("loss", 1.5, step=1)
    run.log_artifact(sys.argv[1], "checkpoints")
    print("run", run.run_id, flush=True)
    sys.stdin.readline()
    """
)


def test_sigkill_mid_upload_then_sync_finishes_it(
    aidp_gateway: AIDPGateway,
    oci_api_key: OCICredentials,
    mlflow_server: MLflowServer,
    fresh_experiment: str,
    tmp_path: Path,
) -> None:
    """The gateway has the whole body and holds its answer: the process dies mid-upload,
    with nothing stored; `sync` (OCI-signed, through the gateway) uploads it."""
    from tests.support.aidp_env import child_env

    spool = tmp_path / "spool"
    data = os.urandom(5_000_000)
    (tmp_path / "epoch-3.ckpt").write_bytes(data)
    held = aidp_gateway.inject("epoch-3.ckpt", status=503, delay=60)
    env = child_env(aidp_gateway, oci_api_key, "api_key")
    env.update(EXPERIMENT=fresh_experiment, AIDP_METRICS_DIR=str(spool))
    trainer_env = {k: v for k, v in env.items() if k != "MLFLOW_TRACKING_AUTH"}  # OCI signing
    script = tmp_path / "trainer.py"
    script.write_text(KILLED_TRAINER)
    child = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "epoch-3.ckpt")],
        env=trainer_env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        run_id = child.stdout.readline().split()[1]
        deadline = time.monotonic() + 60
        while not held.hits:  # the gateway has the body, signature checked, and holds it
            assert time.monotonic() < deadline, "the upload never started"
            time.sleep(0.05)
    finally:
        child.kill()
        child.wait(30)
        for stream in (child.stdin, child.stdout):
            if stream is not None:
                stream.close()
    assert "checkpoints" not in {p.split("/")[0] for p in artifact_files(mlflow_server.url, run_id)}

    out = _sync(spool, aidp_gateway.tracking_uri, env)  # MLFLOW_TRACKING_AUTH=aidp
    assert "1/1 artifact(s) uploaded" in out
    assert artifact_bytes(mlflow_server.url, run_id, "checkpoints/epoch-3.ckpt") == data
    assert [m["value"] for m in get_metric_history(mlflow_server.url, run_id, "loss")] == [1.5]
    assert aidp_gateway.auth_failures == []
    assert not list(spool.rglob("uploads"))
    assert "artifact" not in _sync(spool, aidp_gateway.tracking_uri, env)


WITHOUT_MLFLOW = textwrap.dedent(
    """
    import sys, warnings
    sys.modules["mlflow"] = None  # as if mlflow-skinny were not installed
    warnings.simplefilter("always")
    from aidp_metrics import Run

    run = Run.start(experiment_name=sys.argv[2], endpoint=sys.argv[1], flush_interval=0.05)
    with open(sys.argv[3], "w") as out:
        out.write("weights")
    run.log_artifact(sys.argv[3])
    run.log_text("a note", "note.txt")
    for step in range(5):
        run.log_metric("loss", 1.0 / (step + 1), step=step)
    stats = run.end()
    print("run", run.run_id, stats.delivered, stats.artifacts, stats.artifacts_pending)
    """
)


def test_without_mlflow_skinny_one_warning_and_the_metrics_go_on(
    mlflow_server: MLflowServer, fresh_experiment: str, tmp_path: Path
) -> None:
    mlflow_server.start()
    script = tmp_path / "script.py"
    script.write_text(WITHOUT_MLFLOW)
    env = dict(os.environ, AIDP_METRICS_DIR=str(tmp_path / "spool"))
    done = subprocess.run(
        [sys.executable, str(script), mlflow_server.url, fresh_experiment, str(tmp_path / "w")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    _, run_id, delivered, artifacts, pending = done.stdout.split()
    assert (delivered, artifacts, pending) == ("5", "2", "2")
    assert done.stderr.count("aidp-metrics[artifacts]") == 1, done.stderr
    assert len(get_metric_history(mlflow_server.url, run_id, "loss")) == 5
    # Kept for sync, which uploads them where mlflow-skinny is installed.
    assert "2/2 artifact(s) uploaded" in _sync(tmp_path / "spool", mlflow_server.url)
    assert artifact_bytes(mlflow_server.url, run_id, "note.txt") == b"a note"


def test_bad_input_is_one_warning_and_counted_failed_or_raised_when_strict(
    mlflow_server: MLflowServer, fresh_experiment: str, tmp_path: Path
) -> None:
    mlflow_server.start()
    run = Run.start(experiment_name=fresh_experiment, endpoint=mlflow_server.url, **FAST)
    with pytest.warns(UserWarning, match="not logged"):
        run.log_artifact(tmp_path / "missing.ckpt")
    with pytest.warns(UserWarning, match="must be relative"):
        run.log_text("x", "../outside.txt")
    with pytest.warns(UserWarning, match="matplotlib or plotly"):
        run.log_figure(object(), "figure.png")
    stats = run.end()
    assert (stats.artifacts, stats.artifacts_failed, stats.artifacts_uploaded) == (3, 3, 0)
    assert artifact_files(mlflow_server.url, run.run_id) == {}

    strict = Run.start(
        experiment_name=fresh_experiment, endpoint=mlflow_server.url, strict=True, **FAST
    )
    with pytest.raises(FileNotFoundError):
        strict.log_artifact(tmp_path / "missing.ckpt")
    with pytest.raises(ValueError, match="snapshot"):
        strict.log_artifact(__file__, snapshot="reflink")
    strict.end()


def test_logging_an_artifact_after_end_reopens_the_run(
    mlflow_server: MLflowServer, fresh_experiment: str
) -> None:
    mlflow_server.start()
    run = Run.start(experiment_name=fresh_experiment, endpoint=mlflow_server.url, **FAST)
    run.end()
    run.log_text("late", "late.txt")
    assert not run.ended
    run.end()
    assert artifact_bytes(mlflow_server.url, run.run_id, "late.txt") == b"late"


def test_flush_waits_for_the_uploads_logged_before_it(
    mlflow_server: MLflowServer, fresh_experiment: str, tmp_path: Path
) -> None:
    mlflow_server.start()
    run = Run.start(experiment_name=fresh_experiment, endpoint=mlflow_server.url, **FAST)
    data = os.urandom(1_000_000)
    (tmp_path / "a.bin").write_bytes(data)
    run.log_artifact(tmp_path / "a.bin")
    assert run.flush(timeout=60)
    assert run.stats.artifacts_uploaded == 1
    assert artifact_bytes(mlflow_server.url, run.run_id, "a.bin") == data
    run.end()


def test_artifacts_command_lists_a_runs_files(
    mlflow_server: MLflowServer, fresh_experiment: str
) -> None:
    mlflow_server.start()
    run = Run.start(experiment_name=fresh_experiment, endpoint=mlflow_server.url, **FAST)
    run.log_text("hello", "notes/a.txt")
    run.log_dict({"a": 1}, "b.json")
    run.end()
    env = dict(os.environ, MLFLOW_TRACKING_URI=mlflow_server.url)
    done = subprocess.run(
        [sys.executable, "-m", "aidp_metrics.cli", "artifacts", "--run-id", run.run_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()[1:]]
    assert rows == [["b.json", "12"], ["notes/a.txt", "5"]]


def test_doctor_checks_the_artifact_store(mlflow_server: MLflowServer) -> None:
    mlflow_server.start()
    env = dict(os.environ, MLFLOW_TRACKING_URI=mlflow_server.url)
    done = subprocess.run(
        [sys.executable, "-m", "aidp_metrics.cli", "doctor"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "artifacts: mlflow-artifacts:/" in done.stdout
    assert "writable" in done.stdout
