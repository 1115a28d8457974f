"""`AIDPTracker` with a real `Accelerator` on CPU against a real MLflow server, read back.

The loop of `accelerate_loop.py` runs in one process, under `torchrun --nproc-per-node 2`
(Accelerate's MULTI_CPU with gloo; `accelerate launch --cpu` would start one process) and
crashing; the rest drive an `Accelerator` in this process. The two-node job is in
test_multinode.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
accelerate = pytest.importorskip("accelerate")

from accelerate import Accelerator  # noqa: E402
from accelerate.state import AcceleratorState, GradientState  # noqa: E402

from aidp_metrics import AIDPError, MetricsClient, Run  # noqa: E402
from aidp_metrics.integrations._convert import AIDPMetricsWarning  # noqa: E402
from aidp_metrics.integrations.accelerate import AIDPTracker  # noqa: E402
from tests.support.mlflow_server import (  # noqa: E402
    artifact_bytes,
    artifact_files,
    free_port,
    get_metric_history,
    get_run,
    runs_in_experiment,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
LOOP = HERE / "accelerate_loop.py"
ENV_TO_CLEAR = (
    "AIDP_RUN_ID",
    "MLFLOW_RUN_ID",
    "AIDP_INSTANCE_ID",
    "AIDP_WORKSPACE_KEY",
    "AIDP_ENDPOINT",
    "OCI_CLI_ENDPOINT",
    "AIDP_EXPERIMENT_NAME",
    "MLFLOW_EXPERIMENT_NAME",
)
# One param per top-level key, as MLflowTracker.store_init_configuration logs them.
LOOP_PARAMS = {"lr": "0.05", "batch_size": "4", "model": "{'features': 4, 'layers': 1}"}


@pytest.fixture
def tracking(monkeypatch: pytest.MonkeyPatch, mlflow_server: Any) -> str:
    """Point the environment at the test server; return its URL."""
    mlflow_server.start()
    for name in ENV_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    url: str = mlflow_server.url
    return url


@pytest.fixture
def fresh_state() -> Iterator[None]:
    """A fresh Accelerate state: it is process-global, and other tests' Trainers set it."""
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def points(url: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((int(m["step"]), float(m["value"])) for m in get_metric_history(url, run_id, key))


def metric_keys(url: str, run_id: str) -> set[str]:
    return {m["key"] for m in get_run(url, run_id)["data"].get("metrics", [])}


def params_of(url: str, run_id: str) -> dict[str, str]:
    return {p["key"]: p["value"] for p in get_run(url, run_id)["data"].get("params", [])}


def tags_of(url: str, run_id: str) -> dict[str, str]:
    return {t["key"]: t["value"] for t in get_run(url, run_id)["data"].get("tags", [])}


def only_run(url: str, experiment: str) -> dict[str, Any]:
    runs = runs_in_experiment(url, experiment)
    assert len(runs) == 1, runs
    return runs[0]


# -- the loop script: one process, two processes, a crash -------------------------------------


def run_loop(
    url: str, project: str, out: Path, *launcher: str, extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    out.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ENV_TO_CLEAR}
    env.update(
        MLFLOW_TRACKING_URI=url,  # no experiment variable: init_trackers's project names it
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        OMP_NUM_THREADS="1",
    )
    return subprocess.run(
        [sys.executable, *launcher, str(LOOP), project, str(out), *extra],
        env=env,
        cwd=out,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def rank_state(out: Path, rank: int) -> dict[str, Any]:
    state: dict[str, Any] = json.loads((out / f"rank-{rank}.json").read_text())
    return state


def test_plain_loop_keys_steps_params_finished(
    tracking: str, fresh_experiment: str, tmp_path: Path
) -> None:
    result = run_loop(tracking, fresh_experiment, tmp_path / "out")
    assert result.returncode == 0, result.stderr[-4000:]
    state = rank_state(tmp_path / "out", 0)
    assert state["num_processes"] == 1
    assert state["tracker_is_run"] is True
    run = only_run(tracking, fresh_experiment)
    run_id = run["info"]["run_id"]
    assert run_id == state["run_id"]
    assert run["info"]["status"] == "FINISHED"
    assert run["info"]["run_name"] == "accelerate-loop"
    # 48 samples, batch 4, 2 epochs: steps 0..23, each value exactly as logged
    logged = state["logged"]
    assert [step for step, _ in logged] == list(range(24))
    assert metric_keys(tracking, run_id) == {"loss", "epoch", "rank"}
    for key in ("loss", "epoch", "rank"):
        assert points(tracking, run_id, key) == [(step, values[key]) for step, values in logged]
    assert params_of(tracking, run_id) == LOOP_PARAMS
    tags = tags_of(tracking, run_id)
    assert tags["aidp_metrics.integration"] == f"accelerate {accelerate.__version__}"


@pytest.mark.slow
def test_torchrun_two_processes_one_run_nothing_from_rank_one(
    tracking: str, fresh_experiment: str, tmp_path: Path
) -> None:
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is needed")
    out = tmp_path / "out"
    launcher = ("-m", "torch.distributed.run", "--nproc-per-node", "2")
    launcher += ("--master-addr", "127.0.0.1", "--master-port", str(free_port()))
    result = run_loop(tracking, fresh_experiment, out, *launcher)
    assert result.returncode == 0, result.stderr[-4000:]
    main, other = rank_state(out, 0), rank_state(out, 1)
    for state in (main, other):
        assert state["distributed_type"] == "DistributedType.MULTI_CPU"
        assert state["num_processes"] == 2
    assert (other["process_index"], other["run_id"], other["tracker_is_run"]) == (1, None, False)
    run = only_run(tracking, fresh_experiment)
    run_id = run["info"]["run_id"]
    assert run_id == main["run_id"]
    assert run["info"]["status"] == "FINISHED"
    # 48 samples over 2 processes, batch 4, 2 epochs: 12 steps, each point once
    logged = main["logged"]
    assert [step for step, _ in logged] == list(range(12))
    assert metric_keys(tracking, run_id) == {"loss", "epoch", "rank"}
    for key in ("loss", "epoch", "rank"):
        assert points(tracking, run_id, key) == [(step, values[key]) for step, values in logged]
    assert {value for _, value in points(tracking, run_id, "rank")} == {0.0}
    assert params_of(tracking, run_id) == LOOP_PARAMS


def test_exception_escaping_the_script_marks_the_run_failed(
    tracking: str, fresh_experiment: str, tmp_path: Path
) -> None:
    result = run_loop(tracking, fresh_experiment, tmp_path / "out", extra=("--crash-at", "5"))
    assert result.returncode != 0
    assert "crash at step 5" in result.stderr
    run = only_run(tracking, fresh_experiment)
    assert run["info"]["status"] == "FAILED"
    run_id = run["info"]["run_id"]
    assert [s for s, _ in points(tracking, run_id, "loss")] == [0, 1, 2, 3, 4]
    assert params_of(tracking, run_id) == LOOP_PARAMS


# -- in this process ---------------------------------------------------------------------------


@pytest.mark.usefixtures("fresh_state")
def test_log_with_the_registered_name(tracking: str, fresh_experiment: str) -> None:
    if not hasattr(accelerate.tracking, "register_tracker_class"):
        pytest.skip("Accelerate < 1.15 registers no tracker by name")
    accelerator = Accelerator(cpu=True, log_with="aidp")
    accelerator.init_trackers(
        fresh_experiment,
        config={"lr": 0.1, "schedule": {"warmup": 10}},
        init_kwargs={"aidp": {"run_name": "by-name", "tags": {"team": "vision"}}},
    )
    run = accelerator.get_tracker("aidp", unwrap=True)
    assert isinstance(run, Run)
    for step in range(3):
        accelerator.log({"loss": 1.0 / (step + 1)}, step=step)
    accelerator.end_training()
    found = only_run(tracking, fresh_experiment)
    run_id = found["info"]["run_id"]
    assert run_id == run.run_id
    assert found["info"]["status"] == "FINISHED"
    assert found["info"]["run_name"] == "by-name"
    assert tags_of(tracking, run_id)["team"] == "vision"
    assert params_of(tracking, run_id) == {"lr": "0.1", "schedule": "{'warmup': 10}"}
    assert points(tracking, run_id, "loss") == [(0, 1.0), (1, 0.5), (2, 1.0 / 3)]


@pytest.mark.usefixtures("fresh_state")
def test_step_none_is_the_count_of_log_calls_and_groups_flatten(
    tracking: str, fresh_experiment: str
) -> None:
    tracker = AIDPTracker()
    accelerator = Accelerator(cpu=True, log_with=tracker)
    accelerator.init_trackers(fresh_experiment)
    accelerator.log({"a": 1.0})  # call 0
    accelerator.log({"a": 2.0}, step=10)
    grouped = {"x": 4, "y": torch.tensor(5.0), "deep": {"z": 7.0}}
    accelerator.log({"a": 3.0, "group": grouped})  # call 2
    with pytest.warns(AIDPMetricsWarning, match="'text'") as caught:
        accelerator.log({"text": "hello", "a": 6.0})  # call 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same bad key again: no second warning
        accelerator.log({"text": "again"})
    assert len([w for w in caught if issubclass(w.category, AIDPMetricsWarning)]) == 1
    accelerator.end_training()
    run_id = tracker.run_id
    assert run_id is not None
    assert metric_keys(tracking, run_id) == {"a", "group/x", "group/y", "group/deep/z"}
    assert points(tracking, run_id, "a") == [(0, 1.0), (2, 3.0), (3, 6.0), (10, 2.0)]
    assert points(tracking, run_id, "group/x") == [(2, 4.0)]
    assert points(tracking, run_id, "group/y") == [(2, 5.0)]
    assert points(tracking, run_id, "group/deep/z") == [(2, 7.0)]
    assert params_of(tracking, run_id) == {}
    assert get_run(tracking, run_id)["info"]["status"] == "FINISHED"


@pytest.mark.usefixtures("fresh_state")
def test_experiment_name_wins_and_a_given_run_is_attached(
    tracking: str, fresh_experiment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    named = AIDPTracker(experiment_name=fresh_experiment, run_name="named")
    accelerator = Accelerator(cpu=True, log_with=named)
    accelerator.init_trackers(f"{fresh_experiment}-project")
    accelerator.log({"loss": 1.0}, step=1)
    accelerator.end_training()
    assert runs_in_experiment(tracking, f"{fresh_experiment}-project") == []
    assert only_run(tracking, fresh_experiment)["info"]["run_id"] == named.run_id

    with MetricsClient(tracking) as client:
        given = client.create_run(experiment_name=fresh_experiment, run_name="given").run_id
    # by argument, then from AIDP_RUN_ID (which also wins over an experiment name)
    trackers = [(AIDPTracker(run_id=given), None), (AIDPTracker(experiment_name="x"), given)]
    for index, (tracker, env_run_id) in enumerate(trackers):
        if env_run_id is not None:
            monkeypatch.setenv("AIDP_RUN_ID", env_run_id)
        AcceleratorState._reset_state(reset_partial_state=True)
        accelerator = Accelerator(cpu=True, log_with=tracker)
        accelerator.init_trackers("ignored-project", config={"seed": 7})
        accelerator.log({"given": float(index)}, step=index)
        accelerator.end_training()
        assert tracker.run_id == given
    assert runs_in_experiment(tracking, "ignored-project") == []
    assert runs_in_experiment(tracking, "x") == []
    assert get_run(tracking, given)["info"]["status"] == "FINISHED"
    assert points(tracking, given, "given") == [(0, 0.0), (1, 1.0)]
    assert params_of(tracking, given) == {"seed": "7"}


@pytest.mark.usefixtures("fresh_state")
def test_no_run_one_warning_training_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "ftp://not-a-tracking-server.invalid")
    tracker = AIDPTracker()
    accelerator = Accelerator(cpu=True, log_with=tracker)

    def train() -> None:
        accelerator.init_trackers("project", config={"lr": 1})
        for step in range(3):
            accelerator.log({"loss": 1.0}, step=step)
        accelerator.end_training()

    with pytest.warns(AIDPMetricsWarning, match="could not start or attach the run") as caught:
        train()
    # One warning for the cause; the run's end then says where its points are (how to sync).
    messages = [str(w.message) for w in caught if issubclass(w.category, AIDPMetricsWarning)]
    assert len(messages) == 2, messages
    assert "could not start or attach the run" in messages[0]
    assert "3 metric(s)" in messages[1]
    assert "aidp-metrics sync" in messages[1]
    # The points are not dropped: the run went on offline, into the spool, for `sync`.
    run = tracker.tracker
    assert run is not None
    assert run.offline
    assert tracker.run_id is not None
    assert tracker.run_id.startswith("local-")
    assert (run.stats.logged, run.stats.spooled, run.stats.pending) == (3, 3, 3)

    AcceleratorState._reset_state(reset_partial_state=True)
    strict = Accelerator(cpu=True, log_with=AIDPTracker(strict=True))
    with pytest.raises(AIDPError):
        strict.init_trackers("project")


@pytest.mark.usefixtures("fresh_state")
def test_a_failing_tracker_never_raises_into_training(tracking: str, fresh_experiment: str) -> None:
    tracker = AIDPTracker()
    accelerator = Accelerator(cpu=True, log_with=tracker)
    accelerator.init_trackers(fresh_experiment)
    run = tracker.tracker
    assert isinstance(run, Run)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("sender exploded")

    # A fault the real Run does not produce on demand: its log_valid raising.
    run.log_valid = broken  # type: ignore[method-assign]

    def train() -> None:
        for step in range(3):
            accelerator.log({"loss": 1.0}, step=step)

    with pytest.warns(AIDPMetricsWarning, match="log failed .*sender exploded") as caught:
        train()
    assert len([w for w in caught if issubclass(w.category, AIDPMetricsWarning)]) == 1
    del run.log_valid
    accelerator.log({"loss": 0.5}, step=3)
    accelerator.end_training()
    assert points(tracking, run.run_id, "loss") == [(3, 0.5)]
    assert get_run(tracking, run.run_id)["info"]["status"] == "FINISHED"


def test_a_misspelt_option_is_a_type_error_at_construction() -> None:
    with pytest.raises(TypeError, match="'flush_intervall' \\(did you mean 'flush_interval'"):
        AIDPTracker(flush_intervall=0.5)


@pytest.mark.usefixtures("fresh_state")
def test_a_run_you_started_is_logged_into_and_left_running(
    tracking: str, fresh_experiment: str
) -> None:
    """`run=`: the config, tags and every logged point go into the user's run;
    `end_training()` only flushes it; the user ends it."""
    run = Run.start(experiment_name=fresh_experiment, run_name="mine")
    with pytest.raises(ValueError, match="run_id= cannot apply"):
        AIDPTracker(run=run, run_id=run.run_id)
    tracker = AIDPTracker(run=run, tags={"team": "vision"})
    accelerator = Accelerator(cpu=True, log_with=tracker)
    accelerator.init_trackers(f"{fresh_experiment}-project", config={"lr": 0.1, "opt": {"b": 2}})
    assert accelerator.get_tracker("aidp", unwrap=True) is run
    for step in range(3):
        accelerator.log({"loss": 1.0 / (step + 1), "group": {"x": step}}, step=step)
    accelerator.end_training()
    assert not run.ended
    assert get_run(tracking, run.run_id)["info"]["status"] == "RUNNING"
    assert metric_keys(tracking, run.run_id) == {"loss", "group/x"}
    assert points(tracking, run.run_id, "loss") == [(0, 1.0), (1, 0.5), (2, 1.0 / 3)]
    assert points(tracking, run.run_id, "group/x") == [(0, 0.0), (1, 1.0), (2, 2.0)]
    assert params_of(tracking, run.run_id) == {"lr": "0.1", "opt": "{'b': 2}"}
    tags = tags_of(tracking, run.run_id)
    assert tags["team"] == "vision"
    assert tags["aidp_metrics.integration"].startswith("accelerate ")
    assert get_run(tracking, run.run_id)["info"]["run_name"] == "mine"
    assert runs_in_experiment(tracking, f"{fresh_experiment}-project") == []
    assert run.status_on_exit == "FINISHED"  # the user's, never changed by the tracker
    run.end()
    assert get_run(tracking, run.run_id)["info"]["status"] == "FINISHED"


@pytest.mark.usefixtures("fresh_state")
def test_watch_through_the_tracker_run_with_accumulation(
    tracking: str, fresh_experiment: str
) -> None:
    """`accelerator.get_tracker("aidp", unwrap=True).watch(model)`: the k-th update of the
    prepared optimizer (accumulation folded in) lands on step k, as in a plain loop."""
    tracker = AIDPTracker()
    accelerator = Accelerator(cpu=True, log_with=tracker, gradient_accumulation_steps=2)
    accelerator.init_trackers(fresh_experiment)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.get_tracker("aidp", unwrap=True).watch(model, log="gradients", log_freq=2)
    applied: dict[int, float] = {}
    generator = torch.Generator().manual_seed(1)
    for _ in range(12):  # 6 updates
        with accelerator.accumulate(model):
            loss = model(torch.randn(8, 4, generator=generator)).pow(2).mean()
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                grads = [p.grad for p in model.parameters()]
                applied[len(applied) + 1] = float(
                    torch.linalg.vector_norm(
                        torch.stack([torch.linalg.vector_norm(g) for g in grads])
                    )
                )
            optimizer.step()
            optimizer.zero_grad()
    accelerator.end_training()
    run_id = tracker.run_id
    assert run_id is not None
    assert metric_keys(tracking, run_id) == {
        "grad_norm/0.weight",
        "grad_norm/0.bias",
        "grad_norm/1.weight",
        "grad_norm/1.bias",
        "grad_norm/total",
    }
    assert points(tracking, run_id, "grad_norm/total") == [
        (k, pytest.approx(applied[k], rel=1e-6)) for k in (2, 4, 6)
    ]


@pytest.mark.usefixtures("fresh_state")
def test_artifacts_files_a_directory_and_a_figure_arrive_byte_for_byte(
    tracking: str, fresh_experiment: str, tmp_path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    source = tmp_path / "source"
    (source / "tree" / "deeper").mkdir(parents=True)
    files = {
        "model.bin": bytes(range(256)) * 64,
        "tree/a.txt": b"alpha\n",
        "tree/deeper/b.bin": b"\x00\x01" * 1000,
    }
    for name, data in files.items():
        (source / name).write_bytes(data)
    tracker = AIDPTracker(flush_interval=0.05)
    accelerator = Accelerator(cpu=True, log_with=tracker)
    accelerator.init_trackers(fresh_experiment)
    tracker.log_artifact(str(source / "model.bin"))
    tracker.log_artifact(source / "model.bin", "weights")
    tracker.log_artifacts(str(source / "tree"), "tree")
    figure, axes = plt.subplots()
    axes.plot([0, 1, 2], [3, 1, 2])
    tracker.log_figure(figure, "plots/curve.png", dpi=50)
    local = tmp_path / "curve.png"
    figure.savefig(local, dpi=50)
    plt.close(figure)
    (source / "model.bin").write_bytes(b"rewritten after logging")  # the snapshot was taken
    with pytest.warns(AIDPMetricsWarning, match="missing.bin not logged"):
        tracker.log_artifact(str(tmp_path / "missing.bin"))  # never raises into training
    accelerator.end_training()

    run_id = tracker.run_id
    assert run_id is not None
    expected = {
        "model.bin": files["model.bin"],
        "weights/model.bin": files["model.bin"],
        "tree/a.txt": files["tree/a.txt"],
        "tree/deeper/b.bin": files["tree/deeper/b.bin"],
        "plots/curve.png": local.read_bytes(),
    }
    assert artifact_files(tracking, run_id) == {path: len(data) for path, data in expected.items()}
    for path, data in expected.items():
        assert artifact_bytes(tracking, run_id, path) == data, path
    assert get_run(tracking, run_id)["info"]["status"] == "FINISHED"
