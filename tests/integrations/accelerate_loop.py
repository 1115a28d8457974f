"""A plain Accelerate training loop logging through `AIDPTracker` (a script, no tests here).

    python accelerate_loop.py PROJECT OUT_DIR [--crash-at STEP]
    torchrun --nproc-per-node 2 accelerate_loop.py PROJECT OUT_DIR

The tests run it in one process and under torchrun with two processes (Accelerate's MULTI_CPU
with gloo); the two-node job of multinode_job.py calls `train` twice in the same processes.
Every process writes `OUT_DIR/rank-<RANK>.json`: its ranks, what it handed to
`accelerator.log` and the run its tracker holds (None off the main process), so the tests
can compare that with what the server has.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, TensorDataset

from aidp_metrics.integrations.accelerate import AIDPTracker

SAMPLES = 48
BATCH = 4
EPOCHS = 2
CONFIG = {"lr": 0.05, "batch_size": BATCH, "model": {"features": 4, "layers": 1}}


def train(project: str, crash_at: int | None = None, *, last: bool = True) -> dict[str, Any]:
    """One training of the loop; returns this process's state (see the module docstring).
    `last=False`: a later training of the job still needs the process group, so the run ends
    as `end_training()` ends it (every tracker's `finish()`) but the group is kept: gloo's
    default group cannot be re-created safely in the same torchrun workers (destroying it
    resets torch's group counter, and a second rendezvous would find the first one's keys in
    the agent's store)."""
    torch.manual_seed(0)
    tracker = AIDPTracker(run_name="accelerate-loop")
    accelerator = Accelerator(cpu=True, log_with=tracker)
    accelerator.init_trackers(project, config=CONFIG)

    x = torch.randn(SAMPLES, 4, generator=torch.Generator().manual_seed(1))
    loader = DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=BATCH)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=CONFIG["lr"])
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

    logged: list[tuple[int, dict[str, float]]] = []
    step = 0
    for epoch in range(EPOCHS):
        for inputs, targets in loader:
            if step == crash_at:
                raise RuntimeError(f"crash at step {step}")
            loss = torch.nn.functional.mse_loss(model(inputs), targets)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            values = {
                "loss": accelerator.reduce(loss.detach(), "mean").item(),
                "epoch": float(epoch),
                "rank": float(accelerator.process_index),
            }
            accelerator.log(values, step=step)
            logged.append((step, values))
            step += 1

    state: dict[str, Any] = {
        "rank": int(os.environ.get("RANK", "0")),
        "local_rank": int(os.environ.get("LOCAL_RANK", "0")),
        "process_index": accelerator.process_index,
        "num_processes": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "run_id": tracker.run_id,
        "tracker_is_run": type(tracker.tracker).__name__ == "Run",
        "logged": logged if accelerator.is_main_process else [],
    }
    accelerator.wait_for_everyone()  # no rank tears gloo down while another is mid-collective
    if last:
        accelerator.end_training()  # ends the run, destroys the process group (no gloo abort)
    else:
        for ending in accelerator.trackers:
            ending.finish()
    return state


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("project")
    parser.add_argument("out", type=Path)
    parser.add_argument("--crash-at", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    state = train(args.project, args.crash_at)
    (args.out / f"rank-{state['rank']}.json").write_text(json.dumps(state))


if __name__ == "__main__":
    main()
