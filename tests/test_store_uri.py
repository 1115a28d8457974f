"""An MLflow store URI (`sqlite:`, `file:`, a local path) as the tracking URI: runs are
delivered through MLflow's own client (`StoreClient`) with the REST path's ordering,
batching, spool and counting, and read back here with `mlflow.MlflowClient`."""

from __future__ import annotations

import math
import sqlite3
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest

from aidp_metrics import (
    AIDPMetricsWarning,
    BadRequest,
    ConfigurationError,
    Metric,
    MetricsClient,
    NotFound,
    RetryPolicy,
    Run,
    ServerError,
    StoreClient,
)
from aidp_metrics._connection.connect import connect
from aidp_metrics._durability.sync import sync_directory
from aidp_metrics._queue.journal import spool_root

mlflow = pytest.importorskip("mlflow")
MlflowClient = mlflow.MlflowClient

SPECIALS = {1: math.nan, 2: math.inf, 3: -math.inf}


def store_uri(kind: str, tmp_path: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/mlflow.db"
    return (tmp_path / "mlruns").as_uri()  # file:///...


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    points = client.get_metric_history(run_id, key)
    return sorted((p.step, p.value) for p in points)


def stored_experiment(client: MlflowClient, run_id: str) -> str:
    experiment_id: str = client.get_run(run_id).info.experiment_id
    return experiment_id


def same(got: list[tuple[int, float]], want: list[tuple[int, float]]) -> bool:
    def norm(points: list[tuple[int, float]]) -> list[tuple[int, str]]:
        return [(step, repr(value)) for step, value in points]  # NaN == NaN here

    return norm(got) == norm(want)


@pytest.mark.parametrize("kind", ["sqlite", "file"])
def test_a_store_uri_holds_the_run_afterwards(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # MLflow 3.7+ opens its file store (in maintenance) only when asked to.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = store_uri(kind, tmp_path)
    with Run.start(
        experiment_name="store-exp",
        run_name="store-run",
        tags={"team": "ml"},
        endpoint=uri,
        flush_interval=30,  # everything goes at end(): the 1000-point batches
    ) as run:
        assert isinstance(run.client, StoreClient)
        for step in range(1000):
            run.log_metric("loss", 1 / (step + 1), step=step)
        for step, value in SPECIALS.items():
            run.log_metrics({"special": value, "acc": step / 10}, step=step)
        run.log_params({"optimizer": {"name": "adam", "lr": 0.001}, "epochs": 3})
        run.set_tags({"stage": "test"})
    stats = run.stats
    assert (stats.logged, stats.delivered, stats.failed, stats.pending) == (1006, 1006, 0, 0)
    assert stats.requests == 2  # 1006 points: one batch of 1000 (the server's limit), one of 6

    client = MlflowClient(tracking_uri=uri)
    assert same(history(client, run.run_id, "loss"), [(s, 1 / (s + 1)) for s in range(1000)])
    # NaN and the infinities hold what MLflow's own client stores for them (its SQL store
    # keeps an infinity as the largest double, as it does behind an MLflow server).
    reference = client.create_run(stored_experiment(client, run.run_id)).info.run_id
    client.log_batch(
        reference, metrics=[mlflow.entities.Metric("special", v, 0, s) for s, v in SPECIALS.items()]
    )
    assert same(history(client, run.run_id, "special"), history(client, reference, "special"))
    assert math.isnan(history(client, run.run_id, "special")[0][1])
    assert same(history(client, run.run_id, "acc"), [(s, s / 10) for s in SPECIALS])
    stored = client.get_run(run.run_id)
    assert stored.info.status == "FINISHED"
    assert stored.info.end_time is not None
    assert stored.info.run_name == "store-run"
    assert client.get_experiment(stored.info.experiment_id).name == "store-exp"
    assert stored.data.params == {"optimizer/name": "adam", "optimizer/lr": "0.001", "epochs": "3"}
    assert stored.data.tags["team"] == "ml"
    assert stored.data.tags["stage"] == "test"
    assert stored.data.tags["aidp_metrics.local_id"] == run.local_id


def test_the_tracking_uri_from_the_environment_and_a_relative_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # MLflow resolves a relative path against the working directory; it is resolved when
    # the run starts, so a later chdir (Hydra's) does not move the store.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///relative.db")
    run = Run.start(experiment_name="env-exp")
    monkeypatch.chdir(tmp_path.parent)
    run.log_metrics({"x": 1.0, "y": 2.0}, step=7)
    run.end()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/relative.db")
    assert history(client, run.run_id, "x") == [(7, 1.0)]
    assert history(client, run.run_id, "y") == [(7, 2.0)]
    assert client.get_run(run.run_id).info.status == "FINISHED"
    assert not (tmp_path.parent / "relative.db").exists()


def test_a_bad_point_is_isolated_once_and_the_rest_delivered(tmp_path: Path) -> None:
    uri = store_uri("sqlite", tmp_path)
    run = Run.start(experiment_name="bad", endpoint=uri, flush_interval=30)
    stamp = int(time.time() * 1000)
    records = [(f"k{i % 5}", float(i), stamp, i) for i in range(200)]
    # A key our checks let through that MLflow's store refuses: isolated, the rest delivered.
    records.insert(137, ("bad/../key", 1.0, stamp, 0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run._queue.append([Metric(*record) for record in records])  # past the client's checks
        assert run.flush(120)
    stats = run.stats
    assert (stats.logged, stats.delivered, stats.failed, stats.pending) == (201, 200, 1, 0)
    (reason,) = stats.failures
    assert "bad/../key" in reason
    assert "400 INVALID_PARAMETER_VALUE" in reason
    ours = [str(w.message) for w in caught if issubclass(w.category, AIDPMetricsWarning)]
    assert len(ours) == 1, ours
    assert "bad/../key" in ours[0]
    run.end()
    client = MlflowClient(tracking_uri=uri)
    for k in range(5):
        want = [(i, float(i)) for i in range(200) if i % 5 == k]
        assert history(client, run.run_id, f"k{k}") == want
    assert run.stats.delivered + run.stats.failed == run.stats.logged


def test_offline_spool_then_sync_into_a_sqlite_store(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    run = Run.start(
        experiment_name="synced", run_name="offline", offline=True, spool_dir=str(spool)
    )
    for step in range(1500):
        run.log_metrics({"loss": step / 1500, "nan": math.nan}, step=step)
    run.log_params({"lr": 0.1})
    run.end()
    assert run.stats.pending == 3000

    uri = store_uri("sqlite", tmp_path)
    (result,) = sync_directory(spool_root(str(spool)), StoreClient(uri))
    assert result.error is None
    assert (result.points, result.sent) == (3000, 3000)
    client = MlflowClient(tracking_uri=uri)
    run_id = result.run_id
    assert run_id is not None
    assert history(client, run_id, "loss") == [(s, s / 1500) for s in range(1500)]
    assert [s for s, v in history(client, run_id, "nan") if math.isnan(v)] == list(range(1500))
    stored = client.get_run(run_id)
    assert (stored.info.status, stored.info.run_name) == ("FINISHED", "offline")
    assert stored.data.params == {"lr": "0.1"}
    # Again: nothing is sent twice.
    (again,) = sync_directory(spool_root(str(spool)), StoreClient(uri))
    assert (again.points, again.sent) == (0, 0)
    assert len(client.get_metric_history(run_id, "loss")) == 1500


def test_cli_sync_and_history_against_a_store_uri(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    run = Run.start(experiment_name="cli", offline=True, spool_dir=str(spool))
    run.log_metrics({"loss": 0.5}, step=1)
    run.log_metrics({"loss": 0.25}, step=2)
    run.end()
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    synced = cli("--tracking-uri", uri, "sync", str(spool))
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert synced.stdout.strip().endswith("2/2 points sent")
    run_id = synced.stdout.split(" run ")[1].split()[0]
    shown = cli("--tracking-uri", uri, "history", "--run-id", run_id, "--format", "csv")
    assert shown.returncode == 0, shown.stderr
    assert [line.split(",")[:3] for line in shown.stdout.splitlines()] == [
        ["key", "step", "value"],
        ["loss", "1", "0.5"],
        ["loss", "2", "0.25"],
    ]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aidp_metrics.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_attaching_to_a_run_the_store_does_not_hold_is_a_404(tmp_path: Path) -> None:
    with pytest.raises(NotFound) as info:
        Run.attach("f" * 32, endpoint=store_uri("sqlite", tmp_path))
    assert info.value.code == "RESOURCE_DOES_NOT_EXIST"


def test_mlflow_errors_become_our_typed_errors(tmp_path: Path) -> None:
    uri = store_uri("sqlite", tmp_path)
    client = StoreClient(uri, retry=RetryPolicy.never())
    run_id = client.create_run(experiment_name="errors").run_id
    client.log_params(run_id, {"lr": "0.1"})
    with pytest.raises(BadRequest) as changed:  # MLflow params are immutable
        client.log_params(run_id, {"lr": "0.2"})
    assert changed.value.code == "INVALID_PARAMETER_VALUE"
    # A database another process holds locked: TEMPORARILY_UNAVAILABLE, a 503 retried later.
    holder = sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(ServerError) as locked:
            client.log_params(run_id, {"other": "1"})
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert (locked.value.status, locked.value.code) == (503, "TEMPORARILY_UNAVAILABLE")
    assert RetryPolicy().is_retryable(locked.value)
    client.log_params(run_id, {"other": "1"})
    client.log_metric(run_id, "single", 1.5, step=3, timestamp=1_700_000_000_000)  # `log`'s call
    mlflow_client = MlflowClient(tracking_uri=uri)
    assert mlflow_client.get_run(run_id).data.params == {"lr": "0.1", "other": "1"}
    (point,) = mlflow_client.get_metric_history(run_id, "single")
    assert (point.step, point.value, point.timestamp) == (3, 1.5, 1_700_000_000_000)


def test_one_place_picks_the_client_and_the_http_client_refuses_a_store() -> None:
    assert type(connect("sqlite:////tmp/never-opened.db")) is StoreClient
    assert type(connect("http://127.0.0.1:5000")) is MetricsClient
    with pytest.raises(ConfigurationError, match="StoreClient"):
        MetricsClient("sqlite:////tmp/never-opened.db")


def test_one_lane_per_key_on_threads_of_their_own(tmp_path: Path) -> None:
    # `transport="metric"`: runs/log-metric, up to 4 keys at once from lane threads, all
    # into one SQLite store through MLflow's shared engine.
    uri = store_uri("sqlite", tmp_path)
    run = Run.start(experiment_name="lanes", endpoint=uri, transport="metric", max_in_flight=4)
    for step in range(40):
        run.log_metrics({f"k{i}": step + i / 10 for i in range(6)}, step=step)
    stats = run.end(timeout=300)
    assert (stats.logged, stats.delivered, stats.failed) == (240, 240, 0)
    client = MlflowClient(tracking_uri=uri)
    for i in range(6):
        assert history(client, run.run_id, f"k{i}") == [(s, s + i / 10) for s in range(40)]


def test_a_password_in_a_database_uri_is_never_shown() -> None:
    client = StoreClient("postgresql://alice:S3cretPW@db.example.com:5432/mlflow")
    shown = [repr(client), repr(client.endpoint), client.endpoint.describe()]
    shown.append(client.endpoint.public_url())
    assert all("S3cretPW" not in text for text in shown), shown
    assert "alice:***@db.example.com" in client.endpoint.describe()


WITHOUT_MLFLOW = """
import sys, warnings
sys.modules["mlflow"] = None  # as if the [local] extra were not installed
from aidp_metrics import ConfigurationError, Run
try:
    Run.start(endpoint="sqlite:///never.db")
except ConfigurationError as exc:
    print("raised:", exc)
from aidp_metrics.integrations._base import open_run
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    run = open_run(endpoint="sqlite:///never.db", experiment_name="e")
print("offline:", run.offline, len(caught), caught[0].message)
run.end(timeout=0)
"""


def test_without_mlflow_a_clear_error_names_the_extra(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(WITHOUT_MLFLOW)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    raised, offline = result.stdout.splitlines()[:2]
    assert raised.startswith("raised: MLflow store sqlite:////")
    assert 'pip install "aidp-metrics[local]"' in raised
    # Strict off (an integration): one warning naming the extra, the run goes offline.
    assert offline.startswith("offline: True 1 ")
    assert 'pip install "aidp-metrics[local]"' in offline
    assert not (tmp_path / "never.db").exists()


def test_doctor_opens_a_store_uri_with_mlflow(tmp_path: Path) -> None:
    result = cli("--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"MLflow store sqlite:///{tmp_path}/mlflow.db" in result.stdout
    assert "store: MLflow's client answered" in result.stdout
