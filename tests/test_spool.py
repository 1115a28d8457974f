"""The on-disk spool: offline runs, late-created runs, torn journals, and `sync`."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import pytest

from aidp_metrics import AIDPMetricsWarning, MetricsClient, Run
from aidp_metrics._durability.sync import sync_directory
from aidp_metrics._queue.journal import (
    Journal,
    RunDescriptor,
    decode_line,
    encode_metric,
    encode_op,
    find_journals,
)
from tests.support.gateway import AIDPGateway
from tests.support.mlflow_server import MLflowServer, get_metric_history, get_run
from tests.support.oci_keys import OCICredentials


def spool_dir() -> Path:
    return Path(os.environ["AIDP_METRICS_DIR"])


def history(server: MLflowServer, run_id: str, key: str) -> list[tuple[int, float]]:
    points = get_metric_history(server.url, run_id, key)
    return [(int(m["step"]), float(m["value"])) for m in points]


def test_journal_lines_round_trip_and_detect_damage(tmp_path: Path) -> None:
    records = [("loss", 0.5, 1000, 1), ("acc/top-1", math.inf, 1001, 2), ("x", math.nan, 3, 4)]
    status = ("status", {"status": "FINISHED", "end_time": 7})
    journal = Journal.create(tmp_path, RunDescriptor(local_id="local-test"))
    journal.append(b"".join(encode_metric(r) for r in records) + encode_op(status))
    journal.commit()
    with open(journal.records_path, "ab") as handle:
        handle.write(b'deadbeef ["bad",1,2,3]\n')  # wrong checksum: corrupt
        handle.write(encode_metric(("after", 1.0, 5, 5)))  # a good record after it is kept
        handle.write(encode_metric(("torn", 2.0, 6, 6))[:-7])  # power cut mid-write
    reopened = Journal.open(journal.directory)
    lines = list(reopened.lines(reopened.acked))
    got = [line.record for line in lines if line.record is not None]
    assert got[:2] == records[:2]
    assert math.isnan(got[2][1])  # type: ignore[arg-type]
    assert got[3] == status
    assert got[4] == ("after", 1.0, 5, 5)
    assert len(got) == 5
    problems = [line.problem for line in lines if line.record is None]
    assert len(problems) == 2
    assert "corrupt" in str(problems[0])
    assert "torn" in str(problems[1])
    with pytest.raises(ValueError, match="checksum"):
        decode_line(b'00000000 ["k",1.0,1,1]')


def test_offline_run_is_synced_with_everything_carried_over(
    mlflow_server: MLflowServer, fresh_experiment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIDP_METRICS_MODE", "offline")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)  # ignored: offline wins
    run = Run.start(experiment_name=fresh_experiment, run_name="offline-1", tags={"team": "ml"})
    assert run.offline
    assert run.run_id.startswith("local-")
    for step in range(1200):
        run.log_metrics({"loss": 1 / (step + 1), "acc": step / 1200}, step=step)
    run.log_params({"lr": 0.01, "model": {"depth": 4}})
    assert run.flush() is True  # offline: flushed to disk
    run.end("FINISHED")
    assert run.stats.delivered == 0

    (journal_dir,) = find_journals(spool_dir())
    dry = sync_directory(spool_dir(), None, dry_run=True)
    assert [(r.points, r.sent) for r in dry] == [(2400, 0)]

    client = MetricsClient(mlflow_server.url)
    (result,) = sync_directory(spool_dir(), client)
    assert result.error is None
    assert result.sent == 2400
    assert result.run_id is not None
    assert history(mlflow_server, result.run_id, "loss") == [(s, 1 / (s + 1)) for s in range(1200)]
    assert len(history(mlflow_server, result.run_id, "acc")) == 1200
    stored = get_run(mlflow_server.url, result.run_id)
    assert stored["info"]["status"] == "FINISHED"
    assert stored["info"]["run_name"] == "offline-1"
    assert {p["key"]: p["value"] for p in stored["data"]["params"]} == {
        "lr": "0.01",
        "model/depth": "4",
    }
    tags = {t["key"]: t["value"] for t in stored["data"]["tags"]}
    assert tags["team"] == "ml"
    assert tags["aidp_metrics.local_id"] == run.local_id
    experiment = client.get_experiment_by_name(fresh_experiment)
    assert experiment is not None
    assert stored["info"]["experiment_id"] == experiment["experiment_id"]

    # A second sync is a no-op: nothing sent, no second run.
    (again,) = sync_directory(spool_dir(), client)
    assert (again.points, again.sent, again.run_id) == (0, 0, result.run_id)
    assert len(history(mlflow_server, result.run_id, "loss")) == 1200
    assert len(client.search_runs([experiment["experiment_id"]])) == 1
    assert journal_dir.exists()


def test_interrupted_sync_resumes_without_duplicates(
    mlflow_server: MLflowServer, fresh_experiment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIDP_METRICS_MODE", "offline")
    run = Run.start(experiment_name=fresh_experiment)
    for step in range(2500):
        run.log_metric("m", float(step), step=step)
    run.end()
    client = MetricsClient(mlflow_server.url)

    class Interrupted(Exception):
        pass

    def stop_after_first_batch(done: int, total: int) -> None:
        if done >= 1000:
            raise Interrupted

    with pytest.raises(Interrupted):
        sync_directory(spool_dir(), client, progress=stop_after_first_batch)
    # The crash came after the server created the run and took a batch: the next sync
    # must find that run (not create another) and send only the rest.
    (result,) = sync_directory(spool_dir(), client)
    assert result.points == 1500
    assert history(mlflow_server, str(result.run_id), "m") == [(s, float(s)) for s in range(2500)]
    experiment = client.get_experiment_by_name(fresh_experiment)
    assert experiment is not None
    assert len(client.search_runs([experiment["experiment_id"]])) == 1


def test_no_endpoint_configured_warns_once_and_goes_offline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("MLFLOW_TRACKING_URI", "AIDP_INSTANCE_ID", "AIDP_WORKSPACE_KEY", "AIDP_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AIDP_METRICS_MODE", raising=False)
    import aidp_metrics._run.creation as creation
    from aidp_metrics._notice import Notices

    monkeypatch.setattr(creation, "process_notices", Notices())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = Run.start(experiment_name="nowhere")
        second = Run.start(experiment_name="nowhere")
    notices = [w for w in caught if "No tracking endpoint configured" in str(w.message)]
    assert len(notices) == 1
    assert notices[0].category is AIDPMetricsWarning
    assert "MLFLOW_TRACKING_URI" in str(notices[0].message)
    assert first.offline
    assert second.offline
    first.log_metric("a", 1.0)
    first.end()
    second.end()
    assert len(find_journals(spool_dir())) == 2


def test_server_down_at_start_creates_the_run_when_it_answers(
    aidp_gateway: AIDPGateway,
    gateway_client: MetricsClient,
    mlflow_server: MLflowServer,
    fresh_experiment: str,
) -> None:
    client = gateway_client
    aidp_gateway.stop()
    with pytest.warns(AIDPMetricsWarning, match="starts locally"):
        run = Run.start(experiment_name=fresh_experiment, run_name="late", client=client)
    assert run.run_id.startswith("local-")
    run.log_params({"lr": 0.5})
    for step in range(50):
        run.log_metric("loss", step / 10, step=step)
    aidp_gateway.start()
    assert run.flush(60)
    assert not run.run_id.startswith("local-")
    run.end()
    assert history(mlflow_server, run.run_id, "loss") == [(s, s / 10) for s in range(50)]
    stored = get_run(mlflow_server.url, run.run_id)
    assert stored["info"]["status"] == "FINISHED"
    assert stored["info"]["run_name"] == "late"
    assert {p["key"]: p["value"] for p in stored["data"]["params"]} == {"lr": "0.5"}
    # Everything was delivered: the journal is gone.
    assert find_journals(spool_dir()) == []


def test_the_journal_holds_no_credentials(
    gateway_client: MetricsClient,
    oci_api_key: OCICredentials,
    mlflow_server: MLflowServer,
    fresh_experiment: str,
) -> None:
    client = gateway_client
    run = Run.start(experiment_name=fresh_experiment, client=client, spool="always")
    for step in range(20):
        run.log_metric("loss", 1.0, step=step)
    run.log_params({"lr": 1})
    assert run.flush(30)
    directory = run.spool_directory
    assert directory is not None
    blobs = b"".join(p.read_bytes() for p in Path(directory).iterdir() if p.is_file())
    key_pem = Path(oci_api_key.private_key_path).read_bytes()
    for secret in (key_pem, key_pem.splitlines()[1], b"Signature", b"BEGIN", b"authorization"):
        assert secret not in blobs
    assert oci_api_key.key_id.encode() not in blobs
    run.end()
    assert len(history(mlflow_server, run.run_id, "loss")) == 20


def test_spool_always_delivers_and_cleans_up(
    mlflow_server: MLflowServer, fresh_experiment: str
) -> None:
    with Run.start(
        experiment_name=fresh_experiment,
        endpoint=mlflow_server.url,
        spool="always",
        commit_interval=0.02,
    ) as run:
        for step in range(3000):
            run.log_metrics({"a": float(step), "b": -float(step)}, step=step)
    assert history(mlflow_server, run.run_id, "a") == [(s, float(s)) for s in range(3000)]
    assert history(mlflow_server, run.run_id, "b") == [(s, -float(s)) for s in range(3000)]
    stats = run.stats
    assert stats.spooled == 6000
    assert stats.delivered == 6000
    assert find_journals(spool_dir()) == []


def test_spool_mode_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from aidp_metrics import ConfigurationError, DeliveryOptions

    monkeypatch.setenv("AIDP_METRICS_SPOOL", "always")
    assert DeliveryOptions().spool == "always"
    monkeypatch.setenv("AIDP_METRICS_SPOOL", "sometimes")
    with pytest.raises(ConfigurationError, match="AIDP_METRICS_SPOOL"):
        DeliveryOptions()


def test_a_small_offline_run_syncs_params_tags_and_status_in_one_group(
    mlflow_server: MLflowServer, fresh_experiment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Everything in one replay group: the params follow a create that is not sent yet."""
    monkeypatch.setenv("AIDP_METRICS_MODE", "offline")
    run = Run.start(experiment_name=fresh_experiment)
    for step in range(5):
        run.log_metrics({"loss": float(step)}, step=step)
    run.log_params({"lr": 0.1})
    run.set_tags({"phase": "offline"})
    run.end("KILLED")
    (result,) = sync_directory(spool_dir(), MetricsClient(mlflow_server.url))
    assert (result.error, result.sent) == (None, 5)
    assert result.run_id is not None
    stored = get_run(mlflow_server.url, result.run_id)
    assert stored["info"]["status"] == "KILLED"
    assert {p["key"]: p["value"] for p in stored["data"]["params"]} == {"lr": "0.1"}
    assert {t["key"]: t["value"] for t in stored["data"]["tags"]}["phase"] == "offline"
    assert history(mlflow_server, result.run_id, "loss") == [(s, float(s)) for s in range(5)]
