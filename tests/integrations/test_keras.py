"""Keras 3 `AIDPCallback`: real training on CPU against a real MLflow server, read back.

Backend-agnostic: the backend comes from KERAS_BACKEND (torch when unset);
test_keras_on_jax.py runs this same file with KERAS_BACKEND=jax in a child pytest.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
np = pytest.importorskip("numpy")

from aidp_metrics.integrations._convert import AIDPMetricsWarning  # noqa: E402
from tests.support.mlflow_server import (  # noqa: E402
    MLflowServer,
    artifact_bytes,
    artifact_files,
    free_port,
    get_metric_history,
    get_run,
)

pytestmark = pytest.mark.keras

# What CallbackList itself uses to decide on async dispatch.
is_default = keras.src.utils.is_default

BACKEND = keras.backend.backend()
if BACKEND == "torch":
    import torch

    torch.set_num_threads(1)

# 80 samples, validation_split=0.2, batch_size=8 -> 8 training steps per epoch.
SAMPLES, BATCH, STEPS_PER_EPOCH = 80, 8, 8


@pytest.fixture(autouse=True)
def _tracking_env(monkeypatch: pytest.MonkeyPatch, mlflow_server: MLflowServer) -> None:
    mlflow_server.start()  # no-op unless an earlier test stopped it
    for var in list(os.environ):
        if var.startswith(("AIDP_", "OCI_CLI_")) or var in ("MLFLOW_RUN_ID", "RANK"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)


def make_data(seed: int = 0) -> tuple[Any, Any]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(SAMPLES, 4)).astype("float32")
    y = (x @ np.array([1.0, -2.0, 0.5, 3.0], dtype="float32"))[:, None]
    return x, y


def make_model(steps_per_execution: int = 1) -> Any:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=0.01),
        loss="mse",
        metrics=["mae"],
        steps_per_execution=steps_per_execution,
    )
    return model


def aidp_callback(experiment: str, **kwargs: Any) -> Any:
    from aidp_metrics.integrations.keras import AIDPCallback

    return AIDPCallback(experiment_name=experiment, **kwargs)


def iterations(model: Any) -> int:
    return int(model.optimizer.iterations)


class EpochRecorder(keras.callbacks.Callback):  # type: ignore[misc]
    """The optimizer step at each epoch end (no batch hook: async dispatch stays on)."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[int] = []

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self.steps.append(iterations(self.model))


