"""`AIDPCallback` with a real `Trainer` on CPU against a real MLflow server, read back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.transformers

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from transformers import TrainerCallback  # noqa: E402

from aidp_metrics import AIDPError, Endpoint, MetricsClient  # noqa: E402
from aidp_metrics._connection.retry import RetryPolicy  # noqa: E402
from aidp_metrics._durability.sync import sync_directory  # noqa: E402
from aidp_metrics._queue.journal import spool_root  # noqa: E402
from aidp_metrics.integrations._convert import AIDPMetricsWarning  # noqa: E402
from aidp_metrics.integrations.transformers import AIDPCallback  # noqa: E402
from tests.support.chaos_proxy import ChaosProxy  # noqa: E402
from tests.support.mlflow_server import (  # noqa: E402
    artifact_bytes,
    artifact_files,
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


@pytest.fixture
def proxied(
    monkeypatch: pytest.MonkeyPatch, chaos_proxy: ChaosProxy, fresh_experiment: str
) -> ChaosProxy:
    """As `tracking`, through a proxy that can go down; read back from the server itself."""
    for name in ENV_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", chaos_proxy.url)
    monkeypatch.setenv("AIDP_EXPERIMENT_NAME", fresh_experiment)
    return chaos_proxy


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
    assert params["hidden_size"] == "32"  # the model config, at the top level (MLflowCallback)
    assert params["num_hidden_layers"] == "2"
    tags = tags_of(tracking, run_id)
    assert tags["model_class"].endswith("BertForSequenceClassification")
    assert tags["aidp_metrics.integration"] == f"transformers {transformers.__version__}"


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


# -- resuming a job that went on past its checkpoint (issue 13) ------------------------------

# Log every step, checkpoint every 12; the first job stops at 24, the second resumes from 12.
RESUME = {
    "max_steps": 36,
    "logging_steps": 1,
    "save_strategy": "steps",
    "save_steps": 12,
    "eval_strategy": "no",
}
PER_STEP_KEYS = ("loss", "grad_norm", "learning_rate", "epoch")


def first_job(output_dir: Path, callback: Any, **overrides: Any) -> Any:
    """Train to step 24 (checkpoints 12 and 24) with `callback`; return the trainer."""
    trainer = make_trainer(
        output_dir, [callback, StopAt(24)], model=TinyRegressor(), **{**RESUME, **overrides}
    )
    trainer.train()
    assert trainer.state.global_step == 24
    return trainer


def resumed_job(output_dir: Path, callback: Any, **overrides: Any) -> Any:
    """A new Trainer resumed from checkpoint-12, trained to step 36."""
    trainer = make_trainer(output_dir, [callback], model=TinyRegressor(), **{**RESUME, **overrides})
    trainer.train(resume_from_checkpoint=str(output_dir / "checkpoint-12"))
    assert trainer.state.global_step == 36
    return trainer


def after_resume(
    first: list[dict[str, Any]], resumed: list[dict[str, Any]]
) -> tuple[dict[str, list[tuple[int, float]]], int]:
    """What the run must hold after the resume -- the first job's points, then the resumed
    job's above the last step the first job logged for their key -- and how many of the
    resumed job's points that leaves out (not sent again)."""
    expected = {key: set(points) for key, points in expected_points(first).items()}
    # The resumed history starts with the checkpoint's (steps <= 12): not logged again.
    own = [entry for entry in resumed if int(entry["step"]) > 12]
    skipped = 0
    for key, points in expected_points(own).items():
        floor = max((step for step, _ in expected.get(key, ())), default=None)
        for step, value in points:
            if floor is not None and step <= floor:
                skipped += 1
            else:
                expected.setdefault(key, set()).add((step, value))
    return {key: sorted(points) for key, points in expected.items()}, skipped


def assert_holds_exactly(
    url: str, run_id: str, expected: dict[str, list[tuple[int, float]]]
) -> None:
    logged_keys = {m["key"] for m in get_run(url, run_id)["data"].get("metrics", [])}
    assert logged_keys == set(expected)
    for key, points in expected.items():
        assert points_of(get_metric_history(url, run_id, key)) == points, key
    for key in PER_STEP_KEYS:  # every step once, in the one run
        assert steps_of(url, run_id, key) == list(range(1, 37)), key


def saved_run_id(checkpoint: Path) -> str:
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    run_id: str = state["stateful_callbacks"]["AIDPCallback"]["attributes"]["_resume_run_id"]
    return run_id


