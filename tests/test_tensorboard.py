"""TensorBoard bridge: event files written by torch's `SummaryWriter` (classic `simple_value`
and `new_style=True` scalar tensors), imported with `aidp-metrics tensorboard` and followed
live with `Run.follow_tensorboard`, read back from a real MLflow server: exact keys, steps,
values (float32, as TensorBoard stores them) and wall-time timestamps."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

from aidp_metrics import AIDPMetricsWarning, Run
from aidp_metrics._bridges.tensorboard_events import EventFile, event_files
from aidp_metrics._notice import Notices
from aidp_metrics.cli import main
from aidp_metrics.cli._tensorboard_import import (
    READ_TAG_PREFIX,
    SOURCE_TAG,
    Mark,
    identity,
    read_tag,
)
from tests.support.mlflow_server import (
    MLflowServer,
    get_metric_history,
    get_run,
    runs_in_experiment,
)

torch_tensorboard = pytest.importorskip("torch.utils.tensorboard")
SummaryWriter = torch_tensorboard.SummaryWriter

WALL = 1_700_000_000.0  # explicit wall times: the timestamps are known exactly
STEPS = range(5)
FOLLOW_THREAD = "aidp-metrics-tensorboard"


def wall(step: int) -> float:
    return WALL + step + 0.125  # exact in binary: .125 s = 125 ms


def ms(step: int) -> int:
    return int(WALL * 1000) + step * 1000 + 125


def loss(step: int) -> float:
    return 2.0 - step * 0.25  # exact in float32, as every value below


def lr(step: int) -> float:
    return 0.5**step


def acc(step: int) -> float:
    return 0.5 + step * 0.0625


def write_logdir(root: Path) -> Path:
    """A TensorBoard log directory as a torch training script leaves it: scalars (classic
    and new-style) plus a histogram and text at the top, an `eval` subdirectory, and the
    `losses_a` / `losses_b` directories `add_scalars` makes."""
    import numpy as np

    logdir = root / "tb-logs"
    with SummaryWriter(str(logdir)) as writer:
        for step in STEPS:
            writer.add_scalar("loss", loss(step), step, walltime=wall(step))
            writer.add_scalar("lr", lr(step), step, walltime=wall(step), new_style=True)
            writer.add_scalars("losses", {"a": loss(step), "b": 2 * loss(step)}, step, wall(step))
        writer.add_histogram("weights", np.arange(10.0), 0, walltime=wall(0))
        writer.add_text("note", "hello", 0, walltime=wall(0))
    with SummaryWriter(str(logdir / "eval")) as writer:
        for step in STEPS:
            writer.add_scalar("acc", acc(step), step * 10, walltime=wall(step))
    return logdir


@pytest.fixture
def logdir(tmp_path: Path) -> Path:
    return write_logdir(tmp_path)


def history(url: str, run_id: str, key: str) -> list[tuple[int, float, int]]:
    return sorted(
        (int(m["step"]), float(m["value"]), int(m["timestamp"]))
        for m in get_metric_history(url, run_id, key)
    )


def runs_by_name(url: str, experiment: str) -> dict[str, dict[str, Any]]:
    runs = runs_in_experiment(url, experiment)
    return {str(run["info"]["run_name"]): run for run in runs}


def metric_keys(run: dict[str, Any]) -> set[str]:
    return {str(m["key"]) for m in run.get("data", {}).get("metrics", [])}


def tags(run: dict[str, Any]) -> dict[str, str]:
    return {str(t["key"]): str(t["value"]) for t in run.get("data", {}).get("tags", [])}


def imported(out: str) -> dict[str, str]:
    """What the command printed per run: "<n> points imported" or "up to date". (MLflow
    keeps an identical point once, so a point sent twice shows here, not in the history.)"""
    return dict(re.findall(r"^(\S+): run \w+ \(experiment [^)]*\): (.*)$", out, re.MULTILINE))


def import_logdir(
    server: MLflowServer, logdir: Path, experiment: str, *extra: str
) -> tuple[int, list[str]]:
    """`aidp-metrics tensorboard` in this process; the exit status and its notices."""
    argv = ["tensorboard", str(logdir), "--experiment-name", experiment]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", AIDPMetricsWarning)
        status = main([*argv, "--tracking-uri", server.url, *extra])
    return status, [str(w.message) for w in caught if issubclass(w.category, AIDPMetricsWarning)]


def expect_imported(url: str, experiment: str, logdir: Path) -> dict[str, dict[str, Any]]:
    runs = runs_by_name(url, experiment)
    assert {"tb-logs", "eval", "losses_a", "losses_b"} <= set(runs)
    top, evaluation = runs["tb-logs"], runs["eval"]
    assert metric_keys(top) == {"loss", "lr"}
    top_id = str(top["info"]["run_id"])
    assert history(url, top_id, "loss") == [(s, loss(s), ms(s)) for s in STEPS]
    assert history(url, top_id, "lr") == [(s, lr(s), ms(s)) for s in STEPS]
    eval_id = str(evaluation["info"]["run_id"])
    assert history(url, eval_id, "acc") == [(s * 10, acc(s), ms(s)) for s in STEPS]
    for name, factor in (("losses_a", 1), ("losses_b", 2)):
        run_id = str(runs[name]["info"]["run_id"])
        assert history(url, run_id, "losses") == [(s, factor * loss(s), ms(s)) for s in STEPS]
    for name, run in runs.items():
        assert run["info"]["status"] == "FINISHED", name
        directory = logdir if name == "tb-logs" else logdir / name
        assert tags(run)[SOURCE_TAG] == identity(directory)
    return runs


# -- import ------------------------------------------------------------------------------------


def test_import_then_reimport_adds_nothing(
    mlflow_server: MLflowServer,
    fresh_experiment: str,
    logdir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, said = import_logdir(mlflow_server, logdir, fresh_experiment)
    assert status == 0
    runs = expect_imported(mlflow_server.url, fresh_experiment, logdir)
    assert len(runs) == 4
    # Non-scalars are skipped with one notice per tag.
    assert sum("'weights'" in message and "histograms" in message for message in said) == 1
    assert sum("'note/text_summary'" in message for message in said) == 1
    assert imported(capsys.readouterr().out) == {
        "tb-logs": "10 points imported",
        "eval": "5 points imported",
        "losses_a": "5 points imported",
        "losses_b": "5 points imported",
    }
    # Every file's progress is on its run.
    top = tags(runs["tb-logs"])
    (top_file,) = [p for p in event_files(logdir) if p.parent == logdir]
    mark = Mark.parse(top[read_tag(top_file.name)])
    assert mark is not None
    assert mark.offset == top_file.stat().st_size

    status, said = import_logdir(mlflow_server, logdir, fresh_experiment)
    assert status == 0
    assert said == []  # unchanged files are not even read again
    assert set(imported(capsys.readouterr().out).values()) == {"up to date"}
    again = expect_imported(mlflow_server.url, fresh_experiment, logdir)
    assert {n: r["info"]["run_id"] for n, r in again.items()} == {
        n: r["info"]["run_id"] for n, r in runs.items()
    }


def test_new_events_and_files_are_imported_once(
    mlflow_server: MLflowServer,
    fresh_experiment: str,
    logdir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert import_logdir(mlflow_server, logdir, fresh_experiment)[0] == 0
    # A training job resumed later writes a new file into the same directory.
    with SummaryWriter(str(logdir / "eval")) as writer:
        writer.add_scalar("acc", 0.875, 50, walltime=wall(5))
    capsys.readouterr()
    assert import_logdir(mlflow_server, logdir, fresh_experiment)[0] == 0
    assert imported(capsys.readouterr().out) == {
        "tb-logs": "up to date",
        "eval": "1 point imported",
        "losses_a": "up to date",
        "losses_b": "up to date",
    }
    run = runs_by_name(mlflow_server.url, fresh_experiment)["eval"]
    expected = [(s * 10, acc(s), ms(s)) for s in STEPS] + [(50, 0.875, ms(5))]
    assert history(mlflow_server.url, str(run["info"]["run_id"]), "acc") == expected


def test_torn_last_record_is_skipped_then_read_once_complete(
    mlflow_server: MLflowServer,
    fresh_experiment: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = tmp_path / "source"
    with SummaryWriter(str(source)) as writer:
        for step in range(6):
            writer.add_scalar("x", float(step), step, walltime=wall(step))
    (complete,) = event_files(source)
    data = complete.read_bytes()
    logdir = tmp_path / "torn"
    logdir.mkdir()
    torn = logdir / complete.name
    torn.write_bytes(data[:-7])  # the writer was killed in the middle of the last record

    assert import_logdir(mlflow_server, logdir, fresh_experiment)[0] == 0
    run_id = str(runs_by_name(mlflow_server.url, fresh_experiment)["torn"]["info"]["run_id"])
    first = [(s, float(s), ms(s)) for s in range(5)]
    assert history(mlflow_server.url, run_id, "x") == first

    assert imported(capsys.readouterr().out) == {"torn": "5 points imported"}

    torn.write_bytes(data)  # the file completed (a writer that was still writing)
    assert import_logdir(mlflow_server, logdir, fresh_experiment)[0] == 0
    assert imported(capsys.readouterr().out) == {"torn": "1 point imported"}
    assert history(mlflow_server.url, run_id, "x") == [*first, (5, 5.0, ms(5))]


def test_reader_resumes_a_record_completed_later(tmp_path: Path) -> None:
    with SummaryWriter(str(tmp_path / "w")) as writer:
        for step in range(3):
            writer.add_scalar("x", float(step), step, walltime=wall(step))
    (path,) = event_files(tmp_path / "w")
    data = path.read_bytes()
    growing = tmp_path / path.name
    growing.write_bytes(data[:-3])
    events = EventFile(growing, Notices(), "test")
    assert [p.step for p in events.points()] == [0, 1]
    assert [p.step for p in events.points()] == []  # still torn: nothing, nothing lost
    done = events.offset
    with growing.open("ab") as file:
        file.write(data[-3:])
    (last,) = events.points()
    assert (last.step, last.timestamp, last.values) == (2, ms(2), {"x": 2.0})
    assert events.offset == len(data) > done
    # Re-reading the same file, skipping what an earlier import recorded:
    again = EventFile(growing, Notices(), "test")
    assert [p.step for p in again.points(skip_records=events.records - 1)] == [2]


def test_mark_and_tag_names() -> None:
    assert Mark.parse(Mark(3, 120).tag_value()) == Mark(3, 120)
    assert Mark.parse("junk") is None
    assert Mark.parse('{"records": -1, "offset": 0}') is None
    name = "events.out.tfevents.1700000000.host-1.123.0"
    assert read_tag(name) == READ_TAG_PREFIX + name
    odd = read_tag("events.out.tfevents.1.host(a)+1.0")  # not a valid tag key: a digest
    assert odd == READ_TAG_PREFIX + hashlib.sha1(b"events.out.tfevents.1.host(a)+1.0").hexdigest()


def test_missing_logdir_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tensorboard", str(tmp_path / "nope"), "--tracking-uri", "http://x"]) == 1
    assert "is not a directory" in capsys.readouterr().err


# -- Run.follow_tensorboard ----------------------------------------------------------------------


def test_follow_tensorboard_logs_live_files_and_subdirectories(
    mlflow_server: MLflowServer, fresh_experiment: str, tmp_path: Path
) -> None:
    logdir = tmp_path / "live"
    run = Run.start(endpoint=mlflow_server.url, experiment_name=fresh_experiment)
    run.follow_tensorboard(logdir, interval=0.05)  # the directory does not exist yet
    assert any(t.name == FOLLOW_THREAD for t in threading.enumerate())
    top = SummaryWriter(str(logdir))
    evaluation = SummaryWriter(str(logdir / "eval"))  # a subdirectory made while following
    for step in STEPS:
        top.add_scalar("loss", loss(step), step, walltime=wall(step))
        top.add_scalar("lr", lr(step), step, walltime=wall(step), new_style=True)
        evaluation.add_scalar("acc", acc(step), step, walltime=wall(step))
        run.log_metric("direct", float(step), step=step)  # the training loop's own logging
    top.close()
    evaluation.close()
    stats = run.end()  # reads what is left first
    assert not any(t.name == FOLLOW_THREAD for t in threading.enumerate())
    assert stats.delivered == stats.logged == 4 * len(STEPS)
    url, run_id = mlflow_server.url, run.run_id
    assert metric_keys(get_run(url, run_id)) == {"loss", "lr", "eval/acc", "direct"}
    assert history(url, run_id, "loss") == [(s, loss(s), ms(s)) for s in STEPS]
    assert history(url, run_id, "lr") == [(s, lr(s), ms(s)) for s in STEPS]
    assert history(url, run_id, "eval/acc") == [(s, acc(s), ms(s)) for s in STEPS]


def test_follow_tensorboard_skips_a_torn_record(
    mlflow_server: MLflowServer, fresh_experiment: str, tmp_path: Path
) -> None:
    with SummaryWriter(str(tmp_path / "w")) as writer:
        for step in range(4):
            writer.add_scalar("x", float(step), step, walltime=wall(step))
    (path,) = event_files(tmp_path / "w")
    logdir = tmp_path / "followed"
    logdir.mkdir()
    (logdir / path.name).write_bytes(path.read_bytes()[:-5])
    with Run.start(endpoint=mlflow_server.url, experiment_name=fresh_experiment) as run:
        run.follow_tensorboard(logdir)
    assert history(mlflow_server.url, run.run_id, "x") == [(s, float(s), ms(s)) for s in range(3)]


# -- aidp-metrics tensorboard --follow ------------------------------------------------------------


def wait_for(check: Any, what: str, timeout: float = 120.0) -> Any:
    """Poll `check()` until it returns something truthy (a bound on a hung process, not a
    timed assertion: it passes as soon as the work is done, however long that takes)."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


