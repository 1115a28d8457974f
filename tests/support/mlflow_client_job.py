"""MLflow's own client against the tracking URI in the environment, in a child process.

    python -m tests.support.mlflow_client_job fluent|lightning|artifacts EXPERIMENT [DIR]

`fluent`: `set_experiment` (of a new name), `start_run`, `log_param`, `log_metric`,
`log_metrics`. `lightning`: a tiny model trained for 4 steps with Lightning's `MLFlowLogger`.
`artifacts`: `MlflowClient.log_artifact` of every file in `DIR/upload` (one run), then
`download_artifacts` of the run's root into `DIR/download`.
Prints one JSON line: the run id and experiment id.
"""

from __future__ import annotations

import json
import os
import sys


def fluent(experiment: str) -> dict[str, str]:
    import mlflow

    mlflow.set_experiment(experiment)
    with mlflow.start_run(run_name="fluent") as run:
        mlflow.log_param("lr", 0.1)
        mlflow.log_metric("loss", 0.5, step=1)
        mlflow.log_metrics({"loss": 0.25, "acc": 0.75}, step=2)
    return {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id}


def lightning(experiment: str) -> dict[str, str]:
    import lightning as L
    import torch
    from lightning.pytorch.loggers import MLFlowLogger
    from torch.utils.data import DataLoader, TensorDataset

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)
            self.save_hyperparameters({"lr": 0.1})

        def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.layer(x), y)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(16, 4), torch.randn(16, 1))
    logger = MLFlowLogger(
        experiment_name=experiment,
        tracking_uri=os.environ["MLFLOW_TRACKING_URI"],
        run_name="lightning",
    )
    trainer = L.Trainer(
        max_epochs=1,
        logger=logger,
        log_every_n_steps=1,
        accelerator="cpu",
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Tiny(), DataLoader(data, batch_size=4))
    return {"run_id": str(logger.run_id), "experiment_id": str(logger.experiment_id)}


def artifacts(experiment: str) -> dict[str, str]:
    import mlflow

    directory = sys.argv[3]
    upload = os.path.join(directory, "upload")
    client = mlflow.MlflowClient()
    experiment_id = client.create_experiment(experiment)
    run = client.create_run(experiment_id, run_name="artifacts")
    run_id = run.info.run_id
    for name in sorted(os.listdir(upload)):
        client.log_artifact(run_id, os.path.join(upload, name))
    client.set_terminated(run_id)
    download = os.path.join(directory, "download")
    os.makedirs(download)
    client.download_artifacts(run_id, "", download)
    return {
        "run_id": run_id,
        "experiment_id": experiment_id,
        "artifact_uri": str(run.info.artifact_uri),
    }


if __name__ == "__main__":
    job, name = sys.argv[1], sys.argv[2]
    jobs = {"fluent": fluent, "lightning": lightning, "artifacts": artifacts}
    print(json.dumps(jobs[job](name)))
