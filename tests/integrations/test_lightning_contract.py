"""Lightning's own logger contract (tests/tests_pytorch/loggers/test_all.py) applied to AIDPLogger.

Lightning runs these checks against every logger it ships; here they run against a real
MLflow server instead of mocks.
"""

from __future__ import annotations

import argparse
import csv
import inspect
import pickle
import threading
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
L = pytest.importorskip("lightning.pytorch")

from lightning.pytorch.demos.boring_classes import BoringModel  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402
from lightning.pytorch.loggers.logger import Logger  # noqa: E402

from aidp_metrics.integrations.lightning import AIDPLogger  # noqa: E402
from tests.support.mlflow_server import (  # noqa: E402
    get_metric_history,
    get_run,
    runs_in_experiment,
)

pytestmark = pytest.mark.lightning
torch.set_num_threads(1)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, mlflow_server: Any, fresh_experiment: str) -> str:
    """Configuration only through the environment, as Lightning's tests build loggers."""
    mlflow_server.start()
    for name in ("AIDP_RUN_ID", "MLFLOW_RUN_ID", "AIDP_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", fresh_experiment)
    url: str = mlflow_server.url
    return url


def _logger_args(save_dir: Path) -> dict[str, Any]:
    """Lightning's `_get_logger_args`: only the arguments the constructor declares."""
    spec = inspect.getfullargspec(AIDPLogger).args
    args: dict[str, Any] = {}
    if "save_dir" in spec:
        args["save_dir"] = str(save_dir)
    if "offline" in spec:
        args["offline"] = True
    return args


def test_is_a_lightning_logger_with_defaults_for_every_argument(env: str) -> None:
    assert issubclass(AIDPLogger, Logger)
    signature = inspect.signature(AIDPLogger)
    for parameter in signature.parameters.values():
        assert parameter.kind == parameter.VAR_KEYWORD or parameter.default is not parameter.empty
    logger = AIDPLogger()
    assert logger.save_dir is None
    assert logger.log_dir is None
    assert logger.group_separator == "/"


