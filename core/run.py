"""`Run`: log metrics from a training loop without waiting on the network.

The calling thread validates, converts and appends to the run's record stream
(`stream.py`); the process-wide delivery loop (`delivery.py`) sends, and the spool writer
(`spool.py`) keeps what must survive on disk. Nothing here raises into training code unless
`strict=True`.
"""

from __future__ import annotations

import functools
import getpass
import mmap
import os
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, TypeVar

from . import lifecycle, system_metrics
from ._version import __version__
from .client import MAX_TAG_VALUE_LENGTH, MetricsClient, RunInfo
from .delivery import LOCAL_ID_TAG, StreamSender, find_created, last_steps, loop
from .endpoint import Endpoint
from .errors import (
    AIDPMetricsWarning,
    APIError,
    DeliveryError,
    InvalidMetric,
    NoEndpointConfigured,
)
from .journal import Metric, RunDescriptor, new_local_id, run_id_for, spool_root
from .metric import (
    INT64_MAX,
    INT64_MIN,
    check_timestamp,
    key_error,
    now_ms,
    sanitize_key,
    to_float,
    to_int64,
)
from .notify import Notifier
from .options import DeliveryOptions
from .params import flatten_params
from .retry import RetryPolicy
from .spool import SpoolTask, writer
from .stats import RunStats
from .stream import RunStream
from .worker import ProcessWorker

RUN_ID_VARIABLES = ("AIDP_RUN_ID", "MLFLOW_RUN_ID")
EXPERIMENT_VARIABLES = ("AIDP_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_NAME")
TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")
RUN_NAME_TAG = "mlflow.runName"
_FLOAT_INT_LIMIT = 2**1023  # ints beyond this do not fit a double: to_float says so
DOWN_WAIT = 2.0  # how long end() waits on a server known to be down before spooling
SPOOL_WAIT = 10.0  # how long end() waits for the journal to be on disk
THREAD_EXIT_WAIT = 2.0  # end() of the last run waits this long for the threads to go
_ONE_ATTEMPT = RetryPolicy.never()
# Answers that are definite: the run cannot be created or found, whatever we wait.
_DEFINITE_STATUSES = frozenset({400, 401, 403, 404})
_T = TypeVar("_T")

__all__ = ["EXPERIMENT_VARIABLES", "LOCAL_ID_TAG", "RUN_ID_VARIABLES", "Run", "first_env"]