@pytest.mark.slow
def test_cli_follow_imports_new_directories_until_ctrl_c(
    mlflow_server: MLflowServer, fresh_experiment: str, logdir: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AIDP_", "OCI_"))}
    env["AIDP_METRICS_DIR"] = os.environ["AIDP_METRICS_DIR"]
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "aidp_metrics.cli", "tensorboard", str(logdir), "--follow"),
            *("--interval", "0.1", "--experiment-name", fresh_experiment),
            *("--tracking-uri", mlflow_server.url),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = mlflow_server.url
        wait_for(lambda: len(runs_by_name(url, fresh_experiment)) == 4, "the first import")
        with SummaryWriter(str(logdir / "late")) as writer:
            for step in STEPS:
                writer.add_scalar("f1", acc(step), step, walltime=wall(step))

        def late_points() -> bool:
            late = runs_by_name(url, fresh_experiment).get("late")
            return late is not None and len(history(url, late["info"]["run_id"], "f1")) == 5

        wait_for(late_points, "the new directory's points")
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert imported(out) == {
        "tb-logs": "10 points imported",
        "eval": "5 points imported",
        "losses_a": "5 points imported",
        "losses_b": "5 points imported",
        "late": "5 points imported",
    }
    runs = expect_imported(url, fresh_experiment, logdir)  # all FINISHED, nothing twice
    assert len(runs) == 5
    late = runs["late"]
    assert late["info"]["status"] == "FINISHED"
    assert history(url, late["info"]["run_id"], "f1") == [(s, acc(s), ms(s)) for s in STEPS]