def test_resume_never_writes_a_step_twice(tracking: str, tmp_path: Path) -> None:
    """The first job logged steps 1-24; resuming from checkpoint-12 logs 13-36 again: the
    run keeps the first job's 13-24 and gets 25-36, each step once."""
    first = AIDPCallback()
    trainer = first_job(tmp_path, first)
    run_id = first.run_id
    assert run_id is not None
    assert saved_run_id(tmp_path / "checkpoint-12") == run_id

    second = AIDPCallback()
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        resumed = resumed_job(tmp_path, second)
    assert second.run_id == run_id
    assert len(runs_in_experiment(tracking, os.environ["AIDP_EXPERIMENT_NAME"])) == 1
    assert get_run(tracking, run_id)["info"]["status"] == "FINISHED"
    expected, skipped = after_resume(trainer.state.log_history, resumed.state.log_history)
    assert skipped == 12 * len(PER_STEP_KEYS)  # steps 13-24 of each per-step key
    assert_holds_exactly(tracking, run_id, expected)
    assert steps_of(tracking, run_id, "train_runtime") == [24, 36]
    assert second.run is not None
    assert second.run.stats.skipped == skipped
    assert second.run.stats.delivered == second.run.stats.logged - skipped
    # One message says how many points were not sent again, and why.
    lines = [str(w.message) for w in said if "metric(s) not sent again" in str(w.message)]
    assert len(lines) == 1
    assert all(w.category is AIDPMetricsWarning for w in said if str(w.message) in lines)
    assert f"{skipped} metric(s) not sent again" in lines[0]
    assert f"run {run_id} already held their steps" in lines[0]


@pytest.mark.parametrize("resumed_on", ["same-machine", "other-machine"])
def test_resume_from_a_local_id_after_the_first_job_was_synced(
    proxied: ChaosProxy,
    mlflow_server: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    resumed_on: str,
) -> None:
    """The server was down for the whole first job: its checkpoints hold the run's local id.
    `aidp-metrics sync` creates the run; the resumed job joins it, without repeating a step:
    found through the spool's id map, or on another machine (another spool directory)
    through the run's local-id tag on the server."""
    url = mlflow_server.url
    proxied.down()
    first = AIDPCallback()
    trainer = first_job(tmp_path, first)
    local_id = first.run_id
    assert local_id is not None
    assert local_id.startswith("local-")
    assert saved_run_id(tmp_path / "checkpoint-12") == local_id
    assert runs_in_experiment(url, os.environ["AIDP_EXPERIMENT_NAME"]) == []

    proxied.up()
    with MetricsClient(proxied.url) as client:
        (synced,) = sync_directory(spool_root(), client)
    assert synced.error is None
    assert synced.local_id == local_id
    run_id = synced.run_id
    assert run_id is not None
    if resumed_on == "other-machine":
        monkeypatch.setenv("AIDP_METRICS_DIR", str(tmp_path / "other-spool"))

    second = AIDPCallback()
    resumed = resumed_job(tmp_path, second)
    assert second.run_id == run_id
    runs = runs_in_experiment(url, os.environ["AIDP_EXPERIMENT_NAME"])
    assert [r["info"]["run_id"] for r in runs] == [run_id]
    assert runs[0]["info"]["status"] == "FINISHED"
    expected, skipped = after_resume(trainer.state.log_history, resumed.state.log_history)
    assert_holds_exactly(url, run_id, expected)
    assert second.run is not None
    assert second.run.stats.skipped == skipped > 0


