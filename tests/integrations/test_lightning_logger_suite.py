"""Lightning's tests/tests_pytorch/loggers/test_logger.py (2.6.x) with AIDPLogger.

Lightning runs these tests with `CustomLogger`, a logger that keeps what it was given in
attributes (`metrics_logged`, `hparams_logged`, `finalized_status`, ...), or with a
`TensorBoardLogger` whose `log_hyperparams` is mocked. Here `AIDPLogger` takes their place
and every assertion is on what a real MLflow server holds afterwards: metric histories,
params, tags and the run status. Each test keeps Lightning's name. The module runs in the
`lightning.pytorch` namespace here and in the `pytorch_lightning` namespace through
test_lightning_suites_in_pytorch_lightning.py.

Not ported:

* `test_dummylogger_arbitrary_method_calls`: checks that Lightning's own `DummyLogger` has
  any attribute (`log_text`); nothing of AIDPLogger is involved. (The `DummyLogger` that
  `fast_dev_run` puts in AIDPLogger's place is checked in `test_dummylogger_noop_method_calls`.)
* `test_scan_checkpoints`: checks Lightning's `_scan_checkpoints`, which loggers that upload
  checkpoint files use (`MLFlowLogger(log_model=...)`); AIDPLogger has its own copy, whose
  uploads test_lightning.py compares with `MLFlowLogger`'s (`test_log_model_...`).
"""

from __future__ import annotations

import pickle
from argparse import Namespace
from copy import deepcopy
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.integrations import lightning_namespace as ns
from tests.integrations.lightning_namespace import (
    AIDPLogger,
    BoringDataModule,
    BoringModel,
    CSVLogger,
    DummyExperiment,
    DummyLogger,
    rank_zero_only,
    torch,
)
from tests.support.mlflow_server import get_metric_history, get_run, runs_in_experiment

pytestmark = pytest.mark.lightning
env = ns.env


def _history(url: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(int(m["step"]), float(m["value"])) for m in get_metric_history(url, run_id, key)]


def _params(url: str, run_id: str) -> dict[str, str]:
    return {p["key"]: p["value"] for p in get_run(url, run_id)["data"].get("params", [])}


def _tags(url: str, run_id: str) -> dict[str, str]:
    return {t["key"]: t["value"] for t in get_run(url, run_id)["data"].get("tags", [])}


def _status(url: str, run_id: str) -> str:
    status: str = get_run(url, run_id)["info"]["status"]
    return status


class _TrainLossModel(BoringModel):  # type: ignore[misc,valid-type]
    def training_step(self, batch: Any, batch_idx: int) -> Any:
        loss = self.step(batch)
        self.log("train_loss", loss)
        return {"loss": loss}


def test_custom_logger(tmp_path: Path, env: str) -> None:
    logger = AIDPLogger()
    trainer = ns.trainer(max_steps=2, log_every_n_steps=1, logger=logger, default_root_dir=tmp_path)
    trainer.fit(_TrainLossModel())
    assert trainer.state.finished, f"Training failed with {trainer.state}"
    run_id = logger.version
    # metrics_logged != {}
    assert [step for step, _ in _history(env, run_id, "train_loss")] == [0, 1]
    # after_save_checkpoint_called
    best = trainer.checkpoint_callback.best_model_path
    assert Path(best).name == "epoch=0-step=2.ckpt"
    assert _tags(env, run_id)["checkpoint.best_model_path"] == best
    # finalized_status == "success"
    assert _status(env, run_id) == "FINISHED"


def test_multiple_loggers(tmp_path: Path, env: str) -> None:
    """Two AIDPLoggers (and a CSVLogger as the reference for the values) in one Trainer."""
    logger1, logger2 = AIDPLogger(), AIDPLogger()
    csv_logger = CSVLogger(str(tmp_path))
    trainer = ns.trainer(
        max_steps=2,
        log_every_n_steps=1,
        logger=[logger1, logger2, csv_logger],
        default_root_dir=tmp_path,
    )
    trainer.fit(_TrainLossModel())
    assert trainer.state.finished, f"Training failed with {trainer.state}"
    assert trainer.loggers == [logger1, logger2, csv_logger]
    assert trainer.logger is logger1

    csv_rows = (Path(csv_logger.log_dir) / "metrics.csv").read_text().splitlines()
    header = csv_rows[0].split(",")
    expected = [
        (int(row["step"]), float(row["train_loss"]))
        for row in (dict(zip(header, line.split(","), strict=True)) for line in csv_rows[1:])
        if row.get("train_loss")
    ]
    assert [step for step, _ in expected] == [0, 1]
    assert logger1.version != logger2.version
    for logger in (logger1, logger2):
        assert _history(env, logger.version, "train_loss") == expected
        assert _params(env, logger.version) == {}  # hparams_logged is None
        assert _status(env, logger.version) == "FINISHED"  # finalized_status == "success"


