"""Quickstart: train a tiny model with each integration, then read every run back.

    python examples/quickstart.py            # writes ./quickstart-curves.png
    python examples/quickstart.py --fast     # fewer steps, one epoch (the smoke test)

With no endpoint configured (no AIDP_INSTANCE_ID / AIDP_WORKSPACE_KEY, no
MLFLOW_TRACKING_URI) it starts a local MLflow server in a temporary directory first, so it
runs on a fresh machine without an OCI account (`pip install "aidp-metrics[local]"` for the
`mlflow` package); the server stops when the script ends. With AIDP or MLFLOW_TRACKING_URI
configured, the same runs go there.

For each installed framework -- PyTorch Lightning (`AIDPLogger`), Hugging Face Transformers
(`AIDPCallback`), a plain loop with Hugging Face Accelerate (`AIDPTracker`) and Keras 3 on the
torch backend (`AIDPCallback`) -- it trains a small model
on synthetic data with a train/validation split, into experiment "aidp-metrics-quickstart".
The integrations end their runs (flushing first) when training returns; the script then
reads each run back through `MetricsClient`, prints a table and draws the loss curves into
`quickstart-curves.png`, with each run's CPU utilisation in a panel below (system metrics,
sampled every 0.05 s here). A framework that is not installed is skipped.
`--frameworks loop` runs a plain loop logging through `Run` instead, which needs nothing but
aidp-metrics (and `mlflow` for the local server).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "torch")  # before anything imports Keras

from aidp_metrics import ConfigurationError, LocalMLflowServer, MetricsClient

EXPERIMENT = "aidp-metrics-quickstart"
FEATURES = 8
# System metrics every 0.05 s instead of 10 s: these runs train for well under a second.
SYSTEM_METRICS: dict[str, Any] = {"system_metrics": True, "system_metrics_interval": 0.05}
CPU_KEY = "system/cpu_utilization_percentage"


@dataclass(frozen=True)
class Size:
    """How much each framework trains: `steps_per_epoch` optimizer steps per epoch."""

    steps_per_epoch: int
    epochs: int
    batch_size: int = 32
    log_every: int = 2

    @property
    def train_samples(self) -> int:
        return self.steps_per_epoch * self.batch_size

    @property
    def val_samples(self) -> int:
        return self.train_samples // 4


NORMAL = Size(steps_per_epoch=20, epochs=2)
FAST = Size(steps_per_epoch=6, epochs=1, log_every=1)


@dataclass
class Result:
    framework: str
    run_id: str
    loss_key: str
    status: str = "?"
    points: int = 0
    curve: list[tuple[int, float]] = field(default_factory=list)
    cpu: list[tuple[int, float]] = field(default_factory=list)

    @property
    def last_loss(self) -> float | None:
        return self.curve[-1][1] if self.curve else None


def endpoint_configured() -> bool:
    return any(
        os.environ.get(name, "").strip()
        for name in ("AIDP_INSTANCE_ID", "AIDP_WORKSPACE_KEY", "MLFLOW_TRACKING_URI")
    )


def synthetic(samples: int, seed: int) -> tuple[object, object]:
    """Regression data as float32 numpy arrays: y = tanh(x . w) + noise."""
    import numpy as np

    weights = np.random.default_rng(42).normal(size=(FEATURES, 1))
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(samples, FEATURES))
    y = np.tanh(x @ weights) + 0.1 * rng.normal(size=(samples, 1))
    return x.astype("float32"), y.astype("float32")


# -- one function per framework: train, return (run id, loss key) ----------------------------


def train_lightning(size: Size, workdir: Path) -> tuple[str, str]:
    import lightning.pytorch as L
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from aidp_metrics.integrations.lightning import AIDPLogger

    # "GPU available: False", tips. pytorch_lightning too: when installed, the integration
    # imports it, and its import reroutes Lightning's rank-zero messages to its own logger.
    for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*is deprecated", FutureWarning)

    class Regressor(L.LightningModule):
        def __init__(self, lr: float = 1e-2) -> None:
            super().__init__()
            self.save_hyperparameters()  # sent to the run as params
            self.lr = lr
            self.net = nn.Sequential(nn.Linear(FEATURES, 32), nn.ReLU(), nn.Linear(32, 1))

        def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = nn.functional.mse_loss(self.net(x), y)
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
            x, y = batch
            self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=self.lr)

    def loader(samples: int, seed: int, shuffle: bool) -> DataLoader[tuple[torch.Tensor, ...]]:
        x, y = synthetic(samples, seed)
        dataset = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
        return DataLoader(dataset, batch_size=size.batch_size, shuffle=shuffle)

    L.seed_everything(0, verbose=False)
    logger = AIDPLogger(experiment_name=EXPERIMENT, run_name="lightning", **SYSTEM_METRICS)
    trainer = L.Trainer(
        max_epochs=size.epochs,
        accelerator="cpu",
        devices=1,
        logger=logger,
        log_every_n_steps=size.log_every,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=workdir / "lightning",
    )
    trainer.fit(
        Regressor(),
        loader(size.train_samples, 0, shuffle=True),
        loader(size.val_samples, 1, shuffle=False),
    )
    return _require(logger.version, "lightning"), "train_loss"


def train_transformers(size: Size, workdir: Path) -> tuple[str, str]:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from aidp_metrics.integrations.transformers import AIDPCallback

    logging.getLogger("transformers").setLevel(logging.ERROR)
    vocab, length = 64, 8

    class ParityTask(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
        """Is the first token even? A model built from a config: nothing to download."""

        def __init__(self, samples: int, seed: int) -> None:
            generator = torch.Generator().manual_seed(seed)
            self.ids = torch.randint(1, vocab, (samples, length), generator=generator)

        def __len__(self) -> int:
            return len(self.ids)

        def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
            ids = self.ids[index]
            return {
                "input_ids": ids,
                "attention_mask": torch.ones_like(ids),
                "labels": (ids[0] % 2).long(),
            }

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=length,
    )
    config.num_labels = 2
    args = TrainingArguments(
        output_dir=str(workdir / "transformers"),
        num_train_epochs=size.epochs,
        per_device_train_batch_size=size.batch_size,
        per_device_eval_batch_size=size.batch_size,
        learning_rate=1e-3,
        logging_steps=size.log_every,
        eval_strategy="epoch",
        save_strategy="no",
        report_to="none",  # AIDPCallback does the logging; keep MLflowCallback & co out
        disable_tqdm=True,
        use_cpu=True,
    )
    callback = AIDPCallback(experiment_name=EXPERIMENT, run_name="transformers", **SYSTEM_METRICS)
    trainer = Trainer(
        model=BertForSequenceClassification(config),
        args=args,
        train_dataset=ParityTask(size.train_samples, 0),
        eval_dataset=ParityTask(size.val_samples, 1),
        callbacks=[callback],
    )
    trainer.remove_callback(PrinterCallback)  # disable_tqdm=True would print every log dict
    trainer.train()
    return _require(callback.run_id, "transformers"), "loss"


def train_accelerate(size: Size, workdir: Path) -> tuple[str, str]:
    import torch
    from accelerate import Accelerator
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from aidp_metrics.integrations.accelerate import AIDPTracker

    def loader(samples: int, seed: int, shuffle: bool) -> DataLoader[tuple[torch.Tensor, ...]]:
        x, y = synthetic(samples, seed)
        dataset = TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
        return DataLoader(dataset, batch_size=size.batch_size, shuffle=shuffle)

    torch.manual_seed(0)
    tracker = AIDPTracker(run_name="accelerate", **SYSTEM_METRICS)
    accelerator = Accelerator(cpu=True, log_with=tracker)
    accelerator.init_trackers(EXPERIMENT, config={"lr": 1e-2, "batch_size": size.batch_size})
    model = nn.Sequential(nn.Linear(FEATURES, 32), nn.ReLU(), nn.Linear(32, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    train, val = loader(size.train_samples, 0, True), loader(size.val_samples, 1, False)
    model, optimizer, train, val = accelerator.prepare(model, optimizer, train, val)
    step = 0
    for epoch in range(size.epochs):
        for x, y in train:
            loss = nn.functional.mse_loss(model(x), y)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            if step % size.log_every == 0:
                accelerator.log({"loss": loss.item()}, step=step)
        with torch.no_grad():
            val_loss = sum(nn.functional.mse_loss(model(x), y).item() for x, y in val) / len(val)
        accelerator.log({"val_loss": val_loss, "epoch": epoch + 1}, step=step)
    run_id = tracker.run_id
    accelerator.end_training()  # flushes, marks the run FINISHED
    return _require(run_id, "accelerate"), "loss"


def train_keras(size: Size, workdir: Path) -> tuple[str, str]:
    import keras

    from aidp_metrics.integrations.keras import AIDPCallback

    keras.utils.set_random_seed(0)
    x, y = synthetic(size.train_samples + size.val_samples, 0)
    model = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse", metrics=["mae"])
    callback = AIDPCallback(
        log_every_n_steps=size.log_every,
        experiment_name=EXPERIMENT,
        run_name=f"keras-{keras.backend.backend()}",
        **SYSTEM_METRICS,
    )
    model.fit(
        x,
        y,
        epochs=size.epochs,
        batch_size=size.batch_size,
        validation_split=0.2,
        callbacks=[callback],
        verbose=0,
    )
    return _require(callback.run_id, "keras"), "loss"


def train_loop(size: Size, workdir: Path) -> tuple[str, str]:
    """A plain loop logging through `Run`: needs nothing but aidp-metrics (the release check
    runs it from the built wheel)."""
    import math

    from aidp_metrics import Run

    with Run.start(experiment_name=EXPERIMENT, run_name="loop") as run:
        run.log_params({"lr": 1e-2, "batch_size": size.batch_size})
        steps = size.steps_per_epoch * size.epochs
        for step in range(1, steps + 1):
            if step % size.log_every == 0:
                run.log_metrics({"loss": math.exp(-step / steps)}, step=step)
    return _require(run.run_id, "loop"), "loss"


TRAINERS: dict[str, Callable[[Size, Path], tuple[str, str]]] = {
    "lightning": train_lightning,
    "transformers": train_transformers,
    "accelerate": train_accelerate,
    "keras": train_keras,
    "loop": train_loop,
}
FRAMEWORKS = ("lightning", "transformers", "accelerate", "keras")  # the default selection


def _require(run_id: str | None, framework: str) -> str:
    if not run_id:
        raise RuntimeError(f"{framework}: the integration created no run (see warnings above)")
    return run_id


# -- read back, report, plot ------------------------------------------------------------------


def read_back(client: MetricsClient, result: Result) -> None:
    """Status and every point of every key, straight from the server."""
    run = client.get_run(result.run_id)
    result.status = str(run["info"].get("status", "?"))
    keys = sorted({m["key"] for m in run.get("data", {}).get("metrics", [])})
    for key in keys:
        history = client.get_metric_history(result.run_id, key)
        result.points += len(history)
        if key == result.loss_key:
            result.curve = sorted((point.step, point.value) for point in history)
        elif key == CPU_KEY:
            result.cpu = sorted((point.step, point.value) for point in history)


def table(results: list[Result]) -> str:
    rows = [("run", "framework", "points", "last loss", "status")]
    for r in results:
        loss = "-" if r.last_loss is None else f"{r.last_loss:.4f} ({r.loss_key})"
        rows.append((r.run_id, r.framework, str(r.points), loss, r.status))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot(results: list[Result], path: Path) -> bool:
    from aidp_metrics import write_png

    series = {f"{r.framework} ({r.loss_key})": r.curve for r in results if r.curve}
    # system/ keys go to a panel of their own under the loss
    series.update({f"{CPU_KEY} ({r.framework})": r.cpu for r in results if r.cpu})
    try:
        write_png(series, path, title=f"{EXPERIMENT}: training loss; CPU below")
    except ConfigurationError as exc:  # matplotlib missing
        print(f"no plot: {exc}")
        return False
    return True


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fast", action="store_true", help="fewer steps and one epoch")
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("quickstart-curves.png"),
        help="where to write the loss curves (default: ./quickstart-curves.png)",
    )
    parser.add_argument(
        "--frameworks",
        default=",".join(FRAMEWORKS),
        help=f"comma-separated subset of {','.join(TRAINERS)} (default: the frameworks)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    size = FAST if args.fast else NORMAL
    frameworks = [name.strip() for name in args.frameworks.split(",") if name.strip()]
    unknown = sorted(set(frameworks) - set(TRAINERS))
    if unknown:
        print(f"unknown framework(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    started = time.monotonic()
    if set(frameworks) & set(FRAMEWORKS):
        import torch  # every framework below runs on torch here

        torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="aidp-metrics-quickstart-") as tmp:
        workdir = Path(tmp)
        server = None
        if not endpoint_configured():
            server = LocalMLflowServer(workdir / "mlflow")
            print(f"No endpoint configured: starting a local MLflow server at {server.url} ...")
            server.start()
            os.environ["MLFLOW_TRACKING_URI"] = server.url
        try:
            with MetricsClient() as client:
                print(f"Logging to {client.endpoint.describe()}, experiment {EXPERIMENT!r}")
                results = []
                for name in frameworks:
                    t0 = time.monotonic()
                    try:
                        run_id, loss_key = TRAINERS[name](size, workdir)
                    except ImportError as exc:
                        print(f"{name}: skipped, not installed ({exc})")
                        continue
                    result = Result(name, run_id, loss_key)
                    read_back(client, result)
                    results.append(result)
                    print(f"{name}: run {run_id}, {time.monotonic() - t0:.1f} s")
        finally:
            if server is not None:
                server.stop()

    print()
    print(table(results))
    print()
    if results and plot(results, args.output):
        print(f"loss curves: {args.output.resolve()}")
    print(f"total {time.monotonic() - started:.1f} s")
    complete = all(r.status == "FINISHED" and r.points > 0 for r in results)
    return 0 if results and complete else 1


if __name__ == "__main__":
    sys.exit(main())