def test_resume_from_a_local_id_before_any_sync_joins_one_run_at_sync(
    proxied: ChaosProxy, mlflow_server: Any, tmp_path: Path
) -> None:
    """No sync between the jobs (#19): nobody knows the first job's local id, but the server
    answers, so the resumed job creates the run now under that local id and logs into it
    live; one sync of the first job's journal then adds the first part to that same run,
    each step once."""
    url = mlflow_server.url
    experiment = os.environ["AIDP_EXPERIMENT_NAME"]
    proxied.down()
    first = AIDPCallback()
    trainer = first_job(tmp_path, first)
    local_id = first.run_id
    assert local_id is not None
    assert local_id.startswith("local-")

    proxied.up()  # the server answers, but has never heard of the run
    second = AIDPCallback()
    resumed = resumed_job(tmp_path, second)
    run_id = second.run_id
    assert run_id is not None
    assert not run_id.startswith("local-")  # created at once, not waiting for a sync
    assert second.run is not None
    assert second.run.stats.pending == 0  # live: nothing waits in the spool
    assert [r["info"]["run_id"] for r in runs_in_experiment(url, experiment)] == [run_id]

    with MetricsClient(proxied.url) as client:
        results = sync_directory(spool_root(), client)
    assert [(r.local_id, r.run_id, r.error) for r in results] == [(local_id, run_id, None)]
    runs = runs_in_experiment(url, experiment)
    assert [r["info"]["run_id"] for r in runs] == [run_id]
    assert runs[0]["info"]["status"] == "FINISHED"
    # The resumed job logged steps 13-24 again, live: its points are the ones the run keeps,
    # and the sync adds the first job's points below the first step the resumed job logged.
    first = expected_points(trainer.state.log_history)
    again = expected_points([e for e in resumed.state.log_history if int(e["step"]) > 12])
    expected: dict[str, list[tuple[int, float]]] = {}
    for key in set(first) | set(again):
        start = min((step for step, _ in again.get(key, [])), default=None)
        kept = {p for p in first.get(key, []) if start is None or p[0] < start}
        expected[key] = sorted(kept | set(again.get(key, [])))
    assert_holds_exactly(url, run_id, expected)


def test_restored_callback_keeps_its_explicit_endpoint(
    tracking: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`restore_callback_states_from_checkpoint`: the Trainer rebuilds the callback from the
    checkpoint; with the endpoint given as an argument (nothing in the environment) the
    rebuilt one must still send to it."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    restore = {"restore_callback_states_from_checkpoint": True}
    first = AIDPCallback(endpoint=tracking)
    trainer = first_job(tmp_path, first, **restore)
    run_id = first.run_id
    assert run_id is not None
    assert not run_id.startswith("local-")

    resumed = resumed_job(tmp_path, AIDPCallback(), **restore)
    (rebuilt,) = [c for c in resumed.callback_handler.callbacks if isinstance(c, AIDPCallback)]
    assert rebuilt.run_id == run_id
    assert rebuilt.run is not None
    assert not rebuilt.run.offline
    assert len(runs_in_experiment(tracking, os.environ["AIDP_EXPERIMENT_NAME"])) == 1
    assert get_run(tracking, run_id)["info"]["status"] == "FINISHED"
    expected, _ = after_resume(trainer.state.log_history, resumed.state.log_history)
    assert_holds_exactly(tracking, run_id, expected)


def settings(callback: AIDPCallback) -> dict[str, Any]:
    """Everything a callback was built with that a checkpoint can carry."""
    return {
        "experiment_name": callback.experiment_name,
        "run_name": callback.run_name,
        "run_id": callback._explicit_run_id,
        "tags": callback.tags,
        "log_params": callback.log_params,
        "strict": callback.strict,
        "endpoint": callback._handle.endpoint,
        "run_options": callback._handle.options,
    }


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://127.0.0.1:5000",
        Endpoint.mlflow("http://127.0.0.1:5000"),
        Endpoint.aidp("ocid1.instance.x", "ws-1", region="us-ashburn-1", user_principal="me"),
    ],
    ids=["url", "mlflow", "aidp"],
)
def test_state_rebuilds_every_argument(endpoint: Any, tmp_path: Path) -> None:
    original = AIDPCallback(
        experiment_name="exp",
        run_name="name",
        run_id="0123abcd",
        tags={"team": "ml"},
        log_params=False,
        endpoint=endpoint,
        strict=True,
        transport="metric",
        flush_interval=0.5,
        max_queue=1000,
        policy="block",
        end_timeout=5.0,
        retry=RetryPolicy(max_attempts=3, retry_statuses=frozenset({503})),
        spool="always",
        spool_dir=str(tmp_path),
        system_metrics=False,
    )
    stored = json.loads(json.dumps(original.state()))  # what trainer_state.json holds
    rebuilt = AIDPCallback(**stored["args"])
    for name, value in stored["attributes"].items():  # as the Trainer restores it
        setattr(rebuilt, name, value)
    assert settings(rebuilt) == settings(original)
    assert rebuilt._resume_run_id == "0123abcd"


