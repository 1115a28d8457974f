"""Lightning's own logger contract (tests/tests_pytorch/loggers/test_all.py, 2.6.x) applied
to AIDPLogger.

Lightning runs these checks against every logger it ships, with the experiment clients
mocked; here they run against a real MLflow server and assert on what it holds. The ports
keep Lightning's test names; the tests after them are what Lightning's harness and users
expect of any logger. The module runs in the `lightning.pytorch` namespace here and in the
`pytorch_lightning` namespace through test_lightning_suites_in_pytorch_lightning.py.

`test_logger_initialization` is ported in one process: the experiment (the run) exists at
`setup`, and rank zero's `experiment` is the run. Its two-process `ddp_spawn` form (rank one
gets the `DummyExperiment`, creates and sends nothing) is
test_lightning_processes.py::test_ddp_spawn_two_cpu_processes_one_run_nothing_from_rank_one
(two spawned interpreters cost ~15 s); a rank above zero in both namespaces is
`test_ranks_above_zero_get_the_dummy_experiment_of_their_namespace` below.
"""

from __future__ import annotations

import argparse
import inspect
import pickle
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.integrations import lightning_namespace as ns
from tests.integrations.lightning_namespace import (
    AIDPLogger,
    BoringModel,
    DummyExperiment,
    Logger,
    Tuner,
    rank_zero_only,
    torch,
)
from tests.support.mlflow_server import (
    get_metric_history,
    get_run,
    runs_in_experiment,
)

pytestmark = pytest.mark.lightning
env = ns.env


def _history(url: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(int(m["step"]), float(m["value"])) for m in get_metric_history(url, run_id, key)]


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


