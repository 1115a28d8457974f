"""One node's process of a simulated multi-node job (a script, no tests here).

    torchrun --nnodes 2 --nproc-per-node 1 --node-rank N ... multinode_job.py FRAMEWORK OUT_DIR

FRAMEWORK is `lightning` (`Trainer(num_nodes=2, strategy="ddp")`), `transformers` (a
`Trainer` with gloo), `keras` (torch backend, gloo process group) or `accelerate` (the loop
of accelerate_loop.py). `OUT_DIR/plan.json` lists the job's phases, `[{"name": ...,
"environment": {...}}, ...]`: the same processes train once per phase, one after the other,
each time with a fresh integration built after `os.environ` holds that phase's variables
(`AIDP_EXPERIMENT_NAME` for a new run, `AIDP_RUN_ID` to attach; nothing left from the phase
before), as a job started with them would. After each phase every process writes
`OUT_DIR/<phase>/rank-<RANK>.json` with its ranks and the run id its integration holds (None
off global rank 0) and meets the other ranks at a barrier; after the last, the process group
is destroyed once every rank is there (gloo can abort at exit otherwise).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

torch.set_num_threads(1)
RANK = int(os.environ["RANK"])
LOCAL_RANK = int(os.environ["LOCAL_RANK"])


def lightning_job(out: Path, last: bool) -> dict[str, Any]:
    """8 optimizer steps (64 samples over 2 processes, batch 8, 2 epochs), val at 3 and 7."""
    import lightning.pytorch as L
    from torch.utils.data import DataLoader, TensorDataset

    from aidp_metrics.integrations.lightning import AIDPLogger

    def loader(n: int, seed: int) -> DataLoader[tuple[torch.Tensor, ...]]:
        x = torch.randn(n, 4, generator=torch.Generator().manual_seed(seed))
        return DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=8)

    class Tiny(L.LightningModule):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
            loss = torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])
            self.log("train_loss", loss)
            self.log("rank", float(self.global_rank))
            return loss

        def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
            self.log("val_loss", torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1]))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.05)

    logger = AIDPLogger()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        num_nodes=2,
        strategy="ddp",
        max_epochs=2,
        logger=logger,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=str(out),
    )
    trainer.fit(Tiny(), loader(64, 0), loader(32, 1))
    assert (trainer.global_rank, trainer.local_rank, trainer.node_rank) == (RANK, 0, RANK)
    return {"run_id": logger._handle.run_id}


def transformers_job(out: Path, last: bool) -> dict[str, Any]:
    """20 optimizer steps (80 samples over 2 processes, batch 4, 2 epochs), loss every 5."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from aidp_metrics.integrations.transformers import AIDPCallback
    from tests.integrations.test_transformers_support import TinyRegressor, make_trainer

    callback = AIDPCallback()
    trainer = make_trainer(
        out, [callback], model=TinyRegressor(), ddp_backend="gloo", n_train=80, eval_steps=10
    )
    trainer.train()
    assert (trainer.args.process_index, trainer.args.local_process_index) == (RANK, 0)
    return {"run_id": callback.run_id}


def keras_job(out: Path, last: bool) -> dict[str, Any]:
    """Each process fits its own data (no gradient sync: only logging is under test here):
    8 optimizer steps (32 samples, batch 8, 2 epochs), a point at every step."""
    os.environ["KERAS_BACKEND"] = "torch"
    import keras
    import numpy as np

    from aidp_metrics.integrations.keras import AIDPCallback

    if not torch.distributed.is_initialized():  # the first phase sets the group up
        torch.distributed.init_process_group("gloo")
    keras.utils.set_random_seed(RANK)  # different values per process: a duplicate shows
    x = np.random.default_rng(RANK).normal(size=(32, 4)).astype("float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    callback = AIDPCallback(log_every_n_steps=1)
    model.fit(x, x.sum(axis=1), batch_size=8, epochs=2, verbose=0, callbacks=[callback])
    return {"run_id": callback.run_id}


def accelerate_job(out: Path, last: bool) -> dict[str, Any]:
    """The loop of accelerate_loop.py (its project: the phase's AIDP_EXPERIMENT_NAME): 12
    steps (48 samples over 2 processes, batch 4, 2 epochs); what rank 0 logged in `logged`.
    Only the last phase's `end_training()` destroys the process group."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.integrations.accelerate_loop import train

    state = train(os.environ["AIDP_EXPERIMENT_NAME"], last=last)
    return {"run_id": state["run_id"], "logged": state["logged"]}


JOBS: dict[str, Callable[[Path, bool], dict[str, Any]]] = {
    "lightning": lightning_job,
    "transformers": transformers_job,
    "keras": keras_job,
    "accelerate": accelerate_job,
}
PHASE_VARIABLES = ("AIDP_RUN_ID", "MLFLOW_RUN_ID", "AIDP_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_NAME")


def main() -> None:
    framework, out = sys.argv[1], Path(sys.argv[2])
    phases = json.loads((out / "plan.json").read_text())
    for index, phase in enumerate(phases):
        for name in PHASE_VARIABLES:
            os.environ.pop(name, None)
        os.environ.update(phase["environment"])
        phase_out = out / phase["name"]
        phase_out.mkdir(exist_ok=True)
        state = JOBS[framework](phase_out, index == len(phases) - 1)
        state.update(rank=RANK, local_rank=LOCAL_RANK)
        (phase_out / f"rank-{RANK}.json").write_text(json.dumps(state))
        if torch.distributed.is_initialized():
            # Every rank meets before the next phase and before the group is torn down: a
            # rank that destroys it while another is still in a collective (or ending its
            # run) aborts with SIGABRT.
            torch.distributed.barrier()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
