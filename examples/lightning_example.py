"""Train a small regressor with Lightning and stream its metrics to AIDP MLOps or MLflow.

Configured only through the environment, e.g. for a local MLflow server:

    MLFLOW_TRACKING_URI=http://127.0.0.1:5000 MLFLOW_EXPERIMENT_NAME=lightning-demo \\
        python examples/lightning_example.py

or for AIDP: AIDP_INSTANCE_ID, AIDP_WORKSPACE_KEY, OCI_CLI_REGION (plus your OCI config),
and optionally AIDP_EXPERIMENT_NAME / AIDP_RUN_ID to log into an existing run.
EPOCHS sets the number of epochs (default 5), RUN_NAME the run's name.
"""

from __future__ import annotations

import os

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, random_split

from aidp_metrics.integrations.lightning import AIDPLogger


class Regressor(L.LightningModule):
    def __init__(self, lr: float = 3e-3, hidden: int = 32) -> None:
        super().__init__()
        self.save_hyperparameters()  # sent to the run as params
        self.net = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y), prog_bar=True)

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
        return [optimizer], [scheduler]


def data(n: int = 2048) -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, :4].sum(dim=1, keepdim=True) - x[:, 4:].prod(dim=1, keepdim=True)).tanh()
    train, val = random_split(TensorDataset(x, y), [0.8, 0.2], generator=g)
    return DataLoader(train, batch_size=64, shuffle=True), DataLoader(val, batch_size=256)


def main() -> None:
    L.seed_everything(0)
    train_loader, val_loader = data()
    logger = AIDPLogger(run_name=os.environ.get("RUN_NAME"))  # everything else: environment
    trainer = L.Trainer(
        max_epochs=int(os.environ.get("EPOCHS", "5")),
        accelerator="cpu",
        logger=logger,
        log_every_n_steps=5,
        callbacks=[
            LearningRateMonitor(logging_interval="epoch"),
            ModelCheckpoint(monitor="val_loss", save_last=True),  # paths become run tags
        ],
    )
    trainer.fit(Regressor(), train_loader, val_loader)
    trainer.validate(dataloaders=val_loader, ckpt_path="best")  # same run, still FINISHED after
    print(f"run {logger.version} in experiment {logger.name!r}")


if __name__ == "__main__":
    main()
