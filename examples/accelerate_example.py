"""Train a small regressor in a plain PyTorch loop with Hugging Face Accelerate and stream
its metrics to AIDP MLOps or an MLflow server through `accelerator.log`.

Configured only through the environment:

    MLFLOW_TRACKING_URI    e.g. http://127.0.0.1:5000 -- or AIDP_INSTANCE_ID and
                           AIDP_WORKSPACE_KEY (+ OCI credentials) for AI Data Platform
    AIDP_EXPERIMENT_NAME / MLFLOW_EXPERIMENT_NAME   the project (experiment), default
                           "accelerate-demo"
    AIDP_RUN_ID / MLFLOW_RUN_ID                     continue an existing run instead
    EPOCHS                 training epochs (default 5); RUN_NAME the run's name

    MLFLOW_TRACKING_URI=http://127.0.0.1:5000 python examples/accelerate_example.py
    MLFLOW_TRACKING_URI=... torchrun --nproc-per-node 2 examples/accelerate_example.py

On several processes (torchrun, `accelerate launch`) only the main process logs, into one run.
"""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from aidp_metrics.integrations.accelerate import AIDPTracker

FEATURES = 8


def make_data(samples: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(FEATURES, 1, generator=torch.Generator().manual_seed(42))
    x = torch.randn(samples, FEATURES, generator=generator)
    y = torch.tanh(x @ weights) + 0.1 * torch.randn(samples, 1, generator=generator)
    return TensorDataset(x, y)


def main() -> None:
    config = {
        "lr": 3e-3,
        "batch_size": 32,
        "epochs": int(os.environ.get("EPOCHS", "5")),
        "gradient_accumulation_steps": 2,
        "model": {"hidden": 32, "layers": 2},
    }
    project = (
        os.environ.get("AIDP_EXPERIMENT_NAME")
        or os.environ.get("MLFLOW_EXPERIMENT_NAME")
        or "accelerate-demo"
    )
    accelerator = Accelerator(
        log_with=AIDPTracker(run_name=os.environ.get("RUN_NAME")),
        gradient_accumulation_steps=config["gradient_accumulation_steps"],
    )
    accelerator.init_trackers(project, config=config)  # the run, with config as params

    torch.manual_seed(0)
    hidden = config["model"]["hidden"]
    model = nn.Sequential(nn.Linear(FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config["lr"])
    train = DataLoader(make_data(2048, 0), batch_size=config["batch_size"], shuffle=True)
    val = DataLoader(make_data(512, 1), batch_size=128)
    steps = config["epochs"] * len(train) // config["gradient_accumulation_steps"]
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    model, optimizer, train, val, scheduler = accelerator.prepare(
        model, optimizer, train, val, scheduler
    )

    step = 0  # optimizer steps: the x axis of every curve
    for epoch in range(config["epochs"]):
        model.train()
        for x, y in train:
            with accelerator.accumulate(model):
                loss = nn.functional.mse_loss(model(x), y)
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:  # an optimizer step was taken
                step += 1
                if step % 5 == 0:
                    accelerator.log(
                        {"train_loss": loss.item(), "lr": scheduler.get_last_lr()[0]}, step=step
                    )
        model.eval()
        errors = []
        with torch.no_grad():
            for x, y in val:
                errors.append(accelerator.gather_for_metrics((model(x) - y).pow(2)))
        val_loss = torch.cat(errors).mean().item()
        accelerator.log({"val_loss": val_loss, "epoch": epoch + 1}, step=step)
        accelerator.print(f"epoch {epoch + 1}: val_loss {val_loss:.4f}")

    run_id = accelerator.get_tracker("aidp").run_id if accelerator.is_main_process else None
    accelerator.end_training()  # flushes and marks the run FINISHED
    accelerator.print(f"run {run_id}")


if __name__ == "__main__":
    main()
