"""`Run` against a real MLflow server (directly and through the AIDP gateway)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import pytest

import aidp_metrics
from aidp_metrics import (
    AIDPMetricsWarning,
    DeliveryError,
    InvalidMetric,
    Metric,
    MetricsClient,
    Run,
)
from aidp_metrics._queue.journal import decode_line
from tests.support.gateway import AIDPGateway
from tests.support.mlflow_server import MLflowServer, free_port, get_metric_history, get_run


def history(server: MLflowServer, run_id: str, key: str) -> list[tuple[int, float]]:
    return [
        (int(m["step"]), _value(m["value"])) for m in get_metric_history(server.url, run_id, key)
    ]


def _value(raw: object) -> float:
    return math.nan if raw == "NaN" else float(raw)  # type: ignore[arg-type]


def test_start_log_end_reads_back_exactly(
    mlflow_server: MLflowServer, fresh_experiment: str
) -> None:
    with Run.start(
        experiment_name=fresh_experiment,
        run_name="r1",
        tags={"team": "ml"},
        endpoint=mlflow_server.url,
    ) as run:
        for step in range(250):
            run.log_metrics({"loss": 1 / (step + 1), "acc": step / 250, "lr": 0.1}, step=step)
        run.log_metric("nan", math.nan, step=3)
        run.log_params({"optimizer": {"name": "adam", "lr": 0.001}, "epochs": 3})
    assert run.ended
    assert history(mlflow_server, run.run_id, "loss") == [(s, 1 / (s + 1)) for s in range(250)]
    assert history(mlflow_server, run.run_id, "acc") == [(s, s / 250) for s in range(250)]
    assert [s for s, _ in history(mlflow_server, run.run_id, "lr")] == list(range(250))
    (nan_point,) = history(mlflow_server, run.run_id, "nan")
    assert nan_point[0] == 3
    assert math.isnan(nan_point[1])
    stored = get_run(mlflow_server.url, run.run_id)
    assert stored["info"]["status"] == "FINISHED"
    assert stored["info"]["run_name"] == "r1"
    params = {p["key"]: p["value"] for p in stored["data"]["params"]}
    assert params == {"optimizer/name": "adam", "optimizer/lr": "0.001", "epochs": "3"}
    assert {t["key"]: t["value"] for t in stored["data"]["tags"]}["team"] == "ml"
    stats = run.stats
    assert (stats.logged, stats.delivered, stats.pending, stats.failed) == (751, 751, 0, 0)


def test_timestamp_is_the_time_of_the_log_call(
    mlflow_server: MLflowServer, fresh_experiment: str
) -> None:
    with Run.start(
        experiment_name=fresh_experiment, endpoint=mlflow_server.url, flush_interval=5
    ) as run:
        before = time.time_ns() // 1_000_000
        run.log_metric("x", 1.0, step=1)
        after = time.time_ns() // 1_000_000
        time.sleep(0.3)  # the send happens later; the stamp must not move
        run.log_metric("x", 2.0, step=2, timestamp=1234)
    stamps = {
        int(m["step"]): int(m["timestamp"])
        for m in get_metric_history(mlflow_server.url, run.run_id, "x")
    }
    assert before <= stamps[1] <= after
    assert stamps[2] == 1234


def test_flush_returns_when_everything_before_is_acknowledged(
    mlflow_server: MLflowServer, fresh_experiment: str
) -> None:
    run = Run.start(experiment_name=fresh_experiment, endpoint=mlflow_server.url, flush_interval=60)
    for step in range(1500):
        run.log_metric("m", float(step), step=step)
    assert run.flush(timeout=60) is True
    # The flush interval is a minute: only flush() can have sent these by now.
    assert len(history(mlflow_server, run.run_id, "m")) == 1500
    assert run.stats.pending == 0
    run.end()


def test_flush_timeout_reports_pending(fresh_experiment: str) -> None:
    client = MetricsClient(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    run = Run.attach("r" * 32, client=client, spool="off")
    run.log_metric("m", 1.0)
    assert run.flush(timeout=0.5) is False
    assert run.stats.pending == 1
    stats = run.end(timeout=0)
    assert (stats.failed, stats.pending) == (1, 0)


def test_exception_in_context_marks_failed_and_delivers(
    mlflow_server: MLflowServer, fresh_experiment: str
) -> None:
    run = Run.start(experiment_name=fresh_experiment, endpoint=mlflow_server.url)
    with pytest.raises(ZeroDivisionError), run:  # noqa: PT012
        run.log_metric("loss", 0.5, step=1)
        _ = 1 / 0
    assert get_run(mlflow_server.url, run.run_id)["info"]["status"] == "FAILED"
    assert history(mlflow_server, run.run_id, "loss") == [(1, 0.5)]


def test_end_is_idempotent_and_logging_after_end_reopens(
    mlflow_server: MLflowServer, fresh_experiment: str
) -> None:
    run = Run.start(experiment_name=fresh_experiment, endpoint=mlflow_server.url)
    run.log_metric("a", 1.0, step=1)
    run.end()
    run.end()  # idempotent
    assert get_run(mlflow_server.url, run.run_id)["info"]["status"] == "FINISHED"
    run.end("FAILED")  # a later phase failed: the status changes, nothing else happens
    assert get_run(mlflow_server.url, run.run_id)["info"]["status"] == "FAILED"
    run.end("FINISHED")
    run.log_metric("a", 2.0, step=2)  # e.g. trainer.test() after fit()
    run.flush(30)
    assert get_run(mlflow_server.url, run.run_id)["info"]["status"] == "RUNNING"
    run.end()
    assert history(mlflow_server, run.run_id, "a") == [(1, 1.0), (2, 2.0)]
    assert get_run(mlflow_server.url, run.run_id)["info"]["status"] == "FINISHED"


def test_attach_and_from_env(
    mlflow_server: MLflowServer, fresh_experiment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = Run.start(experiment_name=fresh_experiment, endpoint=mlflow_server.url)
    first.log_params({"lr": 0.1})
    first.log_metric("loss", 1.0, step=1)
    first.end()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    monkeypatch.setenv("MLFLOW_RUN_ID", first.run_id)
    with Run.from_env() as resumed:
        assert resumed.run_id == first.run_id
        resumed.log_params({"lr": 0.1})  # same value: no-op, no 400
        with pytest.warns(AIDPMetricsWarning, match="'lr'"):
            resumed.log_params({"lr": 0.2})  # changed: warning, first value kept
        resumed.log_metric("loss", 0.5, step=2)
    assert history(mlflow_server, first.run_id, "loss") == [(1, 1.0), (2, 0.5)]
    stored = get_run(mlflow_server.url, first.run_id)
    assert {p["key"]: p["value"] for p in stored["data"]["params"]} == {"lr": "0.1"}
    assert resumed.stats.failed == 0

    monkeypatch.delenv("MLFLOW_RUN_ID")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", fresh_experiment + "-env")
    with Run.from_env() as fresh:
        assert fresh.run_id != first.run_id
    assert MetricsClient(mlflow_server.url).get_experiment_by_name(fresh_experiment + "-env")


def test_invalid_input_warns_once_and_keeps_the_rest(
    mlflow_server: MLflowServer, fresh_experiment: str
) -> None:
    with Run.start(experiment_name=fresh_experiment, endpoint=mlflow_server.url) as run:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for step in range(3):
                run.log_metrics({"ok": 1.0, "bad key!": 2.0, "text": "hello"}, step=step)
        # Only this library's lines: a warning another thread or the garbage collector
        # raises meanwhile (an earlier test's unclosed file) is caught here too.
        ours = [w for w in caught if str(w.message).startswith("aidp-metrics:")]
        assert all(w.category is AIDPMetricsWarning for w in ours)
        package = os.path.dirname(aidp_metrics.__file__)
        assert not [w for w in caught if w not in ours and w.filename.startswith(package)]
        messages = [str(w.message) for w in ours]
        assert sum("bad key!" in m for m in messages) == 1
        assert sum("'text'" in m for m in messages) == 1
    assert history(mlflow_server, run.run_id, "ok") == [(0, 1.0), (1, 1.0), (2, 1.0)]
    assert run.stats.rejected == 6


def test_strict_mode_raises_on_bad_input(
    mlflow_server: MLflowServer, fresh_experiment: str
) -> None:
    with Run.start(
        experiment_name=fresh_experiment, endpoint=mlflow_server.url, strict=True
    ) as run:
        with pytest.raises(InvalidMetric, match="bad key!"):
            run.log_metrics({"ok": 1.0, "bad key!": 2.0}, step=0)
        with pytest.raises(InvalidMetric, match="step"):
            run.log_metric("ok", 1.0, step=1.5)  # type: ignore[arg-type]
    assert history(mlflow_server, run.run_id, "ok") == []


def test_unknown_option_is_a_type_error_naming_the_closest_option(
    mlflow_server: MLflowServer,
) -> None:
    with pytest.raises(TypeError, match="'flush_intervall' \\(did you mean 'flush_interval'"):
        Run.start(endpoint=mlflow_server.url, flush_intervall=2)


def test_per_key_order_under_concurrency_metric_transport(
    gateway_client: MetricsClient,
    aidp_gateway: AIDPGateway,
    fresh_experiment: str,
    mlflow_server: MLflowServer,
) -> None:
    run = Run.start(
        experiment_name=fresh_experiment,
        client=gateway_client,
        transport="metric",
        max_in_flight=8,
        flush_interval=0.05,
    )
    aidp_gateway.clear()

    def worker(thread: int) -> None:
        for step in range(40):
            run.log_metrics({f"t{thread}/a": float(step), f"t{thread}/b": float(-step)}, step=step)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert run.flush(120)
    arrivals: dict[str, list[int]] = {}
    for request in aidp_gateway.requests_to("runs/log-metric"):
        assert request.status == 200
        body = json.loads(request.body)
        arrivals.setdefault(body["key"], []).append(body["step"])
    assert len(arrivals) == 8
    for key, steps in arrivals.items():
        assert steps == list(range(40)), key
    run.end()
    assert get_run(mlflow_server.url, run.run_id)["info"]["status"] == "FINISHED"


def test_429_storm_then_recovery_delivers_everything_once(
    gateway_client: MetricsClient,
    aidp_gateway: AIDPGateway,
    fresh_experiment: str,
    mlflow_server: MLflowServer,
) -> None:
    run = Run.start(experiment_name=fresh_experiment, client=gateway_client, flush_interval=0.1)
    aidp_gateway.clear()
    aidp_gateway.inject("runs/log-batch", status=429, times=4, retry_after="1")
    for step in range(3000):
        run.log_metrics({"a": float(step), "b": step * 2.0}, step=step)
    # The storm never reached the training loop: all 6000 points were queued while the
    # server was still asking us to wait (4 x 1 s), so logging waited for nothing.
    assert run.stats.delivered == 0
    assert run.flush(120)
    run.end()
    assert history(mlflow_server, run.run_id, "a") == [(s, float(s)) for s in range(3000)]
    assert history(mlflow_server, run.run_id, "b") == [(s, s * 2.0) for s in range(3000)]
    stats = run.stats
    assert stats.retried == 4
    assert (stats.delivered, stats.failed, stats.dropped) == (6000, 0, 0)
    statuses = [r.status for r in aidp_gateway.requests_to("runs/log-batch")]
    assert statuses[:4] == [429] * 4
    assert all(status == 200 for status in statuses[4:])


def test_batch_with_a_key_the_server_rejects_delivers_the_rest(
    mlflow_server: MLflowServer, fresh_experiment: str
) -> None:
    run = Run.start(experiment_name=fresh_experiment, endpoint=mlflow_server.url, flush_interval=30)
    stamp = int(time.time() * 1000)
    records = [(f"k{i % 5}", float(i), stamp, i) for i in range(200)]
    # A key that passed the client's checks but that the server refuses (the server's
    # rules can be stricter than ours): it must be isolated, the rest delivered.
    records.insert(137, ("bad/../key", 1.0, stamp, 0))
    run._queue.append([Metric(*record) for record in records])  # past the client's checks
    assert run.flush(60)
    stats = run.stats
    assert stats.delivered == 200
    assert stats.failed == 1
    (reason,) = stats.failures
    assert "bad/../key" in reason
    assert "400" in reason
    for k in range(5):
        assert history(mlflow_server, run.run_id, f"k{k}") == [
            (i, float(i)) for i in range(200) if i % 5 == k
        ]
    run.end()


def test_bounded_queue_with_the_server_down(fresh_experiment: str) -> None:
    client = MetricsClient(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    run = Run.attach("f" * 32, client=client, max_queue=1000, flush_interval=0.01, spool="off")
    biggest = 0
    for step in range(20_000):
        run.log_metrics({"a": 1.0, "b": 2.0, "c": 3.0}, step=step)
        if step % 500 == 0:
            biggest = max(biggest, run._queue.sizes()[0])
    stats = run.stats
    assert biggest <= 1000
    assert stats.logged == 60_000
    # Everything is accounted for: at most the queue is held (nothing is in flight: the run
    # was never attached).
    assert stats.dropped == 60_000 - 1000
    assert stats.delivered == 0
    assert stats.dropped + stats.pending + stats.failed == 60_000
    stats = run.end(timeout=0)
    assert (stats.dropped, stats.failed, stats.pending) == (59_000, 1000, 0)


def test_strict_end_raises_when_something_was_not_delivered(
    mlflow_server: MLflowServer, fresh_experiment: str
) -> None:
    run = Run.start(experiment_name=fresh_experiment, endpoint=mlflow_server.url, strict=True)
    run.log_metric("good", 1.0, step=1)
    run._queue.append([Metric("bad/../key", 1.0, 1, 0)])  # the server refuses this one
    with pytest.raises(DeliveryError, match="1 of 2 metric"):
        run.end()
    assert history(mlflow_server, run.run_id, "good") == [(1, 1.0)]
    assert get_run(mlflow_server.url, run.run_id)["info"]["status"] == "FINISHED"


SCRIPT_HEADER = """
import os, sys
from aidp_metrics import Run
run = Run.start(
    experiment_name=os.environ["EXPERIMENT"],
    endpoint=os.environ["MLFLOW_TRACKING_URI"],
    flush_interval=30,
)
print(run.run_id, flush=True)
for step in range(500):
    run.log_metrics({"loss": 1.0 / (step + 1), "acc": step / 500}, step=step)
