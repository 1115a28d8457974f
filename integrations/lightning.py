"""PyTorch Lightning logger: `Trainer(logger=AIDPLogger(...))`.

`AIDPLogger` subclasses `lightning.pytorch.loggers.Logger`, and also
`pytorch_lightning.loggers.Logger` when `pytorch_lightning` is the only package installed or is
already imported, so `isinstance` checks in a Trainer from either package (LightningCLI,
callbacks, user code) accept it. With both installed, a `pytorch_lightning` user imports
`pytorch_lightning` first or uses `aidp_metrics.integrations.pytorch_lightning.AIDPLogger`,
which always has both bases. (Importing `pytorch_lightning` on its own initiative would cost
~0.6 s and move Lightning's log messages to the `pytorch_lightning` logger.)

Behaviour in short:

* The run is created lazily, on global rank zero only, the first time Lightning (or the user)
  needs it: `experiment`, `version`, `log_metrics`, `log_hyperparams`. Other ranks create
  nothing and send nothing. Without arguments everything comes from the environment
  (`Run.from_env()`: `AIDP_RUN_ID`/`MLFLOW_RUN_ID`, `AIDP_EXPERIMENT_NAME`/
  `MLFLOW_EXPERIMENT_NAME`, the endpoint variables).
* Metrics are logged at the step Lightning passes. When `log_metrics` is called without a
  step (only user code does that), the last step this logger was given is used, or 0 when
  there was none yet.
* `finalize("success")` and `finalize("finished")` (a SLURM requeue, as `MLFlowLogger` maps
  it) end the run FINISHED, `finalize("failed")` ends it FAILED (all flush first, bounded by
  the `end_timeout` run option); a requeued job that resumes sets it RUNNING again. The
  same `Run` object is kept: a later `trainer.test()` (or any later log call) reopens it --
  RUNNING again until the next finalize. FAILED is sticky: a later successful `test()`
  does not turn a failed run into a finished one.
* While the run is open its `status_on_exit` is FAILED, so a process that dies without
  Lightning's `finalize` leaves the run FAILED, never FINISHED; after a finalize it is the
  status finalize set. A logger used outside a Trainer should call `finalize("success")`.
* An unreachable server does not stop it: the run starts locally (`version` is a
  `local-...` id until the server answers). A run the server refuses (or a broken
  configuration) warns once and logs offline into the spool, for `aidp-metrics sync` once
  fixed, unless `strict=True` was passed. Continuing a run (`run_id=`, `AIDP_RUN_ID`) does
  not send again the steps the run already holds.
* `ddp_fork` / `ddp_notebook`: a run created in the parent (say `logger.version` was read
  in a notebook cell) is taken over by the forked rank-zero process -- same run, its own
  delivery -- and the parent leaves the run's status to it.
* A point identical to its key's previous one (same step and value: `epoch` with the
  training and the validation metrics of one step) is sent once.
* `run=`: log into a `Run` you started. The logger never ends it: `finalize` only flushes
  it (bounded by its `end_timeout`), and it stays RUNNING until you end it.
* Known limit: with `ddp_spawn` the run is created in the worker of rank zero, so the main
  process's logger object does not learn its id, and a second `fit`/`test` launched from the
  main process starts another run. Pass `run_id=` of an existing run to make every launch
  log into that one run.
"""

from __future__ import annotations

import argparse
import os
import sys
import types
from collections.abc import Callable, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from aidp_metrics._env import MLFLOW_TRACKING_URI
from aidp_metrics._notice import notice
from aidp_metrics._run.params import flatten_params
from aidp_metrics.integrations._base import RunHandle, RunSpec, parameter_names
from aidp_metrics.integrations._mlflow_client import RunClient

if TYPE_CHECKING:
    from aidp_metrics import Endpoint, Run

__all__ = ["AIDPLogger"]


_Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _lightning_namespaces() -> tuple[list[type], _Decorator]:
    """(`Logger` base classes, `rank_zero_experiment`).

    `lightning.pytorch` when installed; `pytorch_lightning` too when it is already imported
    (or the only one installed). Importing `pytorch_lightning` when the user has not costs
    ~0.6 s and moves Lightning's log messages to its logger; a `pytorch_lightning` user with
    both installed imports it first or uses `aidp_metrics.integrations.pytorch_lightning`.
    """
    bases: list[type] = []
    experiment_decorator: _Decorator | None = None
    try:
        from lightning.fabric.loggers.logger import rank_zero_experiment as l_experiment
        from lightning.pytorch.loggers.logger import Logger as LightningLogger
    except ImportError:
        pass
    else:
        bases.append(LightningLogger)
        experiment_decorator = l_experiment
    if bases and "pytorch_lightning" not in sys.modules:
        return bases, experiment_decorator  # type: ignore[return-value]
    try:
        from lightning_fabric.loggers.logger import rank_zero_experiment as pl_experiment
        from pytorch_lightning.loggers.logger import Logger as PLLogger
    except ImportError:
        pass
    else:
        bases.append(PLLogger)
        experiment_decorator = experiment_decorator or pl_experiment
    if experiment_decorator is None:
        raise ImportError(
            "aidp_metrics.integrations.lightning needs `lightning` or `pytorch-lightning`: "
            "pip install 'aidp-metrics[lightning]'"
        )
    return bases, experiment_decorator


_BASES, rank_zero_experiment = _lightning_namespaces()


def _lightning_version() -> str:
    for package in ("lightning", "pytorch-lightning"):
        try:
            return version(package)
        except PackageNotFoundError:
            continue
    return "unknown"


_LIGHTNING_VERSION = _lightning_version()

# Imported after Lightning, which sets `rank_zero_only.rank` from the environment on import.
# Both namespaces use this same lightning_utilities function object, so the rank a Trainer of
# either package sets (`rank_zero_only.rank = global_rank`) is the rank read here.
from lightning_utilities.core.rank_zero import rank_zero_only  # noqa: E402

_CHECKPOINT_SETTINGS = (
    "monitor",
    "mode",
    "save_last",
    "save_top_k",
    "save_weights_only",
    "_every_n_train_steps",
    "_every_n_val_epochs",
)


def _scan_checkpoints(checkpoint_callback: Any) -> list[tuple[float, str, Any]]:
    """Lightning's `_scan_checkpoints`: the last, best and top-k files that exist, with
    their score, oldest first."""
    found: dict[str, Any] = {}
    if hasattr(checkpoint_callback, "last_model_path") and hasattr(
        checkpoint_callback, "current_score"
    ):
        found[checkpoint_callback.last_model_path] = checkpoint_callback.current_score
    if hasattr(checkpoint_callback, "best_model_path") and hasattr(
        checkpoint_callback, "best_model_score"
    ):
        found[checkpoint_callback.best_model_path] = checkpoint_callback.best_model_score
    for path, score in getattr(checkpoint_callback, "best_k_models", {}).items():
        found[path] = score
    return sorted(
        (Path(path).stat().st_mtime, path, score)
        for path, score in found.items()
        if path and Path(path).is_file()
    )


def _checkpoint_metadata(checkpoint_callback: Any, path: str, score: Any) -> dict[str, Any]:
    """`MLFlowLogger`'s `metadata.yaml`."""
    return {
        "score": score.item() if hasattr(score, "item") else score,
        "original_filename": Path(path).name,
        "Checkpoint": {
            name: getattr(checkpoint_callback, name)
            for name in _CHECKPOINT_SETTINGS
            if hasattr(checkpoint_callback, name)
        },
    }


def _global_rank() -> int:
    rank: int = getattr(rank_zero_only, "rank", 0)
    return rank


def _global_step(model: Any) -> int:
    """The Trainer's optimizer steps before the current one: the step Lightning logs the
    current step's metrics at."""
    return int(model.trainer.global_step)


def _is_rank_zero() -> bool:
    return _global_rank() == 0


_LoggerBase: Any = types.new_class(
    "_LightningLoggerBase", tuple(_BASES), exec_body=lambda ns: ns.update(__module__=__name__)
)

# "finished" is what Lightning passes on a SLURM requeue; MLFlowLogger maps it to FINISHED too,
# so a requeued job that never comes back does not leave its run RUNNING forever (a resumed
# job sets it RUNNING again when it logs).
_FINAL_STATUS = {"success": "FINISHED", "finished": "FINISHED", "failed": "FAILED"}
DEFAULT_EXPERIMENT = "lightning_logs"  # MLFlowLogger's default experiment name
_FILE_URI_PREFIX = "file:"
_STATUS_RANK = {"FINISHED": 0, "FAILED": 1}
_CHECKPOINT_TAGS = {
    "best_model_path": "checkpoint.best_model_path",
    "last_model_path": "checkpoint.last_model_path",
}