class Run:
    """One tracking run. Create it with `Run.start`, `Run.attach` or `Run.from_env`.

    `client` is None for an offline run. Until the server has created (or confirmed) the
    run, `run_id` is the id it was given (attach) or a local id (`local-...`).
    """

    def __init__(
        self,
        client: MetricsClient | None,
        options: DeliveryOptions,
        *,
        local_id: str,
        run_id: str | None,
        opening: tuple[str, dict[str, Any]] | None = None,
        descriptor: RunDescriptor,
        owns_client: bool = False,
        params: Mapping[str, str] | None = None,
        floors: dict[str, int] | None = None,
    ) -> None:
        self.client = client
        self.options = options
        self.local_id = local_id
        self.status_on_exit = "FINISHED"
        self.last_step = 0  # the step of the last log call (system metrics sample at it)
        self._owns_client = owns_client
        self._descriptor = descriptor
        self._params: dict[str, str] = dict(params or {})
        self._keys: dict[str, str] = {}
        self._warned: set[str] = set()
        self._end_lock = threading.Lock()
        self._status: str | None = None  # the status end() last set
        self._inactive = False  # an inherited run in a forked child (until take_over)
        self._handoff: mmap.mmap | None = None  # set by a forked child that took over
        self._logged_at_fork = -1
        self._alias: str | None = None  # attached to a local id not resolved yet
        self._notifier = Notifier()
        self._skipped_reported = 0  # stats.skipped when end() last reported it
        self._spec = opening[1] if opening is not None and opening[0] == "create" else None
        self._before_end: list[Callable[[], None]] = []  # what _end() calls first, once
        self._stream = self._new_stream(run_id, opening, floors)

    def _new_stream(
        self,
        run_id: str | None,
        opening: tuple[str, dict[str, Any]] | None,
        floors: dict[str, int] | None,
    ) -> RunStream:
        stream = RunStream(
            self.options,
            local_id=self.local_id,
            run_id=run_id,
            offline=self.client is None,
            notifier=self._notifier,
        )
        if floors:
            stream.floors = floors
        if opening is not None:
            stream.append_op(*opening)
        me = weakref.ref(self)

        def reopened() -> None:
            run = me()
            if run is not None:
                run._connect()

        stream.reopened = reopened
        self._stream = stream
        self._sender: StreamSender | None = None
        self._spool: SpoolTask | None = None
        root = spool_root(self.options.spool_dir)
        if self.client is not None:
            self._sender = StreamSender(
                stream, self.client, notifier=self._notifier, spool_root=root
            )
        if stream.spool_allowed:
            self._spool = SpoolTask(stream, root, self._descriptor)
            stream.wake_spool = self._spool.wake
        self._connect()
        return stream

    def _connect(self, *, sample: bool = True) -> None:
        """Hand the stream to the delivery loop and the spool writer (again, on reopen),
        and, when asked for, to the system-metrics sampler."""
        stream = self._stream
        if self._sender is not None:
            stream.wake_delivery = loop.wake
            loop.register(stream, self._sender)
        if self._spool is not None and (stream.spool_wanted or stream.run_id is None):
            self._spool.wake()
        lifecycle.register(self)
        if sample and self.options.system_metrics:
            system_metrics.watch(self, self.options.system_metrics_interval)

    # -- identity -------------------------------------------------------------------------

    @property
    def run_id(self) -> str:
        """The server's run id; until the server has it, the id the run was attached to,
        else its local id."""
        return self._stream.run_id or self._descriptor.run_id or self._alias or self.local_id

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
    def ended(self) -> bool:
        """`end()` was called and nothing was logged since."""
        stream = self._stream
        return stream.closed or stream.closing

    @property
    def inherited(self) -> bool:
        """This process is a fork of the one that logs this run (see `take_over`)."""
        return self._inactive

    @property
    def spool_directory(self) -> str | None:
        """Where this run's journal is, while it has one."""
        return self._stream.journal_dir

    # -- creating -------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        *,
        experiment_name: str | None = None,
        run_name: str | None = None,
        tags: Mapping[str, object] | None = None,
        endpoint: Endpoint | str | None = None,
        client: MetricsClient | None = None,
        experiment_id: str | None = None,
        offline: bool = False,
        **options: Any,
    ) -> Run:
        """Create a run (and its experiment if missing) and return it, ready to log.

        If the server does not answer, the run starts locally and is created as soon as it
        does; training never waits for it. Only a definite refusal (400, 401, 403, 404)
        raises. Offline (`offline=True`, `AIDP_METRICS_MODE=offline`, or nothing configured)
        the run lives in the spool until `aidp-metrics sync`.
        """
        delivery = DeliveryOptions.from_kwargs(options)
        all_tags = {**_default_tags(), **_string_tags(tags or {})}
        if run_name:
            all_tags.pop(RUN_NAME_TAG, None)  # run_name wins, as in MLflow's own loggers
        local_id = new_local_id()
        spec: dict[str, Any] = {
            "experiment_name": experiment_name or ("Default" if experiment_id is None else None),
            "experiment_id": experiment_id,
            "run_name": run_name,
            "tags": all_tags,
            "start_time": now_ms(),
        }
        client, owns = (None, False) if offline else _client_or_offline(endpoint, client)
        descriptor = RunDescriptor(
            local_id=local_id,
            endpoint=client.endpoint.public_url() if client is not None else None,
            experiment_name=spec["experiment_name"],
            experiment_id=experiment_id,
            run_name=run_name,
        )
        opening: tuple[str, dict[str, Any]] | None = ("create", spec)
        run_id: str | None = None
        if client is not None:
            live = client

            def create() -> RunInfo:
                found = experiment_id or live.experiment_id_for(
                    spec["experiment_name"], retry=_ONE_ATTEMPT
                )
                descriptor.experiment_id = spec["experiment_id"] = found
                return live.create_run(
                    experiment_id=found,
                    run_name=run_name,
                    tags={**all_tags, LOCAL_ID_TAG: local_id},
                    start_time=spec["start_time"],
                    retry=_ONE_ATTEMPT,
                )

            info = _answer_now(
                client,
                owns,
                create,
                "the run starts locally and is created on the server as soon as it answers",
            )
            if info is not None:
                run_id, opening = info.run_id, None
                descriptor.run_id = run_id
                descriptor.run_name = info.run_name or run_name
        return cls(
            client,
            delivery,
            local_id=local_id,
            run_id=run_id,
            opening=opening,
            descriptor=descriptor,
            owns_client=owns,
        )

    @classmethod
    def attach(
        cls,
        run_id: str,
        *,
        endpoint: Endpoint | str | None = None,
        client: MetricsClient | None = None,
        skip_logged_steps: bool = False,
        experiment_name: str | None = None,
        offline: bool = False,
        **options: Any,
    ) -> Run:
        """Log into an existing run (marked RUNNING again if it had ended).

        If the server does not answer, the run keeps its points (memory, then spool) and
        attaches as soon as it does. Only a definite answer (404 for the run, 401, 403)
        raises. With `skip_logged_steps`, points at or below the last step the run already
        holds for their key are not sent again (a resumed job), and counted as skipped.

        `run_id` may be a local id (`local-...`, a run that had not reached the server when
        a checkpoint saved its id): it resolves to the run it became (this spool directory
        remembers, else the server's `aidp_metrics.local_id` tag in `experiment_name`), or
        the points wait in the spool until it can be resolved (`aidp-metrics sync`).
        """
        delivery = DeliveryOptions.from_kwargs(options)
        client, owns = (None, False) if offline else _client_or_offline(endpoint, client)
        alias: str | None = None
        if run_id.startswith("local-"):
            resolved = run_id_for(run_id, spool_root(delivery.spool_dir))
            if resolved is None and client is not None:
                resolved = _created_from(client, run_id, experiment_name)
            if resolved is None:
                alias = run_id
            run_id = resolved or run_id
        local_id = new_local_id()
        descriptor = RunDescriptor(
            local_id=local_id,
            run_id=None if alias else run_id,
            endpoint=client.endpoint.public_url() if client is not None else None,
            experiment_name=experiment_name,
        )
        target = {"local_id": alias} if alias else {"run_id": run_id}
        opening: tuple[str, dict[str, Any]] | None = (
            "attach",
            {**target, "experiment_name": experiment_name, "skip_logged_steps": skip_logged_steps},
        )
        params: dict[str, str] = {}
        floors: dict[str, int] = {}
        if client is not None and alias is None:
            live, attached = client, run_id

            def reopen() -> dict[str, Any]:
                found = live.get_run(attached, retry=_ONE_ATTEMPT)
                if found["info"].get("status") != "RUNNING":
                    live.request(
                        "POST",
                        "runs/update",
                        body={"run_id": attached, "status": "RUNNING"},
                        retry=_ONE_ATTEMPT,
                    )
                return found

            stored = _answer_now(
                client,
                owns,
                reopen,
                f"points for run {run_id} are kept and delivered as soon as it answers",
            )
            if stored is not None:
                opening = None
                info = stored["info"]
                descriptor.experiment_id = str(info.get("experiment_id") or "") or None
                descriptor.run_name = info.get("run_name")
                data = stored.get("data") or {}
                params = {str(p["key"]): str(p["value"]) for p in data.get("params") or []}
                if skip_logged_steps:
                    floors = last_steps(stored)
        elif alias is not None:
            _notice_once(
                f"aidp-metrics: {alias} has not reached the server yet (its journal may still "
                "wait for `aidp-metrics sync`); this run's points are kept in the spool and "
                "join that run once it exists"
            )
        run = cls(
            client,
            delivery,
            local_id=local_id,
            run_id=run_id if opening is None else None,
            opening=opening,
            descriptor=descriptor,
            owns_client=owns,
            params=params,
            floors=floors,
        )
        run._alias = alias
        return run

    @classmethod
    def from_env(
        cls,
        *,
        experiment_name: str | None = None,
        run_name: str | None = None,
        tags: Mapping[str, object] | None = None,
        endpoint: Endpoint | str | None = None,
        client: MetricsClient | None = None,
        skip_logged_steps: bool = False,
        **options: Any,
    ) -> Run:
        """Attach to `AIDP_RUN_ID` / `MLFLOW_RUN_ID` when set (with `skip_logged_steps`, as
        `attach`), else start a run.

        The experiment is `experiment_name`, else `AIDP_EXPERIMENT_NAME` /
        `MLFLOW_EXPERIMENT_NAME`, else `Default`.
        """
        run_id = first_env(RUN_ID_VARIABLES)
        if run_id:
            run = cls.attach(
                run_id,
                endpoint=endpoint,
                client=client,
                skip_logged_steps=skip_logged_steps,
                experiment_name=experiment_name or first_env(EXPERIMENT_VARIABLES),
                **options,
            )
            if tags:
                run.set_tags(tags)
            return run
        return cls.start(
            experiment_name=experiment_name or first_env(EXPERIMENT_VARIABLES),
            run_name=run_name,
            tags=tags,
            endpoint=endpoint,
            client=client,
            **options,
        )

    # -- logging (the training thread's hot path) ----------------------------------------

    def log_metric(
        self, key: str, value: object, step: int | None = None, timestamp: int | None = None
    ) -> None:
        self.log_metrics({key: value}, step, timestamp)

    def log_metrics(
        self,
        metrics: Mapping[str, object],
        step: int | None = None,
        timestamp: int | None = None,
    ) -> None:
        """Queue every metric at `step` (0 when None), stamped with the time of this call."""
        if self._inactive:
            return
        try:
            at = _check_step(step)
            stamp = now_ms() if timestamp is None else check_timestamp(timestamp)
        except InvalidMetric as exc:
            keys = ", ".join(repr(key) for key in metrics)
            if self.options.strict:
                raise
            self._stream.reject(len(metrics))
            self._warn_once(f"step/timestamp of {keys}", f"aidp-metrics: not logged: {exc}")
            return
        records: list[Metric] = []
        known = self._keys
        problems: list[tuple[str, str]] = []
        for raw_key, value in metrics.items():
            key = known.get(raw_key)
            if key is None:
                error = key_error(raw_key)
                if error is not None:
                    problems.append((str(raw_key), error))
                    continue
                key = known[raw_key] = raw_key
            kind = type(value)
            if kind is float:
                number: float = value  # type: ignore[assignment]
            elif kind is int and -_FLOAT_INT_LIMIT < value < _FLOAT_INT_LIMIT:  # type: ignore[operator]
                number = float(value)  # type: ignore[arg-type]
            else:
                try:
                    number = to_float(value, key)
                except InvalidMetric as exc:
                    problems.append((key, str(exc)))
                    continue
            records.append((key, number, stamp, at))
        if problems and self.options.strict:
            raise InvalidMetric("; ".join(reason for _, reason in problems))
        self.last_step = at
        self._stream.append(records, len(problems))
        for key, reason in problems:
            self._warn_once(f"metric:{key}", f"aidp-metrics: not logged: {reason}")

    def log_system_metrics(self, metrics: Mapping[str, float], step: int, timestamp: int) -> None:
        """For the system-metrics sampler: its valid `system/` keys at `step`, stamped with
        the sample's time, without moving `last_step` (the training loop's)."""
        if self._inactive:
            return
        self._stream.append([(key, float(v), timestamp, step) for key, v in metrics.items()])

    def log_params(self, params: object) -> None:
        """Log hyperparameters, flattened with `/`; re-logging a value is a no-op and a
        changed value is kept as first logged (MLflow params are immutable), with a warning."""
        if self._inactive:
            return
        try:
            flat = flatten_params(params)
        except TypeError as exc:
            if self.options.strict:
                raise
            warnings.warn(f"aidp-metrics: params not logged: {exc}", AIDPMetricsWarning, 2)
            return
        new: dict[str, str] = {}
        for key, value in flat.items():
            old = self._params.get(key)
            if old is None:
                new[key] = value
            elif old != value:
                self._warn_once(
                    f"param:{key}",
                    f"aidp-metrics: param {key!r} was already logged as {old[:80]!r}; params "
                    f"cannot change within a run, so {value[:80]!r} is not logged",
                )
        if new:
            self._params.update(new)
            self._stream.append_op("params", {"items": [[k, v] for k, v in new.items()]})

    def set_tags(self, tags: Mapping[str, object]) -> None:
        if self._inactive:
            return
        clean = _string_tags(tags)
        if clean:
            self._stream.append_op("tags", {"items": [[k, v] for k, v in clean.items()]})

    def follow_tensorboard(self, logdir: str | os.PathLike[str], interval: float = 1.0) -> None:
        """Log the scalars of every TensorBoard event file under `logdir` into this run
        from a thread of its own until `end()`, which logs what is left first (needs
        `aidp-metrics[tensorboard]`; README "TensorBoard")."""
        from .tensorboard import follow

        stop = follow(self, logdir, interval=interval)
        if stop is not None:
            self._before_end.append(stop)

    # -- delivery control -----------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything logged before this call is acknowledged by the server
        (offline: on disk). Returns False when `timeout` seconds passed first."""
        if self._inactive:
            return True
        stream = self._stream
        mark = stream.mark()
        if self.offline:
            with stream.lock:
                stream.commit_now = True
            stream.wake_spool()
            done = self._wait(lambda: stream.durable_or_settled(mark), timeout, writer)
        else:
            stream.rush(mark)
            done = self._wait(lambda: stream.settled(mark), timeout, loop)
        if not done:
            pending = self.stats.pending
            self._notifier.throttled(
                "flush-timeout",
                f"aidp-metrics: flush timed out after {timeout} s with {pending} metric(s) "
                f"of run {self.run_id} still pending",
            )
            if self.options.strict:
                raise DeliveryError(f"{pending} metric(s) still pending after flush")
        return done

    def end(self, status: str = "FINISHED", *, timeout: float | None = None) -> RunStats:
        """Flush (up to `timeout`, default the `end_timeout` option), then set the run's
        status and end time. Idempotent; on an ended run a different status replaces the
        first (e.g. FINISHED after fit, then FAILED in test). Logging afterwards reopens it.

        What is still undelivered then stays in the spool (`aidp-metrics sync`), or without
        one is counted as failed; an ended run holds no thread, connection or file."""
        if status not in TERMINAL_STATUSES:
            allowed = ", ".join(TERMINAL_STATUSES)
            raise ValueError(f"status must be one of {allowed}, got {status!r}")
        if self._inactive:
            return self.stats
        wait = self.options.end_timeout if timeout is None else timeout
        self._end(status, wait, why=f"within {wait:g} s of end()")
        stats = self.stats
        if self.options.strict and (stats.failed or stats.dropped):
            raise DeliveryError(_summary(self.run_id, stats))
        return stats

    @property
    def stats(self) -> RunStats:
        stream = self._stream
        with stream.lock:
            return stream.counters.snapshot()

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
        with self._end_lock:
            stream = self._stream
            with stream.lock:
                if stream.closed and status == self._status:
                    return  # idempotent
                stream.closed = False
                stream.closing = True
                if not self._handed_off():
                    payload = {"status": status, "end_time": now_ms()}
                    stream.queue_op_locked("status", payload)
                    stream.spool_idle = False
            self._status = status
            self._connect(sample=False)
            self._settle_everything(wait, why)
            self._close()

    def _settle_everything(self, wait: float, why: str) -> None:
        """Deliver what can be delivered within `wait` seconds; keep the rest on disk (or
        count it failed without a spool); close the stream. Points other threads log
        meanwhile count too: the check that nothing is left and the close are one step."""
        stream = self._stream
        deadline = time.monotonic() + wait
        while True:
            mark = stream.mark()
            if not self.offline:
                stream.rush(mark)
                self._deliver_until(mark, deadline)
            with stream.lock:
                current = (stream.logged, stream.ops_logged)
                if current == mark and stream.settled(mark):
                    stream.closed = True
                    return
                spool = stream.spool_allowed and not stream.spool_failed
                if spool:
                    stream.spool_wanted = True
                    stream.commit_now = True
                    stream.spool_idle = False
                elif current == mark or time.monotonic() >= deadline:
                    stream.abandon_locked(f"not delivered {why}")
                    stream.closed = True
                    return
            if not spool:
                continue  # more was logged meanwhile, and there is time to deliver it
            if self._spool is not None:
                self._spool.wake()
                on_disk = functools.partial(_durable_or_failed, stream, mark)
                self._wait(on_disk, SPOOL_WAIT, writer)
            with stream.lock:
                if stream.spool_failed:  # the spool could not take them: count them
                    stream.abandon_locked(f"not delivered {why}, and the spool failed")
                    stream.closed = True
                    return
                if (stream.logged, stream.ops_logged) == mark or time.monotonic() >= deadline:
                    # What is not on disk yet the spool writer's last pass writes.
                    stream.closed = True
                    return

    def _deliver_until(self, mark: tuple[int, int], deadline: float) -> bool:
        """Wait for delivery; with a spool, stop early once the server is down and nothing
        has moved for DOWN_WAIT seconds (the journal keeps the rest)."""
        stream = self._stream
        sender = self._sender
        while True:
            before = (stream.acked, stream.ops_settled)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self._wait(lambda: stream.settled(mark), min(remaining, DOWN_WAIT), loop):
                return True
            moved = (stream.acked, stream.ops_settled) != before
            spool = stream.spool_allowed and not stream.spool_failed
            if not moved and sender is not None and spool and (sender.server_down or sender.stuck):
                return False

    def _close(self) -> None:
        """Let go of the delivery loop, the spool writer, the connection and the exit hook
        -- unless another thread logged meanwhile and so reopened the run."""
        stream = self._stream
        with stream.lock:
            if not stream.closed:
                return  # reopened: it stays registered everywhere
            stream.closing = False
            stream.urgent = stream.logged
            last = loop.unregister(stream)  # the worker's lock inside ours: the allowed order
            lifecycle.unregister(self)
        spool = self._spool
        if spool is not None and (spool.journal is not None or writer.registered(stream)):
            spool.wake()
            deadline = time.monotonic() + SPOOL_WAIT
            while not spool.finished.wait(0.05) and stream.closed:
                if time.monotonic() > deadline:
                    break
        if self._owns_client and self.client is not None:
            if self._sender is not None:
                self._sender.release(self.client.close)
            else:
                self.client.close()
        if last:
            loop.join_if_idle(THREAD_EXIT_WAIT)
        writer.join_if_idle(THREAD_EXIT_WAIT)
        self._report_end()

    def _report_end(self) -> None:
        stats = self.stats
        spool = self._spool
        if stats.pending and spool is not None and spool.journal is not None:
            root = spool.root
            print(
                f"aidp-metrics: {stats.pending} metric(s) of run {self.run_id} are saved in "
                f"{root}; deliver them with: aidp-metrics sync {root}",
                file=sys.stderr,
            )
        elif stats.failed or stats.dropped:
            print(_summary(self.run_id, stats), file=sys.stderr)
        if stats.skipped > self._skipped_reported:  # a re-opened run ends again: no repeat
            self._skipped_reported = stats.skipped
            print(
                f"aidp-metrics: {stats.skipped} metric(s) not sent again: run {self.run_id} "
                "already held their steps (a resumed job: points at or below the last step "
                "the run held for their key are skipped)",
                file=sys.stderr,
            )

    def _wait(
        self, until: Callable[[], bool], timeout: float | None, worker: ProcessWorker
    ) -> bool:
        """Wait for `until()` (evaluated under the stream's lock) while `worker` works."""
        stream = self._stream
        if not worker.running():
            worker.wake()
        if worker.running() or timeout == 0:
            return stream.wait(until, timeout)
        # No thread could be started (interpreter shutdown on 3.12+): do the work here.
        return worker.drive(lambda: _locked(stream, until), 3600.0 if timeout is None else timeout)

    # -- process events -------------------------------------------------------------------

    def _on_exit(self, uncaught: type[BaseException] | None) -> None:
        if self._inactive or self._stream.closed:
            return
        status = self.status_on_exit if uncaught is None else _status_for(uncaught)
        wait = self.options.atexit_timeout
        self._end(status, wait, why=f"within {wait:g} s of exit")

    def _before_fork(self) -> None:
        if self._handoff is None:
            self._handoff = mmap.mmap(-1, 1)  # shared with the child: it flags a takeover
        self._logged_at_fork = self._stream.logged

    def _on_fork_child(self) -> None:
        self._inactive = True

    def take_over(self) -> None:
        """In a child created by `os.fork()`, make this process the one that logs the run.

        An inherited run is a no-op in a child (its queue belongs to the parent, which
        delivers its own points). A child that is the logging process (Lightning's
        `ddp_fork` rank zero, say) calls this: it gets its own delivery for the same run,
        what the parent had queued is left to the parent, and the parent no longer sets
        the run's status (the child ends it).
        """
        if not self._inactive:
            return
        run_id = self._stream.run_id
        if self._handoff is not None:
            self._handoff[0] = 1
        self._handoff = None
        self._inactive = False
        self._notifier = Notifier()
        self._end_lock = threading.Lock()
        self._status = None
        if self.client is not None:
            self.client = self.client.copy_for_child()
            self._owns_client = True
        self.local_id = new_local_id()
        self._descriptor = RunDescriptor(
            local_id=self.local_id,
            run_id=run_id,
            endpoint=self._descriptor.endpoint,
            experiment_name=self._descriptor.experiment_name,
            experiment_id=self._descriptor.experiment_id,
            run_name=self._descriptor.run_name,
        )
        opening = None if run_id is not None or self._spec is None else ("create", self._spec)
        self._new_stream(run_id, opening, None)

    def _handed_off(self) -> bool:
        """A forked child took the run over and this process logged nothing since."""
        return (
            self._handoff is not None
            and self._handoff[0] == 1
            and self._stream.logged == self._logged_at_fork
        )

    # -- internals --------------------------------------------------------------------------

    def _warn_once(self, topic: str, message: str) -> None:
        if topic in self._warned:
            return
        self._warned.add(topic)
        warnings.warn(message, AIDPMetricsWarning, stacklevel=4)


def _answer_now(
    client: MetricsClient, owns: bool, action: Callable[[], _T], later: str
) -> _T | None:
    """One attempt at `action`. A definite refusal raises (closing a client we own); no
    answer says once that the run goes on without waiting (`later`) and returns None."""
    try:
        return action()
    except APIError as exc:
        if exc.status in _DEFINITE_STATUSES:
            if owns:
                client.close()
            raise
        _notice_once(f"aidp-metrics: the server did not answer ({exc}); {later}")
        return None
    except BaseException:
        if owns:
            client.close()
        raise


def _created_from(client: MetricsClient, local_id: str, experiment: str | None) -> str | None:
    """The server run tagged with `local_id` in `experiment`, if the server answers."""
    try:
        return find_created(client, local_id, experiment)
    except APIError:
        return None


def _durable_or_failed(stream: RunStream, mark: tuple[int, int]) -> bool:
    return stream.spool_failed or stream.durable_or_settled(mark)


def _locked(stream: RunStream, until: Callable[[], bool]) -> bool:
    with stream.lock:
        return bool(until())


def _summary(run_id: str, stats: RunStats) -> str:
    reasons = "; ".join(f"{count}x {reason}" for reason, count in stats.failures.items())
    parts = [f"{stats.undelivered} of {stats.logged} metric(s) of run {run_id} not delivered"]
    if stats.dropped:
        parts.append(f"{stats.dropped} dropped from a full queue")
    if reasons:
        parts.append(reasons)
    return "aidp-metrics: " + " — ".join(parts)


def _check_step(step: object) -> int:
    if step is None:
        return 0
    if type(step) is int and INT64_MIN <= step <= INT64_MAX:
        return step
    return to_int64(step, "step")


def _status_for(exc_type: type[BaseException] | None) -> str:
    if exc_type is None:
        return "FINISHED"
    return "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"


def _client_or_offline(
    endpoint: Endpoint | str | None, client: MetricsClient | None
) -> tuple[MetricsClient | None, bool]:
    """The client to use and whether we own it; (None, False) for an offline run."""
    if client is not None:
        return client, False
    if os.environ.get("AIDP_METRICS_MODE", "").strip().lower() == "offline":
        return None, False
    if endpoint is None:
        try:
            endpoint = Endpoint.from_env()
        except NoEndpointConfigured as exc:
            _notice_once(
                f"aidp-metrics: {exc}. Logging offline to the spool; upload later "
                "with `aidp-metrics sync`."
            )
            return None, False
    return MetricsClient(endpoint), True


_noticed: set[str] = set()


def _notice_once(message: str) -> None:
    if message not in _noticed:
        _noticed.add(message)
        warnings.warn(message, AIDPMetricsWarning, stacklevel=4)


def first_env(names: tuple[str, ...]) -> str | None:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def _string_tags(tags: Mapping[str, object]) -> dict[str, str]:
    return {
        sanitize_key(str(key)): str(value)[:MAX_TAG_VALUE_LENGTH] for key, value in tags.items()
    }


def _default_tags() -> dict[str, str]:
    tags = {
        "mlflow.source.type": "LOCAL",
        "mlflow.source.name": os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "",
        "aidp_metrics.version": __version__,
    }
    try:
        tags["mlflow.user"] = getpass.getuser()
    except Exception:  # no user name in some containers
        pass
    return {k: v for k, v in tags.items() if v}
