"""Parity with transformers' `MLflowCallback`: one `Trainer` script, run once with it and
once with `AIDPCallback` (only the class changes, same environment), read back from the
same server with MLflow's client and compared. docs/frameworks/transformers.md lists what
differs."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.transformers
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
mlflow = pytest.importorskip("mlflow")

from transformers.integrations import MLflowCallback  # noqa: E402

from aidp_metrics import AIDPMetricsWarning  # noqa: E402
from aidp_metrics.integrations.transformers import AIDPCallback  # noqa: E402
from tests.integrations.parity import (  # noqa: E402
    GIT_DIFFERENCES,
    differences,
    read_run,
    run_as_script,
)

from .test_transformers_support import make_trainer  # noqa: E402

torch.set_num_threads(1)

EXPECTED = GIT_DIFFERENCES


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch, mlflow_server: Any, fresh_experiment: str) -> str:
    """What a user of `MLflowCallback` sets, the same for both runs."""
    for name in ("AIDP_RUN_ID", "MLFLOW_RUN_ID", "AIDP_EXPERIMENT_NAME", "AIDP_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", fresh_experiment)
    monkeypatch.setenv("MLFLOW_TAGS", '{"team": "nlp", "release": "rc1"}')
    monkeypatch.setenv("MLFLOW_FLATTEN_PARAMS", "1")
    monkeypatch.setenv("MLFLOW_MAX_LOG_PARAMS", "60")
    run_as_script(monkeypatch, __file__)  # a source file inside this git checkout
    url: str = mlflow_server.url
    return url


def _train(callback: Any, output_dir: Path) -> None:
    trainer = make_trainer(
        output_dir,
        [callback],
        n_train=16,
        num_train_epochs=1,
        logging_steps=1,
        eval_steps=2,
        run_name="parity",
    )
    trainer.train()


def test_same_script_same_run(environment: str, tmp_path: Path) -> None:
    _train(MLflowCallback, tmp_path)
    finished = mlflow.last_active_run()
    assert finished is not None
    theirs = read_run(environment, finished.info.run_id, tag_keys=("team", "release"))
    ours_callback = AIDPCallback()
    _train(ours_callback, tmp_path)
    assert ours_callback.run_id is not None
    ours = read_run(environment, ours_callback.run_id, tag_keys=("team", "release"))
    assert len(ours.params) == 60  # MLFLOW_MAX_LOG_PARAMS
    assert ours.tags["team"] == "nlp"
    assert {"loss", "eval_loss", "train_runtime"} <= ours.steps.keys()
    assert differences(theirs, ours) == EXPECTED


def test_params_are_at_the_top_level_and_flattened_with_dots(
    environment: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_MAX_LOG_PARAMS")
    callback = AIDPCallback()
    _train(callback, tmp_path)
    assert callback.run_id is not None
    params = read_run(environment, callback.run_id).params
    assert params["hidden_size"] == "32"  # the model config, at the top level
    assert params["learning_rate"] == "0.001"
    assert params["id2label.0"] == "LABEL_0"  # MLFLOW_FLATTEN_PARAMS


def test_warns_once_when_mlflow_callback_is_in_the_trainer_too(
    environment: str, tmp_path: Path
) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _train(AIDPCallback(), tmp_path)  # report_to="none": alone
        trainer = make_trainer(tmp_path, [MLflowCallback, AIDPCallback()], n_train=8)
        trainer.train()
        trainer.train()
    twice = [
        w
        for w in caught
        if issubclass(w.category, AIDPMetricsWarning) and "MLflowCallback" in str(w.message)
    ]
    assert len(twice) == 1