def test_state_is_json_and_holds_no_credential(tmp_path: Path) -> None:
    password = "s3cr3t-Pa55"
    with MetricsClient(f"http://alice:{password}@127.0.0.1:5000") as client:
        callbacks = [
            AIDPCallback(endpoint=f"http://alice:{password}@127.0.0.1:5000", spool_dir=tmp_path),
            AIDPCallback(endpoint=Endpoint.mlflow(f"http://alice:{password}@127.0.0.1:5000")),
            AIDPCallback(client=client),  # a live client is not stored: its endpoint is
        ]
        for callback in callbacks:
            dumped = json.dumps(callback.state())
            assert password not in dumped
            assert "alice" not in dumped
            rebuilt = AIDPCallback(**json.loads(dumped)["args"])
            endpoint = rebuilt._handle.endpoint
            url = endpoint if isinstance(endpoint, str) else endpoint.base_url  # type: ignore[union-attr]
            assert url == "http://127.0.0.1:5000"
    assert json.loads(json.dumps(callbacks[0].state()))["args"]["spool_dir"] == str(tmp_path)


def test_a_misspelt_option_is_a_type_error_at_construction() -> None:
    with pytest.raises(TypeError, match=r"'flush_intervall' \(did you mean 'flush_interval'\?\)"):
        AIDPCallback(flush_intervall=0.5)


def test_run_name_wins_over_a_run_name_tag(tracking: str, tmp_path: Path) -> None:
    """MLflow refuses a run whose `run_name` and `mlflow.runName` tag differ: the run is
    created with `run_name`, and every point is delivered."""
    callback = AIDPCallback(run_name="chosen", tags={"mlflow.runName": "other", "team": "ml"})
    trainer = make_trainer(tmp_path, [callback], model=TinyRegressor(), eval_strategy="no")
    trainer.train()
    run_id = callback.run_id
    assert run_id is not None
    assert not run_id.startswith("local-")
    run = get_run(tracking, run_id)
    assert run["info"]["run_name"] == "chosen"
    assert tags_of(tracking, run_id)["mlflow.runName"] == "chosen"
    assert tags_of(tracking, run_id)["team"] == "ml"
    assert_run_matches(tracking, run_id, [trainer.state.log_history])
    assert callback.run is not None
    assert callback.run.stats.delivered == callback.run.stats.logged > 0


def test_epoch_in_the_training_and_eval_log_of_a_step_is_sent_once(
    proxied: ChaosProxy, tmp_path: Path
) -> None:
    """Counted as sent (at the proxy), not as stored: the server would also keep one copy
    of a repeated point with the same timestamp."""
    callback = AIDPCallback()
    trainer = make_trainer(tmp_path, [callback], model=TinyRegressor())
    trainer.train()
    sent: Counter[tuple[str, int]] = Counter()
    for exchange in proxied.forwarded("runs/log-batch"):
        for metric in json.loads(exchange.body).get("metrics", []):
            sent[(metric["key"], int(metric["step"]))] += 1
    # Steps 20, 40 and 60 log `epoch` in the training log and the eval log (and 60 in the
    # summary too): each (key, step) goes out once.
    assert {step for (key, step) in sent if key == "epoch"} == set(range(5, 61, 5))
    assert set(sent.values()) == {1}
    assert sum(sent.values()) == callback.run.stats.logged  # type: ignore[union-attr]


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


def test_keys_a_callback_before_ours_pops_are_still_logged(tracking: str, tmp_path: Path) -> None:
    """`PrinterCallback` pops `total_flos` from the logs dict it shares with the callbacks
    after it (a callback restored from a checkpoint is always after it)."""
    from transformers import PrinterCallback

    callback = AIDPCallback()
    trainer = make_trainer(tmp_path, [], model=TinyRegressor(), eval_strategy="no")
    trainer.add_callback(callback)  # after the PrinterCallback that disable_tqdm adds
    names = [type(c).__name__ for c in trainer.callback_handler.callbacks]
    assert names.index(PrinterCallback.__name__) < names.index("AIDPCallback")
    trainer.train()
    run_id = callback.run_id
    assert run_id is not None
    assert points_of(get_metric_history(tracking, run_id, "total_flos")) == [(60, 0.0)]
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
# A clean DDP shutdown: every rank meets (rank 0 may still be ending its run) before the
# group is torn down; a rank that destroys it while another is mid-collective, or exits
# with gloo's threads alive, aborts (SIGABRT, "terminate called without an active exception").
if torch.distributed.is_initialized():
    torch.distributed.barrier()
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
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    assert trainer.state.global_step == 60
    ours = [str(w.message) for w in caught if issubclass(w.category, AIDPMetricsWarning)]
    # One warning; the end of the run then says where the points are kept.
    during = [message for message in ours if "are saved in" not in message]
    assert len(during) == 1, ours
    assert "could not start or attach the run" in during[0]
    assert "not-a-tracking-server" in during[0]
    assert len(ours) <= 2, ours
    # No point is lost: the run is offline, every point in the spool for `aidp-metrics sync`.
    run = callback.run
    assert run is not None
    assert run.offline
    assert callback.run_id == run.local_id
    assert run.stats.logged == len(
        [v for points in expected_points(trainer.state.log_history).values() for v in points]
    )
    assert run.stats.pending == run.stats.logged

    strict = make_trainer(
        tmp_path, [AIDPCallback(strict=True)], model=TinyRegressor(), eval_strategy="no"
    )
    with pytest.raises(AIDPError):
        strict.train()