class _NoExperiment:
    """What `experiment` returns when the run could not be created: every call is a no-op."""

    def _nop(self, *args: Any, **kwargs: Any) -> None:
        return None

    def __getattr__(self, _name: str) -> Any:
        return self._nop

    def __bool__(self) -> bool:
        return False


class AIDPLogger(_LoggerBase):  # type: ignore[misc]
    """Send a Lightning Trainer's metrics, hyperparameters and checkpoint paths to a run.

    Takes `MLFlowLogger`'s arguments, in its order and with its meaning
    (docs/frameworks/lightning.md lists the few differences), so switching is changing the
    import:

    Args:
        experiment_name: experiment of the new run (default: `AIDP_EXPERIMENT_NAME` /
            `MLFLOW_EXPERIMENT_NAME`, else "lightning_logs", `MLFlowLogger`'s default).
        run_name: name of the new run (its `mlflow.runName` tag).
        tracking_uri: where to send (default `MLFLOW_TRACKING_URI`, or the `AIDP_*`
            variables); passed on unchanged.
        tags: tags of the run.
        save_dir: `MLFlowLogger`'s local store directory, used by its `file:` default; kept
            for `save_dir` (the path of a `file:` tracking URI, else None).
        log_model: `MLFlowLogger`'s checkpoint upload, in its layout: True the checkpoints
            kept at `finalize` (each as saved with `save_top_k=-1`), "all" each as saved.
            Checkpoint paths and the best score are always run tags.
        prefix: put before every metric key, joined with "-" (as Lightning's loggers do).
        artifact_location: kept (`artifact_location`); the server chooses where a new
            experiment's artifacts go.
        run_id: log into this existing run instead of starting one.
        synchronous: True: each log call returns once its points are delivered (or safely
            in the spool), as `Run.flush`; False / None: delivery in the background.
        endpoint: an `aidp_metrics.Endpoint` (instead of `tracking_uri`).
        log_hyperparams: send `save_hyperparameters()` values as run params.
        run: a `Run` you started, to log into instead of opening one; the logger never
            ends it (`finalize` flushes it). Not with `run_id`, `experiment_name`,
            `run_name`, `tracking_uri`, `endpoint` or run options: the run has its own.
        **run_options: forwarded to `Run` (`transport`, `flush_interval`, `max_queue`,
            `policy`, `strict`, `atexit_timeout`, ...).

    `experiment` answers the `MlflowClient` calls Lightning code makes on
    `MLFlowLogger.experiment` (run id first: `log_metric`, `log_param`, `set_tag`,
    `log_batch`, `log_artifact`, ...); the `aidp_metrics.Run` itself is `run`.
    """

    LOGGER_JOIN_CHAR = "-"

    def __init__(
        self,
        experiment_name: str | None = None,
        run_name: str | None = None,
        tracking_uri: str | None = None,
        tags: Mapping[str, Any] | None = None,
        save_dir: str | None = "./mlruns",
        log_model: bool | Literal["all"] = False,
        prefix: str = "",
        artifact_location: str | None = None,
        run_id: str | None = None,
        synchronous: bool | None = None,
        *,
        endpoint: Endpoint | None = None,
        log_hyperparams: bool = True,
        run: Run | None = None,
        **run_options: Any,
    ) -> None:
        super().__init__()
        if log_model not in (True, False, "all"):
            raise ValueError(f"log_model must be True, False or 'all', got {log_model!r}")
        if endpoint is not None and tracking_uri:
            raise ValueError("AIDPLogger: pass tracking_uri= or endpoint=, not both")
        strict = bool(run_options.pop("strict", False))
        self._handle = RunHandle(
            type(self).__name__,
            kind="logger",
            run=run,
            endpoint=endpoint if endpoint is not None else tracking_uri or None,
            strict=strict,
            options=run_options,
            given={"run_id": run_id, "experiment_name": experiment_name, "run_name": run_name},
            is_main=_is_rank_zero,
            integration=f"lightning {_LIGHTNING_VERSION}",
            accepted=parameter_names(AIDPLogger.__init__),
        )
        self._run_id = run_id
        self._experiment_name = experiment_name
        self._run_name = run_name
        self._tracking_uri = tracking_uri or os.environ.get(MLFLOW_TRACKING_URI) or None
        self._save_dir = save_dir
        self._tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self._prefix = prefix
        self._log_model = log_model
        self._artifact_location = artifact_location
        self._synchronous = bool(synchronous)
        self._log_hyperparams_enabled = log_hyperparams
        self._converter = self._handle.converter(prefix=prefix, separator=self.LOGGER_JOIN_CHAR)
        self._last_step: int | None = None
        self._sent_tags: dict[str, str] = {}
        # log_model: the checkpoint callback to scan at finalize, and each path's mtime logged
        self._checkpoint_callback: Any = None
        self._logged_model_time: dict[str, float] = {}

    # -- Lightning's Logger properties -------------------------------------------------------

    @property
    def experiment_name(self) -> str:
        """The experiment's name (no network call, same on every rank)."""
        from aidp_metrics._env import EXPERIMENT_VARIABLES, first_env

        return self._experiment_name or first_env(EXPERIMENT_VARIABLES) or DEFAULT_EXPERIMENT

    @property
    def name(self) -> str | None:
        """The experiment id, as `MLFlowLogger.name` (rank zero creates the run if needed;
        Lightning puts checkpoints under `<default_root_dir>/<name>/<version>`); the
        experiment name while the server has not created the run; None on other ranks."""
        run = self._ensure_run()
        if run is None:
            return None
        return run.experiment_id or self.experiment_name

    @property
    def experiment_id(self) -> str | None:
        """The experiment id (rank zero creates the run if needed); None elsewhere."""
        run = self._ensure_run()
        return None if run is None else run.experiment_id

    @property
    def version(self) -> str | None:
        """The run id. On rank zero this creates the run if needed; other ranks never do."""
        # a local id until the server has created the run
        run_id = self._handle.run_id or self._run_id
        if run_id is None and self._ensure_run() is not None:
            run_id = self._handle.run_id
        return run_id

    @property
    def run_id(self) -> str | None:
        """Same as `version`."""
        return self.version

    @property
    def run(self) -> Run | None:
        """The `aidp_metrics.Run` logged into, on rank zero (created on first access)."""
        return self._ensure_run()

    @property
    def save_dir(self) -> str | None:
        """As `MLFlowLogger.save_dir`: the path of a `file:` tracking URI, else None."""
        uri = self._tracking_uri
        if uri is not None and uri.startswith(_FILE_URI_PREFIX):
            return uri[len(_FILE_URI_PREFIX) :]
        return None

    @property
    def log_model(self) -> bool | Literal["all"]:
        """`MLFlowLogger`'s checkpoint upload setting, as given."""
        return self._log_model

    @property
    def artifact_location(self) -> str | None:
        return self._artifact_location

    def _experiment_on_rank_zero(self) -> RunClient | _NoExperiment:
        run = self._ensure_run()
        if run is None:
            return _NoExperiment()
        return RunClient(run, synchronous=self._synchronous, warn=self._handle.warn_once)

    experiment = property(
        rank_zero_experiment(_experiment_on_rank_zero),
        doc="On rank zero, the `MlflowClient` calls Lightning code makes on `MLFlowLogger`'s "
        "(`RunClient`, created with the run on first access); on other ranks the Lightning "
        "namespace's dummy experiment.",
    )

    # -- logging -----------------------------------------------------------------------------

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        if step is None:
            step = self._last_step if self._last_step is not None else 0
        else:
            step = int(step)
            self._last_step = step
        keys, values = self._converter.points_at(metrics, step)
        if not keys:
            return
        run = self._ensure_run()
        if run is not None:
            run.log_valid(keys, values, step)
            self._delivered(run)

    @rank_zero_only
    def watch(self, model: Any, log: str = "gradients", log_freq: int = 100) -> None:
        """Log `model`'s per-parameter gradient norms ("gradients"), weight norms
        ("parameters") or both ("all") at every `log_freq`-th optimizer step, at the step
        Lightning gives that step's other metrics, until `finalize` (`Run.watch`;
        `WandbLogger.watch`'s signature). Read after the backward pass, any
        `gradient_clip_val` clipping and AMP unscaling: what the optimizer applies."""
        run = self._ensure_run()
        if run is not None:
            run.watch(model, log, log_freq, step=lambda: _global_step(model), first_step=0)

    @rank_zero_only
    def log_hyperparams(
        self, params: Mapping[str, Any] | argparse.Namespace | None, *args: Any, **kwargs: Any
    ) -> None:
        if not self._log_hyperparams_enabled or params is None:
            return
        try:
            flat = flatten_params(params)
        except TypeError as exc:
            notice(f"aidp-metrics: not logging hyperparameters: {exc}")
            return
        if not flat:
            return
        run = self._ensure_run()
        if run is not None:
            run.log_params(flat)
            self._delivered(run)

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        """Record the best and last checkpoint paths (and the best score) as run tags."""
        tags: dict[str, str] = {}
        for attribute, tag in _CHECKPOINT_TAGS.items():
            path = getattr(checkpoint_callback, attribute, None)
            if path:
                tags[tag] = str(path)
        score = getattr(checkpoint_callback, "best_model_score", None)
        if score is not None:
            try:
                tags["checkpoint.best_model_score"] = repr(float(score))
            except (TypeError, ValueError):
                pass
        changed = {k: v for k, v in tags.items() if self._sent_tags.get(k) != v}
        if changed:
            run = self._ensure_run()
            if run is not None:
                run.set_tags(changed)
                self._sent_tags.update(changed)
        # log_model, as MLFlowLogger: "all" (or True keeping every checkpoint) uploads each
        # as it is saved; True uploads the ones kept, at finalize.
        save_top_k = getattr(checkpoint_callback, "save_top_k", None)
        if self._log_model == "all" or (self._log_model is True and save_top_k == -1):
            self._log_checkpoints(checkpoint_callback)
        elif self._log_model is True:
            self._checkpoint_callback = checkpoint_callback

    @rank_zero_only
    def save(self) -> None:
        """Nothing to do: the run delivers in the background. Never blocks."""

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Flush; mark the run FINISHED ("success", or "finished" on a SLURM requeue) or FAILED
        ("failed").

        The logger stays usable: logging afterwards (e.g. `trainer.test()` after `fit()`)
        goes into the same run, which the `Run` marks RUNNING again until the next finalize.
        A run given as `run=` is only flushed: it stays open for its owner.
        """
        if self._checkpoint_callback is not None:
            self._log_checkpoints(self._checkpoint_callback)
        final = _FINAL_STATUS.get(status)
        if final is None:  # anything unknown: deliver, keep open
            self._handle.flush()
            return
        previous = self._handle.final_status
        if previous is not None and _STATUS_RANK[previous] > _STATUS_RANK[final]:
            final = previous  # FAILED is sticky: a later successful test() does not undo it
        # Also when the run ended FINISHED and the phase after it failed before logging.
        self._handle.end(final)

    def _log_checkpoints(self, checkpoint_callback: Any) -> None:
        """Upload the checkpoints not logged yet (or rewritten since) in `MLFlowLogger`'s
        layout: `<stem>/<file>.ckpt`, `<stem>/metadata.yaml`, `<stem>/aliases.txt`. Each file
        is copied when logged (Lightning rewrites `last.ckpt` in place)."""
        with self._handle.guard("log_model"):
            run = self._ensure_run()
            if run is None:
                return
            best = getattr(checkpoint_callback, "best_model_path", None)
            for mtime, path, score in _scan_checkpoints(checkpoint_callback):
                if self._logged_model_time.get(path, -1.0) >= mtime:
                    continue
                artifact_path = Path(path).stem
                run.log_artifact(path, artifact_path)
                run.log_dict(
                    _checkpoint_metadata(checkpoint_callback, path, score),
                    f"{artifact_path}/metadata.yaml",
                )
                aliases = ["latest", "best"] if path == best else ["latest"]
                run.log_text(str(aliases), f"{artifact_path}/aliases.txt")
                self._logged_model_time[path] = mtime

    # -- the run -----------------------------------------------------------------------------

    def _ensure_run(self) -> Run | None:
        """The run (on rank zero), opened on first use; see `RunHandle.get`."""
        return self._handle.get(self._run_spec)

    def _delivered(self, run: Run) -> None:
        """`synchronous=True`: return once what was just logged is delivered or spooled."""
        if self._synchronous:
            run.flush(run.options.end_timeout)

    def _run_spec(self) -> RunSpec:
        return RunSpec(
            run_id=self._run_id,
            experiment_name=self.experiment_name,
            run_name=self._run_name,
            tags=self._tags,
        )

    def __repr__(self) -> str:
        version = self._handle.run_id or self._run_id
        return f"AIDPLogger(experiment_name={self.experiment_name!r}, version={version!r})"