class BatchRecorder(EpochRecorder):
    """Also (step, logs) at every batch hook."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[tuple[int, dict[str, float]]] = []

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.batches.append((iterations(self.model), dict(logs)))


def history(url: str, run_id: str, key: str) -> list[tuple[int, float]]:
    points = get_metric_history(url, run_id, key)
    return sorted((int(p["step"]), float(p["value"])) for p in points)


BATCH_HOOKS = (
    "on_batch_begin",
    "on_batch_end",
    "on_train_batch_begin",
    "on_train_batch_end",
    "on_test_batch_begin",
    "on_test_batch_end",
    "on_predict_batch_begin",
    "on_predict_batch_end",
)


def test_epoch_only_leaves_batch_hooks_at_keras_defaults(fresh_experiment: str) -> None:
    cb = aidp_callback(fresh_experiment)
    for hook in BATCH_HOOKS:
        assert is_default(getattr(cb, hook)), hook
    assert not getattr(cb, "async_safe", False)
    callbacks = keras.callbacks.CallbackList([cb])
    if keras.src.backend.IS_THREAD_SAFE:
        assert callbacks._async_train
        assert callbacks._async_test
        assert callbacks._async_predict

    batched = aidp_callback(fresh_experiment, log_every_n_steps=5)
    assert not is_default(batched.on_train_batch_end)
    assert not keras.callbacks.CallbackList([batched])._async_train
    # Only the training batch hook: evaluation and prediction keep async dispatch.
    for hook in BATCH_HOOKS:
        if hook != "on_train_batch_end":
            assert is_default(getattr(batched, hook)), hook


def test_log_every_n_steps_is_validated() -> None:
    from aidp_metrics.integrations.keras import AIDPCallback

    for bad in (0, -1, 2.5, True, "5"):
        with pytest.raises(ValueError, match="log_every_n_steps"):
            AIDPCallback(log_every_n_steps=bad)


def test_epoch_metrics_params_evaluate_and_status(
    mlflow_server: MLflowServer, fresh_experiment: str
) -> None:
    x, y = make_data()
    model = make_model()
    cb, rec = aidp_callback(fresh_experiment), EpochRecorder()
    assert cb.run_id is None
    fit = model.fit(
        x, y, epochs=3, batch_size=BATCH, validation_split=0.2, callbacks=[cb, rec], verbose=0
    )
    run_id = cb.run_id
    assert run_id is not None
    url = mlflow_server.url

    expected_steps = [STEPS_PER_EPOCH * e for e in (1, 2, 3)]
    assert rec.steps == expected_steps
    for key in ("loss", "mae", "val_loss", "val_mae"):
        assert history(url, run_id, key) == list(
            zip(expected_steps, fit.history[key], strict=True)
        ), key
    assert history(url, run_id, "epoch") == [
        (s, float(e)) for s, e in zip(expected_steps, (1, 2, 3), strict=True)
    ]
    run = get_run(url, run_id)
    assert run["info"]["status"] == "FINISHED"

    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    n_trainable = 4 * 3 + 3 + 3 * 1 + 1
    assert params["epochs"] == "3"
    assert params["steps_per_epoch"] == str(STEPS_PER_EPOCH)
    assert params["optimizer_name"] == "adam"  # mlflow.keras.MlflowCallback's keys
    assert float(params["optimizer_learning_rate"]) == pytest.approx(0.01)
    assert params["trainable_params"] == str(n_trainable)
    assert params["keras_backend"] == BACKEND
    assert params["keras_version"] == keras.__version__

    # No eval_* from the validation that ran inside fit.
    assert history(url, run_id, "eval_loss") == []

    result = model.evaluate(x, y, batch_size=BATCH, callbacks=[cb], return_dict=True, verbose=0)
    assert cb.run_id == run_id
    assert history(url, run_id, "eval_loss") == [(expected_steps[-1], result["loss"])]
    assert history(url, run_id, "eval_mae") == [(expected_steps[-1], result["mae"])]
    # evaluate() did not add validation points either.
    assert len(history(url, run_id, "val_loss")) == 3
    assert get_run(url, run_id)["info"]["status"] == "FINISHED"


def test_batch_metrics_every_n_steps(mlflow_server: MLflowServer, fresh_experiment: str) -> None:
    x, y = make_data()
    model = make_model()
    cb, rec = aidp_callback(fresh_experiment, log_every_n_steps=5), BatchRecorder()
    fit = model.fit(
        x, y, epochs=5, batch_size=BATCH, validation_split=0.2, callbacks=[cb, rec], verbose=0
    )
    url, run_id = mlflow_server.url, cb.run_id
    total = 5 * STEPS_PER_EPOCH
    assert iterations(model) == total
    assert [s for s, _ in rec.batches] == list(range(1, total + 1))

    epoch_steps = rec.steps
    assert epoch_steps == [STEPS_PER_EPOCH * e for e in range(1, 6)]
    batch_points = {s: logs for s, logs in rec.batches if s % 5 == 0}
    expected: dict[int, float] = {s: logs["loss"] for s, logs in batch_points.items()}
    for step, value in zip(epoch_steps, fit.history["loss"], strict=True):
        if step in expected:  # the epoch's last running mean is the epoch value: logged once
            assert expected[step] == value
        expected[step] = value
    assert history(url, run_id, "loss") == sorted(expected.items())
    # val_* and epoch only at epoch ends.
    assert [s for s, _ in history(url, run_id, "val_loss")] == epoch_steps
    assert history(url, run_id, "epoch") == [(s, float(i + 1)) for i, s in enumerate(epoch_steps)]
    assert get_run(url, run_id)["info"]["status"] == "FINISHED"


@pytest.mark.skipif(BACKEND == "torch", reason="the torch backend needs steps_per_execution=1")
def test_steps_per_execution(mlflow_server: MLflowServer, fresh_experiment: str) -> None:
    x, y = make_data()
    model = make_model(steps_per_execution=4)
    cb, rec = aidp_callback(fresh_experiment, log_every_n_steps=5), BatchRecorder()
    fit = model.fit(
        x, y, epochs=3, batch_size=BATCH, validation_split=0.2, callbacks=[cb, rec], verbose=0
    )
    url, run_id = mlflow_server.url, cb.run_id
    # Batch hooks run every 4 steps: 4, 8, ..., 24. A point at the first hook in each new
    # window of 5 steps: 8, 12, 16, 20.
    assert [s for s, _ in rec.batches] == [4, 8, 12, 16, 20, 24]
    assert rec.steps == [8, 16, 24]
    expected = {s: logs["loss"] for s, logs in rec.batches if s in (8, 12, 16, 20)}
    expected.update(zip(rec.steps, fit.history["loss"], strict=True))
    assert history(url, run_id, "loss") == sorted(expected.items())
    assert [s for s, _ in history(url, run_id, "val_loss")] == [8, 16, 24]


def test_two_fits_one_run(mlflow_server: MLflowServer, fresh_experiment: str) -> None:
    x, y = make_data()
    model = make_model()
    cb = aidp_callback(fresh_experiment, log_every_n_steps=4)
    model.fit(x, y, epochs=2, batch_size=BATCH, validation_split=0.2, callbacks=[cb], verbose=0)
    run_id = cb.run_id
    assert get_run(mlflow_server.url, run_id)["info"]["status"] == "FINISHED"
    with warnings.catch_warnings():
        warnings.simplefilter("error", AIDPMetricsWarning)  # e.g. no "param changed"
        model.fit(x, y, epochs=3, batch_size=BATCH, validation_split=0.2, callbacks=[cb], verbose=0)
    assert cb.run_id == run_id
    steps = [s for s, _ in history(mlflow_server.url, run_id, "val_loss")]
    assert steps == [STEPS_PER_EPOCH * e for e in range(1, 6)]
    loss_steps = [s for s, _ in history(mlflow_server.url, run_id, "loss")]
    assert loss_steps == list(range(4, 5 * STEPS_PER_EPOCH + 1, 4))
    run = get_run(mlflow_server.url, run_id)
    assert run["info"]["status"] == "FINISHED"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["epochs"] == "2"  # params of the run's first fit


def test_evaluate_without_fit(mlflow_server: MLflowServer, fresh_experiment: str) -> None:
    x, y = make_data()
    model = make_model()
    cb = aidp_callback(fresh_experiment, log_every_n_steps=2)
    result = model.evaluate(x, y, batch_size=BATCH, callbacks=[cb], return_dict=True, verbose=0)
    run_id = cb.run_id
    assert history(mlflow_server.url, run_id, "eval_loss") == [(0, result["loss"])]
    assert history(mlflow_server.url, run_id, "loss") == []
    assert get_run(mlflow_server.url, run_id)["info"]["status"] == "FINISHED"


def test_evaluate_after_fit_raised_keeps_failure(
    mlflow_server: MLflowServer, fresh_experiment: str
) -> None:
    class Boom(keras.callbacks.Callback):  # type: ignore[misc]
        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            raise RuntimeError("boom")

    x, y = make_data()
    model = make_model()
    cb = aidp_callback(fresh_experiment)
    with pytest.raises(RuntimeError, match="boom"):
        model.fit(x, y, epochs=2, batch_size=BATCH, callbacks=[cb, Boom()], verbose=0)
    run = cb.run
    assert run.status_on_exit == "FAILED"  # what the exit hook will mark it
    result = model.evaluate(x, y, batch_size=BATCH, callbacks=[cb], return_dict=True, verbose=0)
    url, run_id = mlflow_server.url, cb.run_id
    assert run.flush(30)
    # The evaluation is logged (not mistaken for in-fit validation) but does not mark the
    # run FINISHED over the failed fit.
    assert history(url, run_id, "eval_loss") == [(SAMPLES // BATCH, result["loss"])]
    assert get_run(url, run_id)["info"]["status"] == "RUNNING"
    assert run.status_on_exit == "FAILED"
    # A later successful fit with the same callback finishes the run.
    model.fit(x, y, epochs=1, batch_size=BATCH, callbacks=[cb], verbose=0)
    assert cb.run_id == run_id
    assert get_run(url, run_id)["info"]["status"] == "FINISHED"
    assert [s for s, _ in history(url, run_id, "epoch")] == [10, 20]


def test_nan_loss_is_logged(mlflow_server: MLflowServer, fresh_experiment: str) -> None:
    x, y = make_data()
    x[11, 0] = np.nan  # second batch
    model = make_model()
    cb = aidp_callback(fresh_experiment, log_every_n_steps=1)
    model.fit(
        x,
        y,
        epochs=3,
        batch_size=BATCH,
        shuffle=False,
        callbacks=[cb, keras.callbacks.TerminateOnNaN()],
        verbose=0,
    )
    points = history(mlflow_server.url, cb.run_id, "loss")
    assert [s for s, _ in points] == [1, 2]
    assert not math.isnan(points[0][1])
    assert math.isnan(points[1][1])
    assert [s for s, _ in history(mlflow_server.url, cb.run_id, "epoch")] == [2]


def test_only_process_zero_logs(
    monkeypatch: pytest.MonkeyPatch, mlflow_server: MLflowServer, fresh_experiment: str
) -> None:
    from aidp_metrics.integrations import keras as integration

    monkeypatch.setattr(integration, "_process_index", lambda: 1)
    x, y = make_data()
    model = make_model()
    cb = aidp_callback(fresh_experiment, log_every_n_steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AIDPMetricsWarning)
        model.fit(x, y, epochs=1, batch_size=BATCH, callbacks=[cb], verbose=0)
        model.evaluate(x, y, batch_size=BATCH, callbacks=[cb], verbose=0)
    assert cb.run_id is None


@pytest.mark.skipif(BACKEND != "torch", reason="RANK is read when torch.distributed is not up")
def test_rank_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from aidp_metrics.integrations.keras import _process_index

    assert _process_index() == 0
    monkeypatch.setenv("RANK", "3")
    assert _process_index() == 3


def test_tf_config_chief_is_process_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    from aidp_metrics.integrations.keras import _tf_task_index

    cluster = {"chief": ["a:1"], "worker": ["b:1", "c:1"]}
    assert _tf_task_index("chief", 0, cluster) == 0
    assert _tf_task_index("worker", 0, cluster) == 1
    assert _tf_task_index("worker", 0, {"worker": ["b:1"]}) == 0
    assert _tf_task_index("evaluator", 0, cluster) != 0


@pytest.mark.parametrize("spool", ["off", "on_failure"])
def test_server_down_warns_and_training_continues(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fresh_experiment: str, spool: str
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AIDP_METRICS_DIR", str(tmp_path / "spool"))
    x, y = make_data()
    model = make_model()
    # end_timeout: how long end() may wait for an unreachable server at the end of fit
    # (the core's default is 60 s, also when the metrics are already safe in the spool).
    cb = aidp_callback(fresh_experiment, log_every_n_steps=2, spool=spool, end_timeout=1.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, epochs=2, batch_size=BATCH, validation_split=0.2, callbacks=[cb], verbose=0)
        model.evaluate(x, y, batch_size=BATCH, callbacks=[cb], verbose=0)
    assert iterations(model) == 2 * STEPS_PER_EPOCH
    messages = [str(w.message) for w in caught if issubclass(w.category, AIDPMetricsWarning)]
    assert messages
    # The run starts locally and keeps its points until the server answers (with a spool,
    # on disk for `sync`; without one, in memory, counted failed when the run ends).
    assert any("starts locally" in m for m in messages)
    assert cb.run is not None
    stats = cb.run.stats
    assert stats.delivered == 0
    if spool == "off":
        assert (stats.failed, stats.pending) == (stats.logged, 0)
    else:
        assert (stats.failed, stats.pending) == (0, stats.logged)


CRASH_SCRIPT = """
import os
os.environ.setdefault("KERAS_BACKEND", {backend!r})
import keras
import numpy as np
from aidp_metrics.integrations.keras import AIDPCallback

