"""AIDPLogger: real Lightning training on CPU against a real MLflow server, read back."""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import pickle
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
L = pytest.importorskip("lightning.pytorch")

import numpy as np  # noqa: E402
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from aidp_metrics import Endpoint  # noqa: E402
from aidp_metrics.integrations._convert import AIDPMetricsWarning  # noqa: E402
from aidp_metrics.integrations.lightning import AIDPLogger  # noqa: E402
from tests.support.mlflow_server import (  # noqa: E402
    artifact_bytes,
    artifact_files,
    get_metric_history,
    get_run,
    runs_in_experiment,
)

pytestmark = pytest.mark.lightning
torch.set_num_threads(1)


# -- a tiny model --------------------------------------------------------------------------


def _loader(n: int, batch_size: int = 8, seed: int = 0) -> DataLoader[Any]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1 * torch.randn(n, 1, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


class TinyModule(L.LightningModule):  # type: ignore[misc]
    def __init__(
        self, lr: float = 0.05, fail_at_step: int | None = None, batch_size: int = 8
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = nn.Linear(4, 1)
        self.fail_at_step = fail_at_step
        self.batch_size = batch_size

    def forward(self, x: Any) -> Any:
        return self.layer(x)

    def _loss(self, batch: Any) -> Any:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        if self.fail_at_step is not None and self.global_step >= self.fail_at_step:
            raise RuntimeError("boom")
        loss = self._loss(batch)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        self.log("optimizer_steps_before", float(self.global_step))
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", self._loss(batch), on_step=True, on_epoch=True)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self.log("test_loss", self._loss(batch))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    def train_dataloader(self) -> Any:
        return _loader(64, self.batch_size, seed=0)

    def val_dataloader(self) -> Any:
        return _loader(16, 8, seed=1)

    def test_dataloader(self) -> Any:
        return _loader(16, 8, seed=2)


def _trainer(tmp_path: Path, **kwargs: Any) -> Any:
    options: dict[str, Any] = {
        "default_root_dir": str(tmp_path),
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": 2,
        "log_every_n_steps": 1,
        "num_sanity_val_steps": 0,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
    }
    options.update(kwargs)
    return L.Trainer(**options)


# -- reading back ----------------------------------------------------------------------------

Points = dict[str, list[tuple[int, float]]]


def _server_points(url: str, run_id: str) -> Points:
    run = get_run(url, run_id)
    keys = [m["key"] for m in run["data"].get("metrics", [])]
    return {
        key: sorted(
            (int(m["step"]), float(m["value"])) for m in get_metric_history(url, run_id, key)
        )
        for key in keys
    }


def _csv_points(csv_logger: Any) -> Points:
    points: dict[str, list[tuple[int, float]]] = defaultdict(list)
    with open(os.path.join(csv_logger.log_dir, "metrics.csv"), newline="") as f:
        for row in csv.DictReader(f):
            step = int(row["step"])
            for key, value in row.items():
                if key != "step" and value != "":
                    points[key].append((step, float(value)))
    return {key: sorted(values) for key, values in points.items()}


def _as_sets(points: Points) -> dict[str, set[tuple[int, float]]]:
    return {key: set(values) for key, values in points.items()}


def _status(url: str, run_id: str) -> str:
    status: str = get_run(url, run_id)["info"]["status"]
    return status


@pytest.fixture
def endpoint(mlflow_server: Any) -> Endpoint:
    mlflow_server.start()
    return Endpoint.mlflow(mlflow_server.url)


@pytest.fixture
def url(endpoint: Endpoint, mlflow_server: Any) -> str:
    u: str = mlflow_server.url
    return u


# -- training end to end ---------------------------------------------------------------------


def test_fit_validate_test_logs_every_point_at_lightnings_step(
    tmp_path: Path, endpoint: Endpoint, url: str, fresh_experiment: str
) -> None:
    logger = AIDPLogger(experiment_name=fresh_experiment, run_name="tiny", endpoint=endpoint)
    csv_logger = CSVLogger(str(tmp_path), name="csv")
    model = TinyModule()
    trainer = _trainer(tmp_path, logger=[logger, csv_logger])
    trainer.fit(model)
    assert _status(url, logger.version) == "FINISHED"
    trainer.validate(model)
    trainer.test(model)

    run_id = logger.version
    assert [r["info"]["run_id"] for r in runs_in_experiment(url, fresh_experiment)] == [run_id]
    run = get_run(url, run_id)
    assert run["info"]["status"] == "FINISHED"
    assert run["info"]["run_name"] == "tiny"
    assert sorted((p["key"], p["value"]) for p in run["data"]["params"]) == [
        ("batch_size", "8"),
        ("fail_at_step", "None"),
        ("lr", "0.05"),
    ]

    server = _server_points(url, run_id)
    # what Lightning handed its loggers, step by step (as sets: the server stores two equal
    # points of one key logged in the same millisecond once)
    assert _as_sets(server) == _as_sets(_csv_points(csv_logger))

    # 64 samples / 8 = 8 optimizer steps per epoch, 2 epochs; Lightning logs the train step
    # before counting the batch that produced it.
    assert [s for s, _ in server["train_loss_step"]] == list(range(16))
    assert [v for _, v in server["optimizer_steps_before"]] == [float(s) for s in range(16)]
    assert [s for s, _ in server["train_loss_epoch"]] == [7, 15]
    # validation after each epoch at the train step it ran at; then validate() and test()
    # after fit at the final step
    assert [s for s, _ in server["val_loss_epoch"]] == [7, 15, 16]
    assert [s for s, _ in server["test_loss"]] == [16]
    assert "epoch" in server
    assert {v for _, v in server["epoch"]} == {0.0, 1.0, 2.0}


def test_accumulated_gradients_log_at_optimizer_steps(
    tmp_path: Path, endpoint: Endpoint, url: str, fresh_experiment: str
) -> None:
    logger = AIDPLogger(experiment_name=fresh_experiment, endpoint=endpoint)
    csv_logger = CSVLogger(str(tmp_path), name="csv")
    # 96 samples / batch 4 = 24 batches per epoch = 6 optimizer steps per epoch; 2 epochs
    model = TinyModule(batch_size=4)
    model.train_dataloader = lambda: _loader(96, 4)  # type: ignore[method-assign]
    trainer = _trainer(
        tmp_path,
        logger=[logger, csv_logger],
        accumulate_grad_batches=4,
        log_every_n_steps=3,
        limit_val_batches=0,
    )
    trainer.fit(model)
    assert trainer.global_step == 12

    server = _server_points(url, logger.version)
    assert _as_sets(server) == _as_sets(_csv_points(csv_logger))
    steps = [s for s, _ in server["train_loss_step"]]
    # the value logged with each point is the number of optimizer steps taken before it
    assert [s for s, _ in server["optimizer_steps_before"]] == steps
    assert all(s == v for s, v in server["optimizer_steps_before"])
    assert all(0 <= s < 12 for s in steps)
    assert len(steps) == len(set(steps))  # one point per optimizer step, never per micro-batch
    assert steps == [s for s in range(12) if (s + 1) % 3 == 0]


def test_exception_in_training_step_marks_failed_and_keeps_earlier_points(
    tmp_path: Path, endpoint: Endpoint, url: str, fresh_experiment: str
) -> None:
    logger = AIDPLogger(experiment_name=fresh_experiment, endpoint=endpoint)
    trainer = _trainer(tmp_path, logger=logger)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(TinyModule(fail_at_step=5))
    run_id = logger.version
    assert _status(url, run_id) == "FAILED"
    assert [s for s, _ in _server_points(url, run_id)["train_loss_step"]] == [0, 1, 2, 3, 4]

    # FAILED is sticky: a later successful test() logs into the same run, status stays FAILED
    trainer.test(TinyModule())
    assert logger.version == run_id
    assert "test_loss" in _server_points(url, run_id)
    assert _status(url, run_id) == "FAILED"


def test_finalize_statuses_and_test_after_fit_keeps_the_run(
    tmp_path: Path, endpoint: Endpoint, url: str, fresh_experiment: str
) -> None:
    logger = AIDPLogger(experiment_name=fresh_experiment, endpoint=endpoint)
    logger.log_metrics({"a": 1.0}, step=0)
    run_id = logger.version
    logger.finalize("finished")  # SLURM requeue: FINISHED, as MLFlowLogger does
    assert _server_points(url, run_id)["a"] == [(0, 1.0)]
    assert _status(url, run_id) == "FINISHED"
    logger.log_metrics({"a": 1.5}, step=1)  # the requeued job resumes: RUNNING again
    assert logger.run.flush(10)
    assert _status(url, run_id) == "RUNNING"
    logger.finalize("success")
    logger.finalize("success")  # idempotent
    assert _status(url, run_id) == "FINISHED"
    logger.log_metrics({"a": 2.0}, step=2)  # after finalize: same run
    logger.finalize("success")
    assert logger.version == run_id
    assert _server_points(url, run_id)["a"] == [(0, 1.0), (1, 1.5), (2, 2.0)]
    assert _status(url, run_id) == "FINISHED"
    # the phase after a successful one fails before logging anything: FAILED, and it sticks
    logger.finalize("failed")
    assert _status(url, run_id) == "FAILED"
    logger.log_metrics({"a": 3.0}, step=3)
    logger.finalize("success")
    assert _status(url, run_id) == "FAILED"
    assert len(runs_in_experiment(url, fresh_experiment)) == 1


# -- Lightning's features that swap or add loggers -------------------------------------------


def test_fast_dev_run_sends_nothing(
    tmp_path: Path, endpoint: Endpoint, url: str, fresh_experiment: str
) -> None:
    logger = AIDPLogger(experiment_name=fresh_experiment, endpoint=endpoint)
    trainer = _trainer(tmp_path, logger=logger, fast_dev_run=True)
    trainer.fit(TinyModule())
    trainer.test(TinyModule())
    assert logger._handle.run is None
    assert runs_in_experiment(url, fresh_experiment) == []


@pytest.mark.parametrize("tuner_method", ["lr_find", "scale_batch_size"])
def test_tuner_gives_the_same_logger_back(
    tmp_path: Path, endpoint: Endpoint, url: str, fresh_experiment: str, tuner_method: str
) -> None:
    from lightning.pytorch.tuner import Tuner

    logger = AIDPLogger(experiment_name=fresh_experiment, endpoint=endpoint)
    model = TinyModule()
    trainer = _trainer(tmp_path, logger=logger, max_epochs=1)
    tuner = Tuner(trainer)
    if tuner_method == "lr_find":
        tuner.lr_find(model, num_training=5, attr_name="lr")
    else:
        tuner.scale_batch_size(model, max_trials=2, steps_per_trial=1, init_val=4)
    assert trainer.logger is logger
    assert model.logger is logger
    trainer.fit(model)
    assert _status(url, logger.version) == "FINISHED"
    assert len(runs_in_experiment(url, fresh_experiment)) == 1


def test_learning_rate_monitor_and_checkpoint_tags(
    tmp_path: Path, endpoint: Endpoint, url: str, fresh_experiment: str
) -> None:
    logger = AIDPLogger(experiment_name=fresh_experiment, endpoint=endpoint, prefix="tiny")
    checkpoint = ModelCheckpoint(
        dirpath=str(tmp_path / "ckpt"), monitor="val_loss_epoch", save_last=True
    )
    trainer = _trainer(
        tmp_path,
        logger=logger,
        callbacks=[LearningRateMonitor(logging_interval="step"), checkpoint],
        enable_checkpointing=True,
    )
    trainer.fit(TinyModule())
    run = get_run(url, logger.version)
    points = _server_points(url, logger.version)
    assert [s for s, _ in points["tiny-lr-SGD"]] == list(range(16))
    assert {v for _, v in points["tiny-lr-SGD"]} == {0.05}
    assert "tiny-train_loss_step" in points
    assert "tiny-epoch" in points
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["checkpoint.best_model_path"] == checkpoint.best_model_path
    assert tags["checkpoint.last_model_path"] == checkpoint.last_model_path
    assert float(tags["checkpoint.best_model_score"]) == pytest.approx(
        float(checkpoint.best_model_score)
    )


# -- pickling ------------------------------------------------------------------------------


def test_pickle_round_trip_keeps_name_version_and_run(
    tmp_path: Path, endpoint: Endpoint, url: str, fresh_experiment: str
) -> None:
    logger = AIDPLogger(experiment_name=fresh_experiment, endpoint=endpoint)
    _ = logger.experiment
    logger.log_metrics({"a": 1.0}, step=0)
    logger.save()
    copy = pickle.loads(pickle.dumps(logger))
    assert copy.experiment_name == logger.experiment_name == fresh_experiment
    assert copy._handle.run is None  # clients are not pickled
    assert copy.version == logger.version

    trainer = _trainer(tmp_path, logger=logger, max_epochs=1)
    trainer2 = pickle.loads(pickle.dumps(trainer))
    trainer2.logger.log_metrics({"acc": 1.0}, step=3)
    assert trainer2.logger.name == logger.name
    assert trainer2.logger.version == logger.version
    assert trainer2.logger.save_dir is None
    trainer2.logger.finalize("success")
    logger.finalize("success")
    points = _server_points(url, logger.version)
    assert points == {"a": [(0, 1.0)], "acc": [(3, 1.0)]}
    assert len(runs_in_experiment(url, fresh_experiment)) == 1


# -- the logger API on its own -------------------------------------------------------------


def test_constructor_from_environment(
    monkeypatch: pytest.MonkeyPatch, url: str, fresh_experiment: str
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", fresh_experiment)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv("AIDP_RUN_ID", raising=False)
    logger = AIDPLogger()
    assert logger.experiment_name == fresh_experiment
    logger.log_metrics({"x": 1}, step=2)
    logger.finalize("success")
    runs = runs_in_experiment(url, fresh_experiment)
    assert [r["info"]["run_id"] for r in runs] == [logger.version]

    # AIDP_RUN_ID / MLFLOW_RUN_ID attach to that run
    monkeypatch.setenv("MLFLOW_RUN_ID", logger.version)
    again = AIDPLogger()
    again.log_metrics({"x": 2}, step=3)
    again.finalize("success")
    assert again.version == logger.version
    assert _server_points(url, logger.version)["x"] == [(2, 1.0), (3, 2.0)]

    explicit = AIDPLogger(run_id=logger.version, tags={"resumed": "yes"})
    explicit.log_metrics({"x": 3}, step=4)
    explicit.finalize("success")
    run = get_run(url, logger.version)
    assert {"key": "resumed", "value": "yes"} in run["data"]["tags"]
    assert len(runs_in_experiment(url, fresh_experiment)) == 1


def test_metric_conversion_prefix_and_warnings(
    endpoint: Endpoint, url: str, fresh_experiment: str
) -> None:
    logger = AIDPLogger(experiment_name=fresh_experiment, endpoint=endpoint, prefix="p")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(3):
            logger.log_metrics(
                {
                    "loss": torch.tensor([0.5 + step]),
                    "np": np.float32(0.25),
                    "name": "not a number",
                    "bad key!": 1.0,
                    "nan": float("nan"),
                    "epoch": 0,
                },
                step=step,
            )
    ours = [str(w.message) for w in caught if issubclass(w.category, AIDPMetricsWarning)]
    assert len(ours) == 2, ours  # one for the string value, one for the key, not one per step
    logger.finalize("success")
    points = _server_points(url, logger.version)
    assert points["p-loss"] == [(0, 0.5), (1, 1.5), (2, 2.5)]
    assert points["p-np"] == [(0, 0.25), (1, 0.25), (2, 0.25)]
    assert points["p-epoch"] == [(0, 0.0), (1, 0.0), (2, 0.0)]
    assert all(math.isnan(v) for _, v in points["p-nan"])
    assert not any("name" in key for key in points)
    assert len(points) == 5  # the sanitised key is there too


def test_step_none_uses_the_last_step_given(
    endpoint: Endpoint, url: str, fresh_experiment: str
) -> None:
    logger = AIDPLogger(experiment_name=fresh_experiment, endpoint=endpoint)
    logger.log_metrics({"a": 1.0})  # nothing seen yet: 0
    logger.log_metrics({"a": 2.0}, step=7)
    logger.log_metrics({"b": 3.0})  # the last step given
    logger.finalize("success")
    points = _server_points(url, logger.version)
    assert points == {"a": [(0, 1.0), (7, 2.0)], "b": [(7, 3.0)]}


def test_log_hyperparams_namespace_dict_nested_and_twice(
    endpoint: Endpoint, url: str, fresh_experiment: str
) -> None:
    class Backbone:
        pass

    logger = AIDPLogger(experiment_name=fresh_experiment, endpoint=endpoint)
    logger.log_hyperparams(None)
    logger.log_hyperparams(argparse.Namespace(lr=np.float32(0.1), layers=np.int64(3)))
    logger.log_hyperparams(
        {
            "optimizer": {"name": "adam", "betas": (0.9, 0.999)},
            "activation": torch.nn.functional.relu,
            "backbone": Backbone,
            "long": "x" * 10_000,
            "args": argparse.Namespace(seed=1),
        }
    )
    logger.log_hyperparams({"lr": np.float32(0.1)})  # the datamodule says it again: fine
    logger.finalize("success")
    params = {p["key"]: p["value"] for p in get_run(url, logger.version)["data"]["params"]}
    assert params["lr"] == "0.1"
    assert params["layers"] == "3"
    assert params["optimizer/name"] == "adam"
    assert params["optimizer/betas"] == "(0.9, 0.999)"
    assert params["activation"] == "torch.nn.functional.relu"
    assert params["backbone"].endswith("Backbone")
    assert "0x" not in params["backbone"]
    assert "<" not in params["activation"]
    assert params["args/seed"] == "1"
    assert len(params["long"]) == 6000

    disabled = AIDPLogger(
        experiment_name=fresh_experiment, endpoint=endpoint, log_hyperparams=False
    )
    disabled.log_hyperparams({"lr": 1})
    assert disabled._handle.run is None


def test_changed_hyperparameter_warns(endpoint: Endpoint, fresh_experiment: str) -> None:
    logger = AIDPLogger(experiment_name=fresh_experiment, endpoint=endpoint)
    logger.log_hyperparams({"lr": 0.1})
    with pytest.warns(AIDPMetricsWarning, match="lr"):
        logger.log_hyperparams({"lr": 0.2})
    logger.finalize("success")


def test_other_ranks_create_and_send_nothing(
    monkeypatch: pytest.MonkeyPatch, endpoint: Endpoint, url: str, fresh_experiment: str
) -> None:
    from lightning.fabric.loggers.logger import _DummyExperiment
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    monkeypatch.setattr(rank_zero_only, "rank", 1)
    logger = AIDPLogger(experiment_name=fresh_experiment, endpoint=endpoint)
    assert isinstance(logger.experiment, _DummyExperiment)
    assert logger.version is None
    logger.log_hyperparams({"lr": 1})
    logger.log_metrics({"a": 1.0}, step=0)
    logger.after_save_checkpoint(object())
    logger.save()
    logger.finalize("success")
    assert logger._handle.run is None
    assert runs_in_experiment(url, fresh_experiment) == []


def test_unreachable_server_without_spool_warns_once_and_training_goes_on(
    tmp_path: Path, fresh_experiment: str
) -> None:
    from tests.support.mlflow_server import free_port

    logger = AIDPLogger(
        experiment_name=fresh_experiment,
        endpoint=Endpoint.mlflow(f"http://127.0.0.1:{free_port()}"),
        spool="off",
        end_timeout=1.0,
    )
    trainer = _trainer(tmp_path, logger=logger, max_epochs=1, limit_train_batches=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(TinyModule())
    ours = [str(w.message) for w in caught if issubclass(w.category, AIDPMetricsWarning)]
    # One warning while training; the end of the run then says what was not delivered.
    during = [message for message in ours if "not delivered" not in message]
    assert len(during) == 1, ours
    assert "starts locally" in during[0]
    assert len(ours) <= 2, ours
    # Nowhere to keep them: the points were held in memory and are counted, not dropped
    # silently, when finalize ends the run.
    assert logger.version is not None
    assert logger.version.startswith("local-")
    stats = logger.run.stats
    assert stats.logged > 0
    assert (stats.delivered, stats.failed, stats.pending) == (0, stats.logged, 0)


def test_unreachable_server_with_spool_starts_locally_and_training_goes_on(
    tmp_path: Path, fresh_experiment: str
) -> None:
    from tests.support.mlflow_server import free_port

    logger = AIDPLogger(
        experiment_name=fresh_experiment,
        endpoint=Endpoint.mlflow(f"http://127.0.0.1:{free_port()}"),
        spool_dir=str(tmp_path / "spool"),
        end_timeout=1.0,
    )
    trainer = _trainer(tmp_path, logger=logger, max_epochs=1, limit_train_batches=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(TinyModule())
    assert logger.version is not None
    assert logger.version.startswith("local-")
    assert trainer.global_step == 2


# -- the second pass ---------------------------------------------------------------------------


def test_identical_repeats_are_sent_once_whatever_the_timing(
    tmp_path: Path, mlflow_server: Any, fresh_experiment: str
) -> None:
    """Lightning logs `epoch` with the training and with the validation metrics of one step;
    0.1 sent both, and whether the server kept one depended on the millisecond."""
    from tests.support.chaos_proxy import ChaosProxy

    mlflow_server.start()
    with ChaosProxy(mlflow_server.url) as proxy:
        logger = AIDPLogger(experiment_name=fresh_experiment, endpoint=Endpoint.mlflow(proxy.url))
        _trainer(tmp_path, logger=logger).fit(TinyModule())
        sent: dict[tuple[str, int], int] = defaultdict(int)
        for exchange in proxy.forwarded("runs/log-batch"):
            for metric in json.loads(exchange.body).get("metrics", []):
                sent[(metric["key"], metric["step"])] += 1
    epochs = {step: n for (key, step), n in sent.items() if key == "epoch"}
    assert epochs
    assert set(epochs.values()) == {1}
    assert max(sent.values()) == 1  # no point of any key was sent twice
    # The server holds `epoch` once per step, at validation steps too (3 and 7).
    steps = [s for s, _ in _server_points(mlflow_server.url, logger.version)["epoch"]]
    assert steps == sorted(set(steps))
    assert {3, 7} <= set(steps)


def test_a_misspelt_option_is_a_type_error_at_construction(endpoint: Endpoint) -> None:
    """0.1 accepted it; the first log then turned logging off for the whole run."""
    with pytest.raises(TypeError, match="'flush_intervall' \\(did you mean 'flush_interval'"):
        AIDPLogger(endpoint=endpoint, flush_intervall=0.5)


def test_run_name_wins_over_an_mlflow_run_name_tag(
    tmp_path: Path, endpoint: Endpoint, url: str, fresh_experiment: str
) -> None:
    """0.1: both were sent, runs/create answered 400, and every point was lost."""
    logger = AIDPLogger(
        experiment_name=fresh_experiment,
        run_name="mine",
        tags={"mlflow.runName": "theirs"},
        endpoint=endpoint,
    )
    _trainer(tmp_path, logger=logger, max_epochs=1).fit(TinyModule())
    stored = get_run(url, logger.version)
    assert stored["info"]["run_name"] == "mine"
    assert [s for s, _ in _server_points(url, logger.version)["train_loss_step"]] == list(range(8))


def test_a_refused_run_keeps_its_points_in_the_spool(
    tmp_path: Path, aidp_gateway: Any, fresh_experiment: str
) -> None:
    """A definite refusal (401: credentials the server does not know) costs no point: one
    warning, the run goes on offline, and the spool holds every point for `sync`."""
    from aidp_metrics import MetricsClient
    from aidp_metrics._connection.auth import BearerToken

    stranger = Endpoint.aidp(
        aidp_gateway.instance_id, aidp_gateway.workspace_key, endpoint=aidp_gateway.url
    )

    client = MetricsClient(stranger, auth=BearerToken("not-a-signature"))
    logger = AIDPLogger(experiment_name=fresh_experiment, client=client)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _trainer(tmp_path, logger=logger, max_epochs=1).fit(TinyModule())
    ours = [str(w.message) for w in caught if issubclass(w.category, AIDPMetricsWarning)]
    refusals = [message for message in ours if "401" in message]
    assert len(refusals) == 1  # said once, however many points follow
    assert "aidp-metrics sync" in refusals[0]
    # ...and the end of the run says where the points are and how to deliver them.
    saved = [message for message in ours if "are saved in" in message]
    assert len(saved) <= 1
    assert len(ours) == len(refusals) + len(saved)
    run = logger.run
    assert run.offline
    assert run.stats.logged > 0
    assert run.stats.pending == run.stats.logged  # every point waits in the spool
    assert run.stats.spooled == run.stats.logged


def test_a_run_you_started_is_logged_into_and_left_running(
    tmp_path: Path, endpoint: Endpoint, url: str, fresh_experiment: str
) -> None:
    """`run=`: every point Lightning hands over lands in the user's run, at its step;
    finalize (success, and failed after a crash) only flushes; the user ends it."""
    from aidp_metrics import Run

    run = Run.start(experiment_name=fresh_experiment, run_name="mine", endpoint=endpoint)
    run.log_metric("before", 1.0, step=0)
    with pytest.raises(ValueError, match="run_id= cannot apply"):
        AIDPLogger(run=run, run_id=run.run_id)
    logger = AIDPLogger(run=run, tags={"team": "vision"})
    assert logger.version == run.run_id
    csv_logger = CSVLogger(str(tmp_path), name="csv")
    trainer = _trainer(tmp_path, logger=[logger, csv_logger], max_epochs=1)
    trainer.fit(TinyModule())
    assert logger.run is run
    assert not run.ended
    assert _status(url, run.run_id) == "RUNNING"  # finalize("success") flushed it
    server = _server_points(url, run.run_id)
    expected = {**_csv_points(csv_logger), "before": [(0, 1.0)]}
    assert _as_sets(server) == _as_sets(expected)
    assert [s for s, _ in server["train_loss_step"]] == list(range(8))
    assert [s for s, _ in server["val_loss_epoch"]] == [7]
    stored = get_run(url, run.run_id)
    assert stored["info"]["run_name"] == "mine"
    assert sorted((p["key"], p["value"]) for p in stored["data"]["params"]) == [
        ("batch_size", "8"),
        ("fail_at_step", "None"),
        ("lr", "0.05"),
    ]
    assert {t["key"]: t["value"] for t in stored["data"]["tags"]}["team"] == "vision"

    # A crash: Lightning's finalize("failed") leaves the user's run RUNNING too.
    crashing = _trainer(tmp_path, logger=logger, max_epochs=1)
    with pytest.raises(RuntimeError, match="boom"):
        crashing.fit(TinyModule(fail_at_step=2))
    assert run.status_on_exit == "FINISHED"  # the user's, never changed by the logger
    assert _status(url, run.run_id) == "RUNNING"
    # the second fit's steps 0 and 1 (before the crash at 2) came in too
    steps = [s for s, _ in _server_points(url, run.run_id)["train_loss_step"]]
    assert steps == sorted([*range(8), 0, 1])
    run.end()
    assert _status(url, run.run_id) == "FINISHED"
    assert [r["info"]["run_id"] for r in runs_in_experiment(url, fresh_experiment)] == [run.run_id]


# -- watch: per-parameter norms ------------------------------------------------------------


class NormRecordingModule(TinyModule):
    """Two layers; records Lightning's own `grad_norm` in `on_before_optimizer_step`."""

    def __init__(self, batch_size: int = 8) -> None:
        super().__init__(batch_size=batch_size)
        self.hidden = nn.Linear(4, 4)
        self.lightnings: dict[int, dict[str, float]] = {}

    def forward(self, x: Any) -> Any:
        return self.layer(torch.relu(self.hidden(x)))

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        from lightning.pytorch.utilities import grad_norm

        norms = grad_norm(self, norm_type=2)
        self.lightnings[self.trainer.global_step] = {k: float(v) for k, v in norms.items()}


@pytest.mark.parametrize(
    ("accumulate", "precision"), [(1, "32-true"), (2, "bf16-mixed")], ids=["fp32", "accum-bf16"]
)
def test_watch_equals_lightnings_grad_norm_at_the_selected_steps(
    tmp_path: Path,
    endpoint: Endpoint,
    url: str,
    fresh_experiment: str,
    accumulate: int,
    precision: str,
) -> None:
    from torch.optim import optimizer as optimizer_module

    hooks = len(optimizer_module._global_optimizer_pre_hooks)
    logger = AIDPLogger(experiment_name=fresh_experiment, endpoint=endpoint)
    model = NormRecordingModule(batch_size=4)
    logger.watch(model, log="all", log_freq=3)
    trainer = _trainer(
        tmp_path,
        logger=logger,
        accumulate_grad_batches=accumulate,
        precision=precision,
        limit_val_batches=0,
    )
    trainer.fit(model)
    assert len(optimizer_module._global_optimizer_pre_hooks) == hooks  # gone at finalize

    server = _server_points(url, logger.version)
    names = [name for name, _ in model.named_parameters()]
    # the k-th optimizer step for k = 3, 6, ...; at the step Lightning logs its metrics at
    selected = [s for s in range(trainer.global_step) if (s + 1) % 3 == 0]
    assert selected
    for name in names:
        assert [s for s, _ in server[f"weight_norm/{name}"]] == selected
        points = server[f"grad_norm/{name}"]
        assert [s for s, _ in points] == selected
        for step, value in points:
            assert value == pytest.approx(model.lightnings[step][f"grad_2.0_norm/{name}"], 1e-6)
    for step, value in server["grad_norm/total"]:
        assert value == pytest.approx(model.lightnings[step]["grad_2.0_norm_total"], rel=1e-6)
    # per-parameter keys line up with the train loss of the same step
    assert set(selected) <= {s for s, _ in server["train_loss_step"]}
    pickle.loads(pickle.dumps(model))


def test_watch_reads_gradients_after_lightnings_clipping(
    tmp_path: Path, endpoint: Endpoint, url: str, fresh_experiment: str
) -> None:
    logger = AIDPLogger(experiment_name=fresh_experiment, endpoint=endpoint)
    model = NormRecordingModule()
    logger.watch(model, log_freq=1)
    trainer = _trainer(tmp_path, logger=logger, gradient_clip_val=1e-3, limit_val_batches=0)
    trainer.fit(model)
    server = _server_points(url, logger.version)
    assert len(server["grad_norm/total"]) == trainer.global_step
    for step, value in server["grad_norm/total"]:
        assert model.lightnings[step]["grad_2.0_norm_total"] > 1e-2  # before clipping
        assert value == pytest.approx(1e-3, rel=1e-3)  # what the optimizer applied


# -- log_model: checkpoints as artifacts, in MLFlowLogger's layout -------------------------


def _fit_with_checkpoints(tmp_path: Path, logger: Any) -> tuple[Any, dict[str, bytes]]:
    """Three epochs, top 2 by val_loss_epoch and last.ckpt; what each checkpoint held when
    the logger was told of its save (by artifact directory: the stem)."""
    L.seed_everything(0)
    checkpoint = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", monitor="val_loss_epoch", save_top_k=2, save_last=True
    )
    seen: dict[str, bytes] = {}
    told = logger.after_save_checkpoint

    def after_save_checkpoint(callback: Any) -> None:
        for path in (tmp_path / "ckpt").glob("*.ckpt"):
            seen[path.stem] = path.read_bytes()
        told(callback)

    logger.after_save_checkpoint = after_save_checkpoint
    trainer = _trainer(
        tmp_path, logger=logger, max_epochs=3, enable_checkpointing=True, callbacks=[checkpoint]
    )
    trainer.fit(TinyModule())
    return checkpoint, seen


@pytest.mark.parametrize("log_model", [True, "all"])
def test_log_model_uploads_checkpoints_in_mlflowloggers_layout(
    url: str, fresh_experiment: str, tmp_path: Path, log_model: Any
) -> None:
    import yaml
    from lightning.pytorch.loggers import MLFlowLogger

    theirs = MLFlowLogger(experiment_name=fresh_experiment, tracking_uri=url, log_model=log_model)
    _fit_with_checkpoints(tmp_path / "mlflow", theirs)
    logger = AIDPLogger(experiment_name=fresh_experiment, tracking_uri=url, log_model=log_model)
    checkpoint, seen = _fit_with_checkpoints(tmp_path / "aidp", logger)
    run_id = logger.run_id
    assert run_id is not None

    ours = artifact_files(url, run_id)
    assert sorted(ours) == sorted(artifact_files(url, theirs.run_id))
    kept = {Path(p).stem for p in checkpoint.best_k_models} | {"last"}
    if log_model is True:  # the checkpoints kept at the end
        stems = kept
    else:  # each as it was saved: also the one the top 2 dropped
        stems = {p.split("/")[0] for p in ours}
        assert stems > kept
        assert stems == set(seen)
    assert sorted(ours) == sorted(
        f"{stem}/{name}"
        for stem in stems
        for name in (f"{stem}.ckpt", "metadata.yaml", "aliases.txt")
    )
    for stem in stems:
        assert artifact_bytes(url, run_id, f"{stem}/{stem}.ckpt") == seen[stem], stem
        if log_model is True:  # "all": the aliases when it was saved (compared below)
            aliases = artifact_bytes(url, run_id, f"{stem}/aliases.txt").decode()
            best = stem == Path(checkpoint.best_model_path).stem
            assert aliases == ("['latest', 'best']" if best else "['latest']"), stem
        metadata = yaml.safe_load(artifact_bytes(url, run_id, f"{stem}/metadata.yaml"))
        assert metadata["original_filename"] == f"{stem}.ckpt"
        settings = {
            "monitor": "val_loss_epoch",
            "mode": "min",
            "save_last": True,
            "save_top_k": 2,
            "save_weights_only": False,
            "_every_n_train_steps": 0,
            "_every_n_val_epochs": 1,
        }
        # the ones this Lightning has (`_every_n_val_epochs` is gone from newer ones)
        assert metadata["Checkpoint"] == {
            k: v for k, v in settings.items() if hasattr(checkpoint, k)
        }
        path = str(tmp_path / "aidp" / "ckpt" / f"{stem}.ckpt")
        if path in checkpoint.best_k_models:
            assert metadata["score"] == pytest.approx(float(checkpoint.best_k_models[path]))
    # the metadata as MLFlowLogger writes it, byte for byte
    for stem in stems:
        for name in ("metadata.yaml", "aliases.txt"):
            mine = artifact_bytes(url, run_id, f"{stem}/{name}")
            assert mine == artifact_bytes(url, theirs.run_id, f"{stem}/{name}"), (stem, name)


def test_log_model_false_uploads_nothing(url: str, fresh_experiment: str, tmp_path: Path) -> None:
    logger = AIDPLogger(experiment_name=fresh_experiment, tracking_uri=url)
    _fit_with_checkpoints(tmp_path, logger)
    assert logger.run_id is not None
    assert artifact_files(url, logger.run_id) == {}
