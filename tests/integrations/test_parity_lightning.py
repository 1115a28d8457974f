"""Parity with Lightning's `MLFlowLogger`: one training script, run once with it and once
with `AIDPLogger` (only the class changes), read back from the same server with MLflow's
client and compared. Every difference left is listed in docs/frameworks/lightning.md."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
L = pytest.importorskip("lightning.pytorch")
pytest.importorskip("mlflow")

from lightning.pytorch.loggers import MLFlowLogger  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from aidp_metrics.integrations.lightning import AIDPLogger  # noqa: E402
from tests.integrations.parity import (  # noqa: E402
    GIT_DIFFERENCES,
    changed,
    differences,
    read_run,
    run_as_script,
)

pytestmark = pytest.mark.lightning
torch.set_num_threads(1)

# The differences docs/frameworks/lightning.md lists for Lightning, and why (see there).
EXPECTED = {
    # We log what the value is; MLFlowLogger logs str(): "functools.partial(<class ...>, lr=0.1)".
    changed(
        "param",
        "optimizer",
        "functools.partial(<class 'torch.optim.sgd.SGD'>, lr=0.1)",
        "functools.partial(torch.optim.sgd.SGD, lr=0.1)",
    ),
} | GIT_DIFFERENCES


class Script(L.LightningModule):  # type: ignore[misc]
    """The user's module: hyperparameters, `self.log`, and `logger.experiment` calls."""

    def __init__(self, lr: float = 0.05, optimizer: Any = None, layers: Any = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = nn.Linear(4, 1)

    def on_train_start(self) -> None:
        experiment, run_id = self.logger.experiment, self.logger.run_id
        experiment.set_tag(run_id, "phase", "train")
        experiment.log_param(run_id, "seed", 7)

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        loss = nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        self.logger.experiment.log_metric(
            self.logger.run_id, "custom", float(batch_idx), step=self.global_step
        )
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def _train(logger: Any, root: Path) -> str:
    data = TensorDataset(torch.randn(16, 4), torch.randn(16, 1))
    module = Script(
        optimizer=functools.partial(torch.optim.SGD, lr=0.1), layers={"hidden": 8, "act": "relu"}
    )
    trainer = L.Trainer(
        max_epochs=2,
        limit_val_batches=1,
        log_every_n_steps=1,
        logger=logger,
        default_root_dir=root,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, DataLoader(data, batch_size=8), DataLoader(data, batch_size=8))
    run_id: str = logger.run_id
    return run_id


def test_same_script_same_run(
    mlflow_server: Any, fresh_experiment: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_as_script(monkeypatch, __file__)  # a source file inside this git checkout
    runs = {}
    for name, logger_class in (("mlflow", MLFlowLogger), ("ours", AIDPLogger)):
        logger = logger_class(
            fresh_experiment,  # positional, as MLFlowLogger's first parameter
            run_name="parity",
            tracking_uri=mlflow_server.url,
            tags={"team": "vision"},
            synchronous=True,
        )
        runs[name] = read_run(
            mlflow_server.url, _train(logger, tmp_path / name), tag_keys=("team", "phase")
        )
    assert runs["ours"].steps["custom"] == [0, 1, 2, 3]  # experiment.log_metric(run_id, ...)
    assert runs["ours"].params["layers/hidden"] == "8"
    assert runs["ours"].tags["phase"] == "train"
    assert differences(runs["mlflow"], runs["ours"]) == EXPECTED


def test_experiment_name_is_the_first_argument(mlflow_server: Any, fresh_experiment: str) -> None:
    logger = AIDPLogger(fresh_experiment, tracking_uri=mlflow_server.url)
    logger.log_metrics({"acc": 0.5}, step=1)
    logger.finalize("success")
    assert read_run(mlflow_server.url, logger.run_id).experiment == fresh_experiment
    assert logger.name == logger.run.experiment_id  # MLFlowLogger.name: the experiment id


def test_misspelt_option_names_the_closest_parameter() -> None:
    with pytest.raises(TypeError, match=r"'tracking_url' \(did you mean 'tracking_uri'\?\)"):
        AIDPLogger(tracking_url="http://127.0.0.1:1")


def test_other_run_ids_are_not_logged(mlflow_server: Any, fresh_experiment: str) -> None:
    from aidp_metrics import AIDPMetricsWarning

    logger = AIDPLogger(fresh_experiment, tracking_uri=mlflow_server.url)
    with pytest.warns(AIDPMetricsWarning, match="names another run than this logger's"):
        logger.experiment.log_metric("someone-else", "acc", 0.5, step=1)
    logger.experiment.log_metric(logger.run_id, "acc", 0.75, step=2)
    logger.finalize("success")
    assert read_run(mlflow_server.url, logger.run_id).steps == {"acc": [2]}


def test_experiment_artifact_calls_upload_into_the_run(
    mlflow_server: Any, fresh_experiment: str, tmp_path: Path
) -> None:
    """The Lightning habit `logger.experiment.log_artifact(logger.run_id, path)` (and the
    other artifact calls of `MlflowClient`) uploads into the logger's run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mlflow import MlflowClient

    path = tmp_path / "confusion.csv"
    path.write_bytes(b"1,0\n0,1\n")
    logger = AIDPLogger(fresh_experiment, tracking_uri=mlflow_server.url)
    experiment, run_id = logger.experiment, logger.run_id
    experiment.log_artifact(run_id, str(path), "eval")
    experiment.log_text(run_id, "hello", "notes/hello.txt")
    experiment.log_dict(run_id, {"lr": 0.1}, "config.json")
    figure = plt.figure()
    experiment.log_figure(run_id, figure, "plots/fig.png", save_kwargs={"dpi": 20})
    plt.close(figure)
    path.write_bytes(b"rewritten after logging")  # the logged bytes are what arrives
    logger.finalize("success")

    client = MlflowClient(mlflow_server.url)
    out = Path(client.download_artifacts(run_id, "", str(tmp_path / "out")))
    assert (out / "eval" / "confusion.csv").read_bytes() == b"1,0\n0,1\n"
    assert (out / "notes" / "hello.txt").read_text() == "hello"
    assert json.loads((out / "config.json").read_text()) == {"lr": 0.1}
    assert (out / "plots" / "fig.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert logger.run.stats.artifacts_uploaded == 4
