"""The background sender behind a `Run`: a bounded in-memory queue drained by one thread.

The caller only appends `(key, value, timestamp, step)` tuples under a lock. The sender
thread coalesces them into `runs/log-batch` requests (or `runs/log-metric` ones, several
in flight, one lane per key so each key's points arrive in the order logged), retries
with a back-off shared by every request, and counts every point as delivered, failed or
dropped. Points are taken from the queue in order, so "everything logged before now is
settled" is a comparison of sequence numbers.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .client import MAX_BATCH_METRICS, MetricsClient, batch_bodies, new_retry_token
from .errors import APIError, BadRequest, NotFound, TooManyRequests, TransportError
from .metric import encode_value
from .notify import Notifier
from .options import DeliveryOptions
from .stats import Counters

Record = tuple[str, float, int, int]  # key, value, timestamp (ms), step

# 404/405/501 on log-batch from something that is not MLflow saying "no such run".
_NO_BATCH_ENDPOINT = frozenset({404, 405, 501})
_MISSING_RESOURCE_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "NotAuthorizedOrNotFound"})
_MAX_ISOLATION_REQUESTS = 64


class Sender:
    """Owns the queue and the thread(s) that empty it. Thread-safe."""

    def __init__(
        self,
        client: MetricsClient,
        run_id: str,
        options: DeliveryOptions,
        *,
        notifier: Notifier | None = None,
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.options = options
        self.transport = options.transport
        self.counters = Counters()
        self.notifier = notifier or Notifier()
        self._queue: collections.deque[Record] = collections.deque()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._next_seq = 0  # sequence number the next logged point gets
        self._head_seq = 0  # sequence number of _queue[0]
        self._inflight_from: int | None = None  # lowest sequence number being sent
        self._oldest_at = 0.0  # when the queue last went from empty to non-empty
        self._flush_waiters = 0
        self._meta: list[tuple[str, str, str]] = []  # ("params"|"tags"|"status", key, value)
        self._meta_busy = False
        self._closed = False
        self._abandon = threading.Event()
        self._abandon_reason = ""
        self._not_before = 0.0  # shared back-off: no request starts before this time
        self._thread: threading.Thread | None = None
        self._lanes: _Lanes | None = None
        self._rate_window: collections.deque[float] = collections.deque(maxlen=200)

    # -- caller side ----------------------------------------------------------------------

    def put(self, records: Sequence[Record]) -> None:
        count = len(records)
        if not count:
            return
        with self._lock:
            if self._thread is None:
                self._start_thread()
            overflow = len(self._queue) + count - self.options.max_queue
            if overflow > 0:
                overflow = self._make_room(overflow)
            was_empty = not self._queue
            if was_empty:
                self._oldest_at = time.monotonic()
            self._queue.extend(records)
            self._next_seq += count
            self.counters.logged += count
            size = len(self._queue)
            if was_empty or size - count < MAX_BATCH_METRICS <= size:
                self._changed.notify_all()

    def put_meta(self, kind: str, items: Iterable[tuple[str, str]]) -> None:
        with self._lock:
            if self._thread is None:
                self._start_thread()
            self._meta.extend((kind, key, value) for key, value in items)
            self._changed.notify_all()

    def _make_room(self, overflow: int) -> int:
        """Called with the lock held. Returns how many points still do not fit."""
        if self.options.policy == "block":
            deadline = time.monotonic() + self.options.block_timeout
            while len(self._queue) + overflow > self.options.max_queue and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            overflow = len(self._queue) + overflow - self.options.max_queue
            if overflow <= 0:
                return 0
        dropped = min(overflow, len(self._queue))
        for _ in range(dropped):
            self._queue.popleft()
        self._head_seq += dropped
        self.counters.dropped += dropped
        self._changed.notify_all()
        self.notifier.throttled(
            "queue-full",
            f"aidp-metrics: the delivery queue is full ({self.options.max_queue} metrics); "
            f"dropped the {dropped} oldest (the server is slower than training or unreachable)",
        )
        return overflow - dropped

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything logged before this call is settled; False on timeout."""
        with self._lock:
            target = self._next_seq
            if self._thread is None:
                return True
            self._flush_waiters += 1
            self._changed.notify_all()
            deadline = None if timeout is None else time.monotonic() + timeout
            try:
                while not self._settled(target):
                    if not self._thread.is_alive():
                        return False
                    if deadline is None:
                        self._changed.wait(1.0)
                        continue
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._changed.wait(min(remaining, 1.0))
                return True
            finally:
                self._flush_waiters -= 1

    def _settled(self, target: int) -> bool:
        if self._meta or self._meta_busy:
            return False
        if self._head_seq < target:
            return False
        return self._inflight_from is None or self._inflight_from >= target

    def pending(self) -> int:
        with self._lock:
            return len(self._queue) + (0 if self._inflight_from is None else 1)

    def abandon(self, reason: str) -> int:
        """Stop retrying and count everything not yet settled as failed. Returns that count."""
        self._abandon_reason = reason
        self._abandon.set()
        with self._lock:
            self._closed = True
            left = len(self._queue)
            self._queue.clear()
            self._head_seq = self._next_seq
            if left:
                self.counters.fail(left, reason)
            self._changed.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)
        return left

    def reopen(self) -> None:
        """Accept and send points again after `abandon` (a run logged to after `end`)."""
        with self._lock:
            self._closed = False
            self._abandon.clear()
            if self._thread is not None and not self._thread.is_alive():
                self._thread = None

    # -- sender side ----------------------------------------------------------------------

    def _start_thread(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"aidp-metrics-sender-{self.run_id[:8]}", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while True:
            meta, records = self._next_work()
            if meta is None and records is None:
                return
            try:
                if meta:
                    self._send_meta(meta)
                if records:
                    self._send(records)
            except Exception as exc:  # never let the thread die with points queued
                if records:
                    with self._lock:
                        self.counters.fail(len(records), f"internal error: {exc!r}")
                logging.getLogger("aidp_metrics").exception("aidp-metrics sender error")
            finally:
                with self._lock:
                    self._inflight_from = None
                    self._meta_busy = False
                    self._changed.notify_all()

    def _next_work(self) -> tuple[list[tuple[str, str, str]] | None, list[Record] | None]:
        with self._lock:
            while True:
                if self._abandon.is_set() or (self._closed and not self._queue and not self._meta):
                    return None, None
                if self._meta:
                    meta, self._meta = self._meta, []
                    self._meta_busy = True
                    return meta, None
                if self._queue:
                    waited = time.monotonic() - self._oldest_at
                    if (
                        len(self._queue) >= MAX_BATCH_METRICS
                        or waited >= self.options.flush_interval
                        or self._flush_waiters
                        or self._closed
                    ):
                        return None, self._take_batch()
                    self._changed.wait(self.options.flush_interval - waited)
                else:
                    self._changed.wait()

    def _take_batch(self) -> list[Record]:
        count = min(len(self._queue), MAX_BATCH_METRICS)
        batch = [self._queue.popleft() for _ in range(count)]
        self._inflight_from = self._head_seq
        self._head_seq += count
        if self._queue:
            self._oldest_at = time.monotonic() - self.options.flush_interval
        self._changed.notify_all()  # room for a blocked caller
        return batch

    def _send(self, records: list[Record]) -> None:
        if self.transport == "batch":
            self._send_batch(records)
        else:
            self._send_each(records)

    # log-batch ----------------------------------------------------------------------------

    def _send_batch(self, records: list[Record]) -> None:
        body = _batch_body(self.run_id, records)
        try:
            self._post("runs/log-batch", body)
        except APIError as error:
            if _batch_endpoint_missing(error):
                self.transport = "metric"
                self.notifier.once(
                    "fallback",
                    f"aidp-metrics: the server does not offer runs/log-batch ({error.status}); "
                    "sending each metric with runs/log-metric from now on",
                )
                self._send_each(records)
            elif isinstance(error, BadRequest) and len(records) > 1:
                self._isolate(records, error, budget=[_MAX_ISOLATION_REQUESTS])
            else:
                self._fail(records, error)
            return
        self._delivered(len(records))

    def _isolate(self, records: list[Record], error: APIError, budget: list[int]) -> None:
        """Split a rejected batch until the bad points are alone; deliver the rest."""
        if len(records) == 1:
            key = records[0][0]
            self._fail(records, error, prefix=f"metric {key!r} rejected: ")
            return
        middle = len(records) // 2
        for half in (records[:middle], records[middle:]):
            if budget[0] <= 0:
                self._fail(half, error)
                continue
            budget[0] -= 1
            try:
                self._post("runs/log-batch", _batch_body(self.run_id, half))
            except BadRequest as half_error:
                self._isolate(half, half_error, budget)
            except APIError as other:
                self._fail(half, other)
            else:
                self._delivered(len(half))

    # log-metric ---------------------------------------------------------------------------

    def _send_each(self, records: list[Record]) -> None:
        by_key: dict[str, list[Record]] = {}
        for record in records:
            by_key.setdefault(record[0], []).append(record)
        if self._lanes is None:
            self._lanes = _Lanes(self.options.max_in_flight)
        self._lanes.run([functools.partial(self._send_key, group) for group in by_key.values()])

    def _send_key(self, records: list[Record]) -> None:
        for index, (key, value, timestamp, step) in enumerate(records):
            body = json.dumps(
                {
                    "run_id": self.run_id,
                    "key": key,
                    "value": encode_value(value),
                    "timestamp": timestamp,
                    "step": step,
                },
                separators=(",", ":"),
            ).encode()
            try:
                self._post("runs/log-metric", body)
            except APIError as error:
                if self._abandon.is_set():
                    self._fail(records[index:], error)
                    return
                self._fail([records[index]], error, prefix=f"metric {key!r} rejected: ")
                continue
            self._delivered(1)

    # shared -------------------------------------------------------------------------------

    def _post(self, path: str, body: bytes) -> None:
        """One logical write, retried under the shared back-off; raises the final error."""
        token = new_retry_token()
        policy = self.options.retry
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            self._wait_for_backoff()
            if self._abandon.is_set() and attempt > 1:
                raise TransportError(self._abandon_reason, method="POST", path=path)
            with self._lock:
                self.counters.requests += 1
                self.counters.bytes += len(body)
            try:
                self.client.send("POST", path, content=body, retry_token=token)
            except APIError as error:
                delay = policy.next_delay(error, attempt, time.monotonic() - started)
                if delay is None or self._abandon.is_set():
                    raise
                self._back_off(error, delay)
                with self._lock:
                    self.counters.retried += 1
                continue
            self._rate_window.append(time.monotonic())
            return

    def _wait_for_backoff(self) -> None:
        delay = self._not_before - time.monotonic()
        if delay > 0:
            self._abandon.wait(delay)

    def _back_off(self, error: APIError, delay: float) -> None:
        self._not_before = max(self._not_before, time.monotonic() + delay)
        if isinstance(error, TooManyRequests):
            self.notifier.once(
                "rate-limited",
                f"aidp-metrics: the server is rate limiting (HTTP 429) at about "
                f"{self._observed_rate():.1f} requests/s; backing off "
                f"{delay:.1f} s{' as Retry-After asks' if error.retry_after is not None else ''}"
                " and slowing every request of this run",
            )
        else:
            self.notifier.throttled(
                "retrying",
                f"aidp-metrics: delivery failed ({error}); retrying in {delay:.1f} s",
            )

    def _observed_rate(self) -> float:
        times = list(self._rate_window)
        if len(times) < 2:
            return float(len(times))
        span = times[-1] - times[0]
        return (len(times) - 1) / span if span > 0 else math.inf

    def _delivered(self, count: int) -> None:
        with self._lock:
            self.counters.delivered += count

    def _fail(self, records: Sequence[Record], error: APIError, prefix: str = "") -> None:
        if self._abandon.is_set():
            # Whoever abandoned delivery (end or exit) reports the total once.
            with self._lock:
                self.counters.fail(len(records), self._abandon_reason)
            return
        reason = f"{prefix}{_short_reason(error)}"
        with self._lock:
            self.counters.fail(len(records), reason)
        self.notifier.throttled(
            "failed", f"aidp-metrics: {len(records)} metric(s) not delivered: {prefix}{error}"
        )

    def _send_meta(self, meta: list[tuple[str, str, str]]) -> None:
        params = [(k, v) for kind, k, v in meta if kind == "params"]
        tags = [(k, v) for kind, k, v in meta if kind == "tags"]
        statuses = [v for kind, _, v in meta if kind == "status"]
        param_list = [{"key": k, "value": v} for k, v in params]
        tag_list = [{"key": k, "value": v} for k, v in tags]
        for body in batch_bodies([], param_list, tag_list):
            body["run_id"] = self.run_id
            try:
                self._post("runs/log-batch", json.dumps(body).encode())
            except BadRequest as error:
                self._send_meta_one_by_one(body, error)
            except APIError as error:
                self.notifier.throttled("meta", f"aidp-metrics: params/tags not logged: {error}")
        if statuses:
            body = {"run_id": self.run_id, "status": statuses[-1]}
            try:
                self._post("runs/update", json.dumps(body).encode())
            except APIError as error:
                self.notifier.throttled("meta", f"aidp-metrics: run status not set: {error}")

    def _send_meta_one_by_one(self, body: dict[str, Any], error: APIError) -> None:
        for field in ("params", "tags"):
            for entity in body.get(field, []):
                single = {"run_id": self.run_id, field: [entity]}
                try:
                    self._post("runs/log-batch", json.dumps(single).encode())
                except APIError as each_error:
                    self.notifier.throttled(
                        f"meta-{entity['key']}",
                        f"aidp-metrics: {field[:-1]} {entity['key']!r} not logged: {each_error}",
                    )


class _Lanes:
    """A fixed set of daemon threads that run one batch of tasks at a time.

    Not a ThreadPoolExecutor: its workers refuse new work once interpreter shutdown has
    begun, which is exactly when the at-exit flush needs them.
    """

    def __init__(self, size: int) -> None:
        self._tasks: collections.deque[Callable[[], None]] = collections.deque()
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._open = 0
        self._threads = [
            threading.Thread(target=self._worker, name=f"aidp-metrics-lane-{i}", daemon=True)
            for i in range(size)
        ]
        for thread in self._threads:
            thread.start()

    def run(self, tasks: list[Callable[[], None]]) -> None:
        with self._lock:
            self._tasks.extend(tasks)
            self._open += len(tasks)
            self._work.notify_all()
            while self._open:
                self._work.wait()

    def _worker(self) -> None:
        while True:
            with self._lock:
                while not self._tasks:
                    self._work.wait()
                task = self._tasks.popleft()
            try:
                task()
            finally:
                with self._lock:
                    self._open -= 1
                    self._work.notify_all()


def _batch_body(run_id: str, records: Sequence[Record]) -> bytes:
    metrics = [
        {"key": key, "value": encode_value(value), "timestamp": timestamp, "step": step}
        for key, value, timestamp, step in records
    ]
    return json.dumps({"run_id": run_id, "metrics": metrics}, separators=(",", ":")).encode()


def _batch_endpoint_missing(error: APIError) -> bool:
    if error.status not in _NO_BATCH_ENDPOINT:
        return False
    return not (isinstance(error, NotFound) and error.code in _MISSING_RESOURCE_CODES)


def _short_reason(error: APIError) -> str:
    status = f"HTTP {error.status}" if error.status is not None else type(error).__name__
    code = f" {error.code}" if error.code else ""
    return f"{status}{code}: {error.message[:160]}"
