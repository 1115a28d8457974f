"""Train a small regressor that writes only TensorBoard event files (torch's SummaryWriter)
and get its curves into AIDP MLOps or an MLflow server, two ways:

1. live: `run.follow_tensorboard(logdir)` tails the event files into an open run while the
   loop trains (tags written in the directory itself are the keys, `train_loss` and `lr`;
   those in its `eval` subdirectory become `eval/<tag>`);
2. after the fact: `aidp-metrics tensorboard LOGDIR` imports a log directory (one run per
   directory that holds event files); running it again imports only what is new.

Configured only through the environment:

    MLFLOW_TRACKING_URI    e.g. http://127.0.0.1:5000 -- or AIDP_INSTANCE_ID and
                           AIDP_WORKSPACE_KEY (+ OCI credentials) for AI Data Platform
    AIDP_EXPERIMENT_NAME / MLFLOW_EXPERIMENT_NAME   the experiment, default "tensorboard-demo"
    EPOCHS                 training epochs (default 5)
    OUTPUT_DIR             where the event files go (default ./tensorboard-demo)

    pip install "aidp-metrics[tensorboard]" torch
    MLFLOW_TRACKING_URI=http://127.0.0.1:5000 python examples/tensorboard_example.py
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.tensorboard import SummaryWriter

from aidp_metrics import MetricsClient, Run
from aidp_metrics.cli import main as aidp_metrics_cli

FEATURES = 8


def make_data(samples: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(FEATURES, 1, generator=torch.Generator().manual_seed(42))
    x = torch.randn(samples, FEATURES, generator=generator)
    y = torch.tanh(x @ weights) + 0.1 * torch.randn(samples, 1, generator=generator)
    return TensorDataset(x, y)


def train(logdir: Path, epochs: int) -> None:
    """A training loop that knows nothing about aidp-metrics: it writes TensorBoard files."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(FEATURES, 32), nn.ReLU(), nn.Linear(32, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    train_data = DataLoader(make_data(1024, 0), batch_size=32, shuffle=True)
    val = DataLoader(make_data(256, 1), batch_size=128)
    writer = SummaryWriter(str(logdir))  # train/* scalars
    eval_writer = SummaryWriter(str(logdir / "eval"))  # a subdirectory: eval/* keys
    step = 0
    for epoch in range(epochs):
        for x, y in train_data:
            loss = nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            writer.add_scalar("train_loss", loss.item(), step)
            writer.add_scalar("lr", optimizer.param_groups[0]["lr"], step, new_style=True)
        with torch.no_grad():
            val_loss = sum(nn.functional.mse_loss(model(x), y).item() for x, y in val) / len(val)
        eval_writer.add_scalar("loss", val_loss, step)
        writer.add_histogram("weights", model[0].weight, step)  # not a scalar: skipped
        print(f"epoch {epoch + 1}: val loss {val_loss:.4f}")
    writer.close()  # close (or flush) the writers before the run ends: it reads the files
    eval_writer.close()


def main() -> int:
    epochs = int(os.environ.get("EPOCHS", "5"))
    experiment = (
        os.environ.get("AIDP_EXPERIMENT_NAME")
        or os.environ.get("MLFLOW_EXPERIMENT_NAME")
        or "tensorboard-demo"
    )
    root = Path(os.environ.get("OUTPUT_DIR", "tensorboard-demo"))

    # 1. Live: the run follows the log directory while the loop trains.
    live = root / "live"
    with Run.start(experiment_name=experiment, run_name="tensorboard-live") as run:
        run.follow_tensorboard(live)
        train(live, epochs)
    print(f"live: run {run.run_id}, {run.stats.delivered} points delivered")

    # 2. After the fact: import a log directory written without aidp-metrics.
    offline = root / "offline"
    train(offline, epochs)
    status = aidp_metrics_cli(["tensorboard", str(offline), "--experiment-name", experiment])
    status = status or aidp_metrics_cli(
        ["tensorboard", str(offline), "--experiment-name", experiment]
    )  # again: "up to date", nothing imported twice

    with MetricsClient() as client:
        for key in ("train_loss", "eval/loss", "lr"):
            points = client.get_metric_history(run.run_id, key)
            print(f"live run: {key}: {len(points)} points, last {points[-1].value:.4f}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