"""


def run_script(tmp_path: Path, server: MLflowServer, experiment: str, body: str) -> tuple[str, str]:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT_HEADER + textwrap.dedent(body))
    env = dict(os.environ, MLFLOW_TRACKING_URI=server.url, EXPERIMENT=experiment)
    done = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120
    )
    run_id = done.stdout.split()[0]
    return run_id, done.stderr


def test_atexit_flushes_and_finishes_a_run_never_ended(
    tmp_path: Path, mlflow_server: MLflowServer, fresh_experiment: str
) -> None:
    run_id, stderr = run_script(tmp_path, mlflow_server, fresh_experiment, "")
    assert history(mlflow_server, run_id, "loss") == [(s, 1.0 / (s + 1)) for s in range(500)]
    assert get_run(mlflow_server.url, run_id)["info"]["status"] == "FINISHED"
    assert "not delivered" not in stderr


def test_uncaught_exception_marks_failed_at_exit(
    tmp_path: Path, mlflow_server: MLflowServer, fresh_experiment: str
) -> None:
    run_id, stderr = run_script(
        tmp_path, mlflow_server, fresh_experiment, "raise RuntimeError('diverged')\n"
    )
    assert "diverged" in stderr
    assert len(history(mlflow_server, run_id, "acc")) == 500
    assert get_run(mlflow_server.url, run_id)["info"]["status"] == "FAILED"


def test_status_on_exit_failed_when_training_was_interrupted(
    tmp_path: Path, mlflow_server: MLflowServer, fresh_experiment: str
) -> None:
    body = """
    run.status_on_exit = "FAILED"   # what an integration sets while fit() runs
    try:
        raise ValueError("caught by the user")
    except ValueError:
        pass
    """
    run_id, _ = run_script(tmp_path, mlflow_server, fresh_experiment, body)
    assert get_run(mlflow_server.url, run_id)["info"]["status"] == "FAILED"
    assert len(history(mlflow_server, run_id, "loss")) == 500


def _exit_with_the_server_gone(tmp_path: Path, server: MLflowServer, spool: str) -> str:
    # The run is created, then the server vanishes; exit waits at most atexit_timeout.
    script = tmp_path / "lost.py"
    script.write_text(
        textwrap.dedent(
            f"""
            from aidp_metrics import Endpoint, Run
            run = Run.start(endpoint={server.url!r}, atexit_timeout=1.0, spool={spool!r})
            run.client.endpoint = Endpoint.mlflow("http://127.0.0.1:{free_port()}")
            run.log_metric("loss", 1.0)
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stderr


