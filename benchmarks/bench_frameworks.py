"""Framework benchmark: training-loop overhead and tail of per-step logging, ours vs MLflow's.

    python -m benchmarks.bench_frameworks [--quick]
        [--frameworks lightning,transformers,keras,accelerate]
        [--configs a,b,c,d,e] [--delay 0.05] [--repetitions 3] [--c-repetitions 1]
        [--json out.json] [--png out.png]

One real MLflow server (sqlite, `--workers 1`) and, in front of it, a latency proxy adding
`--delay` seconds each way per request (a stand-in for a cloud endpoint). For each framework
a tiny model on synthetic data logs every optimizer step (>= 3 metrics per step) with:

  (a) no logger,
  (b) our integration (default options),
  (c) MLflow's integration as users get it by default,
  (d) MLflow's integration with async logging,
  (e) MLflow's best: async plus MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS=1,

each ((a) once) against the near server and the far (proxied) one. Every configuration runs
in a fresh subprocess (`--worker`, JSON on stdout), so MLflow's process-global state
(async queues, active runs, environment read at import) never leaks between them.

Measured per run: the training loop (end of the first step -> end of the last step, per
step), the tail (end of the last step -> every logged point readable on the server, polled
directly on the near server; includes the framework's teardown, run end and any flush),
and completeness (distinct (key, step) points read back / distinct points handed to the
integration). Medians over repetitions; (c) is repeated fewer times (`--c-repetitions`)
because synchronous logging through the far server takes minutes per run.

Note: MLflow's Transformers `MLflowCallback` and `mlflow.keras.MlflowCallback` always log
with `synchronous=False`, so for those two (c) is already asynchronous and (d) only adds
MLFLOW_ENABLE_ASYNC_LOGGING=true. Accelerate is a plain loop calling `accelerator.log` every
step: (a) with no tracker configured (the call is then a no-op), (b) `AIDPTracker`, (c)-(e)
Accelerate's own `log_with="mlflow"` (`MLflowTracker`, `mlflow.log_metrics` per call,
synchronous unless MLFLOW_ENABLE_ASYNC_LOGGING); `end_training()` is part of the tail.
Numbers are informational: nothing here fails on a goal, and on a shared machine single runs
are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._common import (
    Row,
    fmt_seconds,
    fmt_times,
    load_average,
    local_server,
    log,
    machine_info,
    median,
    print_grid,
    print_header,
    print_table,
    write_json,
)

FRAMEWORKS = ("lightning", "transformers", "keras", "accelerate")
CONFIGS = ("a", "b", "c", "d", "e")
CONFIG_LABELS = {
    "a": "no logger",
    "b": "aidp-metrics",
    "c": "MLflow default",
    "d": "MLflow async",
    "e": "MLflow async+buf 1s",
}
FULL_STEPS = {"lightning": 1000, "transformers": 300, "keras": 1000, "accelerate": 1000}
QUICK_STEPS = 30
BATCH = 8
FEATURES = 16
WORKER_TIMEOUT = 1800.0
TAIL_TIMEOUT = 120.0
POLL_INTERVAL = 0.025
RESULT_MARKER = "BENCH-FRAMEWORKS-RESULT "

# Goals (printed as ratios, never enforced).
GOAL_OVERHEAD_SHARE = 0.02
GOAL_VS_C = 100.0
GOAL_VS_E = 5.0
GOAL_TAIL_SECONDS = 0.5

# ------------------------------------------------------------------------------------------
# worker side: one framework, one configuration, one process
# ------------------------------------------------------------------------------------------


@dataclass
class Probe:
    """Step clock and a record of the points handed to the integration."""

    first: float | None = None
    last: float | None = None
    steps: int = 0
    logged: dict[str, set[int]] = field(default_factory=dict)

    def tick(self) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now
        self.last = now
        self.steps += 1

    def record(self, keys: Iterable[str], step: int) -> None:
        for key in keys:
            steps = self.logged.get(key)
            if steps is None:
                steps = self.logged[key] = set()
            steps.add(step)

    @property
    def points(self) -> int:
        return sum(len(steps) for steps in self.logged.values())


@dataclass(frozen=True)
class WorkerArgs:
    framework: str
    config: str
    steps: int
    target: str | None  # the URL the integration logs to (near server or proxy)
    near: str | None  # the server itself, for reading back
    experiment: str


def _data(steps: int) -> tuple[Any, Any]:
    import torch

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(steps * BATCH, FEATURES, generator=generator)
    y = x.sum(dim=1, keepdim=True) * 0.1 + 0.01 * torch.randn(steps * BATCH, 1, generator=generator)
    return x, y


def _endpoint(url: str) -> Any:
    from aidp_metrics import Endpoint

    return Endpoint.mlflow(url)


def train_lightning(w: WorkerArgs, probe: Probe, workdir: Path) -> Callable[[], None]:
    """Fit; returns what must run after fit before the tail is complete (none here)."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    class Model(L.LightningModule):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(FEATURES, 1)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            out = self.layer(x)
            loss = torch.nn.functional.mse_loss(out, y)
            self.log("train/loss", loss, on_step=True, on_epoch=False)
            self.log("train/mae", (out - y).abs().mean(), on_step=True, on_epoch=False)
            self.log("train/out_mean", out.mean(), on_step=True, on_epoch=False)
            return loss

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    class Clock(L.Callback):  # type: ignore[misc]
        def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
            probe.tick()

    logger: Any = False
    if w.config == "b":
        assert w.target is not None
        from aidp_metrics.integrations.lightning import AIDPLogger

        logger = AIDPLogger(experiment_name=w.experiment, endpoint=_endpoint(w.target))
    elif w.config in ("c", "d", "e"):
        from lightning.pytorch.loggers import MLFlowLogger

        extra: dict[str, Any] = {} if w.config == "c" else {"synchronous": False}
        logger = MLFlowLogger(experiment_name=w.experiment, tracking_uri=w.target, **extra)
    if logger is not False:
        log_metrics = logger.log_metrics

        def counted(metrics: dict[str, float], step: int | None = None) -> None:
            probe.record(metrics.keys(), step or 0)
            log_metrics(metrics, step)

        logger.log_metrics = counted

    x, y = _data(w.steps)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False, num_workers=0)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=w.steps,
        max_epochs=1,
        logger=logger,
        log_every_n_steps=1,
        callbacks=[Clock()],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        default_root_dir=str(workdir),
    )
    trainer.fit(Model(), train_dataloaders=loader)
    return _mlflow_flush if w.config in ("d", "e") else _nothing