def test_multiple_loggers_pickle(tmp_path: Path, env: str, fresh_experiment: str) -> None:
    """Verify that pickling trainer with multiple loggers works."""
    logger1, logger2 = AIDPLogger(), AIDPLogger()
    trainer = ns.trainer(logger=[logger1, logger2], default_root_dir=tmp_path)
    trainer2 = pickle.loads(pickle.dumps(trainer))
    for logger in trainer2.loggers:
        logger.log_metrics({"acc": 1.0}, 0)
    for logger in trainer2.loggers:
        logger.finalize("success")

    run_ids = [logger.version for logger in trainer2.loggers]
    assert len(set(run_ids)) == 2
    for run_id in run_ids:
        assert _history(env, run_id, "acc") == [(0, 1.0)]  # metrics_logged == {"acc": 1.0}
    assert sorted(r["info"]["run_id"] for r in runs_in_experiment(env, fresh_experiment)) == sorted(
        run_ids
    )


def test_adding_step_key(tmp_path: Path, env: str) -> None:
    """A `step` key logged by the model is the step of the points logged with it."""

    class CustomAIDPLogger(AIDPLogger):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.logged_step = 0

        def log_metrics(self, metrics: Any, step: int | None = None) -> None:
            if "val_acc" in metrics:
                assert step == self.logged_step
            super().log_metrics(metrics, step)

    class CustomModel(BoringModel):  # type: ignore[misc,valid-type]
        def on_train_epoch_end(self) -> None:
            self.logger.logged_step += 1
            self.log_dict(
                {"step": self.logger.logged_step, "train_acc": self.logger.logged_step / 10}
            )

        def on_validation_epoch_end(self) -> None:
            self.logger.logged_step += 1
            self.log_dict(
                {"step": self.logger.logged_step, "val_acc": self.logger.logged_step / 10}
            )

    logger = CustomAIDPLogger()
    trainer = ns.trainer(
        max_epochs=3,
        logger=logger,
        default_root_dir=tmp_path,
        limit_train_batches=0.1,
        limit_val_batches=0.1,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
    )
    trainer.fit(CustomModel())

    def as_logged(step: int) -> float:  # self.log stores the value as a float32 tensor
        return float(torch.tensor(step / 10, dtype=torch.float32).item())

    run_id = logger.version
    # validation runs before on_train_epoch_end: steps 1, 3, 5 and 2, 4, 6
    assert _history(env, run_id, "val_acc") == [(s, as_logged(s)) for s in (1, 3, 5)]
    assert _history(env, run_id, "train_acc") == [(s, as_logged(s)) for s in (2, 4, 6)]
    assert _history(env, run_id, "step") == []  # the step is not a metric


def test_dummylogger_noop_method_calls(tmp_path: Path, env: str, fresh_experiment: str) -> None:
    """`fast_dev_run` puts a `DummyLogger` in AIDPLogger's place: calls with any arguments
    are no-ops, and AIDPLogger creates no run."""
    logger = AIDPLogger()
    trainer = ns.trainer(fast_dev_run=True, logger=logger, default_root_dir=tmp_path)
    assert isinstance(trainer.logger, DummyLogger)
    trainer.logger.log_hyperparams("1", 2, three="three")
    trainer.logger.log_metrics("1", 2, three="three")
    trainer.fit(_TrainLossModel())
    assert logger._handle.run is None
    assert runs_in_experiment(env, fresh_experiment) == []


