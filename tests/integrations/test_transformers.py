"""`AIDPCallback` with a real `Trainer` on CPU against a real MLflow server, read back."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.transformers

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from transformers import TrainerCallback  # noqa: E402

from aidp_metrics import AIDPError  # noqa: E402
from aidp_metrics.integrations._convert import AIDPMetricsWarning  # noqa: E402
from aidp_metrics.integrations.transformers import AIDPCallback  # noqa: E402
from tests.support.mlflow_server import (  # noqa: E402
    get_metric_history,
    get_run,
    runs_in_experiment,
)

from .test_transformers_support import (  # noqa: E402
    TinyRegressor,
    expected_points,
    make_trainer,
    points_of,
)

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[2]
ENV_TO_CLEAR = (
    "AIDP_RUN_ID",
    "MLFLOW_RUN_ID",
    "AIDP_INSTANCE_ID",
    "AIDP_WORKSPACE_KEY",
    "AIDP_ENDPOINT",
    "OCI_CLI_ENDPOINT",
    "MLFLOW_EXPERIMENT_NAME",
)


@pytest.fixture
def tracking(monkeypatch: pytest.MonkeyPatch, mlflow_server: Any, fresh_experiment: str) -> str:
    """Point the environment at the test server and a fresh experiment; return the URL."""
    mlflow_server.start()
    for name in ENV_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    monkeypatch.setenv("AIDP_EXPERIMENT_NAME", fresh_experiment)
    url: str = mlflow_server.url
    return url


def assert_run_matches(url: str, run_id: str, log_histories: list[list[dict[str, Any]]]) -> None:
    """Every numeric log_history point is on the server at its step exactly once, nothing else."""
    expected: dict[str, set[tuple[int, float]]] = {}
    for history in log_histories:
        for key, points in expected_points(history).items():
            expected.setdefault(key, set()).update(points)
    run = get_run(url, run_id)
    logged_keys = {m["key"] for m in run["data"].get("metrics", [])}
    assert logged_keys == set(expected)
    for key, points in expected.items():
        on_server = points_of(get_metric_history(url, run_id, key))
        assert on_server == sorted(points), key


def params_of(url: str, run_id: str) -> dict[str, str]:
    return {p["key"]: p["value"] for p in get_run(url, run_id)["data"].get("params", [])}


def tags_of(url: str, run_id: str) -> dict[str, str]:
    return {t["key"]: t["value"] for t in get_run(url, run_id)["data"].get("tags", [])}


def steps_of(url: str, run_id: str, key: str) -> list[int]:
    return sorted(int(m["step"]) for m in get_metric_history(url, run_id, key))


def test_every_logged_point_lands_once_at_its_step(tracking: str, tmp_path: Path) -> None:
    callback = AIDPCallback()
    assert callback.run_id is None
    trainer = make_trainer(tmp_path, [callback])
    trainer.train()

    assert trainer.state.global_step == 60
    run_id = callback.run_id
    assert run_id is not None
    assert get_run(tracking, run_id)["info"]["status"] == "FINISHED"
    assert_run_matches(tracking, run_id, [trainer.state.log_history])
    # The Trainer's own keys, at optimizer steps.
    assert steps_of(tracking, run_id, "loss") == list(range(5, 61, 5))
    assert steps_of(tracking, run_id, "grad_norm") == list(range(5, 61, 5))
    assert steps_of(tracking, run_id, "learning_rate") == list(range(5, 61, 5))
    # Eval metrics once each (they also reach on_evaluate).
    assert steps_of(tracking, run_id, "eval_loss") == [20, 40, 60]
    assert steps_of(tracking, run_id, "eval_runtime") == [20, 40, 60]
    # `epoch` is in the training and the eval log of steps 20/40/60: one point per step.
    assert steps_of(tracking, run_id, "epoch") == list(range(5, 61, 5))
    # Summary values at the final step.
    for key in ("train_runtime", "train_loss", "train_samples_per_second", "total_flos"):
        assert steps_of(tracking, run_id, key) == [60], key

    params = params_of(tracking, run_id)
    assert params["learning_rate"] == "0.001"
    assert params["per_device_train_batch_size"] == "4"
    assert params["num_train_epochs"] == "2"
    assert params["config/hidden_size"] == "32"
    assert params["config/num_hidden_layers"] == "2"
    tags = tags_of(tracking, run_id)
    assert tags["model_class"].endswith("BertForSequenceClassification")
    assert tags["transformers_version"] == transformers.__version__
    assert tags["framework"] == "transformers"


def test_gradient_accumulation_steps_count_optimizer_updates(tracking: str, tmp_path: Path) -> None:
    callback = AIDPCallback()
    # 96 samples / batch 4 = 24 micro-batches = 6 updates per epoch; 2 epochs = 12 updates.
    trainer = make_trainer(
        tmp_path,
        [callback],
        model=TinyRegressor(),
        n_train=96,
        gradient_accumulation_steps=4,
        logging_steps=2,
        eval_steps=6,
    )
    trainer.train()

    assert trainer.state.global_step == 12
    run_id = callback.run_id
    assert run_id is not None
    assert steps_of(tracking, run_id, "loss") == [2, 4, 6, 8, 10, 12]
    assert steps_of(tracking, run_id, "eval_loss") == [6, 12]
    assert_run_matches(tracking, run_id, [trainer.state.log_history])
    assert params_of(tracking, run_id)["gradient_accumulation_steps"] == "4"
    assert tags_of(tracking, run_id)["model_class"].endswith("TinyRegressor")


class StopAt(TrainerCallback):  # type: ignore[misc]
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.global_step >= self.step:
            control.should_training_stop = True
        return control


def test_resume_from_checkpoint_continues_the_same_run(tracking: str, tmp_path: Path) -> None:
    first = AIDPCallback()
    trainer = make_trainer(
        tmp_path, [first, StopAt(30)], save_strategy="steps", save_steps=30, save_total_limit=2
    )
    trainer.train()
    assert trainer.state.global_step == 30
    run_id = first.run_id
    assert run_id is not None
    assert get_run(tracking, run_id)["info"]["status"] == "FINISHED"
    checkpoint = tmp_path / "checkpoint-30"
    assert (checkpoint / "trainer_state.json").exists()

    # A new process would build a new callback: the run id comes from the checkpoint.
    second = AIDPCallback()
    resumed = make_trainer(
        tmp_path, [second], save_strategy="steps", save_steps=30, save_total_limit=2
    )
    resumed.train(resume_from_checkpoint=str(checkpoint))

    assert resumed.state.global_step == 60
    assert second.run_id == run_id
    assert len(runs_in_experiment(tracking, os.environ["AIDP_EXPERIMENT_NAME"])) == 1
    assert get_run(tracking, run_id)["info"]["status"] == "FINISHED"
    assert steps_of(tracking, run_id, "loss") == list(range(5, 61, 5))
    assert steps_of(tracking, run_id, "eval_loss") == [20, 40, 60]
    # Each train() call ends with its own summary.
    assert steps_of(tracking, run_id, "train_runtime") == [30, 60]
    assert_run_matches(tracking, run_id, [trainer.state.log_history, resumed.state.log_history])


def test_resume_with_restored_callback_state(tracking: str, tmp_path: Path) -> None:
    """With `restore_callback_states_from_checkpoint` the Trainer rebuilds the callback."""
    first = AIDPCallback(tags={"team": "ml"})
    trainer = make_trainer(
        tmp_path,
        [first, StopAt(20)],
        save_strategy="steps",
        save_steps=20,
        eval_strategy="no",
        restore_callback_states_from_checkpoint=True,
    )
    trainer.train()
    run_id = first.run_id

    resumed = make_trainer(
        tmp_path,
        [AIDPCallback],
        save_strategy="steps",
        save_steps=20,
        eval_strategy="no",
        restore_callback_states_from_checkpoint=True,
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-20"))
    callbacks = [cb for cb in resumed.callback_handler.callbacks if isinstance(cb, AIDPCallback)]
    assert len(callbacks) == 1
    assert callbacks[0].run_id == run_id
    assert callbacks[0].tags == {"team": "ml"}
    assert steps_of(tracking, run_id, "loss") == list(range(5, 61, 5))
    assert get_run(tracking, run_id)["info"]["status"] == "FINISHED"


def test_run_id_from_the_environment_is_honoured(
    tracking: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    experiment_name = os.environ["AIDP_EXPERIMENT_NAME"]
    created = httpx.post(
        f"{tracking}/api/2.0/mlflow/experiments/create", json={"name": experiment_name}, timeout=30
    )
    created.raise_for_status()
    run = httpx.post(
        f"{tracking}/api/2.0/mlflow/runs/create",
        json={"experiment_id": created.json()["experiment_id"], "run_name": "made-elsewhere"},
        timeout=30,
    )
    run.raise_for_status()
    run_id = run.json()["run"]["info"]["run_id"]
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)

    callback = AIDPCallback()
    trainer = make_trainer(tmp_path, [callback], model=TinyRegressor(), eval_strategy="no")
    trainer.train()
    assert callback.run_id == run_id
    assert len(runs_in_experiment(tracking, experiment_name)) == 1
    assert steps_of(tracking, run_id, "loss") == list(range(5, 61, 5))
    assert get_run(tracking, run_id)["info"]["status"] == "FINISHED"


def test_callback_passed_as_a_class(tracking: str, tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, [AIDPCallback], model=TinyRegressor())
    trainer.train()
    callbacks = [cb for cb in trainer.callback_handler.callbacks if isinstance(cb, AIDPCallback)]
    assert len(callbacks) == 1
    run_id = callbacks[0].run_id
    assert run_id is not None
    assert get_run(tracking, run_id)["info"]["status"] == "FINISHED"
    assert_run_matches(tracking, run_id, [trainer.state.log_history])


class AddValues(TrainerCallback):  # type: ignore[misc]
    """Runs before AIDPCallback and adds values of other types to the shared logs dict."""

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
        import numpy as np

        if logs is not None and "loss" in logs:
            logs["note"] = "a string"
            logs["tensor_value"] = torch.tensor([2.5])
            logs["numpy_value"] = np.float32(0.5)
            logs["vector"] = torch.ones(3)


def test_tensors_numpy_converted_strings_dropped_with_one_warning(
    tracking: str, tmp_path: Path
) -> None:
    callback = AIDPCallback()
    trainer = make_trainer(
        tmp_path, [AddValues(), callback], model=TinyRegressor(), eval_strategy="no"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    run_id = callback.run_id
    assert run_id is not None
    ours = [w for w in caught if issubclass(w.category, AIDPMetricsWarning)]
    assert sum("'note'" in str(w.message) for w in ours) == 1
    assert sum("'vector'" in str(w.message) for w in ours) == 1
    assert points_of(get_metric_history(tracking, run_id, "tensor_value")) == [
        (step, 2.5) for step in range(5, 61, 5)
    ]
    assert points_of(get_metric_history(tracking, run_id, "numpy_value")) == [
        (step, 0.5) for step in range(5, 61, 5)
    ]
    keys = {m["key"] for m in get_run(tracking, run_id)["data"]["metrics"]}
    assert "note" not in keys
    assert "vector" not in keys


def test_evaluate_after_training_lands_in_the_same_run(tracking: str, tmp_path: Path) -> None:
    callback = AIDPCallback()
    trainer = make_trainer(tmp_path, [callback], model=TinyRegressor(), eval_strategy="no")
    trainer.train()
    run_id = callback.run_id
    assert run_id is not None
    metrics = trainer.evaluate()
    assert callback.run_id == run_id
    assert points_of(get_metric_history(tracking, run_id, "eval_loss")) == [
        (60, metrics["eval_loss"])
    ]
    assert get_run(tracking, run_id)["info"]["status"] == "FINISHED"
    assert len(runs_in_experiment(tracking, os.environ["AIDP_EXPERIMENT_NAME"])) == 1


class Boom(TrainerCallback):  # type: ignore[misc]
    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == 23:
            raise RuntimeError("boom at step 23")


def test_a_second_train_call_marks_a_crashed_run_failed(tracking: str, tmp_path: Path) -> None:
    """A notebook re-running train() after an exception: the first run becomes FAILED."""
    callback = AIDPCallback()
    trainer = make_trainer(tmp_path, [callback, Boom()], model=TinyRegressor())
    with pytest.raises(RuntimeError, match="boom"):
        trainer.train()
    crashed = callback.run_id
    assert crashed is not None
    trainer.callback_handler.pop_callback(Boom)
    trainer.train()
    assert callback.run_id != crashed
    assert get_run(tracking, crashed)["info"]["status"] == "FAILED"
    assert steps_of(tracking, crashed, "loss") == [5, 10, 15, 20]
    assert get_run(tracking, callback.run_id)["info"]["status"] == "FINISHED"


CRASHING_SCRIPT = """
import torch
from transformers import TrainerCallback