def test_atexit_reports_what_could_not_be_delivered(
    tmp_path: Path, mlflow_server: MLflowServer
) -> None:
    stderr = _exit_with_the_server_gone(tmp_path, mlflow_server, "off")
    lines = [line for line in stderr.splitlines() if "not delivered" in line]
    assert len(lines) == 1
    assert "1 of 1 metric(s)" in lines[0]


def test_atexit_keeps_undelivered_points_on_disk_and_says_how_to_sync(
    tmp_path: Path, mlflow_server: MLflowServer
) -> None:
    stderr = _exit_with_the_server_gone(tmp_path, mlflow_server, "on_failure")
    lines = [line for line in stderr.splitlines() if "aidp-metrics sync" in line]
    assert len(lines) == 1
    spool = Path(os.environ["AIDP_METRICS_DIR"])
    assert "1 metric(s) of run" in lines[0]
    assert lines[0].endswith(f"aidp-metrics sync {spool}")
    (journal,) = (spool / "runs").iterdir()
    lines = (journal / "records.log").read_bytes().splitlines()
    # The metric, then the status the run ended with: both wait for `sync`.
    metric, status = (decode_line(line) for line in lines)
    assert isinstance(metric, Metric)
    assert metric[:2] == ("loss", 1.0)
    assert status[0] == "status"
    assert status[1]["status"] == "FINISHED"