# -- the example, light imports, a missing package --------------------------------------------


@pytest.mark.slow
def test_example_runs(mlflow_server: MLflowServer, fresh_experiment: str, tmp_path: Path) -> None:
    from tests.support.scripts import ROOT, child_env, run_script

    env = child_env(
        mlflow_server.url,
        tmp_path,
        with_checkout=True,
        MLFLOW_EXPERIMENT_NAME=fresh_experiment,
        EPOCHS="2",
        OUTPUT_DIR=str(tmp_path / "output"),
    )
    example = ROOT / "examples" / "tensorboard_example.py"
    result = run_script([str(example)], env, cwd=tmp_path)
    assert result.stdout.count("points imported") == 2  # offline and offline/eval
    assert result.stdout.count("up to date") == 2  # the second import: nothing new
    runs = runs_by_name(mlflow_server.url, fresh_experiment)
    assert set(runs) == {"tensorboard-live", "offline", "eval"}
    steps = 2 * 1024 // 32
    url = mlflow_server.url
    live = str(runs["tensorboard-live"]["info"]["run_id"])
    assert [s for s, _, _ in history(url, live, "train_loss")] == list(range(1, steps + 1))
    assert [s for s, _, _ in history(url, live, "lr")] == list(range(1, steps + 1))
    assert [s for s, _, _ in history(url, live, "eval/loss")] == [steps // 2, steps]
    offline = str(runs["offline"]["info"]["run_id"])
    assert len(history(url, offline, "train_loss")) == steps
    assert [s for s, _, _ in history(url, str(runs["eval"]["info"]["run_id"]), "loss")] == [
        steps // 2,
        steps,
    ]
    for run in runs.values():
        assert run["info"]["status"] == "FINISHED"


def test_importing_the_package_loads_no_tensorboard() -> None:
    code = (
        "import sys, aidp_metrics, aidp_metrics.cli\n"
        "from aidp_metrics import Run\n"
        "aidp_metrics.cli.build_parser()\n"
        "print([m for m in ('tensorboard', 'tqdm', 'torch') if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_help_has_the_global_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["tensorboard", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert "--tracking-uri" in text
    assert "--follow" in text


def test_follow_without_tensorboard_says_so_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aidp_metrics import _bridges

    # TensorBoard's reader not installed
    monkeypatch.setitem(sys.modules, "aidp_metrics._bridges.tensorboard_events", None)
    monkeypatch.delattr(_bridges, "tensorboard_events", raising=False)
    run = Run.start(offline=True, experiment_name="x")
    with pytest.warns(AIDPMetricsWarning, match=r"aidp-metrics\[tensorboard\]"):
        run.follow_tensorboard(tmp_path)
    assert not any(t.name == FOLLOW_THREAD for t in threading.enumerate())
    run.end()


@pytest.mark.slow
def test_bench_tensorboard_smoke_runs(mlflow_server: MLflowServer, tmp_path: Path) -> None:
    """The follower benchmark runs end to end (its numbers are informational)."""
    import json

    mlflow_server.start()  # no-op unless an earlier test left it stopped
    out = tmp_path / "bench.json"
    root = Path(__file__).resolve().parent.parent
    command = ["-m", "benchmarks.bench_tensorboard", "--smoke", "--tracking-uri", mlflow_server.url]
    result = subprocess.run(
        [sys.executable, *command, "--json", str(out)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    data = json.loads(out.read_text())["result"]
    assert data["complete"] is True  # every scalar written was delivered
    assert data["threads_left"] is False
