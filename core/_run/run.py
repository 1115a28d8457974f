"""`Run`: log metrics from a training loop without waiting on the network.

`Run` is the public handle: it validates and converts on the calling thread and appends to
the run's queue; everything behind it lives in its own module -- opening the run
(`creation.py`, `opener.py`), the stages that deliver and journal it (`pipeline.py`:
queue -> delivery loop / spool writer) and the process hooks (`lifecycle.py`). Nothing
here raises into training code unless `strict=True`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from aidp_metrics._bridges import system_metrics
from aidp_metrics._bridges.watch import Watches
from aidp_metrics._connection.client import TrackingClient
from aidp_metrics._connection.endpoint import Endpoint
from aidp_metrics._delivery.opener import LOCAL_ID_TAG
from aidp_metrics._env import EXPERIMENT_VARIABLES, RUN_ID_VARIABLES, first_env
from aidp_metrics._errors import DeliveryError
from aidp_metrics._metric import (
    now_ms,
)
from aidp_metrics._notice import Notices, notice
from aidp_metrics._queue.journal import new_local_id
from aidp_metrics._queue.options import DeliveryOptions
from aidp_metrics._queue.queue import QueueState
from aidp_metrics._stats import RunStats
from aidp_metrics._uploads.stage import UploadStage

from . import lifecycle
from .artifacts import ArtifactMethods
from .creation import RunConstructors, RunSetup, string_tags
from .metrics import MetricMethods
from .params import LoggedParams, flatten_params
from .pipeline import RunPipeline, summary

TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")
_logger = logging.getLogger("aidp_metrics")

__all__ = ["EXPERIMENT_VARIABLES", "LOCAL_ID_TAG", "RUN_ID_VARIABLES", "Run", "first_env"]


class Run(MetricMethods, ArtifactMethods, RunConstructors):
    """One tracking run. Create it with `Run.start`, `Run.attach` or `Run.from_env`.

    `client` is None for an offline run. Until the server has created (or confirmed) the
    run, `run_id` is the id it was given (attach) or a local id (`local-...`).
    """

    def __init__(self, setup: RunSetup) -> None:
        self.client = setup.client
        self.options: DeliveryOptions = setup.options
        self.local_id = setup.descriptor.local_id
        self.status_on_exit = "FINISHED"
        self.last_step = 0  # the step of the last log call (system metrics sample at it)
        self._owns_client = setup.owns_client
        self._descriptor = setup.descriptor
        self._params = LoggedParams(setup.params)
        self._keys: dict[str, str] = {}
        self._end_lock = threading.Lock()
        self._status: str | None = None  # the status end() last set
        self._role = lifecycle.ProcessRole()
        self._alias = setup.alias  # attached to a local id not resolved yet
        self._notices = Notices()
        self._skipped_reported = 0  # stats.skipped when end() last reported it
        self._spec = setup.spec
        self._before_end: list[Callable[[], None]] = []  # what _end() calls first, once
        self._watches = Watches()
        self._start(setup.run_id, setup.opening, setup.floors)
        self._announce()

    def _start(
        self,
        run_id: str | None,
        opening: tuple[str, dict[str, Any]] | None,
        floors: dict[str, int] | None,
    ) -> None:
        self._pipeline = RunPipeline(
            self.client,
            self.options,
            self._descriptor,
            run_id=run_id,
            opening=opening,
            floors=floors,
            notices=self._notices,
            owns_client=self._owns_client,
        )
        self._queue = self._pipeline.queue
        self._pipeline.connect()
        self._connect()

    def _connect(self) -> None:
        """Register with the process hooks and, when asked for, the system-metrics sampler
        (again when logging reopened an ended run)."""
        lifecycle.register(self)
        if self.options.system_metrics:
            system_metrics.watch(self, self.options.system_metrics_interval)

    def _act(self, wake: int) -> None:
        if self._pipeline.act(wake):  # reopened
            self._connect()

    # -- identity -------------------------------------------------------------------------

    @property
    def run_id(self) -> str:
        """The server's run id; until the server has it, the id the run was attached to,
        else its local id."""
        return self._queue.run_id or self._descriptor.run_id or self._alias or self.local_id

    @property
    def experiment_id(self) -> str | None:
        return self._descriptor.experiment_id

    @property
    def run_name(self) -> str | None:
        return self._descriptor.run_name

    @property
    def offline(self) -> bool:
        return self.client is None

    @property
    def url(self) -> str | None:
        """The run's page in the tracking server's web UI; None while the run exists only
        here (offline, or not created on the server yet) and for AIDP (no known UI URL)."""
        run_id = self.run_id
        if self.client is None or run_id in (self.local_id, self._alias):
            return None
        return self.client.endpoint.run_page_url(run_id, self.experiment_id)

    def _announce(self) -> None:
        url = self.url
        if url is not None:
            _logger.info("aidp-metrics: run %s: %s", self.run_id, url)

    @property
    def ended(self) -> bool:
        """`end()` was called and nothing was logged since."""
        return self._queue.state is not QueueState.OPEN

    @property
    def inherited(self) -> bool:
        """This process is a fork of the one that logs this run (see `take_over`)."""
        return self._role.inherited

    @property
    def spool_directory(self) -> str | None:
        """Where this run's journal is, while it has one."""
        return self._queue.journal_dir

    # -- creating -------------------------------------------------------------------------

    @classmethod
    def from_env(
        cls,
        *,
        experiment_name: str | None = None,
        run_name: str | None = None,
        tags: Mapping[str, object] | None = None,
        endpoint: Endpoint | str | None = None,
        client: TrackingClient | None = None,
        skip_logged_steps: bool = False,
        **options: Any,
    ) -> Run:
        """Attach to `AIDP_RUN_ID` / `MLFLOW_RUN_ID` when set (with `skip_logged_steps`, as
        `attach`), else start a run.

        The experiment is `experiment_name`, else `AIDP_EXPERIMENT_NAME` /
        `MLFLOW_EXPERIMENT_NAME`, else `Default`.
        """
        run_id = first_env(RUN_ID_VARIABLES)
        experiment = experiment_name or first_env(EXPERIMENT_VARIABLES)
        where: dict[str, Any] = {"endpoint": endpoint, "client": client, **options}
        if not run_id:
            return cls.start(experiment_name=experiment, run_name=run_name, tags=tags, **where)
        run = cls.attach(
            run_id, skip_logged_steps=skip_logged_steps, experiment_name=experiment, **where
        )
        if tags:
            run.set_tags(tags)
        return run

    # -- logging: log_metric(s) and log_valid are MetricMethods' (metrics.py) -------------

    def log_system_metrics(self, metrics: Mapping[str, float], step: int, timestamp: int) -> None:
        """For the system-metrics sampler: its valid `system/` keys at `step`, stamped with
        the sample's time, without moving `last_step` (the training loop's)."""
        if self._role.inherited:
            return
        records = [(key, float(v), timestamp, step) for key, v in metrics.items()]
        wake = self._queue.append(records)
        if wake:
            self._act(wake)

    def log_params(self, params: object) -> None:
        """Log hyperparameters, flattened with `/`; re-logging a value is a no-op and a
        changed value is kept as first logged (MLflow params are immutable), with a warning."""
        if self._role.inherited:
            return
        try:
            flat = flatten_params(params)
        except TypeError as exc:
            if self.options.strict:
                raise
            notice(f"aidp-metrics: params not logged: {exc}")
            return
        new, refused = self._params.add(flat)
        for message in refused:
            self._notices.once(message, message)
        if new:
            self._act(self._queue.append_op("params", {"items": [[k, v] for k, v in new.items()]}))

    def set_tags(self, tags: Mapping[str, object]) -> None:
        if self._role.inherited:
            return
        clean = string_tags(tags)
        if clean:
            self._act(self._queue.append_op("tags", {"items": [[k, v] for k, v in clean.items()]}))

    def follow_tensorboard(self, logdir: str | os.PathLike[str], interval: float = 1.0) -> None:
        """Log the scalars of every TensorBoard event file under `logdir` into this run
        from a thread of its own until `end()`, which logs what is left first (needs
        `aidp-metrics[tensorboard]`; docs/tensorboard.md)."""
        from aidp_metrics._bridges.tensorboard import follow

        stop = follow(self, logdir, interval=interval)
        if stop is not None:
            self._before_end.append(stop)

    # -- artifacts: the methods are ArtifactMethods' (artifacts.py) ------------------------

    def _uploads(self) -> UploadStage | None:
        if self._role.inherited:
            return None
        wake = self._queue.append([])  # logging into an ended run reopens it, as a metric does
        if wake:
            self._act(wake)
        return self._pipeline.uploads()

    def watch(
        self,
        model: object,
        log: str = "gradients",
        log_freq: int = 100,
        *,
        step: Callable[[], int] | None = None,
        first_step: int = 1,
    ) -> None:
        """Log `grad_norm/<parameter>` and `grad_norm/total` ("gradients"), and/or
        `weight_norm/<parameter>` ("parameters", "all") of a torch `model` at every
        `log_freq`-th optimizer update, until `unwatch` or `end()` (docs/watch.md).

        Without `step`, update n (1, 2, ...) lands on step n; an integration passes its
        framework's step for the current update, `first_step` being the first update's."""
        self._watches.add(self, model, log, log_freq, step, first_step)

    def unwatch(self, model: object = None) -> None:
        """Stop watching `model` (every watched model when None): its hook is removed."""
        self._watches.remove(model)

    # -- delivery control -----------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything logged before this call is acknowledged by the server
        (offline: on disk). Returns False when `timeout` seconds passed first."""
        if self._role.inherited:
            return True
        done = self._pipeline.flush(timeout, self.run_id)
        if not done and self.options.strict:
            raise DeliveryError(f"{self.stats.pending} metric(s) still pending after flush")
        return done

    def end(self, status: str = "FINISHED", *, timeout: float | None = None) -> RunStats:
        """Flush (up to `timeout`, default the `end_timeout` option), then set the run's
        status and end time. Idempotent; on an ended run a different status replaces the
        first (e.g. FINISHED after fit, then FAILED in test). Logging afterwards reopens it --
        and so does what other threads log while it runs: `end()` waits only for what was
        logged before it was called.

        What is still undelivered then stays in the spool (`aidp-metrics sync`), or without
        one is counted as failed; an ended run holds no thread, connection or file."""
        if status not in TERMINAL_STATUSES:
            allowed = ", ".join(TERMINAL_STATUSES)
            raise ValueError(f"status must be one of {allowed}, got {status!r}")
        if self._role.inherited:
            return self.stats
        wait = self.options.end_timeout if timeout is None else timeout
        self._end(status, wait, why=f"within {wait:g} s of end()")
        stats = self.stats
        if self.options.strict and (stats.failed or stats.dropped):
            raise DeliveryError(summary(self.run_id, stats))
        return stats

    @property
    def stats(self) -> RunStats:
        return self._pipeline.stats()

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.end(_status_for(exc_type))

    def __repr__(self) -> str:
        where = self.client.endpoint.describe() if self.client else "offline"
        return f"Run(run_id={self.run_id!r}, experiment_id={self.experiment_id!r}, {where})"

    # -- ending ---------------------------------------------------------------------------

    def _end(self, status: str, wait: float, *, why: str) -> None:
        while self._before_end:  # e.g. a TensorBoard follower logs what is left
            self._before_end.pop()()
        system_metrics.unwatch(self)  # first: no sample may reopen the run while it ends
        self._watches.remove()
        with self._end_lock:
            payload = (
                None
                if self._role.handed_off(self._queue.mark()[0])
                else {"status": status, "end_time": now_ms()}
            )
            repeat = status == self._status
            if not self._pipeline.end(payload, repeat=repeat, wait=wait, why=why):
                return  # idempotent
            self._status = status
            if self._pipeline.close():
                lifecycle.unregister(self)
                if self._queue.state is not QueueState.CLOSED:  # reopened meanwhile
                    lifecycle.register(self)
                self._skipped_reported = self._pipeline.report_end(
                    self.run_id, self._skipped_reported
                )

    # -- process events (called by lifecycle.py) -------------------------------------------

    def _on_exit(self, uncaught: type[BaseException] | None) -> None:
        if self._role.inherited or self._queue.state is QueueState.CLOSED:
            return
        status = self.status_on_exit if uncaught is None else _status_for(uncaught)
        wait = self.options.atexit_timeout
        self._end(status, wait, why=f"within {wait:g} s of exit")

    def _before_fork(self) -> None:
        self._role.before_fork(self._queue.mark()[0])

    def _on_fork_child(self) -> None:
        self._role.forked()

    def take_over(self) -> None:
        """In a child created by `os.fork()`, make this process the one that logs the run.

        An inherited run is a no-op in a child (its queue belongs to the parent, which
        delivers its own points). A child that is the logging process (Lightning's
        `ddp_fork` rank zero, say) calls this: it gets its own delivery for the same run,
        what the parent had queued is left to the parent, and the parent no longer sets
        the run's status (the child ends it).
        """
        run_id = self._queue.run_id
        if not self._role.take_over():
            return
        self._notices = Notices()
        self._end_lock = threading.Lock()
        self._status = None
        if self.client is not None:
            self.client = self.client.copy_for_child()
            self._owns_client = True
        self._descriptor = self._descriptor.for_child(new_local_id(), run_id)
        self.local_id = self._descriptor.local_id
        opening = None if run_id is not None or self._spec is None else ("create", self._spec)
        self._start(run_id, opening, None)


def _status_for(exc_type: type[BaseException] | None) -> str:
    if exc_type is None:
        return "FINISHED"
    return "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"
