"""One node's process of a simulated multi-node job (a script, no tests here).

    torchrun --nnodes 2 --nproc-per-node 1 --node-rank N ... multinode_job.py FRAMEWORK OUT_DIR

FRAMEWORK is `lightning` (`Trainer(num_nodes=2, strategy="ddp")`), `transformers` (a
`Trainer` with gloo) or `keras` (torch backend, gloo process group). The experiment comes
from `AIDP_EXPERIMENT_NAME`, or the run from `AIDP_RUN_ID`. Every process writes
`OUT_DIR/rank-<RANK>.json` with its ranks and the run id its integration holds (None off
global rank 0), then meets the other ranks at a barrier and destroys the process group
(gloo can abort at exit otherwise).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch

torch.set_num_threads(1)
RANK = int(os.environ["RANK"])
LOCAL_RANK = int(os.environ["LOCAL_RANK"])


def lightning_job(out: Path) -> str | None:
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
    return logger._handle.run_id  # type: ignore[no-any-return]


def transformers_job(out: Path) -> str | None:
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
    return callback.run_id


def keras_job(out: Path) -> str | None:
    """Each process fits its own data (no gradient sync: only logging is under test here):
    8 optimizer steps (32 samples, batch 8, 2 epochs), a point at every step."""
    os.environ["KERAS_BACKEND"] = "torch"
    import keras
    import numpy as np

    from aidp_metrics.integrations.keras import AIDPCallback

    torch.distributed.init_process_group("gloo")
    keras.utils.set_random_seed(RANK)  # different values per process: a duplicate shows
    x = np.random.default_rng(RANK).normal(size=(32, 4)).astype("float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    callback = AIDPCallback(log_every_n_steps=1)
    model.fit(x, x.sum(axis=1), batch_size=8, epochs=2, verbose=0, callbacks=[callback])
    return callback.run_id


JOBS: dict[str, Callable[[Path], str | None]] = {
    "lightning": lightning_job,
    "transformers": transformers_job,
    "keras": keras_job,
}


def main() -> None:
    framework, out = sys.argv[1], Path(sys.argv[2])
    run_id = JOBS[framework](out)
    state = {"rank": RANK, "local_rank": LOCAL_RANK, "run_id": run_id}
    (out / f"rank-{RANK}.json").write_text(json.dumps(state))
    if torch.distributed.is_initialized():
        # Every rank meets before the group is torn down: a rank that destroys it while
        # another is still in a collective (or ending its run) aborts with SIGABRT.
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
