"""Delivery: one thread per process sends the records of every open run, in stream order.

Each open run's stream (`stream.py`) gets a `StreamSender`; the process-wide loop
(`worker.ProcessWorker`) serves whichever sender is due. A sender sends one thing at a time,
in the order of the stream: the next op (create or attach, params, tags, status) once every
metric before it is settled, or the next chunk of metrics -- up to 1000 per `runs/log-batch`,
or per-key lanes of `runs/log-metric` with `max_in_flight` requests in flight.

Failures never stop the loop and never lose a point:

- a retryable answer (429, 5xx, timeouts, resets, a 2xx that is not JSON) backs the run off
  (`Retry-After` honoured) and keeps the chunk in flight, with the same `opc-retry-token`
  for the same body; with a spool, the run starts journaling at once and is retried while
  it is open; without one, the chunk's points fail after the `retry` budget;
- a 400 on a batch is split until the bad points are alone: the rest is delivered;
- 404/405/501 on `runs/log-batch` (not "no such run") switches the run to `runs/log-metric`;
- any other exception in this module is reported once per run and treated like a
  retryable failure (the chunk is retried, or spooled); after a few in a row on the same
  chunk its points count as failed, so one bad record cannot wedge the run.

Every point of a chunk gets one outcome, and the chunk is settled (counted) once, so
`delivered` can never exceed what was logged, whatever fails in between.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .client import (
    MAX_BATCH_METRICS,
    MetricsClient,
    batch_bodies,
    dumps,
    expect,
    new_retry_token,
)
from .errors import APIError, BadRequest, NotFound, TooManyRequests
from .journal import Metric, read_metrics, run_id_for
from .metric import json_key, json_number
from .notify import Notifier
from .retry import RetryPolicy
from .stream import DELIVERED, SKIPPED, Chunk, QueuedOp, RunStream
from .worker import ProcessWorker

logger = logging.getLogger("aidp_metrics")

# 404/405/501 on log-batch from something that is not MLflow saying "no such run".
_NO_BATCH_ENDPOINT = frozenset({404, 405, 501})
_MISSING_RESOURCE_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "NotAuthorizedOrNotFound"})
_MAX_ISOLATION_REQUESTS = 64
_METRIC_CHUNK = 100  # runs/log-metric points per chunk: other runs get a turn between chunks
_INTERNAL_ERRORS_BEFORE_GIVING_UP = 3
_REFUSED_RETRY = 60.0  # 401/403/404 with a spool: probe again this often
LOCAL_ID_TAG = "aidp_metrics.local_id"

loop = ProcessWorker("aidp-metrics-delivery")


class _Retry(Exception):
    """The current request failed in a way that is worth trying again later."""

    def __init__(self, error: APIError | Exception) -> None:
        super().__init__(str(error))
        self.error = error


class StreamSender:
    """Sends one stream's records. Used by the delivery loop (and by `sync`, on its thread)."""

    def __init__(
        self,
        stream: RunStream,
        client: MetricsClient,
        *,
        notifier: Notifier | None = None,
        spool_root: Path | None = None,
    ) -> None:
        self.stream = stream
        self.spool_root = spool_root
        self.client = client
        self.options = stream.options
        self.notifier = notifier or stream.notifier
        self.transport = self.options.transport
        self.not_before = 0.0
        self.server_down = stream.run_id is None
        self.stuck: str | None = None  # why nothing can be delivered (a definite refusal)
        self.last_error: str | None = None
        self._op_attempts = 0
        self._op_first_failure = 0.0
        self._op_token: str | None = None
        self._internal_errors = 0
        self._rate_window: collections.deque[float] = collections.deque(maxlen=200)
        self._busy_lock = threading.Lock()
        self._busy = False  # a request of this sender is in flight
        self._when_idle: Callable[[], None] | None = None

    def release(self, close: Callable[[], None]) -> None:
        """Call `close` (the client's) now, or once the request in flight returns: closing a
        connection under a request would fail it."""
        with self._busy_lock:
            if self._busy:
                self._when_idle = close
                return
        close()

    # -- the loop's entry point -----------------------------------------------------------

    def serve(self) -> float:
        now = time.monotonic()
        if now < self.not_before:
            return self.not_before - now
        stream = self.stream
        with stream.lock:
            work = self._next_locked(now)
            if isinstance(work, float):
                return work
            with self._busy_lock:
                self._busy = True
        try:
            self._serve(work)
        finally:
            with self._busy_lock:
                self._busy = False
                when_idle, self._when_idle = self._when_idle, None
            if when_idle is not None:
                when_idle()
        return 0.0

    def _serve(self, work: QueuedOp | Chunk | tuple[int, int]) -> None:
        try:
            if isinstance(work, QueuedOp):
                self._send_op(work)
            else:
                chunk = self._read_back(*work) if isinstance(work, tuple) else work
                if chunk is None:
                    return
                work = chunk
                self._send_chunk(chunk)
            self._internal_errors = 0
            self.last_error = None
        except _Retry as failure:
            if isinstance(failure.error, APIError):
                self._failed_attempt(failure.error, work)
            else:  # raised on a lane thread
                self._internal_error(failure.error, work)
        except Exception as exc:  # never let a bug stop delivery: report, back off, retry
            self._internal_error(exc, work)

    def _next_locked(self, now: float) -> QueuedOp | Chunk | tuple[int, int] | float:
        """What to send next: an op, the chunk in flight, a range to read back from the
        journal, or the seconds until something is due."""
        stream = self.stream
        if stream.closed:
            return math.inf  # ended: what is left waits in the spool (or was counted)
        stream.settle_holes_locked()
        if stream.chunk is not None:
            return stream.chunk
        if stream.ops and stream.ops[0].pos <= stream.acked:
            return stream.ops[0]
        if stream.run_id is None or stream.acked >= stream.logged:
            return math.inf
        batch = MAX_BATCH_METRICS if self.transport == "batch" else _METRIC_CHUNK
        start = stream.acked
        stop = min(stream.logged, start + batch)
        if stream.ops:
            stop = min(stop, stream.ops[0].pos)
        hole = stream.next_hole_locked()
        if hole is not None:
            stop = min(stop, hole)
        on_disk = start < stream.mem_start
        due = (
            on_disk
            or stop - start >= batch
            or stream.urgent > start
            or stream.closing
            or now - stream.oldest_at >= self.options.flush_interval
        )
        if not due:
            return stream.oldest_at + self.options.flush_interval - now
        if on_disk:
            segment = stream.segment_for_locked(start)
            if segment is None or stream.journal_dir is None:
                stream.fail_range_locked(start, min(stop, stream.mem_start), "lost from the spool")
                return 0.0
            return start, min(stop, stream.mem_start, segment.stop)
        return stream.take_from_memory_locked(stop - start)

    def _read_back(self, start: int, stop: int) -> Chunk | None:
        """Metrics [start, stop) that are only in the journal, as the chunk in flight."""
        stream = self.stream
        with stream.lock:
            segment = stream.segment_for_locked(start)
            directory = stream.journal_dir
            offset = segment.offset_of(start) if segment is not None else None
        records: list[Metric] = []
        if offset is not None and directory is not None:
            try:
                records = read_metrics(directory, offset, stop - start)
            except OSError as exc:
                self.notifier.once("read-back", f"aidp-metrics: cannot read the spool: {exc}")
        with stream.lock:
            if stream.acked != start or stream.chunk is not None:
                return None  # settled meanwhile (end() gave up on it)
            if len(records) < stop - start:
                stream.fail_range_locked(start + len(records), stop, "lost from the spool")
            if not records:
                return None
            chunk = Chunk(start, records)
            stream.chunk = chunk
        return chunk

    # -- metrics --------------------------------------------------------------------------

    def _send_chunk(self, chunk: Chunk) -> None:
        stream = self.stream
        if stream.floors:
            chunk.skip_logged(stream.floors)
            skipped = chunk.outcomes.count(SKIPPED)
            if skipped:
                self.notifier.once(
                    "skipped",
                    f"aidp-metrics: run {stream.run_id} already holds these steps (a resumed "
                    f"job): {skipped} point(s) at or below the last step the run holds for "
                    "their key are not sent again; the total is in run.stats.skipped",
                    logging.INFO,
                )
        if self.transport == "batch":
            self._send_batch(chunk)
        else:
            self._send_each(chunk)
        if chunk.pending():  # cannot happen; if it did, retrying beats losing them
            raise RuntimeError(f"{len(chunk.pending())} point(s) of a chunk have no outcome")
        self._settle(chunk)

    def _settle(self, chunk: Chunk) -> None:
        self.server_down = False
        with self.stream.lock:
            if self.stream.chunk is chunk:  # not already given up on by end()
                self.stream.settle_chunk_locked(chunk)

    def _send_batch(self, chunk: Chunk) -> None:
        pending = chunk.pending()
        if not pending:
            return
        if chunk.token is None or chunk.attempts == 0:
            chunk.token = new_retry_token()
        records = [chunk.records[i] for i in pending]
        try:
            body = batch_body(self._run_id(), records)
            self._post("runs/log-batch", body, chunk.token, metrics=True)
        except APIError as error:
            if _batch_endpoint_missing(error):
                self.transport = "metric"
                self.notifier.once(
                    "fallback",
                    f"aidp-metrics: the server does not offer runs/log-batch ({error.status}); "
                    "sending each metric with runs/log-metric from now on",
                )
                self._send_each(chunk)
                return
            if isinstance(error, BadRequest) and len(pending) > 1:
                self._isolate(chunk, pending)
                return
            if isinstance(error, BadRequest):
                self._reject(chunk, pending, error)
                return
            raise _Retry(error) from None
        for i in pending:
            chunk.outcomes[i] = DELIVERED

    def _isolate(self, chunk: Chunk, pending: list[int]) -> None:
        """Split a rejected batch until the bad points are alone; deliver the rest."""
        budget = _MAX_ISOLATION_REQUESTS
        work = [pending[: len(pending) // 2], pending[len(pending) // 2 :]]
        while work:
            group = work.pop()
            if budget <= 0:
                self._reject(chunk, group, None, "rejected in a batch the server refused")
                continue
            budget -= 1
            try:
                body = batch_body(self._run_id(), [chunk.records[i] for i in group])
                self._post("runs/log-batch", body, new_retry_token(), metrics=True)
            except BadRequest as error:
                if len(group) == 1:
                    self._reject(chunk, group, error)
                else:
                    work += [group[: len(group) // 2], group[len(group) // 2 :]]
                continue
            except APIError as error:
                raise _Retry(error) from None
            for i in group:
                chunk.outcomes[i] = DELIVERED

    def _send_each(self, chunk: Chunk) -> None:
        """`runs/log-metric` per point: one lane per key (its points in order), up to
        `max_in_flight` lanes at once on short-lived threads (no thread outlives a chunk)."""
        lanes: dict[str, list[int]] = {}
        for i in chunk.pending():
            lanes.setdefault(chunk.records[i][0], []).append(i)
        if not lanes:
            return
        run_id = self._run_id()
        errors: list[Exception] = []
        groups = list(lanes.values())
        width = min(self.options.max_in_flight, len(groups))

        def drive(share: list[list[int]]) -> None:
            for lane in share:
                self._send_lane(chunk, lane, run_id, errors)

        shares = [groups[i::width] for i in range(width)]
        threads = []
        for share in shares[1:]:
            thread = threading.Thread(target=drive, args=(share,), name="aidp-metrics-lane")
            thread.daemon = True
            try:
                thread.start()
            except RuntimeError:  # interpreter shutdown: this thread does it
                drive(share)
                continue
            threads.append(thread)
        drive(shares[0])
        for thread in threads:
            thread.join()
        if errors:
            raise _Retry(errors[0])

    def _send_lane(
        self, chunk: Chunk, lane: list[int], run_id: str, errors: list[Exception]
    ) -> None:
        for i in lane:
            key, value, timestamp, step = chunk.records[i]
            body = (
                f'{{"run_id":{json.dumps(run_id)},"key":{json_key(key)},'
                f'"value":{json_number(value)},"timestamp":{timestamp},"step":{step}}}'
            ).encode()
            try:
                self._post("runs/log-metric", body, new_retry_token(), metrics=True)
            except BadRequest as error:
                self._reject(chunk, [i], error)
                continue
            except Exception as error:  # the lane thread must report, never die
                errors.append(error)
                return  # the rest of this key waits for the retry, in order
            chunk.outcomes[i] = DELIVERED

    def _reject(
        self, chunk: Chunk, indices: list[int], error: APIError | None, reason: str = ""
    ) -> None:
        for i in indices:
            key = chunk.records[i][0]
            why = reason or (_short_reason(error) if error is not None else "rejected")
            chunk.outcomes[i] = f"metric {key!r} rejected: {why}"
        if error is not None:
            self.notifier.throttled(
                "rejected",
                f"aidp-metrics: the server refused {len(indices)} metric(s) "
                f"(e.g. {chunk.records[indices[0]][0]!r}): {error}",
            )

    # -- ops ------------------------------------------------------------------------------

    def _send_op(self, queued: QueuedOp) -> None:
        kind, payload = queued.op
        if self._op_token is None:
            self._op_token = new_retry_token()
        if kind == "create":
            self._create(payload)
        elif kind == "attach":
            self._attach(payload)
        elif kind in ("params", "tags"):
            self._log_entities(kind, payload)
        elif kind == "status":
            self._set_status(payload)
        self._op_attempts = 0
        self._op_token = None
        self.server_down = False
        with self.stream.lock:
            if self.stream.ops and self.stream.ops[0] is queued:
                self.stream.settle_op_locked()

    def _create(self, spec: dict[str, Any]) -> None:
        client = self.client
        never = RetryPolicy.never()
        try:
            experiment_id = spec.get("experiment_id") or client.experiment_id_for(
                spec.get("experiment_name") or "Default", retry=never
            )
            tags = {**spec.get("tags", {}), LOCAL_ID_TAG: self.stream.local_id}
            info = client.create_run(
                experiment_id=experiment_id,
                run_name=spec.get("run_name"),
                tags=tags,
                start_time=spec.get("start_time"),
                retry=never,
                retry_token=self._op_token,
            )
        except APIError as error:
            raise _Retry(error) from None
        self._resolved(info.run_id, f"run {info.run_id} created")

    def _attach(self, spec: dict[str, Any]) -> None:
        run_id = spec.get("run_id") or self._resolve_local(spec)
        try:
            run = self.client.get_run(run_id, retry=RetryPolicy.never())
            info = expect(run, "info", path="runs/get")
            if info.get("status") != "RUNNING":
                self._post(
                    "runs/update", dumps({"run_id": run_id, "status": "RUNNING"}), self._op_token
                )
        except APIError as error:
            raise _Retry(error) from None
        if spec.get("skip_logged_steps"):
            floors = last_steps(run)
            with self.stream.lock:
                self.stream.floors = floors
        self._resolved(run_id, f"attached to run {run_id}")

    def _resolve_local(self, spec: dict[str, Any]) -> str:
        """The run a local id became: this spool directory knows, or the server's tag."""
        local_id = str(spec["local_id"])
        found = run_id_for(local_id, self.spool_root) if self.spool_root is not None else None
        try:
            found = found or find_created(self.client, local_id, spec.get("experiment_name"))
        except APIError as error:
            raise _Retry(error) from None
        if found is None:
            raise _Retry(
                NotFound(f"{local_id} has not reached the server yet", status=404, path="runs/get")
            )
        return found

    def _resolved(self, run_id: str, what: str) -> None:
        stream = self.stream
        with stream.lock:
            stream.run_id = run_id
            late = self.stuck is not None or self.server_down
        if late:
            self.notifier.once("resolved", f"aidp-metrics: the server answered; {what}")
        self.stuck = None

    def _log_entities(self, kind: str, payload: dict[str, Any]) -> None:
        items = [{"key": k, "value": v} for k, v in payload["items"]]
        params, tags = (items, []) if kind == "params" else ([], items)
        for body in batch_bodies([], params, tags):
            body["run_id"] = self._run_id()
            try:
                self._post("runs/log-batch", dumps(body), self._op_token)
            except BadRequest:
                self._log_one_by_one(kind, body[kind])
            except APIError as error:
                raise _Retry(error) from None

    def _log_one_by_one(self, kind: str, entities: list[dict[str, str]]) -> None:
        for entity in entities:
            body = {"run_id": self._run_id(), kind: [entity]}
            try:
                self._post("runs/log-batch", dumps(body), new_retry_token())
            except BadRequest as error:
                self.notifier.once(
                    f"{kind}-{entity['key']}",
                    f"aidp-metrics: {kind[:-1]} {entity['key']!r} not logged: {error}",
                )
            except APIError as error:
                raise _Retry(error) from None

    def _set_status(self, payload: dict[str, Any]) -> None:
        body = {"run_id": self._run_id(), **payload}
        try:
            self._post("runs/update", dumps(body), self._op_token)
        except BadRequest as error:
            self.notifier.once(
                f"status-{payload.get('status')}",
                f"aidp-metrics: could not set run {self._run_id()} {payload.get('status')}: "
                f"{error}",
            )
        except APIError as error:
            raise _Retry(error) from None

    # -- failures -------------------------------------------------------------------------

    def _failed_attempt(
        self, error: APIError | Exception, work: object, *, quiet: bool = False
    ) -> None:
        """Back off after a failed request; decide whether to keep trying or give up.
        `quiet`: the failure was already reported (an internal error)."""
        now = time.monotonic()
        stream = self.stream
        policy = self.options.retry
        is_op = isinstance(work, QueuedOp)
        if isinstance(work, Chunk):
            work.attempts += 1
            if work.attempts == 1:
                work.first_failure = now
            attempts, elapsed = work.attempts, now - work.first_failure
        else:
            self._op_attempts += 1
            if self._op_attempts == 1:
                self._op_first_failure = now
            attempts, elapsed = self._op_attempts, now - self._op_first_failure
        api_error = error if isinstance(error, APIError) else None
        retryable = api_error is None or policy.is_retryable(api_error)
        self.last_error = str(error)
        self.server_down = retryable
        with stream.lock:
            spooling = stream.spool_allowed and not stream.spool_failed
            if spooling and not stream.spool_wanted:
                stream.spool_wanted = True
                stream.spool_idle = False
                wake_spool = True
            else:
                wake_spool = False
        if wake_spool:
            stream.wake_spool()
        if wake_spool and not quiet:
            self.notifier.once(
                "spooling",
                f"aidp-metrics: delivery failed ({error}); the run's records go to the spool "
                "and are sent when the server answers again",
            )
        if api_error is None:  # an internal error: _internal_error bounds how often
            delay: float | None = policy.backoff(attempts)
        else:
            delay = policy.next_delay(api_error, attempts, elapsed)
        if delay is None:
            if not retryable:
                self.stuck = str(error)
                self._report_refusal(error, work, spooling)
            keep = spooling or (is_op and _opens_run(work))
            if not keep and isinstance(work, Chunk):
                self._give_up(work, f"not delivered: {_short_reason(api_error or error)}")
                return
            if not keep and is_op:
                self._drop_op(work, error)  # type: ignore[arg-type]
                return
            delay = policy.max_delay if retryable else _REFUSED_RETRY
        if api_error is not None and api_error.retry_after is not None:
            delay = max(delay, api_error.retry_after)
        self._back_off(error, delay, quiet=quiet)
        with stream.lock:
            stream.counters.retried += isinstance(work, Chunk)

    def _report_refusal(self, error: object, work: object, spooling: bool) -> None:
        where = "kept in the spool" if spooling else "kept in memory"
        if isinstance(work, QueuedOp) and work.op[0] in ("create", "attach"):
            verb = "created" if work.op[0] == "create" else "attached"
            self.notifier.once(
                "refused-run",
                f"aidp-metrics: the run could not be {verb} ({error}); its points are {where}"
                + (
                    " and `aidp-metrics sync` delivers them once this is fixed"
                    if spooling
                    else " until the run ends"
                ),
            )
        else:
            self.notifier.throttled("refused", f"aidp-metrics: the server refused: {error}")

    def _give_up(self, chunk: Chunk, reason: str) -> None:
        pending = chunk.pending()
        for i in pending:
            chunk.outcomes[i] = reason
        self.notifier.throttled("failed", f"aidp-metrics: {len(pending)} metric(s) {reason}")
        self._settle(chunk)

    def _drop_op(self, queued: QueuedOp, error: object) -> None:
        self.notifier.throttled("op-failed", f"aidp-metrics: run {queued.op[0]} not sent: {error}")
        self._op_attempts = 0
        self._op_token = None
        with self.stream.lock:
            if self.stream.ops and self.stream.ops[0] is queued:
                self.stream.settle_op_locked()

    def _internal_error(self, exc: Exception, work: object) -> None:
        self._internal_errors += 1
        self.notifier.once(
            "internal",
            f"aidp-metrics: unexpected error while delivering ({type(exc).__name__}: {exc}); "
            "retrying",
        )
        logger.debug("aidp-metrics delivery error", exc_info=True)
        if self._internal_errors >= _INTERNAL_ERRORS_BEFORE_GIVING_UP:
            self._internal_errors = 0
            if isinstance(work, Chunk):
                self._give_up(work, f"internal error: {type(exc).__name__}: {exc}")
                return
            if isinstance(work, QueuedOp) and not _opens_run(work):
                self._drop_op(work, exc)
                return
        self._failed_attempt(exc, work, quiet=True)

    # -- HTTP -----------------------------------------------------------------------------

    def _run_id(self) -> str:
        run_id = self.stream.run_id
        if run_id is None:
            raise RuntimeError("the run does not exist on the server yet")
        return run_id

    def _post(self, path: str, body: bytes, token: str | None, *, metrics: bool = False) -> None:
        if metrics:  # the stats count metric requests only
            with self.stream.lock:
                counters = self.stream.counters
                counters.requests += 1
                counters.bytes += len(body)
        self.client.send("POST", path, content=body, retry_token=token)
        self._rate_window.append(time.monotonic())

    def _back_off(self, error: object, delay: float, *, quiet: bool = False) -> None:
        self.not_before = max(self.not_before, time.monotonic() + delay)
        if quiet:
            return
        if isinstance(error, TooManyRequests):
            hint = " as Retry-After asks" if error.retry_after is not None else ""
            self.notifier.once(
                "rate-limited",
                f"aidp-metrics: the server is rate limiting (HTTP 429) at about "
                f"{self._observed_rate():.1f} requests/s; backing off {delay:.1f} s{hint}"
                " and slowing every request of this run",
            )
        else:
            self.notifier.throttled(
                "retrying", f"aidp-metrics: delivery failed ({error}); retrying in {delay:.1f} s"
            )

    def _observed_rate(self) -> float:
        times = list(self._rate_window)
        if len(times) < 2:
            return float(len(times))
        span = times[-1] - times[0]
        return (len(times) - 1) / span if span > 0 else math.inf


def find_created(
    client: MetricsClient,
    local_id: str,
    experiment: str | None,
    experiment_id: str | None = None,
) -> str | None:
    """The server run tagged with `local_id` (in the experiment given by id, else by name,
    else "Default"), if any."""
    if experiment_id is None:
        found = client.get_experiment_by_name(experiment or "Default")
        if found is None:
            return None
        experiment_id = str(found["experiment_id"])
    runs = client.search_runs(
        [experiment_id], f"tags.`{LOCAL_ID_TAG}` = '{local_id}'", max_results=1
    )
    return str(runs[0]["info"]["run_id"]) if runs else None


def last_steps(run: dict[str, Any]) -> dict[str, int]:
    """The last step the server holds for each key (`runs/get` lists each key's latest)."""
    floors: dict[str, int] = {}
    for metric in (run.get("data") or {}).get("metrics") or []:
        try:
            key, step = str(metric["key"]), int(metric.get("step", 0))
        except (KeyError, TypeError, ValueError):
            continue
        floors[key] = max(step, floors.get(key, step))
    return floors


def batch_body(run_id: str, records: list[Metric]) -> bytes:
    """The `runs/log-batch` JSON for `records`, built by string formatting: the sender runs
    beside training, and this is a third cheaper than `json.dumps` over a list of dicts."""
    parts = [
        f'{{"key":{json_key(key)},"value":{json_number(value)},'
        f'"timestamp":{timestamp},"step":{step}}}'
        for key, value, timestamp, step in records
    ]
    return f'{{"run_id":{json.dumps(run_id)},"metrics":[{",".join(parts)}]}}'.encode()


def _opens_run(work: object) -> bool:
    return isinstance(work, QueuedOp) and work.op[0] in ("create", "attach")


def _batch_endpoint_missing(error: APIError) -> bool:
    if error.status not in _NO_BATCH_ENDPOINT:
        return False
    return not (isinstance(error, NotFound) and error.code in _MISSING_RESOURCE_CODES)


def _short_reason(error: object) -> str:
    if not isinstance(error, APIError):
        return f"{type(error).__name__}: {error}"[:200]
    status = f"HTTP {error.status}" if error.status is not None else type(error).__name__
    code = f" {error.code}" if error.code else ""
    return f"{status}{code}: {error.message[:160]}"