def test_fork_child_is_a_noop_and_parent_delivers(
    mlflow_server: MLflowServer, fresh_experiment: str
) -> None:
    run = Run.start(experiment_name=fresh_experiment, endpoint=mlflow_server.url)
    run.log_metric("parent", 1.0, step=0)
    pid = os.fork()
    if pid == 0:  # the child: must neither deadlock nor send the parent's points
        try:
            run.log_metric("child", 2.0, step=0)
            run.flush(1)
            os._exit(0)
        except BaseException:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    run.log_metric("parent", 3.0, step=1)
    run.end()
    assert history(mlflow_server, run.run_id, "parent") == [(0, 1.0), (1, 3.0)]
    assert history(mlflow_server, run.run_id, "child") == []


def test_seed_transport_reads_back(mlflow_server: MLflowServer, fresh_experiment: str) -> None:
    with Run.start(
        experiment_name=fresh_experiment, endpoint=mlflow_server.url, transport="metric"
    ) as run:
        for step in range(30):
            run.log_metrics({"x": step * 1.5, "y": -step}, step=step)
    assert history(mlflow_server, run.run_id, "x") == [(s, s * 1.5) for s in range(30)]
    assert history(mlflow_server, run.run_id, "y") == [(s, float(-s)) for s in range(30)]
    assert run.stats.requests == 60


