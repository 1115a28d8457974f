"""Keras 3: stream `model.fit` / `model.evaluate` metrics into a run, on any backend.

    from aidp_metrics.integrations.keras import AIDPCallback

    model.fit(x, y, epochs=5, validation_split=0.2, callbacks=[AIDPCallback()])

What lands where:

- **Step** = `model.optimizer.iterations` (optimizer steps; with gradient accumulation Keras
  counts real updates, not micro-batches). It is read only when a point is logged.
- **Epoch end**: every value Keras passes to `on_epoch_end` (`loss`, compiled metrics,
  `val_*`), plus `epoch` = the number of epochs completed (1-based, as Keras's progress bar
  counts them), all at the step reached at the end of that epoch.
- **Batches** (only with `log_every_n_steps=N`): Keras's running means since the epoch
  began, under Keras's own names (`loss`, ...), at most once per window of N optimizer steps:
  at step N, 2N, ... exactly when a batch hook runs there (`steps_per_execution=1`),
  otherwise at the first batch hook after the boundary. With the default
  `log_every_n_steps=None` the callback defines no batch hook at all, so Keras keeps its
  asynchronous callback dispatch and never converts per-batch values for any callback.
- **`model.evaluate(..., callbacks=[cb])`** outside `fit`: the results as `eval_<name>` at
  the current step. Validation inside `fit` is logged once, as `val_*` at epoch end.
- **Learning rate**: the optimizer's current learning rate as `learning_rate` at each
  epoch end (schedules included), unless the epoch's logs already hold it.
- **`watch="parameters"`**: `weight_norm/<weight path>` (2-norm) of every float weight of
  the model wherever training points are logged (epoch end; batch points with
  `log_every_n_steps`), on every backend, moved to the host in one transfer. Gradient
  norms are not available: Keras hands a callback no gradients (they live inside the
  compiled train step), so `watch="gradients"` / `"all"` is a `ValueError`.
- **Params** (once per run): the optimizer's config as `mlflow.keras.MlflowCallback` logs
  it (`optimizer_name`, `optimizer_learning_rate`, ...), and `epochs` and `steps_per_epoch`
  from `fit`, `steps_per_execution`, trainable parameter count, Keras backend and version.

The arguments of `mlflow.keras.MlflowCallback` (`log_every_epoch`, `log_every_n_steps`,
`model_id`) come first, with its meaning; points stay at the optimizer step, where MLflow's
callback logs epoch metrics at `step=epoch` (docs/frameworks/keras.md).

Lifecycle: the run is created (or, with `AIDP_RUN_ID` / `MLFLOW_RUN_ID`, attached) at the
first `fit` or `evaluate`, and ended FINISHED when `fit` (or a standalone `evaluate`)
returns; ending waits for delivery up to the run's `end_timeout` option. The same callback
object passed to several `fit` calls keeps logging to the same run (reopened, RUNNING
again) with increasing steps. If an exception escapes `fit`, Keras skips `on_train_end`;
the run is then ended FAILED by the run's exit hook at the latest (metrics logged before
are delivered first). Only process 0 of a multi-process job logs. Logging never raises
into training: an unreachable server gives an `AIDPMetricsWarning` (the run keeps metrics
in its spool, or, when it cannot be created at all, the callback does nothing), unless
`strict=True`.

`AIDPCallback(run=run)` logs into a `Run` you started: the end of `fit` (or of a standalone
`evaluate`) only flushes it, and it stays RUNNING until you end it.

This module never imports TensorFlow; it imports `jax` / `torch.distributed` only when
that is the active Keras backend.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import tempfile
import warnings
from collections.abc import Mapping
from types import FrameType
from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from aidp_metrics._metric import sanitize_key
from aidp_metrics._run.params import flatten_params
from aidp_metrics.integrations._base import INTEGRATION_TAG, RunHandle, RunSpec, parameter_names

if TYPE_CHECKING:
    from aidp_metrics import Endpoint, Run

if int(keras.__version__.split(".", 1)[0]) < 3:  # pragma: no cover - environment check
    raise ImportError(
        f"aidp_metrics.integrations.keras needs Keras 3 (found keras {keras.__version__}); "
        "install keras>=3.3"
    )

__all__ = ["AIDPCallback"]

_BATCH_HOOK = "on_train_batch_end"
_INTEGRATION_TAG = {INTEGRATION_TAG: f"keras {keras.__version__}"}
_LEARNING_RATE = "learning_rate"


class AIDPCallback(keras.callbacks.Callback):  # type: ignore[misc]
    """Log Keras training and evaluation metrics to an AIDP / MLflow run.

    Args:
        log_every_epoch: log the epoch's metrics (and the learning rate) at each epoch end;
            False needs `log_every_n_steps`, as `mlflow.keras.MlflowCallback`.
        log_every_n_steps: `None` (default) leaves every batch hook at Keras's default. An
            int N also logs the running batch metrics once per N optimizer steps (with
            `log_every_epoch=True` too, where MLflow's callback refuses the pair).
        model_id: `MlflowCallback`'s MLflow 3 logged-model id; kept (`model_id`), not
            linked to the metrics here.
        run_id: log into this existing run instead of starting one.
        experiment_name: experiment of a new run (`Run.from_env`: `AIDP_RUN_ID` /
            `MLFLOW_RUN_ID` attach to an existing run; else `AIDP_EXPERIMENT_NAME` /
            `MLFLOW_EXPERIMENT_NAME`).
        run_name: name of a new run.
        tags: extra tags set on the run.
        endpoint: where to send; from the environment when `None`.
        log_params: log the optimizer / fit / model parameters once per run.
        strict: raise logging errors instead of warning (forwarded to the run as well).
        run: a `Run` you started, to log into instead of opening one; the callback never
            ends it (the end of `fit` flushes it). Not with `experiment_name`, `run_name`,
            `endpoint` or run options: the run has its own.
        watch: "parameters": also log every weight's norm with the training points.
        log_model: upload, as written, the files a `keras.callbacks.ModelCheckpoint` of the
            same `fit` saves (under `checkpoints/`); without one, the model saved at the end
            of `fit` (`model.keras`).
        **run_options: forwarded to the run (`transport`, `flush_interval`, ...).

    Attributes:
        run_id: the run's id once it exists (first `fit`/`evaluate`), else `None`.
    """

    # log_model: a ModelCheckpoint in the fit in progress; its files' (mtime_ns, size) seen
    _saw_checkpoint = False
    _checkpoint_files: dict[str, tuple[int, int]]

    def __init__(
        self,
        log_every_epoch: bool = True,
        log_every_n_steps: int | None = None,
        model_id: str | None = None,
        *,
        run_id: str | None = None,
        experiment_name: str | None = None,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        endpoint: Endpoint | None = None,
        log_params: bool = True,
        strict: bool = False,
        run: Run | None = None,
        watch: str | None = None,
        log_model: bool = False,
        **run_options: Any,
    ) -> None:
        super().__init__()
        if watch not in (None, "parameters"):
            raise ValueError(
                f"watch must be None or 'parameters', got {watch!r}: a Keras callback is "
                "handed no gradients (they live inside the compiled train step)"
            )
        self._handle = RunHandle(
            type(self).__name__,
            kind="callback",
            run=run,
            endpoint=endpoint,
            strict=strict,
            options=run_options,
            given={"experiment_name": experiment_name, "run_name": run_name, "run_id": run_id},
            is_main=self._is_process_zero,
            integration=_INTEGRATION_TAG[INTEGRATION_TAG],
            accepted=parameter_names(AIDPCallback.__init__),
        )
        if log_every_n_steps is not None and (
            isinstance(log_every_n_steps, bool)
            or not isinstance(log_every_n_steps, int)
            or log_every_n_steps < 1
        ):
            raise ValueError(
                f"log_every_n_steps must be None or a positive int, got {log_every_n_steps!r}"
            )
        if not log_every_epoch and log_every_n_steps is None:
            raise ValueError("log_every_epoch=False needs log_every_n_steps (an int)")
        self.log_every_epoch = bool(log_every_epoch)
        self.log_every_n_steps = log_every_n_steps
        self._watch = watch is not None
        self._watched_step: int | None = None
        self.model_id = model_id
        self.log_model = bool(log_model)
        self._run_id = run_id
        self._experiment_name = experiment_name
        self._run_name = run_name
        self._tags = dict(tags) if tags else None
        self._log_params = log_params

        self._active: Run | None = None  # the run of the fit in progress
        self._process_zero: bool | None = None  # decided at the first fit/evaluate
        self._params_logged = False  # once per run (a callback keeps one run)
        self._train_metrics = self._handle.converter()
        self._eval_metrics = self._handle.converter(prefix="eval", separator="_")

        # fit / evaluate state
        self._in_fit = False
        self._fit_params: object = None
        self._in_eval = False
        self._eval_run: Run | None = None
        # batch logging state (all in optimizer steps except `_batches_*`)
        self._base_step = 0  # last step read from the optimizer
        self._batches_since_read = 0  # batches run since then
        self._batches_in_epoch = 0  # `batch + 1` of the last batch hook this epoch
        self._window = 0  # step // N of the last logged batch point (or of train begin)
        self._accumulation = 1
        self._step_variable: Any = None  # torch: the optimizer's `iterations`, for fit
        if log_every_n_steps is not None:
            # An instance attribute, so the class keeps Keras's default batch hooks and
            # epoch-only callbacks do not turn off Keras's async dispatch.
            self.on_train_batch_end = self._log_batch

    # ------------------------------------------------------------------ public

    @property
    def run(self) -> Run | None:
        """The run this callback logs to, once it exists."""
        return self._handle.run

    @property
    def run_id(self) -> str | None:
        """The run's id, once the run exists."""
        run = self._handle.run
        return None if run is None else run.run_id

    # ------------------------------------------------------------------ fit

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        self._in_fit = True
        self._fit_params = self.params
        self._batches_in_epoch = 0
        self._batches_since_read = 0
        self._active = None
        with self._handle.guard("on_train_begin"):
            run = self._ensure_run()
            if run is None:
                return
            self._active = run
            if self.log_model:
                self._follow_model_checkpoints()
            # Until on_train_end says otherwise: an exception escaping fit() skips it.
            self._handle.set_exit_status("FAILED")
            if self._log_params and not self._params_logged:
                self._params_logged = True
                run.log_params(self._collect_params())
            if self.log_every_n_steps is not None:
                self._accumulation = _accumulation_steps(self.model)
                # On JAX the step must be read through `self.model` (it syncs the state).
                on_torch = keras.backend.backend() == "torch"
                self._step_variable = self.model.optimizer.iterations if on_torch else None
                self._base_step = self._read_step()
                self._window = self._base_step // self.log_every_n_steps

    def _log_batch(self, batch: int, logs: Mapping[str, Any] | None = None) -> None:
        """`on_train_batch_end`, installed only when `log_every_n_steps` is set."""
        run = self._active
        if run is None:
            return
        every = self.log_every_n_steps
        assert every is not None
        try:  # not `self._handle.guard`: this runs every batch, a context manager costs µs
            done = batch + 1
            if done < self._batches_in_epoch:  # a new epoch (or fit) began
                self._batches_in_epoch = 0
            self._batches_since_read += done - self._batches_in_epoch
            self._batches_in_epoch = done
            # Predict the step without touching the device; read it only to log.
            predicted = self._base_step + self._batches_since_read // self._accumulation
            if predicted // every <= self._window:
                return
            step = self._read_step()
            self._base_step, self._batches_since_read = step, 0
            if step // every <= self._window:
                return
            self._window = step // every
            keys, values = self._train_metrics.points_at(logs or {}, step)
            self._add_weight_norms(keys, values, step)
            if keys:
                run.log_valid(keys, values, step)
        except Exception as exc:
            self._handle.failed(_BATCH_HOOK, exc)

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        run = self._active
        if run is None:
            return
        with self._handle.guard("on_epoch_end"):
            step = self._read_step()
            self._base_step, self._batches_since_read, self._batches_in_epoch = step, 0, 0
            if not self.log_every_epoch:
                return
            logged = dict(logs or {})
            if _LEARNING_RATE not in logged:
                learning_rate = _learning_rate(self.model)
                if learning_rate is not None:
                    logged[_LEARNING_RATE] = learning_rate
            logged["epoch"] = float(epoch + 1)  # ours, whatever `logs` held under the name
            # The last batch point may already hold these running means at this step.
            keys, values = self._train_metrics.points_at(logged, step)
            self._add_weight_norms(keys, values, step)
            run.log_valid(keys, values, step)

    def _follow_model_checkpoints(self) -> None:
        """`log_model`: after each save of a `ModelCheckpoint` in this `fit` (found in the
        `CallbackList` calling us), upload the files it wrote or rewrote."""
        self._saw_checkpoint = False
        self._checkpoint_files = {}
        for checkpoint in _model_checkpoints_of_fit():
            self._saw_checkpoint = True
            folder = os.path.dirname(os.path.abspath(str(checkpoint.filepath)))
            self._scan_checkpoint_folder(folder, upload=False)  # files already there: not ours
            if getattr(checkpoint, "_aidp_wrapped", False):
                continue
            save = checkpoint._save_model

            def saved(*args: Any, _save: Any = save, _folder: str = folder, **kwargs: Any) -> Any:
                result = _save(*args, **kwargs)
                if self.log_model and self._active is not None:
                    with self._handle.guard("log_model"):
                        self._scan_checkpoint_folder(_folder, upload=True)
                return result

            checkpoint._save_model = saved
            checkpoint._aidp_wrapped = True

    def _scan_checkpoint_folder(self, folder: str, *, upload: bool) -> None:
        if not os.path.isdir(folder):
            return
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if not entry.is_file():
                continue
            stat = entry.stat()
            signature = (stat.st_mtime_ns, stat.st_size)
            if self._checkpoint_files.get(entry.path) == signature:
                continue
            self._checkpoint_files[entry.path] = signature
            if upload and self._active is not None:
                self._active.log_artifact(entry.path, "checkpoints")  # a copy: rewritten later

    def _add_weight_norms(self, keys: list[str], values: list[float], step: int) -> None:
        """With `watch`: the weight norms, once per step (a batch point and the epoch end
        can land on the same step)."""
        if self._watch and step != self._watched_step:
            self._watched_step = step
            norms = _weight_norms(self.model)
            keys.extend(norms)
            values.extend(norms.values())

    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
        self._in_fit = False
        self._fit_params = None
        self._step_variable = None  # a later evaluate() may run with a recompiled model
        run, self._active = self._active, None
        if run is None:
            return
        with self._handle.guard("on_train_end"):
            if self.log_model and not self._saw_checkpoint:
                with self._handle.guard("log_model"), tempfile.TemporaryDirectory() as tmp:
                    path = os.path.join(tmp, "model.keras")
                    self.model.save(path)
                    run.log_artifact(path)  # a copy: the folder goes away next
            self._handle.end("FINISHED")

    # ------------------------------------------------------------------ evaluate

    def on_test_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        if self._validating():
            return
        self._in_eval = True
        self._eval_run = None
        with self._handle.guard("on_test_begin"):
            run = self._ensure_run()
            if run is not None:
                self._eval_run = run
                if not self._in_fit:
                    self._handle.set_exit_status("FAILED")

    def on_test_end(self, logs: Mapping[str, Any] | None = None) -> None:
        if not self._in_eval or self._validating():
            return
        self._in_eval = False
        run, self._eval_run = self._eval_run, None
        if run is None:
            return
        with self._handle.guard("on_test_end"):
            step = self._read_step()
            keys, values = self._eval_metrics.points_at(logs or {}, step)
            if keys:
                run.log_valid(keys, values, step)
            if self._in_fit:
                # evaluate() called from inside fit (e.g. by another callback), or after a
                # fit that died: the fit's status decides, not this evaluation.
                return
            self._handle.end("FINISHED")

    def _validating(self) -> bool:
        """True for the `evaluate()` that `fit` runs for validation.

        `fit` passes its own CallbackList to `evaluate`, so `self.params` is still the object
        `fit` set; a standalone `evaluate()` sets new params first. This also holds after a
        `fit` that died (and so never reached `on_train_end`).
        """
        return self._in_fit and self.params is self._fit_params

    # ------------------------------------------------------------------ internals

    def _ensure_run(self) -> Run | None:
        """The run to log to, created or reopened when needed; None on other processes."""
        run = self._handle.get(self._run_spec)
        if run is not None and run.ended:
            # An earlier fit/evaluate ended it: logging reopens the run (RUNNING again),
            # also when it is still a local (spooled) run.
            run.set_tags(_INTEGRATION_TAG)
        return run

    def _run_spec(self) -> RunSpec:
        tags = dict(self._tags or {})
        return RunSpec(
            run_id=self._run_id,
            experiment_name=self._experiment_name,
            run_name=self._run_name,
            tags=tags,
        )

    def _is_process_zero(self) -> bool:
        """Decided once, at the first fit or evaluate (see `_process_index`)."""
        if self._process_zero is None:
            self._process_zero = _process_index() == 0
        return self._process_zero

    def _read_step(self) -> int:
        variable = self._step_variable
        if variable is not None:
            return int(variable)
        # `self.model` unwraps torch DDP and, on JAX, syncs the training state first.
        return int(self.model.optimizer.iterations)

    def _collect_params(self) -> dict[str, str]:
        model = self.model
        params: dict[str, Any] = {}
        optimizer = getattr(model, "optimizer", None)
        if optimizer is not None:
            with contextlib.suppress(Exception), warnings.catch_warnings():
                # Keras's own numpy-2 DeprecationWarning when it reads the learning rate.
                warnings.simplefilter("ignore", DeprecationWarning)
                config = dict(optimizer.get_config())
                if isinstance(config.get("learning_rate"), float):
                    # A float32 variable: 0.01, not 0.009999999776482582.
                    config["learning_rate"] = str(np.float32(config["learning_rate"]))
                # mlflow.keras.MlflowCallback's keys: optimizer_name, optimizer_learning_rate
                params.update({f"optimizer_{key}": value for key, value in config.items()})
        fit = dict(self.params or {})
        if "epochs" in fit:
            params["epochs"] = fit["epochs"]
        if "steps" in fit:
            params["steps_per_epoch"] = fit["steps"]
        params["steps_per_execution"] = getattr(model, "steps_per_execution", None)
        with contextlib.suppress(Exception):
            params["trainable_params"] = sum(
                math.prod(int(d) for d in w.shape) for w in model.trainable_weights
            )
        params["keras_backend"] = keras.backend.backend()
        params["keras_version"] = keras.__version__
        return flatten_params(params)


def _weight_norms(model: Any) -> dict[str, float]:
    """`weight_norm/<path>` of every float weight, computed on the backend's device and
    read back in one transfer."""
    weights = [w for w in model.weights if "float" in str(w.dtype)]
    if not weights:
        return {}
    ops = keras.ops
    norms = ops.stack([ops.sqrt(ops.sum(ops.square(ops.cast(w, "float32")))) for w in weights])
    values = ops.convert_to_numpy(norms).tolist()
    return {sanitize_key(f"weight_norm/{w.path}"): v for w, v in zip(weights, values, strict=True)}


def _learning_rate(model: Any) -> float | None:
    """The optimizer's current learning rate (a schedule's value at this step), or None."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return None
    try:
        return float(keras.ops.convert_to_numpy(optimizer.learning_rate))
    except Exception:  # an optimizer without one, or a value that is not a number
        return None


def _accumulation_steps(model: Any) -> int:
    steps = getattr(getattr(model, "optimizer", None), "gradient_accumulation_steps", None)
    return int(steps) if steps else 1


def _process_index() -> int:
    """This process's index in a multi-process job (0 when alone), read when first needed.

    JAX: `jax.process_index()` (what `keras.distribution` uses). torch: the
    `torch.distributed` rank once initialized. TensorFlow: the strategy's cluster resolver
    when TensorFlow is already loaded (never imported here). Then the environment:
    `KERAS_DISTRIBUTION_PROCESS_ID`, `RANK`, `TF_CONFIG`.
    """
    backend = keras.backend.backend()
    with contextlib.suppress(Exception):
        if backend == "jax":
            import jax

            return int(jax.process_index())
        if backend == "torch":
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                return int(dist.get_rank())
        if backend == "tensorflow" and "tensorflow" in sys.modules:
            tf = sys.modules["tensorflow"]
            resolver = getattr(tf.distribute.get_strategy(), "cluster_resolver", None)
            if resolver is not None and resolver.task_type is not None:
                return _tf_task_index(
                    resolver.task_type, resolver.task_id, resolver.cluster_spec().as_dict()
                )
    for var in ("KERAS_DISTRIBUTION_PROCESS_ID", "RANK"):
        value = os.environ.get(var, "").strip()
        if value.isdigit():
            return int(value)
    with contextlib.suppress(Exception):
        config = json.loads(os.environ.get("TF_CONFIG") or "{}")
        task = config.get("task") or {}
        if task.get("type"):
            return _tf_task_index(task["type"], task.get("index", 0), config.get("cluster") or {})
    return 0


def _tf_task_index(task_type: str, task_id: object, cluster: Mapping[str, Any]) -> int:
    """TF multi-worker: the chief (or worker 0 when there is no chief) is process 0."""
    if task_type in ("chief", "master"):
        return 0
    if task_type == "worker":
        has_chief = bool(cluster.get("chief") or cluster.get("master"))
        return int(str(task_id)) + (1 if has_chief else 0)
    return 1 << 20  # ps / evaluator: never the logging process


def _model_checkpoints_of_fit() -> list[Any]:
    """The `keras.callbacks.ModelCheckpoint`s of the `CallbackList` whose `on_train_begin`
    is calling us (Keras hands a callback the model, not the list)."""
    frame: FrameType | None = sys._getframe(1)
    for _ in range(_MAX_FRAMES):
        if frame is None:
            break
        owner = frame.f_locals.get("self")
        if isinstance(owner, keras.callbacks.CallbackList):
            return [c for c in owner.callbacks if isinstance(c, keras.callbacks.ModelCheckpoint)]
        frame = frame.f_back
    return []


_MAX_FRAMES = 8