def train_transformers(w: WorkerArgs, probe: Probe, workdir: Path) -> Callable[[], None]:
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(FEATURES, 1)

        def forward(self, x: Any, labels: Any = None) -> dict[str, Any]:
            out = self.layer(x)
            return {"loss": torch.nn.functional.mse_loss(out, labels), "logits": out}

    x, y = _data(w.steps)

    class Data(torch.utils.data.Dataset[dict[str, Any]]):
        def __len__(self) -> int:
            return len(x)

        def __getitem__(self, i: int) -> dict[str, Any]:
            return {"x": x[i], "labels": y[i]}

    class Clock(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            probe.tick()

        def on_log(
            self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any
        ) -> None:
            numeric = [
                k
                for k, v in (logs or {}).items()
                if isinstance(v, int | float) and not isinstance(v, bool)
            ]
            probe.record(numeric, state.global_step)

    callbacks: list[Any] = [Clock()]
    report_to: Any = "none"
    if w.config == "b":
        assert w.target is not None
        from aidp_metrics.integrations.transformers import AIDPCallback

        callbacks.append(AIDPCallback(experiment_name=w.experiment, endpoint=_endpoint(w.target)))
    elif w.config in ("c", "d", "e"):
        report_to = ["mlflow"]  # MLFLOW_TRACKING_URI / MLFLOW_EXPERIMENT_NAME set by the parent
    args = TrainingArguments(
        output_dir=str(workdir / "out"),
        max_steps=w.steps,
        per_device_train_batch_size=BATCH,
        learning_rate=0.01,
        logging_steps=1,
        report_to=report_to,
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = Trainer(model=Model(), args=args, train_dataset=Data(), callbacks=callbacks)
    trainer.train()
    return _mlflow_flush if w.config in ("c", "d", "e") else _nothing


def train_keras(w: WorkerArgs, probe: Probe, workdir: Path) -> Callable[[], None]:
    import keras

    class Clock(keras.callbacks.Callback):  # type: ignore[misc]
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            probe.tick()
            probe.record((logs or {}).keys(), batch + 1)  # one epoch: step = batch + 1

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse", metrics=["mae", "mse"])
    x, y = (t.numpy() for t in _data(w.steps))
    callbacks: list[Any] = [Clock()]

    def fit() -> None:
        model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=callbacks)

    if w.config == "b":
        assert w.target is not None
        from aidp_metrics.integrations.keras import AIDPCallback

        callbacks.append(
            AIDPCallback(
                log_every_n_steps=1, experiment_name=w.experiment, endpoint=_endpoint(w.target)
            )
        )
        fit()
        return _nothing
    if w.config in ("c", "d", "e"):
        import mlflow
        from mlflow.keras import MlflowCallback

        mlflow.set_tracking_uri(w.target)
        mlflow.set_experiment(w.experiment)
        callbacks.append(MlflowCallback(log_every_epoch=False, log_every_n_steps=1))
        mlflow.start_run()
        fit()
        # What a user's `with mlflow.start_run():` does when the block ends.
        return mlflow.end_run
    fit()
    return _nothing


def train_accelerate(w: WorkerArgs, probe: Probe, workdir: Path) -> Callable[[], None]:
    """A plain loop; returns `accelerator.end_training` (ends the run, flushes)."""
    import torch
    from accelerate import Accelerator
    from torch.utils.data import DataLoader, TensorDataset

    tracker: Any = None
    if w.config == "b":
        assert w.target is not None
        from aidp_metrics.integrations.accelerate import AIDPTracker

        tracker = AIDPTracker(endpoint=_endpoint(w.target))
    elif w.config in ("c", "d", "e"):
        tracker = "mlflow"  # MLFLOW_TRACKING_URI / MLFLOW_EXPERIMENT_NAME set by the parent
    accelerator = Accelerator(cpu=True, log_with=tracker)
    accelerator.init_trackers(w.experiment)
    x, y = _data(w.steps)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False, num_workers=0)
    model = torch.nn.Linear(FEATURES, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    for step, (inputs, targets) in enumerate(loader):
        out = model(inputs)
        loss = torch.nn.functional.mse_loss(out, targets)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        values = {
            "train/loss": loss.item(),
            "train/mae": (out - targets).abs().mean().item(),
            "train/out_mean": out.mean().item(),
        }
        accelerator.log(values, step=step)
        if tracker is not None:
            probe.record(values, step)
        probe.tick()
    return accelerator.end_training


def _nothing() -> None:
    return None


def _mlflow_flush() -> None:
    import mlflow

    mlflow.flush_async_logging()


TRAINERS: dict[str, Callable[[WorkerArgs, Probe, Path], Callable[[], None]]] = {
    "lightning": train_lightning,
    "transformers": train_transformers,
    "keras": train_keras,
    "accelerate": train_accelerate,
}


def _find_run(client: Any, experiment: str) -> str | None:
    found = client.get_experiment_by_name(experiment)
    if not found:
        return None
    runs = client.search_runs([found["experiment_id"]])
    return str(runs[0]["info"]["run_id"]) if runs else None


def _read_back(client: Any, run_id: str, logged: dict[str, set[int]]) -> dict[str, int]:
    """Per key, how many of the logged steps the server has."""
    return {
        key: len(steps & {m.step for m in client.get_metric_history(run_id, key)})
        for key, steps in logged.items()
    }


def wait_for_server(near: str, experiment: str, probe: Probe) -> dict[str, Any]:
    """Poll the server until every logged (key, step) is readable (or TAIL_TIMEOUT).

    Each poll reads one key (the one with most points) and, once that one is complete,
    every key. `done` is when the first complete poll started, or when checking began if
    the first poll already found everything (the points were on the server before anyone
    looked): the verification's own requests are not part of the tail. Resolution: one poll
    (POLL_INTERVAL plus one request).
    """
    from aidp_metrics import MetricsClient

    check_started = time.perf_counter()
    expected = {key: len(steps) for key, steps in probe.logged.items()}
    total = sum(expected.values())
    deadline = check_started + TAIL_TIMEOUT
    polls = 0
    got: dict[str, int] = {}
    done: float | None = None
    with MetricsClient(near) as client:
        run_id = None
        while run_id is None and time.perf_counter() < deadline:
            run_id = _find_run(client, experiment)
            if run_id is None:
                time.sleep(POLL_INTERVAL)
        if run_id is not None:
            main_key = max(expected, key=lambda k: (expected[k], k))
            steps = probe.logged[main_key]
            while done is None:
                polls += 1
                poll_started = time.perf_counter()
                history = client.get_metric_history(run_id, main_key)
                if len(steps & {m.step for m in history}) >= expected[main_key]:
                    got = _read_back(client, run_id, probe.logged)
                    if sum(got.values()) >= total:
                        done = check_started if polls == 1 else poll_started
                        break
                if time.perf_counter() >= deadline:
                    break
                time.sleep(POLL_INTERVAL)
        verified = time.perf_counter()
    read_back = sum(got.values())
    return {
        "done": verified if done is None else done,
        "verify_seconds": verified - check_started,
        "run_id": run_id,
        "read_back": read_back,
        "logged": total,
        "keys": sorted(expected),
        "completeness": read_back / total if total else None,
        "timed_out": done is None,
        "polls": polls,
    }


def run_worker(w: WorkerArgs) -> dict[str, Any]:
    import warnings

    warnings.filterwarnings("ignore")
    import logging

    for name in (
        "mlflow",
        "lightning",
        "lightning.pytorch",
        "transformers",
        "accelerate",
        "aidp_metrics",
    ):
        logging.getLogger(name).setLevel(logging.ERROR)
    import torch

    torch.set_num_threads(1)
    probe = Probe()
    with tempfile.TemporaryDirectory(prefix="aidp-bench-fw-") as directory:
        started = time.perf_counter()
        finish = TRAINERS[w.framework](w, probe, Path(directory))
        fit_returned = time.perf_counter()
        finish()
        finished = time.perf_counter()
        server: dict[str, Any] = {}
        if w.config != "a" and w.near is not None and probe.logged:
            server = wait_for_server(w.near, w.experiment, probe)
    if probe.first is None or probe.last is None:
        raise RuntimeError("no training step ran")
    done = server.get("done", finished)
    loop_steps = max(probe.steps - 1, 1)
    return {
        "framework": w.framework,
        "config": w.config,
        "steps": probe.steps,
        "loop_seconds": probe.last - probe.first,
        "loop_steps": loop_steps,
        "loop_seconds_per_step": (probe.last - probe.first) / loop_steps,
        "fit_seconds": fit_returned - started,
        "fit_return_seconds": fit_returned - probe.last,
        "finish_seconds": finished - fit_returned,
        "tail_seconds": done - probe.last,
        "logged_points": server.get("logged", probe.points),
        "read_back_points": server.get("read_back"),
        "completeness": server.get("completeness"),
        "timed_out": server.get("timed_out", False),
        "keys": server.get("keys", sorted(probe.logged)),
        "polls": server.get("polls", 0),
        "verify_seconds": server.get("verify_seconds", 0.0),
        "run_id": server.get("run_id"),
    }


def worker_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", required=True, metavar="FRAMEWORK:CONFIG")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--target")
    parser.add_argument("--near")
    parser.add_argument("--experiment", required=True)
    args = parser.parse_args(argv)
    framework, config = args.worker.split(":")
    # Frameworks and MLflow print to stdout ("View run ..."); keep it for the result only.
    result_out = sys.stdout
    sys.stdout = sys.stderr
    result = run_worker(
        WorkerArgs(framework, config, args.steps, args.target, args.near, args.experiment)
    )
    print(RESULT_MARKER + json.dumps(result), file=result_out, flush=True)
    return 0