def test_fallback_to_log_metric_when_log_batch_is_missing(
    gateway_client: MetricsClient,
    aidp_gateway: AIDPGateway,
    fresh_experiment: str,
    mlflow_server: MLflowServer,
) -> None:
    run = Run.start(experiment_name=fresh_experiment, client=gateway_client)
    aidp_gateway.inject("runs/log-batch", status=404, code="NotFound", times=100)
    for step in range(5):
        run.log_metric("z", float(step), step=step)
    run.end()
    assert history(mlflow_server, run.run_id, "z") == [(s, float(s)) for s in range(5)]
    assert len(aidp_gateway.requests_to("runs/log-metric")) == 5
    assert run.stats.failed == 0


def test_metric_json_round_trip_from_stats_is_exact(
    mlflow_server: MLflowServer, fresh_experiment: str
) -> None:
    with Run.start(experiment_name=fresh_experiment, endpoint=mlflow_server.url) as run:
        run.log_metric("v", 1e-300, step=2**40, timestamp=1_700_000_000_001)
    client = MetricsClient(mlflow_server.url)
    assert client.get_metric_history(run.run_id, "v") == [
        Metric("v", 1e-300, 1_700_000_000_001, 2**40)
    ]


def test_a_key_with_a_trailing_newline_is_rejected_not_stored(
    mlflow_server: MLflowServer, fresh_experiment: str
) -> None:
    """0.1 stored "loss\\n" (its key regex let a trailing newline through)."""
    with (
        Run.start(experiment_name=fresh_experiment, endpoint=mlflow_server.url) as run,
        pytest.warns(AIDPMetricsWarning, match="loss"),
    ):
        run.log_metrics({"loss\n": 1.0, "loss": 2.0}, step=1)
    stored = get_run(mlflow_server.url, run.run_id)
    assert [m["key"] for m in stored["data"]["metrics"]] == ["loss"]
    assert (run.stats.rejected, run.stats.delivered) == (1, 1)


def test_run_name_wins_over_an_mlflow_run_name_tag(
    mlflow_server: MLflowServer, fresh_experiment: str
) -> None:
    """0.1: runs/create got both and answered 400."""
    with Run.start(
        experiment_name=fresh_experiment,
        run_name="mine",
        tags={"mlflow.runName": "theirs"},
        endpoint=mlflow_server.url,
    ) as run:
        run.log_metric("x", 1.0, step=1)
    assert get_run(mlflow_server.url, run.run_id)["info"]["run_name"] == "mine"
    assert history(mlflow_server, run.run_id, "x") == [(1, 1.0)]


