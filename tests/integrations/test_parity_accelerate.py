"""Parity with accelerate's `MLflowTracker`: one training loop, run once with it and once
with `AIDPTracker` (only the class changes: same arguments, same environment), read back
from the same server with MLflow's client and compared. docs/frameworks/accelerate.md lists
what differs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
accelerate = pytest.importorskip("accelerate")
mlflow = pytest.importorskip("mlflow")

from accelerate import Accelerator  # noqa: E402
from accelerate.state import AcceleratorState, GradientState  # noqa: E402
from accelerate.tracking import MLflowTracker  # noqa: E402

from aidp_metrics.integrations.accelerate import AIDPTracker  # noqa: E402
from tests.integrations.parity import (  # noqa: E402
    GIT_DIFFERENCES,
    changed,
    differences,
    read_run,
    run_as_script,
)

torch.set_num_threads(1)

EXPECTED = {
    # A class is logged by its qualified name; MLflowTracker logs str(): "<class '...'>".
    changed(
        "param",
        "activation",
        "<class 'torch.nn.modules.activation.ReLU'>",
        "torch.nn.modules.activation.ReLU",
    ),
} | GIT_DIFFERENCES


@pytest.fixture
def environment(
    monkeypatch: pytest.MonkeyPatch, mlflow_server: Any, fresh_experiment: str
) -> Iterator[str]:
    for name in ("AIDP_RUN_ID", "MLFLOW_RUN_ID", "AIDP_EXPERIMENT_NAME", "AIDP_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", fresh_experiment)  # wins over the argument
    monkeypatch.setenv("MLFLOW_TAGS", '{"team": "from-env"}')  # replaces the tags argument
    run_as_script(monkeypatch, __file__)  # a source file inside this git checkout
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield mlflow_server.url
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _train(tracker: Any) -> None:
    accelerator = Accelerator(cpu=True, log_with=tracker)
    config = {"lr": 0.1, "epochs": 2, "model": {"layers": 2}, "activation": torch.nn.ReLU}
    accelerator.init_trackers("project", config=config)
    for step in range(3):
        accelerator.log({"loss": 1.0 / (step + 1), "lr": 0.1}, step=step)
    accelerator.end_training()
    AcceleratorState._reset_state(reset_partial_state=True)


def test_same_loop_same_run(environment: str, fresh_experiment: str, tmp_path: Path) -> None:
    arguments = ("argument-experiment", str(tmp_path), None, {"team": "arg"}, False, "parity")
    theirs_tracker = MLflowTracker(*arguments, description="a tiny loop")
    _train(theirs_tracker)
    theirs = read_run(environment, theirs_tracker.tracker.info.run_id, tag_keys=("team",))
    ours_tracker = AIDPTracker(*arguments, description="a tiny loop")
    _train(ours_tracker)
    assert ours_tracker.run_id is not None
    ours = read_run(environment, ours_tracker.run_id, tag_keys=("team",))
    assert ours.experiment == fresh_experiment
    assert ours.tags["team"] == "from-env"
    assert ours.tags["mlflow.note.content"] == "a tiny loop"
    assert ours.params["model"] == "{'layers': 2}"
    assert differences(theirs, ours) == EXPECTED


def test_nested_run_under_the_users_run(environment: str, fresh_experiment: str) -> None:
    from aidp_metrics import Run

    with Run.from_env(run_name="parent") as parent:
        tracker = AIDPTracker(nested_run=True, run=parent)
        _train(tracker)
        assert tracker.run_id not in (None, parent.run_id)
    child = mlflow.MlflowClient(environment).get_run(tracker.run_id)
    assert child.data.tags["mlflow.parentRunId"] == parent.run_id
    assert child.info.status == "FINISHED"  # a run of its own: ended by the tracker