# ------------------------------------------------------------------------------------------
# parent side: server, proxy, subprocesses, table
# ------------------------------------------------------------------------------------------


def worker_env(config: str, target: str | None, experiment: str, spool: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_", "AIDP_")) and k != "DISABLE_MLFLOW_INTEGRATION"
    }
    env.update(
        AIDP_METRICS_DIR=str(spool),
        KERAS_BACKEND="torch",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_NO_ADVISORY_WARNINGS="1",
        GIT_PYTHON_REFRESH="quiet",
        PYTHONWARNINGS="ignore",
    )
    if config in ("c", "d", "e"):
        assert target is not None
        env.update(MLFLOW_TRACKING_URI=target, MLFLOW_EXPERIMENT_NAME=experiment)
    if config in ("d", "e"):
        env["MLFLOW_ENABLE_ASYNC_LOGGING"] = "true"
    if config == "e":
        env["MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS"] = "1"
    return env


def spawn(
    framework: str,
    config: str,
    server_name: str,
    steps: int,
    target: str | None,
    near: str,
    spool: Path,
) -> dict[str, Any]:
    experiment = f"bench-{framework}-{config}-{server_name}-{uuid.uuid4().hex[:8]}"
    command = [
        sys.executable,
        "-m",
        "benchmarks.bench_frameworks",
        "--worker",
        f"{framework}:{config}",
        "--steps",
        str(steps),
        "--experiment",
        experiment,
        "--near",
        near,
    ]
    if target is not None:
        command += ["--target", target]
    started = time.perf_counter()
    try:
        done = subprocess.run(
            command,
            cwd=Path(__file__).resolve().parent.parent,
            env=worker_env(config, target, experiment, spool),
            capture_output=True,
            text=True,
            timeout=WORKER_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"worker timed out after {WORKER_TIMEOUT:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARKER)]
    if done.returncode != 0 or not lines:
        tail = done.stderr[-3000:]
        log(f"worker {framework}:{config} ({server_name}) failed ({done.returncode}):\n{tail}")
        return {"error": f"exit {done.returncode}", "stderr_tail": tail}
    result: dict[str, Any] = json.loads(lines[-1][len(RESULT_MARKER) :])
    result["server"] = server_name
    result["process_seconds"] = time.perf_counter() - started
    return result


@dataclass(frozen=True)
class Plan:
    frameworks: tuple[str, ...]
    configs: tuple[str, ...]
    servers: tuple[str, ...]
    steps: dict[str, int]
    repetitions: int
    c_repetitions: int


def _servers_for(config: str, servers: tuple[str, ...]) -> tuple[str, ...]:
    return ("-",) if config == "a" else servers


def run_plan(plan: Plan, near: str, far: str | None, spool: Path) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    urls = {"near": near, "far": far, "-": None}
    total = sum(
        len(_servers_for(c, plan.servers))
        * (min(plan.c_repetitions, plan.repetitions) if c == "c" else plan.repetitions)
        for c in plan.configs
    ) * len(plan.frameworks)
    count = 0
    # Repetition-major order: slow drifts in machine load hit every configuration alike.
    for rep in range(plan.repetitions):
        for framework in plan.frameworks:
            for config in plan.configs:
                if config == "c" and rep >= plan.c_repetitions:
                    continue
                for server_name in _servers_for(config, plan.servers):
                    count += 1
                    log(
                        f"[{count}/{total}] rep {rep + 1}: {framework} ({config}) "
                        f"{CONFIG_LABELS[config]}, server {server_name}, "
                        f"{plan.steps[framework]} steps"
                    )
                    result = spawn(
                        framework,
                        config,
                        server_name,
                        plan.steps[framework],
                        urls[server_name],
                        near,
                        spool,
                    )
                    result.update(
                        framework=framework, config=config, server=server_name, repetition=rep
                    )
                    if "error" not in result:
                        log(
                            f"    loop {fmt_seconds(result['loop_seconds_per_step'])}/step, "
                            f"tail {fmt_seconds(result['tail_seconds'])}, completeness "
                            f"{_fmt_share(result['completeness'])}"
                        )
                    runs.append(result)
    return runs


# -- summary ---------------------------------------------------------------------------------


def summarize(runs: list[dict[str, Any]], plan: Plan) -> dict[str, Any]:
    """Medians per (framework, config, server) and the derived overheads and ratios."""
    summary: dict[str, Any] = {}
    for framework in plan.frameworks:
        cells: dict[str, dict[str, Any]] = {}
        for config in plan.configs:
            for server_name in _servers_for(config, plan.servers):
                ok = [
                    r
                    for r in runs
                    if r["framework"] == framework
                    and r["config"] == config
                    and r["server"] == server_name
                    and "error" not in r
                ]
                failed = sum(
                    1
                    for r in runs
                    if r["framework"] == framework
                    and r["config"] == config
                    and r["server"] == server_name
                    and "error" in r
                )
                if not ok:
                    cells[f"{config}/{server_name}"] = {"repetitions": 0, "failed": failed}
                    continue
                shares = [r["completeness"] for r in ok if r["completeness"] is not None]
                cells[f"{config}/{server_name}"] = {
                    "config": config,
                    "server": server_name,
                    "repetitions": len(ok),
                    "failed": failed,
                    "steps": ok[0]["steps"],
                    "loop_seconds_per_step": median([r["loop_seconds_per_step"] for r in ok]),
                    "loop_seconds": median([r["loop_seconds"] for r in ok]),
                    "tail_seconds": median([r["tail_seconds"] for r in ok]),
                    "tail_seconds_max": max(r["tail_seconds"] for r in ok),
                    "completeness_min": min(shares) if shares else None,
                    "logged_points": ok[0]["logged_points"],
                    "read_back_points_min": min(
                        (r["read_back_points"] or 0 for r in ok), default=0
                    ),
                }
        base = cells.get("a/-", {}).get("loop_seconds_per_step")
        for cell in cells.values():
            if base is None or "loop_seconds_per_step" not in cell:
                continue
            overhead = cell["loop_seconds_per_step"] - base
            cell["overhead_seconds_per_step"] = overhead
            cell["overhead_share"] = overhead / base
        for server_name in plan.servers:
            ours = cells.get(f"b/{server_name}", {}).get("overhead_seconds_per_step")
            for config in ("c", "d", "e"):
                cell = cells.get(f"{config}/{server_name}", {})
                theirs = cell.get("overhead_seconds_per_step")
                if ours is not None and theirs is not None:
                    # Ours at or below the noise floor: no finite ratio.
                    cell["ratio_vs_b"] = theirs / ours if ours > 0 else None
        summary[framework] = {"baseline_seconds_per_step": base, "cells": cells}
    return summary


def _fmt_share(share: float | None) -> str:
    return "n/a" if share is None else f"{share:.1%}"


def _fmt_overhead(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return ("-" if seconds < 0 else "+") + fmt_seconds(abs(seconds))


def _fmt_ratio(cell: dict[str, Any], ours: dict[str, Any]) -> str:
    if cell.get("config") not in ("c", "d", "e"):
        return ""
    ratio = cell.get("ratio_vs_b")
    if ratio is not None:
        return fmt_times(ratio)
    theirs = cell.get("overhead_seconds_per_step")
    if ours.get("overhead_seconds_per_step") is not None and theirs is not None:
        # (b) measured at or below (a): below this run's noise, so no finite ratio.
        return "(b) ≤ noise" if theirs > 0 else "both ≤ noise"
    return "n/a"


def results_grid(summary: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    headers = [
        "framework",
        "config",
        "server",
        "reps",
        "loop / step",
        "overhead / step",
        "% of (a) step",
        "tail",
        "overhead x/(b)",
        "complete",
    ]
    rows: list[list[str]] = []
    for framework, data in summary.items():
        cells: dict[str, dict[str, Any]] = data["cells"]
        for key, cell in cells.items():
            config, server_name = key.split("/")
            label = f"({config}) {CONFIG_LABELS[config]}"
            if not cell.get("repetitions"):
                rows.append(
                    [framework, label, server_name, f"0 ({cell.get('failed', 0)} failed)"]
                    + ["-"] * 6
                )
                continue
            ours = cells.get(f"b/{server_name}", {})
            share = cell.get("overhead_share")
            complete = (
                "-"
                if config == "a"
                else f"{cell['read_back_points_min']}/{cell['logged_points']} "
                f"({_fmt_share(cell['completeness_min'])})"
            )
            rows.append(
                [
                    framework,
                    label,
                    server_name,
                    str(cell["repetitions"])
                    + (f" ({cell['failed']} failed)" if cell["failed"] else ""),
                    fmt_seconds(cell["loop_seconds_per_step"]),
                    "-" if config == "a" else _fmt_overhead(cell.get("overhead_seconds_per_step")),
                    "-" if config == "a" or share is None else f"{share:+.1%}",
                    fmt_seconds(cell["tail_seconds"]),
                    _fmt_ratio(cell, ours),
                    complete,
                ]
            )
    return headers, rows


def goal_rows(summary: dict[str, Any], plan: Plan) -> list[Row]:
    rows: list[Row] = []
    for framework, data in summary.items():
        cells: dict[str, dict[str, Any]] = data["cells"]
        for server_name in plan.servers:
            ours = cells.get(f"b/{server_name}")
            if not ours or not ours.get("repetitions"):
                continue
            prefix = f"{framework}, {server_name}"
            share = ours.get("overhead_share")
            if share is not None:
                rows.append(
                    Row(
                        f"{prefix}: (b) overhead / step",
                        f"{_fmt_overhead(ours['overhead_seconds_per_step'])} ({share:+.1%})",
                        f"≤ {GOAL_OVERHEAD_SHARE:.0%} of (a) "
                        f"{fmt_seconds(data['baseline_seconds_per_step'])}",
                        f"{max(share, 0.0) / GOAL_OVERHEAD_SHARE:.2f}x of budget",
                        share <= GOAL_OVERHEAD_SHARE,
                    )
                )
            for config, goal in (("c", GOAL_VS_C), ("e", GOAL_VS_E)):
                cell = cells.get(f"{config}/{server_name}")
                if not cell or "overhead_seconds_per_step" not in cell or share is None:
                    continue
                ratio = cell.get("ratio_vs_b")
                rows.append(
                    Row(
                        f"{prefix}: ({config})/(b) overhead",
                        f"({config}) {_fmt_overhead(cell['overhead_seconds_per_step'])}/step",
                        f"≥ {goal:.0f}x",
                        _fmt_ratio(cell, ours),
                        None if ratio is None else ratio >= goal,
                    )
                )
            rows.append(
                Row(
                    f"{prefix}: (b) tail",
                    f"{fmt_seconds(ours['tail_seconds'])} "
                    f"(max {fmt_seconds(ours['tail_seconds_max'])})",
                    f"≤ {fmt_seconds(GOAL_TAIL_SECONDS)}",
                    f"{ours['tail_seconds'] / GOAL_TAIL_SECONDS:.2f}x of budget",
                    ours["tail_seconds"] <= GOAL_TAIL_SECONDS,
                )
            )
            complete = ours.get("completeness_min")
            rows.append(
                Row(
                    f"{prefix}: (b) completeness",
                    f"{ours['read_back_points_min']} / {ours['logged_points']} points",
                    "100 %",
                    _fmt_share(complete),
                    complete == 1.0,
                )
            )
    return rows


def write_png(path: str, summary: dict[str, Any], plan: Plan) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = [c for c in plan.configs if c != "a"]
    groups = [(f, s) for f in summary for s in plan.servers]
    floor = 1e-3  # ms / s, so that a non-positive value still shows on the log scale
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 2.2 * len(groups) + 2), 4.8))
    width = 0.8 / max(len(configs), 1)
    for axis, metric, scale in (
        (axes[0], "overhead_seconds_per_step", 1e3),
        (axes[1], "tail_seconds", 1.0),
    ):
        for i, config in enumerate(configs):
            values = []
            for framework, server_name in groups:
                cell = summary[framework]["cells"].get(f"{config}/{server_name}", {})
                value = cell.get(metric)
                values.append(max(value * scale, floor) if value is not None else 0.0)
            positions = [g + (i - (len(configs) - 1) / 2) * width for g in range(len(groups))]
            axis.bar(positions, values, width, label=f"({config}) {CONFIG_LABELS[config]}")
        axis.set_xticks(range(len(groups)))
        axis.set_xticklabels([f"{f}\n{s}" for f, s in groups], fontsize=8)
        axis.set_yscale("log")
        axis.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("overhead per step vs (a) [ms], log")
    axes[0].set_title("training-loop overhead per step")
    axes[1].set_ylabel("tail [s], log")
    axes[1].set_title("last step -> all points on the server")
    if plan.servers:
        axes[1].axhline(GOAL_TAIL_SECONDS, color="grey", linestyle="--", linewidth=0.8)
    axes[0].legend(fontsize=7)
    fig.suptitle("aidp-metrics framework benchmark (median; values ≤ 0 drawn at the floor)")
    fig.tight_layout()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=120)
    plt.close(fig)


