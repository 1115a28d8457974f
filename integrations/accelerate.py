"""Hugging Face Accelerate: `Accelerator(log_with=AIDPTracker(...))` streams `accelerator.log`
into an AIDP / MLflow run.

    from accelerate import Accelerator
    from aidp_metrics.integrations.accelerate import AIDPTracker

    accelerator = Accelerator(log_with=AIDPTracker(run_name="lr-3e-4"))
    accelerator.init_trackers("resnet", config={"lr": 3e-4})  # experiment "resnet"
    for step, batch in enumerate(loader):
        ...
        accelerator.log({"loss": loss.item()}, step=step)
    accelerator.end_training()  # FINISHED

With Accelerate >= 1.15 importing this module also registers the tracker under the name
"aidp" (`accelerate.tracking.register_tracker_class`), so `Accelerator(log_with="aidp")`
works too, with the tracker's arguments in `init_trackers(..., init_kwargs={"aidp": {...}})`.
Older versions only take a tracker instance (a name must be one of Accelerate's own).

What lands where:

The constructor is `MLflowTracker`'s (`experiment_name, logging_dir, run_id, tags,
nested_run, run_name, description`), and as there the environment wins over the arguments:
`MLFLOW_EXPERIMENT_NAME` (or `AIDP_EXPERIMENT_NAME`), `MLFLOW_RUN_ID` (or `AIDP_RUN_ID`),
`MLFLOW_TAGS` (a JSON object, replacing `tags`) and `MLFLOW_NESTED_RUN`.

- **Experiment**: the environment's, else `experiment_name` (Accelerate passes
  `init_trackers`'s `project_name` there for `log_with="aidp"`), else, for an instance, the
  `project_name` of the `init_trackers` call that starts it, else "Default". A run id
  attaches to an existing run instead.
- **Params**: one per top-level key of `init_trackers`'s `config`, its value as text, as
  `MLflowTracker.store_init_configuration` logs them. Tags: `aidp_metrics.integration`
  ("accelerate <version>"), `tags` (a dict, or a JSON object as text), and the
  `description` as `mlflow.note.content`. `nested_run` with `run=`: a run of its own,
  nested under that run (`mlflow.parentRunId`).
- **Metrics**: every numeric value of `accelerator.log(values, step=...)` under its key (a
  nested dict `{"loss": {"train": x}}` as `loss/train`), at `step`. With `step=None` the
  point lands on this tracker's own count of `log` calls before it (0, 1, 2, ...; calls
  with a step count too), so un-stepped curves do not pile up at step 0. A value that is
  not a number (a string, an image) is skipped with one warning per key.

- **Artifacts**: `tracker.log_artifact(local_path, artifact_path=None)`,
  `log_artifacts(local_dir, artifact_path=None)` and `log_figure(figure, artifact_file,
  **save_kwargs)`, `MLflowTracker`'s, on the main process: the run's, snapshotted when
  called and uploaded in the background.

Lifecycle: the run is created by `init_trackers` (Accelerate >= 1.8 calls `start()`; before
that, at the first `store_init_configuration` or `log`), on the main process only
(`main_process_only = True`: Accelerate's global process index 0, so on a multi-node job
the local rank 0 of every other node creates and sends nothing). While training, the run's
`status_on_exit` is FAILED, so an exception escaping the script (or an exit without
`end_training()`) leaves it FAILED, with everything logged before delivered by the exit
hook. `accelerator.end_training()` ends it FINISHED (flushing first, at most the run's
`end_timeout`). `tracker.tracker` (`accelerator.get_tracker("aidp", unwrap=True)`) is the
`aidp_metrics.Run`. Logging never raises into training: a run that cannot be created, or
any error in the tracker, gives one `AIDPMetricsWarning`, unless `strict=True`.

`AIDPTracker(run=run)` logs into a `Run` you started (with its framework tags and the
`config`): `end_training()` only flushes it, and it stays RUNNING until you end it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from types import FrameType
from typing import TYPE_CHECKING, Any, TypeVar, cast

import accelerate
from accelerate import tracking
from accelerate.tracking import GeneralTracker

from aidp_metrics._env import EXPERIMENT_VARIABLES, RUN_ID_VARIABLES, first_env
from aidp_metrics._run.params import param_value
from aidp_metrics.integrations._base import NOTE_TAG, RunHandle, RunSpec, parameter_names
from aidp_metrics.integrations._mlflow_env import (
    MLFLOW_NESTED_RUN,
    env_flag,
    env_tags,
    json_tags,
)

if TYPE_CHECKING:
    from aidp_metrics import Endpoint, Run, TrackingClient

__all__ = ["AIDPTracker"]

TRACKER_NAME = "aidp"

_F = TypeVar("_F", bound=Callable[..., Any])
# Runs the method on the main process only when `self.main_process_only` (Accelerate's own).
_on_main_process = cast("Callable[[_F], _F]", tracking.on_main_process)
# How far up the stack `init_trackers` can be from our `start` / `store_init_configuration`
# (the on_main_process wrappers sit in between).
_MAX_FRAMES = 8


class AIDPTracker(GeneralTracker):  # type: ignore[misc]
    """An Accelerate tracker sending `accelerator.log` metrics and the config to a run.

    Args (`MLflowTracker`'s, in its order; the environment wins, as there):
        experiment_name: experiment of a new run (`MLFLOW_EXPERIMENT_NAME` /
            `AIDP_EXPERIMENT_NAME` win; default: `init_trackers`'s `project_name`).
        logging_dir: `MLflowTracker`'s artifact location of a new experiment; kept
            (`logging_dir`), the server chooses where artifacts go.
        run_id: log into this existing run (`MLFLOW_RUN_ID` / `AIDP_RUN_ID` win).
        tags: tags of the run, a dict or a JSON object as text (`MLFLOW_TAGS` wins).
        nested_run: with `run=`, log into a run of its own nested under it
            (`MLFLOW_NESTED_RUN` wins).
        run_name: name of a new run.
        description: the run's description (`mlflow.note.content`).
        log_params: log `init_trackers`'s `config` as params.
        endpoint: where to send; by default from the environment.
        client: a `MetricsClient` to send with; by default one for `endpoint`.
        strict: raise when the run cannot be created or the tracker fails (default: warn
            once and go on; training never dies from logging).
        run: a `Run` you started, to log into instead of opening one; `end_training()`
            flushes it and leaves it open. Not with `experiment_name`, `run_name`,
            `run_id`, `endpoint`, `client` or run options: the run has its own.
        **run_options: forwarded to `aidp_metrics.Run` (`transport`, `flush_interval`, ...).
    """

    name = TRACKER_NAME
    requires_logging_directory = False
    main_process_only = True

    def __init__(
        self,
        experiment_name: str | None = None,
        logging_dir: str | os.PathLike[str] | None = None,
        run_id: str | None = None,
        tags: Mapping[str, object] | str | None = None,
        nested_run: bool = False,
        run_name: str | None = None,
        description: str | None = None,
        *,
        log_params: bool = True,
        endpoint: Endpoint | None = None,
        client: TrackingClient | None = None,
        strict: bool = False,
        run: Run | None = None,
        **run_options: Any,
    ) -> None:
        self._handle = RunHandle(
            type(self).__name__,
            kind="tracker",
            run=run,
            endpoint=endpoint,
            client=client,
            strict=strict,
            options=run_options,
            given={"experiment_name": experiment_name, "run_name": run_name, "run_id": run_id},
            integration=f"accelerate {accelerate.__version__}",
            accepted=parameter_names(AIDPTracker.__init__),
        )
        super().__init__()
        self.experiment_name = experiment_name
        self.logging_dir = logging_dir
        self.run_name = run_name
        self.description = description
        if isinstance(tags, str):
            tags = json_tags(tags, "tags")
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self.nested_run = nested_run
        self.log_params = log_params
        self.strict = strict
        self._run_id = run_id
        self._project_name: str | None = None  # of the init_trackers call that started it
        self._calls = 0  # `log` calls so far: the step of a point logged without one
        self._converter = self._handle.converter(nested=True)  # grouped scalars

    # -- Accelerate's tracker API ------------------------------------------------------------

    @property
    def tracker(self) -> Run | None:
        """The `aidp_metrics.Run` (created if needed) on the main process; None elsewhere,
        or when the run could not be created."""
        return self._main_process_run("tracker")

    @property
    def run_id(self) -> str | None:
        """The id of the run, once it exists on the main process."""
        run = self._handle.run
        return None if run is None else run.run_id

    @_on_main_process
    def start(self) -> None:
        """Create (or attach) the run; `init_trackers` calls this (Accelerate >= 1.8)."""
        try:
            if self._project_name is None:
                self._project_name = _project_name_of_init_trackers()
            self._ensure_run()
        except Exception as exc:
            self._handle.failed("start", exc)

    @_on_main_process
    def store_init_configuration(self, values: Mapping[str, Any]) -> None:
        """`init_trackers`'s `config`: one param per top-level key, its value as text."""
        try:
            if self._project_name is None and self._handle.run is None:
                self._project_name = _project_name_of_init_trackers()
            run = self._ensure_run()
            if run is not None and self.log_params:
                run.log_params({str(key): param_value(value) for key, value in values.items()})
        except Exception as exc:
            self._handle.failed("store_init_configuration", exc)

    def log(self, values: Mapping[str, Any], step: int | None = None, **kwargs: Any) -> None:
        """`accelerator.log(values, step)`: the numeric values at `step` (or the call count)."""
        run = self._handle.run
        if run is None:
            # Only where the main-process check lets a run be created. Once it exists the
            # check (Accelerate's decorator, ~9 us a call, more than the logging) is done.
            run = self._main_process_run("log")
            if run is None:
                return
        at = self._calls if step is None else step
        self._calls += 1
        try:
            if kwargs:
                self._handle.warn_once("log kwargs", f"ignoring log arguments {sorted(kwargs)}")
            at = int(at)
            keys, numbers = self._converter.points_at(values, at)
            if keys:
                run.log_valid(keys, numbers, at)
        except Exception as exc:
            self._handle.failed("log", exc)

    @_on_main_process
    def log_artifact(
        self, local_path: str | os.PathLike[str], artifact_path: str | None = None
    ) -> None:
        """`MLflowTracker.log_artifact`: the file, as it is now, into `artifact_path`."""
        run = self._main_process_run("log_artifact")
        if run is not None:
            with self._handle.guard("log_artifact"):
                run.log_artifact(local_path, artifact_path)

    @_on_main_process
    def log_artifacts(
        self, local_dir: str | os.PathLike[str], artifact_path: str | None = None
    ) -> None:
        """`MLflowTracker.log_artifacts`: every file under `local_dir`, as it is now."""
        run = self._main_process_run("log_artifacts")
        if run is not None:
            with self._handle.guard("log_artifacts"):
                run.log_artifacts(local_dir, artifact_path)

    @_on_main_process
    def log_figure(self, figure: Any, artifact_file: str, **save_kwargs: Any) -> None:
        """`MLflowTracker.log_figure`: a matplotlib or plotly figure saved as `artifact_file`."""
        run = self._main_process_run("log_figure")
        if run is not None:
            with self._handle.guard("log_figure"):
                run.log_figure(figure, artifact_file, **save_kwargs)

    @_on_main_process
    def finish(self) -> None:
        """`accelerator.end_training()`: flush and end the run FINISHED (a run given as
        `run=`: flush only)."""
        with self._handle.guard("finish"):
            self._handle.end("FINISHED")

    # -- internals ---------------------------------------------------------------------------

    @_on_main_process
    def _main_process_run(self, hook: str) -> Run | None:
        try:
            return self._ensure_run()
        except Exception as exc:
            self._handle.failed(hook, exc)
            return None

    def _ensure_run(self) -> Run | None:
        """The run, started or attached on first use; None once that has failed. Until
        `end_training()`, an exception escaping the script ends it FAILED."""
        return self._handle.get(self._run_spec)

    def _run_spec(self) -> RunSpec:
        """As `MLflowTracker`: the environment's experiment, run id, tags and nesting win
        over the arguments."""
        tags = env_tags()
        if tags is None:
            tags = dict(self.tags)
        if self.description:
            tags[NOTE_TAG] = self.description
        nested = env_flag(MLFLOW_NESTED_RUN)
        return RunSpec(
            run_id=first_env(RUN_ID_VARIABLES) or self._run_id,
            experiment_name=first_env(EXPERIMENT_VARIABLES)
            or self.experiment_name
            or self._project_name,
            run_name=self.run_name,
            tags=tags,
            nested=self.nested_run if nested is None else nested,
        )

    def __repr__(self) -> str:
        experiment = self.experiment_name or self._project_name
        return f"AIDPTracker(experiment={experiment!r}, run_id={self.run_id!r})"


def _project_name_of_init_trackers() -> str | None:
    """The `project_name` of the `Accelerator.init_trackers` call running us, if any.

    Accelerate gives a tracker instance only `start()` and `store_init_configuration(config)`,
    never the project name, and calls both from `init_trackers` a few frames up.
    """
    frame: FrameType | None = sys._getframe(1)
    for _ in range(_MAX_FRAMES):
        if frame is None:
            return None
        if frame.f_code.co_name == "init_trackers" and isinstance(
            frame.f_locals.get("self"), accelerate.Accelerator
        ):
            name = frame.f_locals.get("project_name")
            return str(name) if name else None
        frame = frame.f_back
    return None


def _register_by_name() -> None:
    """`Accelerator(log_with="aidp")`, where Accelerate lets a tracker register (>= 1.15)."""
    register = getattr(tracking, "register_tracker_class", None)
    if register is not None and tracking.LOGGER_TYPE_TO_CLASS.get(TRACKER_NAME) is not AIDPTracker:
        register(AIDPTracker)


_register_by_name()
