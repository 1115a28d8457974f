"""The functions Spark runs for tests/integrations/test_spark.py (no tests here).

They are pickled by reference, so the Spark workers and TorchDistributor's torchrun
processes import this module (the test puts the repository on their PYTHONPATH).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

GROUPS = 6
ROWS_PER_GROUP = 16
GROUP_STEPS = 5  # optimizer steps per group (full batch)
OUR_THREADS = ("aidp-metrics-",)


def lightning_ddp(url: str, experiment: str, out_dir: str) -> str | None:
    """A TorchDistributor training function: Lightning DDP on CPU/gloo with `AIDPLogger`.

    Works in both modes: `local_mode=True` runs 2 processes on one node, `local_mode=False`
    2 nodes of 1 process (barrier tasks); the Trainer's shape comes from torchrun's variables.
    64 samples over 2 ranks, batch 8, 2 epochs: 8 optimizer steps, validation at 3 and 7.
    Global rank 0 writes the losses it logged (in order) to OUT_DIR/rank0.json.
    """
    import lightning.pytorch as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from aidp_metrics import Endpoint
    from aidp_metrics.integrations.lightning import AIDPLogger

    torch.set_num_threads(1)
    local_world = int(os.environ["LOCAL_WORLD_SIZE"])
    nodes = int(os.environ["WORLD_SIZE"]) // local_world

    def loader(n: int, seed: int) -> DataLoader[tuple[torch.Tensor, ...]]:
        x = torch.randn(n, 4, generator=torch.Generator().manual_seed(seed))
        return DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=8)

    seen: list[float] = []

    class Tiny(L.LightningModule):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
            loss = torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])
            self.log("train_loss", loss)
            self.log("rank", float(self.global_rank))
            seen.append(float(loss.detach()))
            return loss

        def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
            self.log("val_loss", torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1]))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.05)

    logger = AIDPLogger(experiment_name=experiment, endpoint=Endpoint.mlflow(url))
    trainer = L.Trainer(
        accelerator="cpu",
        devices=local_world,
        num_nodes=nodes,
        strategy="ddp",
        max_epochs=2,
        logger=logger,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=out_dir,
    )
    trainer.fit(Tiny(), loader(64, 0), loader(32, 1))
    run_id = logger._handle.run_id
    if trainer.global_rank == 0:
        Path(out_dir, "rank0.json").write_text(json.dumps({"run_id": run_id, "loss": seen}))
    # Every rank meets before the group is torn down (gloo can abort at exit otherwise).
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    return run_id if trainer.global_rank == 0 else None


def train_group(pdf: Any, url: str, experiment: str, job: int) -> Any:
    """An `applyInPandas` function: a tiny torch regression per group, one `Run` per group,
    ended inside the function (Spark's reused workers never run exit hooks).

    Returns one row per group: the run id, the losses it logged (JSON, in step order), the
    worker's pid, and what an earlier group or task left behind in this worker: open runs
    and our threads (both must be none)."""
    import pandas as pd
    import torch

    from aidp_metrics import Run
    from aidp_metrics._run import lifecycle

    torch.set_num_threads(1)
    group = int(pdf["group"].iloc[0])
    leftover_runs = len(lifecycle.open_runs())
    leftover_threads = _our_threads_after_join()
    x = torch.tensor(pdf[["x1", "x2"]].to_numpy(), dtype=torch.float32)
    y = torch.tensor(pdf[["y"]].to_numpy(), dtype=torch.float32)
    torch.manual_seed(group)
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses: list[float] = []
    with Run.start(
        experiment_name=experiment, run_name=f"job{job}-group{group}", endpoint=url
    ) as run:
        run.log_params({"group": group, "job": job, "lr": 0.1})
        for step in range(GROUP_STEPS):
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            run.log_metrics({"loss": losses[-1], "group": float(group)}, step=step)
    stats = run.stats
    return pd.DataFrame(
        {
            "group": [group],
            "job": [job],
            "run_id": [run.run_id],
            "losses": [json.dumps(losses)],
            "pid": [os.getpid()],
            "leftover_runs": [leftover_runs],
            "leftover_threads": [",".join(leftover_threads)],
            "delivered": [stats.delivered],
            "logged": [stats.logged],
        }
    )


GROUP_RESULT_SCHEMA = (
    "group long, job long, run_id string, losses string, pid long, leftover_runs long, "
    "leftover_threads string, delivered long, logged long"
)


def _our_threads_after_join() -> list[str]:
    """Our threads still alive in this worker after waiting for them to exit (an ended run
    lets its threads go; one that never exits is a leak, whatever the wait)."""
    leaked = []
    for thread in threading.enumerate():
        if thread.name.startswith(OUR_THREADS):
            thread.join(30)
            if thread.is_alive():
                leaked.append(thread.name)
    return leaked
