"""Train on Spark as an AIDP Workbench notebook does; stream the metrics to AIDP MLOps or MLflow.

1. `TorchDistributor`: Lightning DDP over 2 processes (CPU, gloo) with `AIDPLogger`; only
   global rank 0 logs, so the job makes one run.
2. `groupBy(...).applyInPandas(...)`: one small torch model per group, one `Run` per group,
   ended inside the function (Spark reuses its Python workers: no exit hook ends a run there).

Configured only through the environment, e.g. for a local MLflow server:

    MLFLOW_TRACKING_URI=http://127.0.0.1:5000 MLFLOW_EXPERIMENT_NAME=spark-demo \\
        python examples/spark_example.py

or for AIDP: AIDP_INSTANCE_ID, AIDP_WORKSPACE_KEY, OCI_CLI_REGION (plus your OCI config).
EPOCHS sets the Lightning epochs (default 3), GROUPS the number of groups (default 4). The
experiment (AIDP_EXPERIMENT_NAME / MLFLOW_EXPERIMENT_NAME, else "spark-example") is read on
the driver and passed to the functions; the endpoint is read by Spark's Python workers and
TorchDistributor's processes from their environment: in `local[*]` mode they inherit the
driver's; on a cluster, set it for the executors (`spark.executorEnv.<NAME>`).
In a notebook, `spark` exists already: call `main(spark)`.
Needs `pip install pyspark pandas pyarrow "aidp-metrics[lightning]"` and Java 17.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def train_ddp(experiment: str, epochs: int) -> str | None:
    """Runs in each of TorchDistributor's processes (torchrun sets RANK, WORLD_SIZE, ...)."""
    import lightning.pytorch as L
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from aidp_metrics.integrations.lightning import AIDPLogger

    class Regressor(L.LightningModule):
        def __init__(self, lr: float = 0.05) -> None:
            super().__init__()
            self.save_hyperparameters()  # sent to the run as params
            self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = nn.functional.mse_loss(self.net(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    def loader(n: int, seed: int) -> DataLoader:
        x = torch.randn(n, 8, generator=torch.Generator().manual_seed(seed))
        return DataLoader(TensorDataset(x, x[:, :4].sum(dim=1, keepdim=True)), batch_size=32)

    torch.set_num_threads(1)
    # torchrun's variables give the Trainer its shape: local_mode=True is 1 node of
    # num_processes processes, local_mode=False num_processes nodes of 1 process each.
    per_node = int(os.environ["LOCAL_WORLD_SIZE"])
    logger = AIDPLogger(experiment_name=experiment, run_name="spark-ddp")  # endpoint: environment
    trainer = L.Trainer(
        accelerator="cpu",
        devices=per_node,
        num_nodes=int(os.environ["WORLD_SIZE"]) // per_node,
        strategy="ddp",
        max_epochs=epochs,
        logger=logger,
        log_every_n_steps=2,
        enable_progress_bar=False,
        enable_checkpointing=False,
    )
    trainer.fit(Regressor(), loader(512, 0), loader(128, 1))
    return logger.version if trainer.global_rank == 0 else None


def train_group(pdf: Any, experiment: str) -> Any:
    """Runs once per group on a Spark Python worker."""
    import pandas as pd
    import torch

    from aidp_metrics import Run

    group = int(pdf["group"].iloc[0])
    x = torch.tensor(pdf[["x"]].to_numpy(), dtype=torch.float32)
    y = torch.tensor(pdf[["y"]].to_numpy(), dtype=torch.float32)
    torch.manual_seed(group)
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    # The run ends when the block does, inside this call: the worker that runs it is reused
    # for the next group or task and is never shut down normally.
    with Run.start(experiment_name=experiment, run_name=f"group-{group}") as run:
        run.log_params({"group": group, "lr": 0.1})
        for step in range(20):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            optimizer.step()
            run.log_metrics({"loss": loss.item()}, step=step)
    return pd.DataFrame({"group": [group], "run_id": [run.run_id], "loss": [loss.item()]})


def main(spark: Any) -> None:
    from pyspark.ml.torch.distributor import TorchDistributor
    from pyspark.sql import functions as F

    # Read here, on the driver, and passed on: the workers need not share its environment.
    experiment = (
        os.environ.get("AIDP_EXPERIMENT_NAME")
        or os.environ.get("MLFLOW_EXPERIMENT_NAME")
        or "spark-example"
    )
    epochs = int(os.environ.get("EPOCHS", "3"))
    distributor = TorchDistributor(num_processes=2, local_mode=True, use_gpu=False)
    print(f"ddp: run {distributor.run(train_ddp, experiment, epochs)}")

    groups = int(os.environ.get("GROUPS", "4"))
    df = (
        spark.range(groups * 50)
        .withColumn("group", F.col("id") % groups)
        .withColumn("x", F.rand(seed=0))
        .withColumn("y", F.col("x") * (F.col("group") + 1.0))
    )
    result = df.groupBy("group").applyInPandas(
        # a lambda, not functools.partial: PySpark reads the function's type hints and warns
        # that it cannot read a partial's
        lambda pdf: train_group(pdf, experiment),
        schema="group long, run_id string, loss double",
    )
    # sorted here, not with orderBy(): a Spark sort samples its input first, which can run
    # the training function a second time
    for row in sorted(result.collect(), key=lambda row: row["group"]):
        print(f"group {row['group']}: run {row['run_id']}, final loss {row['loss']:.4f}")


if __name__ == "__main__":
    from pyspark.sql import SparkSession

    # Spark's Python workers run this interpreter (the one with aidp-metrics installed).
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    session = (
        SparkSession.builder.master("local[2]")
        .appName("aidp-metrics-spark-example")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    try:
        main(session)
    finally:
        session.stop()