def test_dummyexperiment_support_item_assignment(
    env: str, fresh_experiment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a rank above zero AIDPLogger's experiment is the namespace's `DummyExperiment`:
    stateless, item assignment included, and nothing reaches the server."""
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    logger = AIDPLogger()
    experiment = logger.experiment
    assert isinstance(experiment, DummyExperiment)
    experiment["variable"] = "value"
    assert experiment["variable"] != "value"  # this is only a stateless mock experiment
    logger.log_metrics({"a": 1.0}, step=0)
    logger.log_hyperparams({"b": 2})
    logger.finalize("success")
    assert logger.version is None
    assert runs_in_experiment(env, fresh_experiment) == []


def test_np_sanitization(env: str) -> None:
    logger = AIDPLogger()
    np_params = {
        "np.bool_": np.bool_(1),
        "np.byte": np.byte(2),
        "np.intc": np.intc(3),
        "np.int_": np.int_(4),
        "np.longlong": np.longlong(5),
        "np.single": np.single(6.0),
        "np.double": np.double(8.9),
        "np.csingle": np.csingle(7 + 2j),
        "np.cdouble": np.cdouble(9 + 4j),
    }
    sanitized_params = {
        "np.bool_": "True",
        "np.byte": "2",
        "np.intc": "3",
        "np.int_": "4",
        "np.longlong": "5",
        "np.single": "6.0",
        "np.double": "8.9",
        "np.csingle": "(7+2j)",
        "np.cdouble": "(9+4j)",
    }
    logger.log_hyperparams(Namespace(**np_params))
    logger.finalize("success")
    assert _params(env, logger.version) == sanitized_params


@pytest.mark.parametrize("logger", [True, False])
def test_log_hyperparams_being_called(tmp_path: Path, env: str, logger: bool) -> None:
    class TestModel(BoringModel):  # type: ignore[misc,valid-type]
        def __init__(self, param_one: str, param_two: str) -> None:
            super().__init__()
            self.save_hyperparameters(logger=logger)

    aidp = AIDPLogger()
    trainer = ns.trainer(
        default_root_dir=tmp_path,
        max_epochs=1,
        limit_train_batches=0.1,
        limit_val_batches=0.1,
        num_sanity_val_steps=0,
        logger=aidp,
        enable_checkpointing=False,
    )
    trainer.fit(TestModel("pytorch", "lightning"))

    expected = {"param_one": "pytorch", "param_two": "lightning"} if logger else {}
    assert _params(env, aidp.version) == expected


def test_log_hyperparams_key_collision(tmp_path: Path, env: str, fresh_experiment: str) -> None:
    class TestModel(BoringModel):  # type: ignore[misc,valid-type]
        def __init__(self, hparams: dict[Any, Any]) -> None:
            super().__init__()
            self.save_hyperparameters(hparams)

    class TestDataModule(BoringDataModule):  # type: ignore[misc,valid-type]
        def __init__(self, hparams: dict[Any, Any]) -> None:
            super().__init__()
            self.save_hyperparameters(hparams)

    class _Test: ...

    def new_trainer() -> tuple[Any, Any]:
        logger = AIDPLogger()
        return logger, ns.trainer(
            default_root_dir=tmp_path,
            logger=logger,
            max_epochs=1,
            limit_train_batches=0.1,
            limit_val_batches=0.1,
            num_sanity_val_steps=0,
            enable_checkpointing=False,
        )

    same_params = {1: 1, "2": 2, "three": 3.0, "test": _Test(), "4": torch.tensor(4)}
    logger, trainer = new_trainer()
    # there should be no exceptions raised for the same key/value pair in the hparams of both
    # the lightning module and data module
    trainer.fit(TestModel(same_params))
    trainer.fit(TestModel(same_params))  # the same logger again: the same run
    params = _params(env, logger.version)
    # An object whose text is a memory address is written as its class: the same every run
    assert params.pop("test") == f"{__name__}.{_Test.__qualname__}"
    assert params == {"1": "1", "2": "2", "three": "3.0", "4": "4"}
    assert _status(env, logger.version) == "FINISHED"

    diff_params = deepcopy(same_params)
    diff_params.update({1: 0, "test": _Test()})
    failed_logger, trainer = new_trainer()
    with pytest.raises(RuntimeError, match="Error while merging hparams"):
        trainer.fit(TestModel(same_params), TestDataModule(diff_params))

    tensor_params = deepcopy(same_params)
    tensor_params.update({"4": torch.tensor(3)})
    failed_logger2, trainer = new_trainer()
    with pytest.raises(RuntimeError, match="Error while merging hparams"):
        trainer.fit(TestModel(same_params), TestDataModule(tensor_params))

    # Lightning creates the experiment (the run) at setup; the failed merge logs no param
    # into it and ends it FAILED
    runs = runs_in_experiment(env, fresh_experiment)
    failed = [failed_logger.version, failed_logger2.version]
    assert sorted(r["info"]["run_id"] for r in runs) == sorted([logger.version, *failed])
    for run_id in failed:
        assert _params(env, run_id) == {}
        assert _status(env, run_id) == "FAILED"