def test_loggers_fit_test_all(tmp_path: Path, env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Verify that basic functionality of all loggers."""
    monkeypatch.chdir(tmp_path)

    class CustomModel(BoringModel):  # type: ignore[misc,valid-type]
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            loss = self.step(batch)
            self.log("train_some_val", loss)
            return {"loss": loss}

        def on_validation_epoch_end(self) -> None:
            self.log_dict({"early_stop_on": torch.tensor(1), "val_loss": torch.tensor(0.5)})

        def on_test_epoch_end(self) -> None:
            self.log("test_loss", torch.tensor(2))

    class StoreHistoryLogger(AIDPLogger):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.history: list[tuple[int | None, dict[str, float]]] = []

        def log_metrics(self, metrics: Any, step: int | None = None) -> None:
            super().log_metrics(metrics, step)
            self.history.append((step, metrics))

    logger = StoreHistoryLogger(**_logger_args(tmp_path))
    trainer = ns.trainer(
        max_epochs=1,
        logger=logger,
        limit_train_batches=1,
        limit_val_batches=1,
        log_every_n_steps=1,
        default_root_dir=tmp_path,
    )
    model = CustomModel()
    trainer.fit(model)
    trainer.test()

    assert [(s, sorted(m)) for s, m in logger.history] == [
        (0, ["epoch", "train_some_val"]),
        (0, ["early_stop_on", "epoch", "val_loss"]),
        (1, ["epoch", "test_loss"]),
    ]
    run_id = logger.version
    assert get_run(env, run_id)["info"]["status"] == "FINISHED"
    (train_point,) = _history(env, run_id, "train_some_val")
    assert train_point[0] == 0
    assert train_point[1] == pytest.approx(float(logger.history[0][1]["train_some_val"]))
    assert _history(env, run_id, "early_stop_on") == [(0, 1.0)]
    assert _history(env, run_id, "val_loss") == [(0, 0.5)]
    assert _history(env, run_id, "test_loss") == [(1, 2.0)]
    # once per step; after fit, Trainer.current_epoch (what test logs) is 1
    assert _history(env, run_id, "epoch") == [(0, 0.0), (1, 1.0)]


def test_loggers_pickle_all(tmp_path: Path, env: str) -> None:
    """Verify that pickling trainer with logger works."""
    logger = AIDPLogger(**_logger_args(tmp_path))
    _ = logger.experiment  # the experiment object must not make pickling fail
    logger.log_metrics({"a": 1})
    logger.save()
    pickle.dumps(logger)

    trainer = ns.trainer(max_epochs=1, logger=logger, default_root_dir=tmp_path)
    trainer2 = pickle.loads(pickle.dumps(trainer))
    trainer2.logger.log_metrics({"acc": 1.0})
    assert trainer2.logger.name == logger.name
    assert trainer2.logger.save_dir == logger.save_dir
    assert trainer2.logger.version == logger.version
    trainer2.logger.finalize("success")
    logger.finalize("success")
    assert _history(env, logger.version, "a") == [(0, 1.0)]
    assert _history(env, logger.version, "acc") == [(0, 1.0)]


@pytest.mark.parametrize("tuner_method", ["lr_find", "scale_batch_size"])
def test_logger_reset_correctly(tmp_path: Path, env: str, tuner_method: str) -> None:
    """Test that the tuners do not alter the logger reference."""

    class CustomModel(BoringModel):  # type: ignore[misc,valid-type]
        def __init__(self, lr: float = 0.1, batch_size: int = 1) -> None:
            super().__init__()
            self.save_hyperparameters()

    model = CustomModel()
    logger = AIDPLogger()
    trainer = ns.trainer(default_root_dir=tmp_path, max_epochs=1, logger=logger)
    tuner = Tuner(trainer)
    if tuner_method == "lr_find":
        tuner.lr_find(model, num_training=5)
    else:
        tuner.scale_batch_size(model, max_trials=2, steps_per_trial=1)
    assert trainer.logger is logger, "Finder altered the logger of trainer"
    assert model.logger is logger, "Finder altered the logger of model"


def test_logger_initialization(tmp_path: Path, env: str, fresh_experiment: str) -> None:
    """The experiment (the run) exists on the server when `setup` runs; rank zero's
    `experiment` is the run, not a `DummyExperiment` (one process: see the module docstring)."""
    seen: dict[str, Any] = {}

    class LazyInitExperimentCheck(ns.L.Callback):  # type: ignore[misc,name-defined]
        def setup(self, trainer: Any, pl_module: Any, stage: str | None = None) -> None:
            assert trainer.logger._handle.run is not None
            seen["runs_at_setup"] = [
                r["info"]["run_id"] for r in runs_in_experiment(env, fresh_experiment)
            ]

    class RankZeroLoggerCheck(ns.L.Callback):  # type: ignore[misc,name-defined]
        def on_train_batch_start(self, trainer: Any, *args: Any) -> None:
            assert trainer.is_global_zero
            assert not isinstance(trainer.logger.experiment, DummyExperiment)
            seen["experiment"] = trainer.logger.experiment

    logger = AIDPLogger(**_logger_args(tmp_path))
    trainer = ns.trainer(
        logger=logger,
        default_root_dir=tmp_path,
        max_steps=1,
        callbacks=[LazyInitExperimentCheck(), RankZeroLoggerCheck()],
    )
    trainer.fit(BoringModel())
    assert seen["runs_at_setup"] == [logger.version]
    assert seen["experiment"].run.run_id == logger.version
    assert get_run(env, logger.version)["info"]["status"] == "FINISHED"


def test_log_hyperparams_namespace_dict_none(env: str) -> None:
    logger = AIDPLogger()
    logger.log_hyperparams(None)
    assert logger._handle.run is None  # nothing to log: no run yet
    logger.log_hyperparams(argparse.Namespace(a=1, nested=argparse.Namespace(b="x")))
    logger.log_hyperparams({"c": 2.5, "d": {"e": None}})
    logger.finalize("success")
    params = {p["key"]: p["value"] for p in get_run(env, logger.version)["data"]["params"]}
    assert params == {"a": "1", "nested/b": "x", "c": "2.5", "d/e": "None"}


class LoggingBoringModel(BoringModel):  # type: ignore[misc,valid-type]
    def training_step(self, batch: Any, batch_idx: int) -> Any:
        loss = self.step(batch)
        self.log("train_loss", loss)
        return {"loss": loss}


def test_logger_with_prefix_all(env: str) -> None:
    """Test that prefix is added at the beginning of the metric keys."""
    logger = AIDPLogger(prefix="tmp")
    logger.log_metrics({"test": 1.0}, step=0)
    logger.finalize("success")
    assert [
        (m["key"], m["step"], m["value"])
        for m in get_metric_history(env, logger.version, "tmp-test")
    ] == [("tmp-test", 0, 1.0)]
    assert get_metric_history(env, logger.version, "test") == []


def test_logger_default_name(
    env: str, fresh_experiment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Test that the default logger name is lightning_logs (MLFlowLogger's experiment name)
    when neither an argument nor the environment names one."""
    assert AIDPLogger().experiment_name == fresh_experiment  # MLFLOW_EXPERIMENT_NAME
    assert AIDPLogger(experiment_name="resnet").experiment_name == "resnet"

    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME")
    logger = AIDPLogger()
    assert logger.experiment_name == "lightning_logs"
    _ = logger.experiment
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
    trainer = ns.trainer(
        max_steps=4,
        log_every_n_steps=1,
        logger=logger,
        default_root_dir=tmp_path,
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
    trainer = ns.trainer(
        max_steps=2,
        logger=logger,
        default_root_dir=tmp_path / "root",
        enable_checkpointing=False,
    )
    model = BoringModel()
    trainer.fit(model)
    trainer.test(model)
    assert list(cwd.iterdir()) == []


def test_picklable_before_and_after_use(tmp_path: Path, env: str) -> None:
    logger = AIDPLogger()
    pickle.loads(pickle.dumps(logger))
    trainer = ns.trainer(max_steps=2, logger=logger, default_root_dir=tmp_path)
    trainer.fit(BoringModel())
    copy = pickle.loads(pickle.dumps(logger))
    assert (copy.name, copy.version) == (logger.name, logger.version)
    copy.log_metrics({"after_pickle": 1.0}, step=9)
    copy.finalize("success")
    assert [m["step"] for m in get_metric_history(env, logger.version, "after_pickle")] == [9]


def test_ranks_above_zero_get_the_dummy_experiment_of_their_namespace(
    env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """0.1: the pytorch_lightning logger handed out lightning.fabric's dummy."""
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    logger = AIDPLogger()
    assert isinstance(logger.experiment, DummyExperiment)
    assert logger._handle.run is None
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    assert not isinstance(logger.experiment, DummyExperiment)
    logger.finalize("success")