def test_loggers_fit_test(tmp_path: Path, env: str) -> None:
    class CustomModel(BoringModel):  # type: ignore[misc]
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            loss = self.step(batch)
            self.log("train_some_val", loss)
            return {"loss": loss}

        def on_validation_epoch_end(self) -> None:
            self.log_dict({"early_stop_on": torch.tensor(1), "val_loss": torch.tensor(0.5)})

        def on_test_epoch_end(self) -> None:
            self.log("test_loss", torch.tensor(2))

    class StoreHistoryLogger(AIDPLogger):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.history: list[tuple[int | None, dict[str, float]]] = []

        def log_metrics(self, metrics: Any, step: int | None = None) -> None:
            super().log_metrics(metrics, step)
            self.history.append((step, metrics))

    logger = StoreHistoryLogger(**_logger_args(tmp_path))
    trainer = L.Trainer(
        max_epochs=1,
        logger=logger,
        limit_train_batches=1,
        limit_val_batches=1,
        log_every_n_steps=1,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(CustomModel())
    trainer.test()

    assert [(s, sorted(m)) for s, m in logger.history] == [
        (0, ["epoch", "train_some_val"]),
        (0, ["early_stop_on", "epoch", "val_loss"]),
        (1, ["epoch", "test_loss"]),
    ]
    run_id = logger.version
    assert get_run(env, run_id)["info"]["status"] == "FINISHED"
    assert [(m["step"], m["value"]) for m in get_metric_history(env, run_id, "test_loss")] == [
        (1, 2.0)
    ]
    assert [(m["step"], m["value"]) for m in get_metric_history(env, run_id, "val_loss")] == [
        (0, 0.5)
    ]


def test_loggers_pickle(tmp_path: Path, env: str) -> None:
    logger = AIDPLogger(**_logger_args(tmp_path))
    _ = logger.experiment  # the experiment object must not make pickling fail
    logger.log_metrics({"a": 1})
    logger.save()
    pickle.dumps(logger)

    trainer = L.Trainer(max_epochs=1, logger=logger, default_root_dir=tmp_path)
    trainer2 = pickle.loads(pickle.dumps(trainer))
    trainer2.logger.log_metrics({"acc": 1.0})
    assert trainer2.logger.name == logger.name
    assert trainer2.logger.save_dir == logger.save_dir
    assert trainer2.logger.version == logger.version
    trainer2.logger.finalize("success")
    logger.finalize("success")
    assert [m["value"] for m in get_metric_history(env, logger.version, "acc")] == [1.0]


@pytest.mark.parametrize("tuner_method", ["lr_find", "scale_batch_size"])
def test_logger_reset_correctly(tmp_path: Path, env: str, tuner_method: str) -> None:
    from lightning.pytorch.tuner.tuning import Tuner

    class CustomModel(BoringModel):  # type: ignore[misc]
        def __init__(self, lr: float = 0.1, batch_size: int = 1) -> None:
            super().__init__()
            self.save_hyperparameters()

    model = CustomModel()
    logger = AIDPLogger()
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=1,
        logger=logger,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    tuner = Tuner(trainer)
    if tuner_method == "lr_find":
        tuner.lr_find(model, num_training=5)
    else:
        tuner.scale_batch_size(model, max_trials=2, steps_per_trial=1)
    assert trainer.logger is logger, "Finder altered the logger of trainer"
    assert model.logger is logger, "Finder altered the logger of model"


def test_log_hyperparams_namespace_dict_none(env: str) -> None:
    logger = AIDPLogger()
    logger.log_hyperparams(None)
    assert logger._handle.run is None  # nothing to log: no run yet
    logger.log_hyperparams(argparse.Namespace(a=1, nested=argparse.Namespace(b="x")))
    logger.log_hyperparams({"c": 2.5, "d": {"e": None}})
    logger.finalize("success")
    params = {p["key"]: p["value"] for p in get_run(env, logger.version)["data"]["params"]}
    assert params == {"a": "1", "nested/b": "x", "c": "2.5", "d/e": "None"}


class LoggingBoringModel(BoringModel):  # type: ignore[misc]
    def training_step(self, batch: Any, batch_idx: int) -> Any:
        loss = self.step(batch)
        self.log("train_loss", loss)
        return {"loss": loss}


def test_multiple_loggers(tmp_path: Path, env: str) -> None:
    aidp = AIDPLogger()
    csv_logger = CSVLogger(str(tmp_path))
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=1,
        log_every_n_steps=1,
        logger=[aidp, csv_logger],
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(LoggingBoringModel())
    assert trainer.loggers == [aidp, csv_logger]
    assert trainer.logger is aidp
    history = get_metric_history(env, aidp.version, "train_loss")
    with open(Path(csv_logger.log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    expected = [(int(r["step"]), float(r["train_loss"])) for r in rows if r.get("train_loss")]
    assert sorted((m["step"], m["value"]) for m in history) == expected
    assert [s for s, _ in expected] == [0, 1, 2]


def test_logger_with_prefix(env: str) -> None:
    logger = AIDPLogger(prefix="tmp")
    logger.log_metrics({"test": 1.0}, step=0)
    logger.finalize("success")
    assert [
        (m["key"], m["step"], m["value"])
        for m in get_metric_history(env, logger.version, "tmp-test")
    ] == [("tmp-test", 0, 1.0)]


def test_logger_default_name(env: str, fresh_experiment: str) -> None:
    assert AIDPLogger().name == fresh_experiment
    assert AIDPLogger(experiment_name="resnet").name == "resnet"


def test_without_any_name_the_run_goes_to_lightning_logs(
    env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MLFlowLogger's default: no argument, no variable -> the experiment `lightning_logs`."""
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME")
    logger = AIDPLogger()
    assert logger.name == "lightning_logs"
    logger.log_metrics({"a": 1.0}, step=0)
    logger.finalize("success")
    assert get_run(env, logger.version)["info"]["status"] == "FINISHED"
    runs = runs_in_experiment(env, "lightning_logs")
    assert logger.version in [run["info"]["run_id"] for run in runs]


# -- the second pass: what Lightning's harness and users expect of any logger ------------------


def test_no_thread_is_left_running_after_finalize(tmp_path: Path, env: str) -> None:
    """Lightning's "thread police" fails a test after which a new thread is alive (unless a
    daemon whose `stop()` ends it). 0.1 left one sender thread per run."""
    before = set(threading.enumerate())
    logger = AIDPLogger()
    trainer = L.Trainer(
        max_steps=4,
        log_every_n_steps=1,
        logger=logger,
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(LoggingBoringModel())
    left = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    assert left == []
    assert len(get_metric_history(env, logger.version, "train_loss")) == 4
    assert get_run(env, logger.version)["info"]["status"] == "FINISHED"


def test_nothing_is_written_to_the_working_directory(
    tmp_path: Path, env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AIDP_METRICS_DIR")  # the default spool dir is ./aidp-metrics
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    logger = AIDPLogger()
    trainer = L.Trainer(
        max_steps=2,
        logger=logger,
        default_root_dir=tmp_path / "root",
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    model = BoringModel()
    trainer.fit(model)
    trainer.test(model)
    assert list(cwd.iterdir()) == []


def test_picklable_before_and_after_use(tmp_path: Path, env: str) -> None:
    logger = AIDPLogger()
    pickle.loads(pickle.dumps(logger))
    trainer = L.Trainer(
        max_steps=2, logger=logger, default_root_dir=tmp_path, enable_progress_bar=False
    )
    trainer.fit(BoringModel())
    copy = pickle.loads(pickle.dumps(logger))
    assert (copy.name, copy.version) == (logger.name, logger.version)
    copy.log_metrics({"after_pickle": 1.0}, step=9)
    copy.finalize("success")
    assert [m["step"] for m in get_metric_history(env, logger.version, "after_pickle")] == [9]


@pytest.mark.parametrize("namespace", ["lightning.pytorch", "pytorch_lightning"])
def test_ranks_above_zero_get_the_dummy_experiment_of_their_namespace(
    namespace: str, env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0.1: the pytorch_lightning logger handed out lightning.fabric's dummy."""
    from lightning_utilities.core.rank_zero import rank_zero_only

    if namespace == "pytorch_lightning":
        pytest.importorskip("pytorch_lightning")
        from pytorch_lightning.loggers.logger import DummyExperiment

        from aidp_metrics.integrations.pytorch_lightning import AIDPLogger as Logger_
    else:
        from lightning.pytorch.loggers.logger import DummyExperiment

        Logger_ = AIDPLogger
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    logger = Logger_()
    assert isinstance(logger.experiment, DummyExperiment)
    assert logger._handle.run is None
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    assert not isinstance(logger.experiment, DummyExperiment)
    logger.finalize("success")