def test_a_run_you_started_is_logged_into_and_left_running(tracking: str, tmp_path: Path) -> None:
    """`run=`: every log_history point, the params and tags go into the user's run, which
    on_train_end only flushes -- also after a train() that raised; the user ends it."""
    from aidp_metrics import Run

    experiment = os.environ["AIDP_EXPERIMENT_NAME"]
    run = Run.start(experiment_name=experiment, run_name="mine")
    with pytest.raises(ValueError, match="run_id= cannot apply"):
        AIDPCallback(run=run, run_id=run.run_id)
    callback = AIDPCallback(run=run)
    trainer = make_trainer(tmp_path, [callback], model=TinyRegressor())
    trainer.train()
    assert callback.run is run
    assert callback.run_id == run.run_id
    assert get_run(tracking, run.run_id)["info"]["status"] == "RUNNING"
    metrics = trainer.evaluate()
    assert get_run(tracking, run.run_id)["info"]["status"] == "RUNNING"
    assert run.flush(30)
    assert_run_matches(tracking, run.run_id, [trainer.state.log_history])
    assert points_of(get_metric_history(tracking, run.run_id, "eval_loss"))[-1] == (
        60,
        metrics["eval_loss"],
    )
    assert get_run(tracking, run.run_id)["info"]["run_name"] == "mine"
    params = params_of(tracking, run.run_id)
    assert (params["learning_rate"], params["logging_steps"]) == ("0.001", "5")
    tags = tags_of(tracking, run.run_id)
    assert tags["aidp_metrics.integration"].startswith("transformers ")
    assert tags["model_class"].endswith("TinyRegressor")
    assert run.status_on_exit == "FINISHED"  # the user's, never changed by the callback
    run.end()
    assert get_run(tracking, run.run_id)["info"]["status"] == "FINISHED"

    # A train() that raised, then another: still the user's run, still RUNNING.
    second = Run.start(experiment_name=experiment, run_name="second")
    callback = AIDPCallback(run=second)
    trainer = make_trainer(tmp_path, [callback, Boom()], model=TinyRegressor())
    with pytest.raises(RuntimeError, match="boom"):
        trainer.train()
    trainer.callback_handler.pop_callback(Boom)
    trainer.train()
    assert callback.run is second
    assert get_run(tracking, second.run_id)["info"]["status"] == "RUNNING"
    assert steps_of(tracking, second.run_id, "loss") == sorted([5, 10, 15, 20, *range(5, 61, 5)])
    second.end()
    assert get_run(tracking, second.run_id)["info"]["status"] == "FINISHED"
    assert len(runs_in_experiment(tracking, experiment)) == 2


def test_a_callback_rebuilt_from_a_checkpoint_leaves_the_given_run_open() -> None:
    """The Trainer rebuilds a callback from JSON: it cannot carry the `Run`, so it logs
    into the same run by id, and like the original never ends it."""
    from aidp_metrics import Run

    run = Run.start(offline=True, spool="off")
    try:
        stored = json.loads(json.dumps(AIDPCallback(run=run).state()))
        assert stored["args"]["run_id"] is None
        rebuilt = AIDPCallback(**stored["args"])
        for name, value in stored["attributes"].items():  # as the Trainer restores it
            setattr(rebuilt, name, value)
        assert rebuilt._handle.user_owned
        assert rebuilt._handle.user_run_id == run.run_id
        assert rebuilt._resume_run_id == run.run_id
        plain = json.loads(json.dumps(AIDPCallback().state()))
        assert "_user_run_id" not in plain["attributes"]
    finally:
        run.end()


# -- watch: per-parameter norms -----------------------------------------------------------


