"""`Run`: log metrics from a training loop without waiting on the network.

The calling thread validates, converts and enqueues; a background sender delivers (see
`delivery.py`). Nothing here raises into training code unless `strict=True`.
"""

from __future__ import annotations

import getpass
import os
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from . import lifecycle, system_metrics
from ._version import __version__
from .client import MAX_TAG_VALUE_LENGTH, MetricsClient, RunInfo
from .delivery import Sender
from .endpoint import Endpoint
from .errors import (
    AIDPError,
    AIDPMetricsWarning,
    APIError,
    DeliveryError,
    InvalidMetric,
    NoEndpointConfigured,
)
from .journal import Journal, Record, RunRecord, new_local_id, spool_root
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
from .stats import RunStats

# Creating or finding a run happens before training starts: fail fast rather than stall.
SETUP_RETRY = RetryPolicy(max_attempts=3, base_delay=0.5, max_delay=2.0, total_timeout=10.0)
STATUS_RETRY = RetryPolicy(max_attempts=3, base_delay=0.2, max_delay=1.0, total_timeout=5.0)
RUN_ID_VARIABLES = ("AIDP_RUN_ID", "MLFLOW_RUN_ID")
EXPERIMENT_VARIABLES = ("AIDP_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_NAME")
TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")
_FLOAT_INT_LIMIT = 2**1023  # ints beyond this do not fit a double: to_float says so
DOWN_WAIT = 2.0  # how long end() waits on a server known to be down before spooling
LOCAL_ID_TAG = "aidp_metrics.local_id"