def test_many_keys_seen_before_take_the_bulk_path_with_the_same_result(
    mlflow_server: MLflowServer, fresh_experiment: str
) -> None:
    """A call whose keys were all seen valid and whose values are plain floats/ints is
    converted in bulk; anything else in it (a bool, a too-large int, a new bad key) sends
    the whole call through the point-by-point check: the same points, warnings and counts."""
    keys = [f"grad_norm/layers.{i}.weight" for i in range(300)]
    with Run.start(endpoint=mlflow_server.url, experiment_name=fresh_experiment) as run:
        run.log_metrics({k: float(i) for i, k in enumerate(keys)}, step=1)  # keys seen
        run.log_metrics({k: i for i, k in enumerate(keys)}, step=2)  # ints, in bulk
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run.log_metrics({**{k: 0.5 for k in keys}, keys[0]: True}, step=3)
            run.log_metrics({**{k: 0.25 for k in keys}, keys[1]: 10**400}, step=4)
            run.log_metrics({**{k: 0.125 for k in keys}, "bad key!": 1.0}, step=5)
        said = [str(w.message) for w in caught if issubclass(w.category, AIDPMetricsWarning)]
        assert len(said) == 3
        assert keys[0] in said[0]
        assert keys[1] in said[1]
        assert "bad key!" in said[2]
    stats = run.stats
    assert (stats.logged, stats.rejected, stats.delivered) == (1501, 3, 1498)
    points = {
        int(m["step"]): float(m["value"])
        for m in get_metric_history(mlflow_server.url, run.run_id, keys[2])
    }
    assert points == {1: 2.0, 2: 2.0, 3: 0.5, 4: 0.25, 5: 0.125}
    first = sorted(
        int(m["step"]) for m in get_metric_history(mlflow_server.url, run.run_id, keys[0])
    )
    assert first == [1, 2, 4, 5]  # True at step 3 refused


def test_strict_raises_on_a_bad_value_among_keys_seen_before() -> None:
    run = Run.start(offline=True, experiment_name="bulk", strict=True)
    try:
        run.log_metrics({"a": 1.0, "b": 2.0}, step=1)
        with pytest.raises(InvalidMetric, match="'b'"):
            run.log_metrics({"a": 1.0, "b": "2.0"}, step=2)
    finally:
        run.end()


def test_a_call_is_kept_as_it_was_though_its_records_are_built_later(
    mlflow_server: MLflowServer, fresh_experiment: str
) -> None:
    """The fast path queues a call unbuilt (the delivery loop makes the records): changing
    the dict after the call, as a loop reusing one dict does, changes nothing logged."""
    with Run.start(endpoint=mlflow_server.url, experiment_name=fresh_experiment) as run:
        metrics = {"loss": 1.0, "acc": 0.5}
        run.log_metrics(metrics, step=1)  # keys now seen: the next calls take the fast path
        for step in range(2, 6):
            metrics["loss"] = float(step)
            run.log_metrics(metrics, step=step)
            metrics["loss"] = -1.0  # after the call: never logged
            metrics["acc"] = -1.0
            metrics["acc"] = 0.5
    assert history(mlflow_server, run.run_id, "loss") == [
        (1, 1.0),
        *((s, float(s)) for s in range(2, 6)),
    ]
    assert history(mlflow_server, run.run_id, "acc") == [(s, 0.5) for s in range(1, 6)]


def test_log_valid_queues_an_integrations_points_and_checks_only_the_step(
    mlflow_server: MLflowServer, fresh_experiment: str
) -> None:
    with Run.start(endpoint=mlflow_server.url, experiment_name=fresh_experiment) as run:
        run.log_valid(["train/loss", "epoch"], [0.25, 1.0], 3)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run.log_valid(["train/loss"], [0.5], 2**63)  # beyond int64: refused, said once
        said = [str(w.message) for w in caught if issubclass(w.category, AIDPMetricsWarning)]
        assert len(said) == 1
        assert "step" in said[0]
        assert run.last_step == 3
    assert history(mlflow_server, run.run_id, "train/loss") == [(3, 0.25)]
    assert history(mlflow_server, run.run_id, "epoch") == [(3, 1.0)]
    stats = run.stats
    assert (stats.logged, stats.rejected, stats.delivered) == (3, 1, 2)
