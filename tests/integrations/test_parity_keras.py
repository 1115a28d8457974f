"""Parity with `mlflow.keras.MlflowCallback`: one `fit`, run once with it (inside
`mlflow.start_run`, which it needs) and once with `AIDPCallback` (inside `Run.from_env`, or
on its own), read back from the same server with MLflow's client and compared: experiment,
run name, params, tags, metric keys (the steps differ by design: docs/frameworks/keras.md)."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")
mlflow = pytest.importorskip("mlflow")
np = pytest.importorskip("numpy")

from mlflow.keras import MlflowCallback  # noqa: E402

from aidp_metrics import Run  # noqa: E402
from aidp_metrics.integrations.keras import AIDPCallback  # noqa: E402
from tests.integrations.parity import (  # noqa: E402
    GIT_DIFFERENCES,
    RunView,
    changed,
    differences,
    read_run,
    run_as_script,
)

pytestmark = pytest.mark.keras

EXPECTED = {
    # The learning rate as the float32 it is, not its float64 expansion.
    changed("param", "optimizer_learning_rate", "0.009999999776482582", "0.01"),
    # What fit ran with: MlflowCallback logs the optimizer only.
    "param epochs: only ours",
    "param steps_per_epoch: only ours",
    "param steps_per_execution: only ours",
    "param trainable_params: only ours",
    "param keras_backend: only ours",
    "param keras_version: only ours",
    # The epoch count and the learning rate, at each epoch end.
    "metric epoch: only ours",
    "metric learning_rate: only ours",
    # MlflowCallback logs fit's validation twice: val_* (epoch logs) and validation_* (its
    # on_test_end, at step 0); here once, as val_*.
    "metric validation_loss: only MLflow's",
    "metric validation_mae: only MLflow's",
} | GIT_DIFFERENCES


def _fit(callback: Any) -> None:
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=0.01, name="adam"),
        loss="mse",
        metrics=["mae"],
    )
    model.fit(x, y, epochs=2, batch_size=8, validation_split=0.25, callbacks=[callback], verbose=0)


def _keys_only(view: RunView) -> RunView:
    return dataclasses.replace(view, steps={key: [] for key in view.steps})


def test_same_fit_same_run(
    mlflow_server: Any, fresh_experiment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AIDP_RUN_ID", "MLFLOW_RUN_ID", "AIDP_EXPERIMENT_NAME", "AIDP_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", fresh_experiment)
    run_as_script(monkeypatch, __file__)  # a source file inside this git checkout
    with mlflow.start_run(run_name="parity") as active:
        _fit(MlflowCallback())
    theirs = read_run(mlflow_server.url, active.info.run_id)
    with Run.from_env(run_name="parity") as run:
        _fit(AIDPCallback(run=run))
    ours = read_run(mlflow_server.url, run.run_id)
    assert ours.params["optimizer_name"] == "adam"
    assert ours.steps["learning_rate"] == [3, 6]  # the optimizer step of each epoch end
    assert differences(_keys_only(theirs), _keys_only(ours)) == EXPECTED


def test_run_id_and_mlflow_arguments(mlflow_server: Any, fresh_experiment: str) -> None:
    with Run.start(experiment_name=fresh_experiment, endpoint=mlflow_server.url) as run:
        pass
    callback = AIDPCallback(False, 2, run_id=run.run_id, endpoint=mlflow_server.url)
    _fit(callback)
    assert callback.run_id == run.run_id
    ours = read_run(mlflow_server.url, run.run_id)
    assert ours.steps == {"loss": [2, 4, 6], "mae": [2, 4, 6]}  # no epoch-end points
    with pytest.raises(ValueError, match="log_every_epoch=False needs log_every_n_steps"):
        AIDPCallback(log_every_epoch=False)