def _csv(value: str, allowed: Sequence[str], what: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise SystemExit(f"--{what}: {bad or value!r} not in {', '.join(allowed)}")
    return items


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--worker" in argv:
        return worker_main(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_STEPS} steps, 1 repetition, near only"
    )
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--delay", type=float, default=0.05, help="proxy delay each way, s")
    parser.add_argument("--repetitions", type=int, default=None, help="default 3 (quick: 1)")
    parser.add_argument(
        "--c-repetitions", type=int, default=1, help="repetitions of (c) (default 1)"
    )
    parser.add_argument("--steps", type=int, default=None, help="override every framework's")
    parser.add_argument("--servers", default=None, help="near,far (quick: near)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--png", metavar="PATH", help="also draw a bar chart")
    args = parser.parse_args(argv)

    frameworks = _csv(args.frameworks, FRAMEWORKS, "frameworks")
    configs = _csv(args.configs, CONFIGS, "configs")
    servers = _csv(
        args.servers or ("near" if args.quick else "near,far"), ("near", "far"), "servers"
    )
    repetitions = args.repetitions or (1 if args.quick else 3)
    steps = {f: args.steps or (QUICK_STEPS if args.quick else FULL_STEPS[f]) for f in frameworks}
    plan = Plan(
        frameworks=frameworks,
        configs=configs,
        servers=servers,
        steps=steps,
        repetitions=repetitions,
        c_repetitions=min(args.c_repetitions, repetitions),
    )

    info = machine_info()
    print_header(
        "aidp-metrics framework benchmark" + (" (--quick)" if args.quick else ""),
        info,
        [
            "server   LocalMLflowServer: mlflow server, sqlite, 1 worker, 127.0.0.1; far = "
            f"latency proxy +{args.delay * 1e3:.0f} ms each way",
            f"plan     {', '.join(f'{f} {n} steps' for f, n in steps.items())}; configs "
            f"{','.join(configs)}; servers {','.join(servers)}; {repetitions} repetition(s), "
            f"(c) {plan.c_repetitions}; one subprocess per run",
            "note     numbers from one run on a possibly shared machine are noisy",
        ],
    )
    started = time.perf_counter()
    from .latency_proxy import LatencyProxy

    with local_server("aidp-bench-fw-") as server, LatencyProxy(server.url, args.delay) as proxy:
        log(f"server {server.url}, proxy {proxy.url} (+{args.delay * 1e3:.0f} ms each way)")
        spool = server.directory / "spool"
        runs = run_plan(plan, server.url, proxy.url if "far" in servers else None, spool)
        proxied = {"requests": proxy.requests, "failures": proxy.failures}
    elapsed = time.perf_counter() - started

    summary = summarize(runs, plan)
    headers, grid = results_grid(summary)
    print_grid(
        headers,
        grid,
        "results (medians; loop = end of step 1 -> end of last step; tail = last step -> "
        "all points readable on the server)",
    )
    rows = goal_rows(summary, plan)
    if rows:
        print_table(rows, "goals (informational; this benchmark never fails on them)")
    load = load_average()
    load_text = " ".join(f"{x:.2f}" for x in load) if load else "n/a"
    failed = sum(1 for r in runs if "error" in r)
    print(
        f"total {elapsed:.0f} s ({elapsed / 60:.1f} min), {len(runs)} runs, {failed} failed; "
        f"proxy {proxied['requests']} requests, {proxied['failures']} failed; "
        f"load {load_text} (1/5/15 min) at the end",
        flush=True,
    )
    if args.png:
        write_png(args.png, summary, plan)
        log(f"wrote {args.png}")
    if args.json:
        info["load_average_end"] = load
        write_json(
            args.json,
            {
                "benchmark": "frameworks",
                "quick": args.quick,
                "delay_seconds": args.delay,
                "plan": {
                    "frameworks": list(frameworks),
                    "configs": list(configs),
                    "servers": list(servers),
                    "steps": steps,
                    "repetitions": repetitions,
                    "c_repetitions": plan.c_repetitions,
                },
                "config_labels": CONFIG_LABELS,
                "machine": info,
                "seconds": elapsed,
                "proxy": proxied,
                "summary": summary,
                "runs": runs,
                "rows": rows,
            },
        )
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
