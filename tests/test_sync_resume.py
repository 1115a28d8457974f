"""Issue #19: a job resumed from a checkpoint that holds a local id nobody can resolve.

Job 1 ran while the server was down, so its checkpoint holds the run's local id and its
points are in its own spool directory (its node is lost: nothing there will reach the
server by itself). Job 2 resumes on another machine (another spool directory) with the
server up: the run is created now, tagged with that local id, and job 2's points are on the
server while it runs. A later `sync` of job 1's journal finds that run by its tag and adds
the first part: one run, every step exactly once. Job 1 ran past its checkpoint before it
was lost; job 2 logged those steps again, and its points are the ones the run keeps."""

from __future__ import annotations

from pathlib import Path

import pytest

from aidp_metrics import MetricsClient, Run
from aidp_metrics._delivery.opener import LOCAL_ID_TAG
from aidp_metrics._durability.sync import sync_directory
from tests.support.chaos_proxy import ChaosProxy
from tests.support.mlflow_server import (
    MLflowServer,
    get_metric_history,
    get_run,
    runs_in_experiment,
)

KEYS = ("loss", "acc")


def value(key: str, step: int, job: int) -> float:
    return step / 8 + (0.5 if key == "acc" else 0.0) + 100 * job


def expected(key: str) -> list[tuple[int, float]]:
    """Job 1's points below its resumed job's first step (10), then job 2's."""
    return [(s, value(key, s, 1 if s < 10 else 2)) for s in range(20)]


def steps_on_server(server: MLflowServer, run_id: str, key: str) -> list[tuple[int, float]]:
    points = get_metric_history(server.url, run_id, key)
    return sorted((int(p["step"]), float(p["value"])) for p in points)


def log(run: Run, steps: range, job: int) -> None:
    for step in steps:
        run.log_metrics({key: value(key, step, job) for key in KEYS}, step=step)


@pytest.mark.parametrize("resumed_on", ["other-machine", "same-machine"])
def test_a_lost_jobs_local_id_becomes_one_run_filled_live_then_by_sync(
    chaos_proxy: ChaosProxy,
    mlflow_server: MLflowServer,
    fresh_experiment: str,
    tmp_path: Path,
    resumed_on: str,
) -> None:
    lost_node = tmp_path / "node-1"
    other_node = tmp_path / "node-2" if resumed_on == "other-machine" else lost_node
    fast = {"flush_interval": 0.05, "end_timeout": 5.0}

    chaos_proxy.down()
    job1 = Run.start(
        experiment_name=fresh_experiment,
        run_name="first-job",
        endpoint=chaos_proxy.url,
        spool_dir=str(lost_node),
        **fast,
    )
    checkpoint = job1.run_id  # what the checkpoint of job 1 holds
    assert checkpoint.startswith("local-")
    log(job1, range(0, 12), 1)  # checkpoint at step 9; the job got to step 11 before it was lost
    job1.end(timeout=1.0)  # the node is lost: its points stay in its spool
    assert job1.stats.pending == 24
    assert runs_in_experiment(mlflow_server.url, fresh_experiment) == []

    chaos_proxy.up()
    job2 = Run.attach(
        checkpoint,
        skip_logged_steps=True,
        experiment_name=fresh_experiment,
        endpoint=chaos_proxy.url,
        spool_dir=str(other_node),
        **fast,
    )
    run_id = job2.run_id
    assert not run_id.startswith("local-")  # created now, not waiting for a sync
    log(job2, range(10, 20), 2)
    assert job2.flush(60)
    # Live: job 2's points are on the server before job 2 ends.
    for key in KEYS:
        assert steps_on_server(mlflow_server, run_id, key) == [
            (s, value(key, s, 2)) for s in range(10, 20)
        ]
    stats = job2.end()
    assert (stats.delivered, stats.pending, stats.failed) == (20, 0, 0)
    stored = get_run(mlflow_server.url, run_id)
    tags = {t["key"]: t["value"] for t in stored["data"]["tags"]}
    assert tags[LOCAL_ID_TAG] == checkpoint
    if resumed_on == "same-machine":  # job 1's journal is here: the run keeps its name
        assert stored["info"]["run_name"] == "first-job"

    with MetricsClient(mlflow_server.url) as client:
        (synced,) = sync_directory(lost_node, client)
    assert synced.error is None
    assert synced.local_id == checkpoint
    assert synced.run_id == run_id  # found by its tag: no second run
    assert synced.sent == 24  # 20 delivered, 4 skipped (steps 10 and 11: job 2 has them)
    runs = runs_in_experiment(mlflow_server.url, fresh_experiment)
    assert [r["info"]["run_id"] for r in runs] == [run_id]
    for key in KEYS:  # every step exactly once
        assert steps_on_server(mlflow_server, run_id, key) == expected(key)
        assert len(get_metric_history(mlflow_server.url, run_id, key)) == 20
