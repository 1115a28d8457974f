"""Worker side of the framework benchmark: one framework, one configuration, one process.

`run_worker` trains a tiny model on synthetic data, logging every optimizer step with the
configuration's logger, and returns the clock readings the parent needs: start-up (from
just before the integration is imported and built, through run creation, to the end of the
first step), steady state (per step after the warm-up, wall and training-thread CPU), the
teardown (last step -> fit and the finishing call returned) and the tail (last step -> every
logged point readable on the server). It runs in a process forked for it by
`_frameworks_forkserver`, so nothing of MLflow's process-global state is shared between
runs; the framework itself was imported before the fork and is not part of start-up.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BATCH = 8
FEATURES = 16
TAIL_TIMEOUT = 120.0
POLL_INTERVAL = 0.025
QUIET_LOGGERS = ("mlflow", "lightning", "lightning.pytorch", "transformers", "accelerate")


@dataclass
class Probe:
    """Clock readings at the start and at the end of every step, and the points handed
    to the integration. All readings are taken on the training thread.

    Besides the step's own clocks, every tick reads two in-run clocks that split the cost
    of logging without a second run to compare with: the training thread's CPU spent
    inside the integration's hooks so far (`hook_cpu`, see `time_hooks`), and the whole
    process' CPU (`time.process_time`: the training thread plus every other thread, the
    integration's delivery thread among them)."""

    begin_wall: float = 0.0
    begin_cpu: float = 0.0
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    hooks: list[float] = field(default_factory=list)
    probes: list[float] = field(default_factory=list)
    processes: list[float] = field(default_factory=list)
    hook_cpu: float = 0.0
    probe_cpu: float = 0.0
    in_timed_hook: bool = False
    logged: dict[str, set[int]] = field(default_factory=dict)

    def begin(self) -> None:
        """Start-up starts: just before the integration is imported and built."""
        self.begin_cpu = time.thread_time()
        self.begin_wall = time.perf_counter()

    def tick(self) -> None:
        self.walls.append(time.perf_counter())
        self.cpus.append(time.thread_time())
        self.processes.append(time.process_time())
        self.hooks.append(self.hook_cpu)
        self.probes.append(self.probe_cpu)

    def time_hooks(self, target: Any, names: Iterable[str]) -> None:
        """Times `target`'s methods `names` (instance attributes shadowing the class's)."""
        for name in names:
            setattr(target, name, self.timed(getattr(target, name)))

    def timed(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """`function`, adding the training thread's CPU spent in it to `hook_cpu` (a timed
        call inside another counts once). The clock is read right around the call, so
        about one `time.thread_time()` (a system call: 1-3 µs here) of the timer's own cost
        is in the figure; right after it, the same wrapper times a call of nothing, adding
        to `probe_cpu` the timer's own cost (measured warm, so it is a lower bound) for the
        report to take off. A plain function, not `functools.wraps`: Keras tells its
        default hooks by an attribute that must not be copied."""

        def timed(*args: Any, **kwargs: Any) -> Any:
            if self.in_timed_hook:
                return function(*args, **kwargs)
            self.in_timed_hook = True
            started = time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                self.hook_cpu += time.thread_time() - started
                started = time.thread_time()
                _nothing()
                self.probe_cpu += time.thread_time() - started
                self.in_timed_hook = False

        return timed

    def record(self, keys: Iterable[str], step: int) -> None:
        for key in keys:
            self.logged.setdefault(key, set()).add(step)

    @property
    def steps(self) -> int:
        return len(self.walls)

    @property
    def points(self) -> int:
        return sum(len(steps) for steps in self.logged.values())


@dataclass(frozen=True)
class WorkerArgs:
    framework: str
    config: str
    steps: int
    warmup: int  # steps after the first that belong to neither start-up nor steady state
    target: str | None  # the URL the integration logs to (near server or proxy)
    near: str | None  # the server itself, for reading back
    experiment: str


def _data(steps: int) -> tuple[Any, Any]:
    import torch

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(steps * BATCH, FEATURES, generator=generator)
    y = x.sum(dim=1, keepdim=True) * 0.1 + 0.01 * torch.randn(steps * BATCH, 1, generator=generator)
    return x, y


def _endpoint(url: str | None) -> Any:
    from aidp_metrics import Endpoint

    assert url is not None
    return Endpoint.mlflow(url)


def overridden_hooks(callback: Any, base: type) -> list[str]:
    """The `on_*` hooks of `callback` that are not `base`'s do-nothing defaults, whether
    its class overrides them or it installs them on itself (ours does for Keras' batch hook)."""
    return [
        name
        for name in dir(base)
        if name.startswith("on_")
        and getattr(getattr(callback, name), "__func__", None) is not getattr(base, name)
    ]


def _nothing() -> None:
    return None


def _mlflow_flush() -> None:
    import mlflow

    mlflow.flush_async_logging()


def _lightning_logger(w: WorkerArgs, probe: Probe) -> Any:
    """The configuration's logger, recording every point handed to it."""
    if w.config == "a":
        return False
    base: Any
    if w.config == "b":
        from aidp_metrics.integrations.lightning import AIDPLogger

        base = AIDPLogger
        options: dict[str, Any] = {"endpoint": _endpoint(w.target)}
    else:
        from lightning.pytorch.loggers import MLFlowLogger

        base = MLFlowLogger
        options = {"tracking_uri": w.target}
        if w.config != "c":
            options["synchronous"] = False

    log_metrics = probe.timed(base.log_metrics)

    class Counted(base):  # type: ignore[misc]
        def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
            probe.record(metrics.keys(), step or 0)
            log_metrics(self, metrics, step)

    logger = Counted(experiment_name=w.experiment, **options)
    probe.time_hooks(logger, ("save",))  # Lightning calls it after every log_metrics
    return logger


def train_lightning(w: WorkerArgs, probe: Probe, workdir: Path) -> Callable[[], None]:
    """Fit; returns what must run after fit before the tail is complete."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    class Model(L.LightningModule):
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

    class Clock(L.Callback):
        def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
            probe.tick()

    x, y = _data(w.steps)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False, num_workers=0)
    model = Model()
    probe.begin()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=w.steps,
        max_epochs=1,
        logger=_lightning_logger(w, probe),
        log_every_n_steps=1,
        callbacks=[Clock()],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        default_root_dir=str(workdir),
    )
    trainer.fit(model, train_dataloaders=loader)
    return _mlflow_flush if w.config in ("d", "e") else _nothing


def _transformers_callbacks(w: WorkerArgs, probe: Probe) -> tuple[list[Any], Any]:
    """(callbacks, report_to): the clock first, then the configuration's logger."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
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
    if w.config == "b":
        from aidp_metrics.integrations.transformers import AIDPCallback

        callbacks.append(AIDPCallback(experiment_name=w.experiment, endpoint=_endpoint(w.target)))
    # (c)-(e): MLFLOW_TRACKING_URI / MLFLOW_EXPERIMENT_NAME are in the environment.
    return callbacks, ["mlflow"] if w.config in ("c", "d", "e") else "none"


def _time_transformers_hooks(trainer: Any, probe: Probe) -> None:
    """Times the logging integration's hooks: ours, or MLflow's `MLflowCallback`."""
    from transformers import TrainerCallback
    from transformers.integrations.integration_utils import MLflowCallback

    for callback in trainer.callback_handler.callbacks:
        ours = type(callback).__module__.startswith("aidp_metrics.")
        if ours or isinstance(callback, MLflowCallback):
            probe.time_hooks(callback, overridden_hooks(callback, TrainerCallback))


def train_transformers(w: WorkerArgs, probe: Probe, workdir: Path) -> Callable[[], None]:
    import torch
    from transformers import Trainer, TrainingArguments

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

    model = Model()
    probe.begin()
    callbacks, report_to = _transformers_callbacks(w, probe)
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
    trainer = Trainer(model=model, args=args, train_dataset=Data(), callbacks=callbacks)
    _time_transformers_hooks(trainer, probe)
    trainer.train()
    return _mlflow_flush if w.config in ("c", "d", "e") else _nothing


def _keras_logger(w: WorkerArgs, probe: Probe) -> tuple[list[Any], Callable[[], None]]:
    """(callbacks, finish) of the configuration, their hooks timed; MLflow's run starts
    here, as a user's `with mlflow.start_run():` would, and `finish` ends it as leaving
    that block does."""
    import keras

    callback: Any
    finish: Callable[[], None] = _nothing
    if w.config == "b":
        from aidp_metrics.integrations.keras import AIDPCallback

        callback = AIDPCallback(
            log_every_n_steps=1, experiment_name=w.experiment, endpoint=_endpoint(w.target)
        )
    elif w.config in ("c", "d", "e"):
        import mlflow
        from mlflow.keras import MlflowCallback

        assert w.target is not None
        mlflow.set_tracking_uri(w.target)
        mlflow.set_experiment(w.experiment)
        mlflow.start_run()
        callback, finish = (
            MlflowCallback(log_every_epoch=False, log_every_n_steps=1),  # type: ignore[no-untyped-call]
            mlflow.end_run,
        )
    else:
        return [], _nothing
    # Keras tells an overridden hook from a default one, so only overridden ones are timed.
    probe.time_hooks(callback, overridden_hooks(callback, keras.callbacks.Callback))
    return [callback], finish


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
    probe.begin()
    callbacks, finish = _keras_logger(w, probe)
    model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=1,
        shuffle=False,
        verbose=0,
        callbacks=[Clock(), *callbacks],
    )
    return finish


