"""A process logging with `spool="always"` is killed with SIGKILL mid-run; `sync` then
delivers everything it logged before its last group commit, exactly once."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from aidp_metrics import MetricsClient
from aidp_metrics._durability.sync import sync_directory
from tests.reliability import KEYS, server_points, value_of
from tests.support.chaos_proxy import ChaosProxy
from tests.support.mlflow_server import MLflowServer

# Logs forever; after every 50 steps waits until everything logged so far is delivered or
# group-committed to the journal, and says so.
TRAINER = textwrap.dedent(
    """
    import os, sys, time
    from aidp_metrics import Run, RetryPolicy

    KEYS = {keys!r}
    run = Run.start(
        experiment_name=os.environ["EXPERIMENT"],
        endpoint=os.environ["SERVER"],
        spool="always",
        commit_interval=0.05,
        flush_interval=0.05,
        retry=RetryPolicy(max_attempts=2, base_delay=0.02, max_delay=0.1, total_timeout=0.5),
    )
    print("run", run.run_id, flush=True)
    queue = run._queue

    def committed() -> bool:
        return queue.durable_or_settled(queue.mark())

    step = 0
    while True:
        run.log_metrics({{k: step + i / 8 + 0.001 for i, k in enumerate(KEYS)}}, step=step)
        if step % 50 == 49:
            while not committed():
                time.sleep(0.005)
            print("committed-through", step, flush=True)
        step += 1
        time.sleep(0.0005)
    """
)

# Default retry budget. Logs one step, lets the sender start sending it (the server is
# down by then), logs 199 more, waits 20 commit intervals and says how far it logged.
OUTAGE_TRAINER = textwrap.dedent(
    """
    import os, sys, time
    from aidp_metrics import Run

    run = Run.start(
        experiment_name=os.environ["EXPERIMENT"],
        endpoint=os.environ["SERVER"],
        spool="always",
        commit_interval=0.05,
        flush_interval=0.05,
    )
    print("run", run.run_id, flush=True)
    sys.stdin.readline()  # the parent takes the server down
    run.log_metric("loss", 0.001, step=0)
    time.sleep(0.5)
    for step in range(1, 200):
        run.log_metric("loss", step + 0.001, step=step)
    time.sleep(1.0)
    print("logged-through", 199, flush=True)
    time.sleep(600)
    """
)


def sync(spool: Path, server: MLflowServer) -> int | None:
    """Run `aidp-metrics sync`; the number of points sent when known (library fallback)."""
    if importlib.util.find_spec("aidp_metrics.cli") is not None:
        env = dict(os.environ, MLFLOW_TRACKING_URI=server.url, AIDP_METRICS_DIR=str(spool))
        done = subprocess.run(
            [sys.executable, "-m", "aidp_metrics.cli", "sync", str(spool)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return None
    with MetricsClient(server.url) as client:
        results = sync_directory(spool, client)
    assert [r.error for r in results] == [None]
    return sum(r.sent for r in results)


def start_trainer(
    tmp_path: Path, source: str, server_url: str, experiment: str
) -> tuple[subprocess.Popen[str], Path]:
    spool = tmp_path / "spool"
    script = tmp_path / "trainer.py"
    script.write_text(source)
    env = dict(os.environ, SERVER=server_url, EXPERIMENT=experiment)
    env["AIDP_METRICS_DIR"] = str(spool)
    child = subprocess.Popen(
        [sys.executable, str(script)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    return child, spool


def read_line(child: subprocess.Popen[str], word: str) -> str:
    """The rest of the child's next stdout line that starts with `word`."""
    assert child.stdout is not None
    while True:
        line = child.stdout.readline()
        assert line, f"the trainer exited with {child.poll()}"
        first, _, rest = line.strip().partition(" ")
        if first == word:
            return rest


def kill(child: subprocess.Popen[str]) -> None:
    if child.poll() is None:
        os.kill(child.pid, signal.SIGKILL)
    child.wait(30)
    for stream in (child.stdin, child.stdout):
        if stream is not None:
            stream.close()
    assert child.returncode == -signal.SIGKILL


def test_sigkill_mid_run_then_sync_delivers_each_committed_point_once(
    tmp_path: Path, chaos_proxy: ChaosProxy, mlflow_server: MLflowServer, fresh_experiment: str
) -> None:
    child, spool = start_trainer(
        tmp_path, TRAINER.format(keys=KEYS), chaos_proxy.url, fresh_experiment
    )
    try:
        run_id = read_line(child, "run")
        # Healthy: points are delivered live and acknowledged in the journal.
        read_line(child, "committed-through")
        # The server applies every write but no answer comes back: nothing is acknowledged.
        chaos_proxy.reset_after(times=None)
        read_line(child, "committed-through")
        # Then nothing reaches the server at all.
        chaos_proxy.down()
        committed_through = int(read_line(child, "committed-through"))
    finally:
        kill(child)  # mid-run: it kept logging after its last line
    chaos_proxy.clear()
    before = {key: server_points(mlflow_server.url, run_id, key) for key in KEYS}
    assert any(len({step for step, _ in before[key]}) <= committed_through for key in KEYS), (
        "the server already had every committed point: sync would have had nothing to do"
    )

    (journal,) = (spool / "runs").iterdir()
    sent = sync(spool, mlflow_server)
    after_first = {key: sorted(server_points(mlflow_server.url, run_id, key)) for key in KEYS}
    for index, key in enumerate(KEYS):
        points = after_first[key]
        steps = [step for step, _ in points]
        assert len(steps) == len(set(steps)), f"{key}: a step is on the server twice"
        # Everything up to the last group commit, and nothing that was not logged.
        assert set(range(committed_through + 1)) <= set(steps)
        assert all(value == value_of(index, step) for step, value in points)
        # The journal is a prefix of what was logged: no hole either past the last commit.
        assert steps == list(range(len(steps)))
    print(
        f"\nkilled after step {committed_through}; the server had "
        f"{sorted(len(p) for p in before.values())} points per key; sync sent {sent}; "
        f"it has {sorted(len(p) for p in after_first.values())}"
    )

    # A second sync finds nothing left to send and changes nothing.
    again = sync(spool, mlflow_server)
    assert again in (0, None)
    for key in KEYS:
        assert sorted(server_points(mlflow_server.url, run_id, key)) == after_first[key]
    acked = int((journal / "acked").read_text())
    assert acked == (journal / "records.log").stat().st_size


def test_sigkill_during_an_outage_keeps_what_was_logged_commit_intervals_ago(
    tmp_path: Path, chaos_proxy: ChaosProxy, mlflow_server: MLflowServer, fresh_experiment: str
) -> None:
    """Group commits go on while the sender sits in a long retry back-off."""
    child, spool = start_trainer(tmp_path, OUTAGE_TRAINER, chaos_proxy.url, fresh_experiment)
    try:
        run_id = read_line(child, "run")
        chaos_proxy.down()
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
        logged_through = int(read_line(child, "logged-through"))
    finally:
        kill(child)
    chaos_proxy.clear()
    sync(spool, mlflow_server)
    steps = sorted(step for step, _ in server_points(mlflow_server.url, run_id, "loss"))
    # Logged 1 s (20 commit intervals) before the kill: it must have been on disk.
    assert steps == list(range(logged_through + 1)), f"{len(steps)} of 200 steps survived"