class Run:
    """One tracking run. Create it with `Run.start`, `Run.attach` or `Run.from_env`.

    `client` is None for an offline run; `info` is None while the server has not created
    the run yet (it is created by the sender as soon as the server answers, or by
    `aidp-metrics sync`). Until then `run_id` is a local id (`local-...`).
    """

    def __init__(
        self,
        client: MetricsClient | None,
        info: RunInfo | None,
        options: DeliveryOptions | None = None,
        *,
        owns_client: bool = False,
        record: RunRecord | None = None,
    ) -> None:
        self.client = client
        self.options = options or DeliveryOptions()
        self.record = record or RunRecord(local_id=new_local_id(), start_time=now_ms())
        if info is not None:
            self.record.run_id = info.run_id
            self.record.experiment_id = info.experiment_id
            self.record.run_name = info.run_name
        if client is not None:
            self.record.endpoint = client.endpoint.public_url()
        self.status_on_exit = "FINISHED"
        self.ended = False
        self.last_step = 0  # the step of the last log_metrics call (system metrics use it)
        self._inactive = False  # set in a forked child: the run belongs to the parent
        self._notifier = Notifier()
        self._sender = Sender(
            client,
            self.record.run_id,
            self.options,
            notifier=self._notifier,
            create_run=self._create_on_server if client is not None else None,
            open_journal=self._open_journal if self.options.spool != "off" or not client else None,
        )
        self._keys: dict[str, str] = {}
        self._warned_keys: set[str] = set()
        self._state_lock = threading.Lock()
        if owns_client and client is not None:
            weakref.finalize(self, client.close)
        lifecycle.register(self)
        if self.options.system_metrics:
            system_metrics.watch(self, self.options.system_metrics_interval)

    @property
    def run_id(self) -> str:
        """The server's run id, or the local id while the run exists only on disk."""
        return self._sender.run_id or self.record.local_id

    @property
    def experiment_id(self) -> str | None:
        return self.record.experiment_id

    @property
    def run_name(self) -> str | None:
        return self.record.run_name

    @property
    def offline(self) -> bool:
        return self.client is None

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
        **options: Any,
    ) -> Run:
        """Create a run (and its experiment if missing) and return it, ready to log.

        Offline (`AIDP_METRICS_MODE=offline`, or nothing configured) the run lives in the
        spool until `aidp-metrics sync`. With a spool and an unreachable server, the run
        starts locally and is created on the server as soon as it answers.
        """
        delivery = DeliveryOptions.from_kwargs(options)
        all_tags = {**_default_tags(), **_string_tags(tags or {})}
        record = RunRecord(
            local_id=new_local_id(),
            experiment_name=experiment_name or ("Default" if experiment_id is None else None),
            experiment_id=experiment_id,
            run_name=run_name,
            tags=all_tags,
            start_time=now_ms(),
        )
        client, owns = _client_or_offline(endpoint, client)
        if client is None:
            return cls(None, None, delivery, record=record)
        setup = SETUP_RETRY if delivery.spool == "off" else RetryPolicy.never()
        try:
            info = create_run_for(client, record, retry=setup, tag_local_id=False)
        except APIError as exc:
            if delivery.spool == "off" or not delivery.retry.is_retryable(exc):
                if owns:
                    client.close()
                raise
            _notice_once(
                f"aidp-metrics: the server did not answer ({exc}); the run starts locally "
                "and is created on the server as soon as it answers"
            )
            return cls(client, None, delivery, owns_client=owns, record=record)
        except BaseException:
            if owns:
                client.close()
            raise
        return cls(client, info, delivery, owns_client=owns, record=record)

    @classmethod
    def attach(
        cls,
        run_id: str,
        *,
        endpoint: Endpoint | str | None = None,
        client: MetricsClient | None = None,
        **options: Any,
    ) -> Run:
        """Log into an existing run (marked RUNNING again if it had ended)."""
        delivery = DeliveryOptions.from_kwargs(options)
        client, owns = _client_or_offline(endpoint, client)
        if client is None:
            record = RunRecord(local_id=new_local_id(), run_id=run_id, start_time=now_ms())
            return cls(None, None, delivery, record=record)
        try:
            run = client.request("GET", "runs/get", params={"run_id": run_id}, retry=SETUP_RETRY)
            data = run["run"]
            info = RunInfo(
                run_id=str(data["info"]["run_id"]),
                experiment_id=str(data["info"]["experiment_id"]),
                run_name=data["info"].get("run_name"),
                status=str(data["info"].get("status", "")),
            )
            params = {p["key"]: p["value"] for p in data.get("data", {}).get("params", [])}
            if info.status != "RUNNING":
                client.request(
                    "POST",
                    "runs/update",
                    body={"run_id": run_id, "status": "RUNNING"},
                    retry=SETUP_RETRY,
                )
        except BaseException:
            if owns:
                client.close()
            raise
        record = RunRecord(local_id=new_local_id(), start_time=now_ms(), params=dict(params))
        return cls(client, info, delivery, owns_client=owns, record=record)

    @classmethod
    def from_env(
        cls,
        *,
        experiment_name: str | None = None,
        run_name: str | None = None,
        tags: Mapping[str, object] | None = None,
        endpoint: Endpoint | str | None = None,
        client: MetricsClient | None = None,
        **options: Any,
    ) -> Run:
        """Attach to `AIDP_RUN_ID` / `MLFLOW_RUN_ID` when set, else start a run.

        The experiment is `experiment_name`, else `AIDP_EXPERIMENT_NAME` /
        `MLFLOW_EXPERIMENT_NAME`, else `Default`.
        """
        run_id = first_env(RUN_ID_VARIABLES)
        if run_id:
            run = cls.attach(run_id, endpoint=endpoint, client=client, **options)
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
        if self.ended or self._inactive:
            if self._inactive:
                return
            self._reopen()
        try:
            at = _check_step(step)
            stamp = now_ms() if timestamp is None else check_timestamp(timestamp)
        except InvalidMetric as exc:
            keys = ", ".join(repr(key) for key in metrics)
            self._reject(f"step/timestamp of {keys}", str(exc), len(metrics))
            return
        self.last_step = at
        records: list[Record] = []
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
        self._sender.put(records)
        for key, reason in problems:
            self._reject(key, reason)

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
            old = self.record.params.get(key)
            if old is None:
                new[key] = value
            elif old != value:
                self._warn_once(
                    f"param:{key}",
                    f"aidp-metrics: param {key!r} was already logged as {old[:80]!r}; params "
                    f"cannot change within a run, so {value[:80]!r} is not logged",
                )
        if new:
            if self.ended:
                self._reopen()
            self.record.params.update(new)  # what the run has (or will have) on the server
            self._save_record()
            self._sender.put_meta("params", new.items())

    def set_tags(self, tags: Mapping[str, object]) -> None:
        if self._inactive:
            return
        if self.ended:
            self._reopen()
        clean = _string_tags(tags)
        self.record.tags.update(clean)
        self._save_record()
        self._sender.put_meta("tags", clean.items())

    # -- delivery control -----------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything logged before this call is acknowledged by the server.

        Returns False when `timeout` seconds passed first; a warning says what is pending.
        """
        if self._inactive:
            return True
        done = self._sender.flush(timeout)
        if not done:
            self._notifier.throttled(
                "flush-timeout",
                f"aidp-metrics: flush timed out after {timeout} s with "
                f"{self.stats.pending} metric(s) of run {self.run_id} still pending",
            )
            if self.options.strict:
                raise DeliveryError(f"{self.stats.pending} metric(s) still pending after flush")
        return done

    def end(self, status: str = "FINISHED", *, timeout: float | None = None) -> RunStats:
        """Flush (up to `timeout`, default the `end_timeout` option), then set the run's
        status and end time. Idempotent; on an ended run a different status replaces the
        first (e.g. FINISHED after fit, then FAILED in test). Logging afterwards reopens it."""
        if status not in TERMINAL_STATUSES:
            allowed = ", ".join(TERMINAL_STATUSES)
            raise ValueError(f"status must be one of {allowed}, got {status!r}")
        system_metrics.unwatch(self)  # first: no sample may reopen the run while it ends
        with self._state_lock:
            if self._inactive:
                return self.stats
            already = self.ended
            self.ended = True
        if already:
            if status != self.record.status:
                self.record.status = status
                self._save_record()
                if self.client is not None and self._sender.run_id is not None:
                    self._set_status(status)
            return self.stats
        wait = self.options.end_timeout if timeout is None else timeout
        self._finish(status, wait, why=f"within {wait:g} s of end()")
        lifecycle.unregister(self)
        stats = self.stats
        if self.options.strict and (stats.failed or stats.dropped):
            raise DeliveryError(_summary(self.run_id, stats))
        return stats

    @property
    def stats(self) -> RunStats:
        return self._sender.counters.snapshot()

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
        return (
            f"Run(run_id={self.run_id!r}, experiment_id={self.experiment_id!r}, "
            f"endpoint={self.client.endpoint.describe() if self.client else 'offline'!r})"
        )

    # -- internals --------------------------------------------------------------------------

    def _deliver_within(self, wait: float) -> bool:
        """Flush for up to `wait` seconds; with a spool, stop early once the server is down
        and nothing has been delivered for DOWN_WAIT seconds (the journal keeps the rest)."""
        deadline = time.monotonic() + wait
        while True:
            delivered = self._sender.counters.delivered
            remaining = deadline - time.monotonic()
            if self._sender.flush(max(0.0, min(remaining, DOWN_WAIT))):
                return True
            if time.monotonic() >= deadline:
                return False
            stalled = self._sender.counters.delivered == delivered
            if stalled and self._sender.server_down and self._sender.spooling:
                return False

    def _finish(self, status: str, wait: float, *, why: str) -> None:
        """Deliver what can be delivered within `wait` seconds, keep the rest on disk (or
        count it failed without a spool), then record the status everywhere."""
        if not self._deliver_within(wait):
            self._sender.abandon(f"not delivered {why}")
        self.record.status = status
        self.record.end_time = now_ms()
        self._save_record()
        if self.client is not None and self._sender.run_id is not None:
            self._set_status(status)
        stats = self.stats
        if self.offline or (self._sender.journal is not None and stats.pending):
            self._sender.close_journal()
            journal = self._sender.journal
            where = journal.directory.parent.parent if journal is not None else "the spool"
            print(
                f"aidp-metrics: {stats.pending} metric(s) of run {self.run_id} are saved in "
                f"{where}; deliver them with: aidp-metrics sync {where}",
                file=sys.stderr,
            )
        elif stats.failed or stats.dropped:
            print(_summary(self.run_id, stats), file=sys.stderr)
        elif self._sender.journal is not None:
            self._sender.discard_journal()  # everything is on the server

    def _set_status(self, status: str) -> None:
        run_id = self._sender.run_id
        body = {"run_id": run_id, "status": status, "end_time": self.record.end_time or now_ms()}
        try:
            assert self.client is not None
            self.client.request("POST", "runs/update", body=body, retry=STATUS_RETRY)
        except AIDPError as exc:
            if self.options.strict:
                raise
            message = f"aidp-metrics: could not mark run {self.run_id} {status}: {exc}"
            self._notifier.once(f"status-{status}", message)

    def _create_on_server(self) -> str:
        """Called by the sender thread for a run that started without the server."""
        assert self.client is not None
        info = create_run_for(self.client, self.record, retry=RetryPolicy.never())
        self.record.run_id = info.run_id
        self.record.experiment_id = info.experiment_id
        self._save_record()
        return info.run_id

    def _open_journal(self) -> Journal:
        """Called (once, lazily) when the first point has to go to disk."""
        return Journal.create(spool_root(self.options.spool_dir), self.record)

    def _save_record(self) -> None:
        journal = self._sender.journal
        if journal is not None:
            try:
                journal.save_record()
            except OSError as exc:
                self._notifier.once("record", f"aidp-metrics: could not update the spool: {exc}")

    def _reopen(self) -> None:
        with self._state_lock:
            if not self.ended:
                return
            self.ended = False
        self._sender.reopen()
        self._sender.put_meta("status", [("", "RUNNING")])
        lifecycle.register(self)
        if self.options.system_metrics:
            system_metrics.watch(self, self.options.system_metrics_interval)

    def _reject(self, key: str, reason: str, count: int = 1) -> None:
        with self._sender._lock:
            self._sender.counters.rejected += count
        if self.options.strict:
            raise InvalidMetric(reason)
        self._warn_once(f"metric:{key}", f"aidp-metrics: not logged: {reason}")

    def _warn_once(self, topic: str, message: str) -> None:
        if topic in self._warned_keys:
            return
        self._warned_keys.add(topic)
        warnings.warn(message, AIDPMetricsWarning, stacklevel=4)

    def _on_exit(self, uncaught: type[BaseException] | None) -> None:
        system_metrics.unwatch(self)
        if self.ended or self._inactive:
            return
        status = self.status_on_exit if uncaught is None else _status_for(uncaught)
        with self._state_lock:
            self.ended = True
        wait = self.options.atexit_timeout
        self._finish(status, wait, why=f"within {wait:g} s of exit")

    def _on_fork_child(self) -> None:
        self._inactive = True


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


def create_run_for(
    client: MetricsClient,
    record: RunRecord,
    *,
    retry: RetryPolicy | None = None,
    tag_local_id: bool = True,
) -> RunInfo:
    """Create on the server the run `record` describes (its experiment too, if missing).

    Runs that started locally are tagged with their local id, so that `sync` can tell
    whether an earlier attempt already created them.
    """
    experiment_id = record.experiment_id or client.experiment_id_for(
        record.experiment_name or "Default", retry=retry
    )
    record.experiment_id = experiment_id
    tags = {**record.tags, LOCAL_ID_TAG: record.local_id} if tag_local_id else record.tags
    return client.create_run(
        experiment_id=experiment_id,
        run_name=record.run_name,
        tags=tags,
        start_time=record.start_time,
        retry=retry,
    )


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