@pytest.mark.parametrize(
    ("accumulation", "bf16"), [(1, False), (2, True)], ids=["plain", "accumulation-bf16"]
)
def test_watch_total_equals_the_trainers_own_grad_norm(
    tracking: str, tmp_path: Path, accumulation: int, bf16: bool
) -> None:
    """No clipping happens (max_grad_norm far above any norm): the gradients the optimizer
    applies are the ones the Trainer measured, so `grad_norm/total` is its `grad_norm`."""
    from torch.optim import optimizer as optimizer_module

    hooks = len(optimizer_module._global_optimizer_pre_hooks)
    callback = AIDPCallback(watch="gradients", watch_log_freq=2)
    trainer = make_trainer(
        tmp_path,
        [callback],
        model=TinyRegressor(),
        n_train=48,
        max_grad_norm=1e9,
        gradient_accumulation_steps=accumulation,
        bf16=bf16,
        logging_steps=1,
        eval_strategy="no",
    )
    trainer.train()

    run_id = callback.run_id
    assert run_id is not None
    updates = trainer.state.global_step
    names = [name for name, _ in trainer.model.named_parameters()]
    logged = {m["key"] for m in get_run(tracking, run_id)["data"]["metrics"]}
    assert {f"grad_norm/{n}" for n in names} | {"grad_norm/total"} <= logged
    for name in names:
        assert steps_of(tracking, run_id, f"grad_norm/{name}") == list(range(2, updates + 1, 2))
    trainers = {
        int(e["step"]): e["grad_norm"] for e in trainer.state.log_history if "grad_norm" in e
    }
    ours = {
        int(m["step"]): float(m["value"])
        for m in get_metric_history(tracking, run_id, "grad_norm/total")
    }
    assert ours == {step: pytest.approx(trainers[step], rel=1e-5) for step in ours}
    assert len(optimizer_module._global_optimizer_pre_hooks) == hooks  # gone at on_train_end


def test_watch_from_the_environment_logs_weight_norms(
    tracking: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIDP_METRICS_WATCH", "parameters")
    callback = AIDPCallback()
    trainer = make_trainer(
        tmp_path,
        [callback],
        model=TinyRegressor(),
        n_train=24,
        logging_steps=3,
        eval_strategy="no",
    )
    trainer.train()
    run_id = callback.run_id
    assert run_id is not None
    for name, _ in trainer.model.named_parameters():
        assert steps_of(tracking, run_id, f"weight_norm/{name}") == [3, 6, 9, 12], name
    assert steps_of(tracking, run_id, "loss") == [3, 6, 9, 12]


def test_watch_with_a_bad_value_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="log must be one of"):
        AIDPCallback(watch="histograms")


class RecordCheckpoints(TrainerCallback):  # type: ignore[misc]
    """What each `checkpoint-N/` held when `on_save` announced it."""

    def __init__(self) -> None:
        self.saved: dict[str, bytes] = {}

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        name = f"checkpoint-{state.global_step}"
        folder = Path(args.output_dir) / name
        for path in folder.rglob("*"):
            if path.is_file():
                self.saved[f"{name}/{path.relative_to(folder).as_posix()}"] = path.read_bytes()


@pytest.mark.parametrize("how", ["option", "environment"])
def test_log_artifacts_uploads_every_checkpoint_before_rotation_deletes_it(
    tracking: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    if how == "environment":
        monkeypatch.setenv("HF_MLFLOW_LOG_ARTIFACTS", "TRUE")
        callback = AIDPCallback()
    else:
        monkeypatch.delenv("HF_MLFLOW_LOG_ARTIFACTS", raising=False)
        callback = AIDPCallback(log_artifacts=True)
    assert callback.log_artifacts is True
    recorder = RecordCheckpoints()
    trainer = make_trainer(
        tmp_path, [callback, recorder], save_strategy="steps", save_steps=20, save_total_limit=1
    )
    trainer.train()
    run_id = callback.run_id
    assert run_id is not None
    checkpoints = {path.split("/")[0] for path in recorder.saved}
    assert checkpoints == {"checkpoint-20", "checkpoint-40", "checkpoint-60"}
    # rotation kept only the last on disk; every one arrived
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-60"]
    assert artifact_files(tracking, run_id) == {p: len(b) for p, b in recorder.saved.items()}
    for path, data in recorder.saved.items():
        assert artifact_bytes(tracking, run_id, path) == data, path


def test_without_log_artifacts_no_checkpoint_is_uploaded(
    tracking: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_MLFLOW_LOG_ARTIFACTS", "TRUE")
    callback = AIDPCallback(log_artifacts=False)  # the option wins over the environment
    trainer = make_trainer(tmp_path, [callback], save_strategy="steps", save_steps=30)
    trainer.train()
    assert callback.run_id is not None
    assert artifact_files(tracking, callback.run_id) == {}