def train_accelerate(w: WorkerArgs, probe: Probe, workdir: Path) -> Callable[[], None]:
    """A plain loop; returns `accelerator.end_training` (ends the run, flushes)."""
    import torch
    from accelerate import Accelerator
    from torch.utils.data import DataLoader, TensorDataset

    x, y = _data(w.steps)
    loader = DataLoader(TensorDataset(x, y), batch_size=BATCH, shuffle=False, num_workers=0)
    model = torch.nn.Linear(FEATURES, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    probe.begin()
    tracker: Any = None
    if w.config == "b":
        from aidp_metrics.integrations.accelerate import AIDPTracker

        tracker = AIDPTracker(endpoint=_endpoint(w.target))
    elif w.config in ("c", "d", "e"):
        tracker = "mlflow"  # MLFLOW_TRACKING_URI / MLFLOW_EXPERIMENT_NAME are in the environment
    accelerator = Accelerator(cpu=True, log_with=tracker)
    accelerator.init_trackers(w.experiment)
    for each in accelerator.trackers:
        probe.time_hooks(each, ("log",))
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
    finish: Callable[[], None] = accelerator.end_training
    return finish


TRAINERS: dict[str, Callable[[WorkerArgs, Probe, Path], Callable[[], None]]] = {
    "lightning": train_lightning,
    "transformers": train_transformers,
    "keras": train_keras,
    "accelerate": train_accelerate,
}

# What the fork server imports once, before any fork (not part of any measurement).
PRELOAD: dict[str, tuple[str, ...]] = {
    "lightning": ("torch", "lightning", "lightning.pytorch.loggers"),
    "transformers": ("torch", "transformers", "transformers.trainer"),
    "keras": ("torch", "keras"),
    "accelerate": ("torch", "accelerate"),
}


def warm_torch() -> None:
    """One tiny optimizer step: pulls in what torch imports lazily on first use (dynamo,
    sympy, ...: seconds of CPU), so that the fork server's children start warm."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    x, y = _data(2)
    model = torch.nn.Linear(FEATURES, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for inputs, targets in DataLoader(TensorDataset(x, y), batch_size=BATCH):
        torch.nn.functional.mse_loss(model(inputs), targets).backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        optimizer.zero_grad()


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


def _poll_complete(
    client: Any, run_id: str, probe: Probe, deadline: float
) -> tuple[int, int, float]:
    """Poll until every logged point is readable or the deadline passes: (polls, points
    read back, when the last poll started). Each poll reads the key with most points
    and, once that one is complete, every key."""
    expected = {key: len(steps) for key, steps in probe.logged.items()}
    main_key = max(expected, key=lambda k: (expected[k], k))
    polls = 0
    while True:
        polls += 1
        started = time.perf_counter()
        history = client.get_metric_history(run_id, main_key)
        main_done = len(probe.logged[main_key] & {m.step for m in history}) >= expected[main_key]
        if main_done or started >= deadline:
            got = sum(_read_back(client, run_id, probe.logged).values())
            if got >= probe.points or started >= deadline:
                return polls, got, started
        time.sleep(POLL_INTERVAL)


def wait_for_server(near: str, experiment: str, probe: Probe) -> dict[str, Any]:
    """Poll the server until every logged (key, step) is readable (or TAIL_TIMEOUT).

    `done` is when the last (complete) poll started, or when checking began if the first
    poll already found everything (the points were there before anyone looked): the
    verification's own requests are not part of the tail. Resolution: one poll
    (POLL_INTERVAL plus a few requests).
    """
    from aidp_metrics import MetricsClient

    check_started = time.perf_counter()
    deadline = check_started + TAIL_TIMEOUT
    polls, read_back, last_poll = 0, 0, check_started
    with MetricsClient(near) as client:
        run_id = None
        while run_id is None and time.perf_counter() < deadline:
            run_id = _find_run(client, experiment)
            if run_id is None:
                time.sleep(POLL_INTERVAL)
        if run_id is not None:
            polls, read_back, last_poll = _poll_complete(client, run_id, probe, deadline)
    complete = read_back >= probe.points
    verified = time.perf_counter()
    return {
        "done": (check_started if polls == 1 else last_poll) if complete else verified,
        "verify_seconds": verified - check_started,
        "run_id": run_id,
        "read_back": read_back,
        "completeness": read_back / probe.points if probe.points else None,
        "timed_out": not complete,
        "polls": polls,
    }


def _quiet() -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in (*QUIET_LOGGERS, "aidp_metrics"):
        logging.getLogger(name).setLevel(logging.ERROR)


def clock_figures(probe: Probe, warmup: int) -> dict[str, Any]:
    """Start-up and steady state from the probe's readings (at least one step ran).

    Step 1 belongs to start-up, steps 2 .. warmup+1 to the warm-up, steps warmup+2 .. N to
    the steady state (with too few steps the warm-up shrinks so that one step is left)."""
    n = probe.steps
    first = max(0, min(warmup, n - 2))  # walls[i] is the end of step i + 1
    steady = max(n - 1 - first, 1)
    step_cpu = (probe.cpus[-1] - probe.cpus[first]) / steady
    hooks = (probe.hooks[-1] - probe.hooks[first]) / steady
    timer = (probe.probes[-1] - probe.probes[first]) / steady
    return {
        "steps": n,
        "startup_seconds": probe.walls[0] - probe.begin_wall,
        "startup_cpu_seconds": probe.cpus[0] - probe.begin_cpu,
        "warmup_steps": first,
        "steady_steps": n - 1 - first,
        "step_seconds": (probe.walls[-1] - probe.walls[first]) / steady,
        "step_cpu_seconds": step_cpu,
        "hook_cpu_seconds": hooks,
        "hook_timer_cpu_seconds": timer,
        # The hooks' CPU, less the timer's own, against the rest of the same run's step
        # (less the timer's second reading): both at the same machine speed, so this share
        # is steady where a difference between two runs is not.
        "hook_share": (hooks - timer) / max(step_cpu - hooks - timer, 1e-9),
        "other_threads_cpu_seconds": (
            (probe.processes[-1] - probe.processes[first]) - (probe.cpus[-1] - probe.cpus[first])
        )
        / steady,
    }


def run_worker(w: WorkerArgs) -> dict[str, Any]:
    _quiet()
    probe = Probe()
    with tempfile.TemporaryDirectory(prefix="aidp-bench-fw-") as directory:
        finish = TRAINERS[w.framework](w, probe, Path(directory))
        fit_returned = time.perf_counter()
        finish()
        finished = time.perf_counter()
        server: dict[str, Any] = {}
        if w.config != "a" and w.near is not None and probe.logged:
            server = wait_for_server(w.near, w.experiment, probe)
    if not probe.walls:
        raise RuntimeError("no training step ran")
    last = probe.walls[-1]
    return {
        "framework": w.framework,
        "config": w.config,
        **clock_figures(probe, w.warmup),
        "fit_return_seconds": fit_returned - last,
        "teardown_seconds": finished - last,
        "tail_seconds": server.get("done", finished) - last,
        "logged_points": probe.points,
        "read_back_points": server.get("read_back"),
        "completeness": server.get("completeness"),
        "timed_out": server.get("timed_out", False),
        "keys": sorted(probe.logged),
        "polls": server.get("polls", 0),
        "verify_seconds": server.get("verify_seconds", 0.0),
        "run_id": server.get("run_id"),
    }