class Boom(keras.callbacks.Callback):
    def __init__(self, cb):
        super().__init__()
        self.cb = cb

    def on_train_begin(self, logs=None):
        print("RUN_ID", self.cb.run_id, flush=True)

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations) == 12:
            raise RuntimeError("boom in batch")

rng = np.random.default_rng(0)
x = rng.normal(size=(80, 4)).astype("float32")
y = x.sum(axis=1, keepdims=True)
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
model.compile(optimizer="adam", loss="mse")
cb = AIDPCallback(log_every_n_steps=4, experiment_name={experiment!r})
model.fit(x, y, epochs=3, batch_size=8, validation_split=0.2, callbacks=[cb, Boom(cb)], verbose=0)
print("NOT REACHED", flush=True)
"""


def test_exception_in_fit_leaves_run_failed(
    tmp_path: Path, mlflow_server: MLflowServer, fresh_experiment: str
) -> None:
    script = tmp_path / "crash.py"
    script.write_text(
        textwrap.dedent(CRASH_SCRIPT.format(backend=BACKEND, experiment=fresh_experiment))
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AIDP_", "OCI_CLI_")) and k not in ("MLFLOW_RUN_ID", "RANK")
    }
    env.update(MLFLOW_TRACKING_URI=mlflow_server.url, KERAS_BACKEND=BACKEND)
    proc = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=180
    )
    assert proc.returncode != 0
    assert "boom in batch" in proc.stderr
    assert "NOT REACHED" not in proc.stdout
    run_id = proc.stdout.split("RUN_ID", 1)[1].split()[0]
    run = get_run(mlflow_server.url, run_id)
    assert run["info"]["status"] == "FAILED"
    # Everything up to the crash was delivered: batch points at 4, 8 (also the epoch end)
    # and 12 (logged just before the exception), the first epoch's validation.
    assert [s for s, _ in history(mlflow_server.url, run_id, "loss")] == [4, 8, 12]
    assert [s for s, _ in history(mlflow_server.url, run_id, "val_loss")] == [8]


def test_a_misspelt_option_is_a_type_error_at_construction() -> None:
    """0.1 accepted it; the first log then turned logging off for the whole run."""
    from aidp_metrics.integrations.keras import AIDPCallback

    with pytest.raises(TypeError, match="'flush_intervall' \\(did you mean 'flush_interval'"):
        AIDPCallback(flush_intervall=0.5)


def test_a_run_you_started_is_logged_into_and_left_running(
    mlflow_server: MLflowServer, fresh_experiment: str
) -> None:
    """`run=`: fit and evaluate log into the user's run at their steps; their ends only
    flush it; the user ends it."""
    from aidp_metrics import Run
    from aidp_metrics.integrations.keras import AIDPCallback

    url = mlflow_server.url
    run = Run.start(experiment_name=fresh_experiment, run_name="mine")
    with pytest.raises(ValueError, match="experiment_name= cannot apply"):
        AIDPCallback(run=run, experiment_name="elsewhere")
    x, y = make_data()
    model = make_model()
    cb, rec = AIDPCallback(run=run), EpochRecorder()
    fit = model.fit(
        x, y, epochs=2, batch_size=BATCH, validation_split=0.2, callbacks=[cb, rec], verbose=0
    )
    assert cb.run is run
    assert cb.run_id == run.run_id
    assert not run.ended
    assert get_run(url, run.run_id)["info"]["status"] == "RUNNING"
    expected_steps = [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]
    assert rec.steps == expected_steps
    for key in ("loss", "mae", "val_loss", "val_mae"):
        assert history(url, run.run_id, key) == list(
            zip(expected_steps, fit.history[key], strict=True)
        ), key
    assert history(url, run.run_id, "epoch") == [(8, 1.0), (16, 2.0)]

    result = model.evaluate(x, y, batch_size=BATCH, callbacks=[cb], return_dict=True, verbose=0)
    assert get_run(url, run.run_id)["info"]["status"] == "RUNNING"
    assert history(url, run.run_id, "eval_loss") == [(16, result["loss"])]
    assert history(url, run.run_id, "eval_mae") == [(16, result["mae"])]
    stored = get_run(url, run.run_id)
    assert {m["key"] for m in stored["data"]["metrics"]} == {
        "loss",
        "mae",
        "val_loss",
        "val_mae",
        "epoch",
        "learning_rate",
        "eval_loss",
        "eval_mae",
    }
    assert stored["info"]["run_name"] == "mine"
    params = {p["key"]: p["value"] for p in stored["data"]["params"]}
    assert params["epochs"] == "2"
    assert {t["key"]: t["value"] for t in stored["data"]["tags"]}[
        "aidp_metrics.integration"
    ] == f"keras {keras.__version__}"
    assert run.status_on_exit == "FINISHED"  # the user's, never changed by the callback
    run.end()
    assert get_run(url, run.run_id)["info"]["status"] == "FINISHED"


def test_watch_parameters_logs_every_weight_norm_with_the_training_points(
    mlflow_server: MLflowServer, fresh_experiment: str
) -> None:
    model = make_model()
    callback = aidp_callback(fresh_experiment, log_every_n_steps=4, watch="parameters")
    x, y = make_data()
    model.fit(
        x, y, batch_size=BATCH, epochs=2, validation_split=0.2, callbacks=[callback], verbose=0
    )
    run_id = callback.run_id
    logged = {m["key"] for m in get_run(mlflow_server.url, run_id)["data"]["metrics"]}
    paths = [w.path for w in model.weights]
    assert {k for k in logged if k.startswith("weight_norm/")} == {
        f"weight_norm/{p}" for p in paths
    }
    steps = [s for s, _ in history(mlflow_server.url, run_id, "loss")]
    for weight in model.weights:
        points = history(mlflow_server.url, run_id, f"weight_norm/{weight.path}")
        assert [s for s, _ in points] == steps == [4, 8, 12, 16]
        final = float(np.linalg.norm(keras.ops.convert_to_numpy(weight)))
        assert points[-1][1] == pytest.approx(final, rel=1e-5)  # the last: after training


def test_watch_gradients_is_a_value_error_that_says_why() -> None:
    with pytest.raises(ValueError, match="no gradients"):
        aidp_callback("x", watch="gradients")


class FolderRecorder(keras.callbacks.Callback):  # type: ignore[misc]
    """After the ModelCheckpoints (later in the list): each file of `folder` as last written."""

    def __init__(self, folder: Any) -> None:
        super().__init__()
        self.folder = folder
        self.files: dict[str, bytes] = {}

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        for path in self.folder.iterdir():
            self.files[path.name] = path.read_bytes()


def test_log_model_uploads_each_model_checkpoint_file_as_written(
    mlflow_server: MLflowServer, fresh_experiment: str, tmp_path: Any
) -> None:
    x, y = make_data()
    model = make_model()
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "old.txt").write_bytes(b"there before fit: not uploaded")
    every = keras.callbacks.ModelCheckpoint(str(folder / "e{epoch}.keras"))
    best = keras.callbacks.ModelCheckpoint(
        str(folder / "best.weights.h5"), save_best_only=True, save_weights_only=True
    )
    recorder = FolderRecorder(folder)
    cb = aidp_callback(fresh_experiment, log_model=True, flush_interval=0.05)
    model.fit(
        x,
        y,
        epochs=3,
        batch_size=BATCH,
        validation_split=0.2,
        callbacks=[cb, every, best, recorder],
        verbose=0,
    )
    run_id = cb.run_id
    assert run_id is not None
    url = mlflow_server.url
    expected = {f"checkpoints/{name}": data for name, data in recorder.files.items()}
    del expected["checkpoints/old.txt"]
    assert set(expected) >= {f"checkpoints/e{e}.keras" for e in (1, 2, 3)}
    assert "checkpoints/best.weights.h5" in expected
    assert artifact_files(url, run_id) == {p: len(d) for p, d in expected.items()}
    for path, data in expected.items():
        assert artifact_bytes(url, run_id, path) == data, path


def test_log_model_without_a_checkpoint_uploads_the_final_model(
    mlflow_server: MLflowServer, fresh_experiment: str, tmp_path: Any
) -> None:
    x, y = make_data()
    model = make_model()
    cb = aidp_callback(fresh_experiment, log_model=True, flush_interval=0.05)
    model.fit(x, y, epochs=2, batch_size=BATCH, callbacks=[cb], verbose=0)
    run_id = cb.run_id
    assert run_id is not None
    url = mlflow_server.url
    assert list(artifact_files(url, run_id)) == ["model.keras"]
    local = tmp_path / "back.keras"
    local.write_bytes(artifact_bytes(url, run_id, "model.keras"))
    loaded = keras.models.load_model(local)
    for ours, theirs in zip(model.get_weights(), loaded.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_without_log_model_nothing_is_uploaded(
    mlflow_server: MLflowServer, fresh_experiment: str, tmp_path: Any
) -> None:
    x, y = make_data()
    model = make_model()
    cb = aidp_callback(fresh_experiment)
    checkpoint = keras.callbacks.ModelCheckpoint(str(tmp_path / "e{epoch}.keras"))
    model.fit(x, y, epochs=1, batch_size=BATCH, callbacks=[cb, checkpoint], verbose=0)
    assert cb.run_id is not None
    assert artifact_files(mlflow_server.url, cb.run_id) == {}


class EpochInLogs(keras.callbacks.Callback):  # type: ignore[misc]
    """A callback before ours that puts its own `epoch` (0-based) into the epoch logs."""

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        logs["epoch"] = float(epoch)


def test_the_epoch_point_is_ours_once_even_when_the_logs_hold_an_epoch(
    mlflow_server: MLflowServer, fresh_experiment: str
) -> None:
    x, y = make_data()
    model = make_model()
    cb = aidp_callback(fresh_experiment)
    steps = EpochRecorder()
    model.fit(x, y, epochs=2, batch_size=BATCH, callbacks=[EpochInLogs(), steps, cb], verbose=0)
    expected = [(s, float(i + 1)) for i, s in enumerate(steps.steps)]
    assert history(mlflow_server.url, cb.run_id, "epoch") == expected