from aidp_metrics.integrations.transformers import AIDPCallback
from tests.integrations.test_transformers_support import make_trainer

torch.set_num_threads(1)


class Boom(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 23:
            raise RuntimeError("boom at step 23")


trainer = make_trainer({output_dir!r}, [AIDPCallback(), Boom()])
trainer.train()
"""


def script_env(url: str, experiment: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_TO_CLEAR}
    env.update(
        MLFLOW_TRACKING_URI=url,
        AIDP_EXPERIMENT_NAME=experiment,
        PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]),
        OMP_NUM_THREADS="1",
    )
    return env


def test_exception_in_training_marks_the_run_failed(tracking: str, tmp_path: Path) -> None:
    script = tmp_path / "crash.py"
    script.write_text(CRASHING_SCRIPT.format(output_dir=str(tmp_path / "out")))
    experiment = os.environ["AIDP_EXPERIMENT_NAME"]
    result = subprocess.run(
        [sys.executable, str(script)],
        env=script_env(tracking, experiment),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "boom at step 23" in result.stderr
    runs = runs_in_experiment(tracking, experiment)
    assert len(runs) == 1
    run_id = runs[0]["info"]["run_id"]
    assert get_run(tracking, run_id)["info"]["status"] == "FAILED"
    assert steps_of(tracking, run_id, "loss") == [5, 10, 15, 20]
    assert steps_of(tracking, run_id, "eval_loss") == [20]


def test_hyperparameter_search_one_run_per_trial(tracking: str, tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    from transformers import Trainer

    from .test_transformers_support import RandomTokens, training_args

    callback = AIDPCallback()
    trainer = Trainer(
        model_init=lambda *_: TinyRegressor(),
        args=training_args(tmp_path, eval_strategy="no", num_train_epochs=1, logging_steps=10),
        train_dataset=RandomTokens(80, seed=1),
        eval_dataset=RandomTokens(32, seed=2),
        callbacks=[callback],
    )
    best = trainer.hyperparameter_search(
        hp_space=lambda trial: {
            "learning_rate": trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True)
        },
        n_trials=2,
        direction="minimize",
        backend="optuna",
    )
    assert best is not None
    runs = runs_in_experiment(tracking, os.environ["AIDP_EXPERIMENT_NAME"])
    assert sorted(r["info"]["run_name"] for r in runs) == ["trial-0", "trial-1"]
    for run in runs:
        run_id = run["info"]["run_id"]
        assert run["info"]["status"] == "FINISHED"
        params = params_of(tracking, run_id)
        assert float(params["trial/learning_rate"]) == float(params["learning_rate"])
        assert steps_of(tracking, run_id, "loss") == [10, 20]
        # No evaluation during training: the search's evaluate() lands in the trial's run.
        assert steps_of(tracking, run_id, "eval_loss") == [20]


TORCHRUN_SCRIPT = """
import os
import torch
from aidp_metrics.integrations.transformers import AIDPCallback
from tests.integrations.test_transformers_support import TinyRegressor, make_trainer

torch.set_num_threads(1)
callback = AIDPCallback()
trainer = make_trainer(
    {output_dir!r}, [callback], model=TinyRegressor(), ddp_backend="gloo", n_train=160
)
trainer.train()
rank = int(os.environ["RANK"])
with open(os.path.join({output_dir!r}, f"run-id-{{rank}}.txt"), "w") as f:
    f.write(str(callback.run_id))
# A clean DDP shutdown: without it gloo's threads can abort the process at exit (SIGABRT).
if torch.distributed.is_initialized():
    torch.distributed.destroy_process_group()
"""


@pytest.mark.slow
def test_torchrun_two_processes_one_run(tracking: str, tmp_path: Path) -> None:
    from tests.support.mlflow_server import free_port

    out = tmp_path / "out"
    out.mkdir()
    script = tmp_path / "ddp.py"
    script.write_text(TORCHRUN_SCRIPT.format(output_dir=str(out)))
    experiment = os.environ["AIDP_EXPERIMENT_NAME"]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            str(script),
        ],
        env=script_env(tracking, experiment),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert (out / "run-id-1.txt").read_text() == "None"
    run_id = (out / "run-id-0.txt").read_text()
    runs = runs_in_experiment(tracking, experiment)
    assert [r["info"]["run_id"] for r in runs] == [run_id]
    assert runs[0]["info"]["status"] == "FINISHED"
    # 160 samples / (2 ranks x batch 4) = 20 steps per epoch, 2 epochs.
    assert steps_of(tracking, run_id, "loss") == list(range(5, 41, 5))
    assert steps_of(tracking, run_id, "eval_loss") == [20, 40]
    for metric in get_run(tracking, run_id)["data"]["metrics"]:
        steps = steps_of(tracking, run_id, metric["key"])
        assert len(steps) == len(set(steps)), metric["key"]


def test_with_a_bad_endpoint_training_goes_on_with_one_warning(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ENV_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "ftp://not-a-tracking-server.invalid")
    callback = AIDPCallback()
    trainer = make_trainer(tmp_path, [callback], model=TinyRegressor(), eval_strategy="no")
    with pytest.warns(AIDPMetricsWarning, match="could not start or attach a run"):
        trainer.train()
    assert trainer.state.global_step == 60
    assert callback.run_id is None

    strict = make_trainer(
        tmp_path, [AIDPCallback(strict=True)], model=TinyRegressor(), eval_strategy="no"
    )
    with pytest.raises(AIDPError):
        strict.train()
