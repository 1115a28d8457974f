"""The background sender behind a `Run`: a bounded in-memory queue drained by one thread.

The caller only appends `(key, value, timestamp, step)` tuples under a lock. The sender
thread coalesces them into `runs/log-batch` requests (or `runs/log-metric` ones, several
in flight, one lane per key so each key's points arrive in the order logged), retries
with a back-off shared by every request, and counts every point as delivered, failed,
dropped or spooled.

With a spool (see `journal.py`), points that cannot be sent go to disk instead of being
lost: the sender then works from the journal, in order, until it has caught up, and
goes back to sending straight from memory. With `spool="always"` every point goes
through the journal (group-committed) before it is sent.
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
from .journal import Journal, Record
from .metric import encode_value
from .notify import Notifier
from .options import DeliveryOptions
from .stats import Counters

# 404/405/501 on log-batch from something that is not MLflow saying "no such run".
_NO_BATCH_ENDPOINT = frozenset({404, 405, 501})
_MISSING_RESOURCE_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "NotAuthorizedOrNotFound"})
_MAX_ISOLATION_REQUESTS = 64
_IDLE_WAIT = 1.0

Meta = tuple[str, str, str]  # ("params" | "tags" | "status", key, value)


class _GiveUp(Exception):
    """A retryable failure outlasted the retry budget (the error is attached)."""

    def __init__(self, error: APIError) -> None:
        super().__init__(str(error))
        self.error = error


class Sender:
    """Owns the queue, the journal (if any) and the thread(s) that empty them. Thread-safe.

    `client` is None offline; `run_id` is None until the server has created the run
    (`create_run` is then called by the sender thread until it succeeds).
    """

    def __init__(
        self,
        client: MetricsClient | None,
        run_id: str | None,
        options: DeliveryOptions,
        *,
        notifier: Notifier | None = None,
        create_run: Callable[[], str] | None = None,
        open_journal: Callable[[], Journal] | None = None,
    ) -> None:
        self.client = client
        self.run_id = run_id
        self.options = options
        self.transport = options.transport
        self.counters = Counters()
        self.notifier = notifier or Notifier()
        self.journal: Journal | None = None
        self._create_run = create_run
        self._open_journal = open_journal
        self._queue: collections.deque[Record] = collections.deque()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._next_seq = 0  # sequence number the next logged point gets
        self._head_seq = 0  # sequence number of _queue[0]
        self._inflight: list[Record] = []
        self._inflight_from: int | None = None  # lowest sequence number being sent
        self._oldest_at = 0.0  # when the queue last went from empty to non-empty
        self._flush_waiters = 0
        self._meta: list[Meta] = []
        self._meta_busy = False
        self._journal_pending = 0  # points in the journal the server does not have yet
        self._journal_cursor = 0  # byte offset of the next journal record to send
        self._closed = False
        self._abandon = threading.Event()
        self._abandon_reason = ""
        self._not_before = 0.0  # shared back-off: no request starts before this time
        self._create_attempts = 0
        # The last request failed with a retryable error (a run created without the server
        # starts that way).
        self.server_down = run_id is None and client is not None
        self._thread: threading.Thread | None = None
        self._lanes: _Lanes | None = None
        self._rate_window: collections.deque[float] = collections.deque(maxlen=200)
        if options.spool == "always" or client is None:
            self._ensure_journal()

    @property
    def offline(self) -> bool:
        return self.client is None

    @property
    def spooling(self) -> bool:
        return self.options.spool != "off" and self._open_journal is not None

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
                self._make_room(overflow)
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

    def _make_room(self, overflow: int) -> None:
        """Called with the lock held: spill, wait or drop the oldest `overflow` points."""
        if self.spooling and self.options.policy == "drop_oldest":
            self._spill(min(overflow, len(self._queue)))
            return
        if self.options.policy == "block":
            deadline = time.monotonic() + self.options.block_timeout
            while len(self._queue) + overflow > self.options.max_queue and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            overflow = len(self._queue) + overflow - self.options.max_queue
            if overflow <= 0:
                return
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

    def _spill(self, count: int) -> None:
        """Called with the lock held: move the oldest `count` queued points to the journal."""
        if count <= 0:
            return
        journal = self._ensure_journal()
        records = [self._queue.popleft() for _ in range(count)]
        journal.append(records)
        self._head_seq += count
        self._journal_pending += count
        self.counters.spooled += count
        self._changed.notify_all()

    def _ensure_journal(self) -> Journal:
        if self.journal is None:
            if self._open_journal is None:
                raise RuntimeError("no spool configured")
            self.journal = self._open_journal()
            self._journal_cursor = self.journal.acked
        return self.journal

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything logged before this call is settled; False on timeout.

        Offline, "settled" means committed to the journal.
        """
        with self._lock:
            target = self._next_seq
            if self._thread is None and not self._meta:
                return True
            if self.offline:
                self._spill(len(self._queue))
                if self.journal is not None:
                    self.journal.commit()
                return True
            self._flush_waiters += 1
            self._changed.notify_all()
            deadline = None if timeout is None else time.monotonic() + timeout
            try:
                while not self._settled(target):
                    if self._thread is None or not self._thread.is_alive():
                        return False
                    if deadline is None:
                        self._changed.wait(_IDLE_WAIT)
                        continue
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._changed.wait(min(remaining, _IDLE_WAIT))
                return True
            finally:
                self._flush_waiters -= 1

    def _settled(self, target: int) -> bool:
        if self._meta or self._meta_busy or self._journal_pending:
            return False
        if self._head_seq < target:
            return False
        return self._inflight_from is None or self._inflight_from >= target

    def abandon(self, reason: str) -> tuple[int, int]:
        """Stop sending. What is not delivered is spooled (when a spool is configured) or
        counted as failed. Returns (failed, spooled) counted by this call."""
        with self._lock:
            self._abandon_reason = reason
            self._abandon.set()
            self._closed = True
            failed = spooled = 0
            if self.spooling:
                # The in-flight batch is older than the queue: it goes first. If its request
                # still succeeds, `sync` sends it again and the server drops the duplicate.
                inflight, self._inflight = self._inflight, []
                journal = self._ensure_journal()
                journal.append(inflight)
                self._journal_pending += len(inflight)
                self.counters.spooled += len(inflight)
                spooled = len(inflight) + len(self._queue)
                self._spill(len(self._queue))
                journal.commit()
            else:
                failed = len(self._queue)
                self._queue.clear()
                self._head_seq = self._next_seq
                if failed:
                    self.counters.fail(failed, reason)
            self._changed.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5.0)
        return failed, spooled

    def reopen(self) -> None:
        """Accept and send points again after `abandon` (a run logged to after `end`)."""
        with self._lock:
            self._closed = False
            self._abandon.clear()
            if self._thread is not None and not self._thread.is_alive():
                self._thread = None
            if self._queue or self._meta or self._journal_pending:
                self._start_thread()

    def close_journal(self) -> None:
        if self.journal is not None:
            self.journal.close()

    def discard_journal(self) -> None:
        """Delete a journal whose every point the server has acknowledged."""
        with self._lock:
            journal, self.journal = self.journal, None
            self._journal_pending = 0
            self._journal_cursor = 0
        if journal is not None:
            journal.close()
            journal.remove()

    # -- sender side ----------------------------------------------------------------------

    def _start_thread(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        name = f"aidp-metrics-sender-{(self.run_id or 'local')[:8]}"
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        if self.options.spool == "always" and not self.offline:
            # Commits on its own clock, so a sender waiting on the network does not delay
            # durability: a kill -9 loses at most one commit_interval of points.
            committer = threading.Thread(target=self._commit_loop, name=name + "-c", daemon=True)
            committer.start()

    def _commit_loop(self) -> None:
        while not self._abandon.is_set():
            with self._lock:
                self._spill(len(self._queue))
                done = self._closed and not self._queue
            self._commit()  # fsync outside the lock: callers never wait for the disk
            if done:
                return
            self._abandon.wait(self.options.commit_interval)

    def _commit(self) -> None:
        journal = self.journal
        if journal is not None:
            journal.commit()

    def _run(self) -> None:
        while not self._abandon.is_set():
            if self.offline:
                if not self._offline_step():
                    return
                continue
            if self.run_id is None and not self._try_create_run():
                continue
            meta = self._take_meta()
            if meta:
                self._guarded(functools.partial(self._send_meta, meta))
                continue
            if self._journal_mode():
                if not self._journal_step():
                    return
                continue
            records = self._next_batch()
            if records is None:
                return
            self._guarded(functools.partial(self._send_live, records), len(records))

    def _guarded(self, action: Callable[[], None], points: int = 0) -> None:
        try:
            action()
        except Exception as exc:  # never let the thread die with points queued
            logging.getLogger("aidp_metrics").exception("aidp-metrics sender error")
            if points:
                with self._lock:
                    self.counters.fail(points, f"internal error: {exc!r}")
        finally:
            with self._lock:
                self._inflight = []
                self._inflight_from = None
                self._meta_busy = False
                self._changed.notify_all()

    def _take_meta(self) -> list[Meta]:
        with self._lock:
            meta, self._meta = self._meta, []
            self._meta_busy = bool(meta)
            return meta

    def _next_batch(self) -> list[Record] | None:
        with self._lock:
            while True:
                if self._abandon.is_set() or (self._closed and not self._queue and not self._meta):
                    return None
                if self._meta or self._journal_mode():
                    return []
                if self._queue:
                    waited = time.monotonic() - self._oldest_at
                    if (
                        len(self._queue) >= MAX_BATCH_METRICS
                        or waited >= self.options.flush_interval
                        or self._flush_waiters
                        or self._closed
                    ):
                        return self._take_batch()
                    self._changed.wait(self.options.flush_interval - waited)
                else:
                    self._changed.wait()

    def _take_batch(self) -> list[Record]:
        count = min(len(self._queue), MAX_BATCH_METRICS)
        batch = [self._queue.popleft() for _ in range(count)]
        self._inflight = batch
        self._inflight_from = self._head_seq
        self._head_seq += count
        if self._queue:
            self._oldest_at = time.monotonic() - self.options.flush_interval
        self._changed.notify_all()  # room for a blocked caller
        return batch

    def _journal_mode(self) -> bool:
        return self.journal is not None and (
            self.options.spool == "always" or self._journal_pending > 0
        )

    # -- run creation (server unreachable at start) ---------------------------------------

    def _try_create_run(self) -> bool:
        self._spill_or_wait()
        self._wait_for_backoff()
        if self._abandon.is_set() or self._create_run is None:
            return False
        self._create_attempts += 1
        try:
            self.run_id = self._create_run()
            self.server_down = False
        except APIError as error:
            self.server_down = self._retryable(error)
            if not self.options.retry.is_retryable(error):
                self.notifier.throttled("create", f"aidp-metrics: cannot create the run: {error}")
            self._back_off(error, self.options.retry.backoff(self._create_attempts))
            return False
        self.notifier.once(
            "created-late", f"aidp-metrics: the server answered; run {self.run_id} created"
        )
        return True

    def _spill_or_wait(self) -> None:
        """While points cannot be sent: keep them on disk (spool) and wait a little."""
        with self._lock:
            if self.spooling:
                self._spill(len(self._queue))
        self._commit()
        with self._lock:
            self._changed.wait(self.options.commit_interval)

    def _offline_step(self) -> bool:
        with self._lock:
            if self._abandon.is_set() or (self._closed and not self._queue):
                return False
            self._spill(len(self._queue))
            self._meta = []
        self._commit()
        with self._lock:
            self._changed.wait(self.options.commit_interval)
        return True

    # -- journal replay -------------------------------------------------------------------

    def _journal_step(self) -> bool:
        """Spill the queue, commit when due, send the next journal batch. False: stop."""
        journal = self._ensure_journal()
        with self._lock:
            if self._abandon.is_set():
                return False
            self._spill(len(self._queue))
            due = time.monotonic() - journal.last_commit >= self.options.commit_interval
            commit_now = due or self._flush_waiters or self._closed
            cursor = self._journal_cursor
        if commit_now:
            journal.commit()
        upto = journal.committed if self.options.spool == "always" else None
        result = journal.read(cursor, MAX_BATCH_METRICS, upto=upto)
        for problem in result.skipped:
            self.notifier.once(
                f"journal-{problem}",
                f"aidp-metrics: skipped a {problem} in {journal.metrics_path}",
            )
        if result.end == cursor:
            with self._lock:
                if self._closed and not self._queue and not self._journal_pending:
                    return False
                if not self._journal_pending or self.options.spool == "always":
                    self._changed.wait(self.options.commit_interval)
            return True
        records = result.records
        with self._lock:
            self._inflight_from = self._head_seq  # older than anything still queued
        try:
            if records:
                self._send_records(records, give_up=True)
        except _GiveUp as stuck:
            # _post already backed off through the whole retry budget: probe again soon.
            self._back_off(stuck.error, min(5.0, self.options.retry.max_delay))
            with self._lock:
                self._inflight_from = None
            return True
        journal.ack(result.end)
        with self._lock:
            self._journal_cursor = result.end
            self._journal_pending = max(0, self._journal_pending - len(records))
            self._inflight_from = None
            if not self._journal_pending and self.options.spool != "always":
                self.notifier.once(
                    f"caught-up-{journal.directory}",
                    "aidp-metrics: the server is back; spooled metrics delivered, "
                    "sending live again",
                    logging.INFO,
                )
            self._changed.notify_all()
        return True

    # -- sending ----------------------------------------------------------------------------

    def _send_live(self, records: list[Record]) -> None:
        if not records:
            return
        try:
            self._send_records(records, give_up=self.spooling)
        except _GiveUp as stuck:
            if self._abandon.is_set():
                return  # abandon() already saved the in-flight points
            with self._lock:
                self._ensure_journal().append(records)
                self._journal_pending += len(records)
                self.counters.spooled += len(records)
                self._spill(len(self._queue))
            self.notifier.once(
                "spooling",
                f"aidp-metrics: the server keeps failing ({stuck.error}); metrics go to "
                f"{self._ensure_journal().directory} and are sent when it answers again",
            )

    def _send_records(self, records: list[Record], *, give_up: bool) -> None:
        """Deliver records by the current transport. With `give_up`, a retryable failure
        past the budget raises `_GiveUp` instead of counting the records as failed."""
        if self.transport == "batch":
            self._send_batch(records, give_up)
        else:
            self._send_each(records, give_up)

    def _send_batch(self, records: list[Record], give_up: bool) -> None:
        body = batch_body(self._require_run_id(), records)
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
                self._send_each(records, give_up)
            elif isinstance(error, BadRequest) and len(records) > 1:
                self._isolate(records, error, budget=[_MAX_ISOLATION_REQUESTS])
            elif give_up and self._retryable(error):
                raise _GiveUp(error) from None
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
                self._post("runs/log-batch", batch_body(self._require_run_id(), half))
            except BadRequest as half_error:
                self._isolate(half, half_error, budget)
            except APIError as other:
                self._fail(half, other)
            else:
                self._delivered(len(half))

    def _send_each(self, records: list[Record], give_up: bool) -> None:
        by_key: dict[str, list[Record]] = {}
        for record in records:
            by_key.setdefault(record[0], []).append(record)
        if self._lanes is None:
            self._lanes = _Lanes(self.options.max_in_flight)
        stuck: list[APIError] = []
        tasks = [functools.partial(self._send_key, group, stuck) for group in by_key.values()]
        self._lanes.run(tasks)
        if stuck and give_up:
            raise _GiveUp(stuck[0])

    def _send_key(self, records: list[Record], stuck: list[APIError]) -> None:
        run_id = self._require_run_id()
        for index, (key, value, timestamp, step) in enumerate(records):
            metric = {
                "key": key,
                "value": encode_value(value),
                "timestamp": timestamp,
                "step": step,
            }
            body = json.dumps({"run_id": run_id, **metric}, separators=(",", ":")).encode()
            try:
                self._post("runs/log-metric", body)
            except APIError as error:
                if self._abandon.is_set() or (self.spooling and self._retryable(error)):
                    # The rest of this key waits on disk (or is reported by abandon).
                    stuck.append(error)
                    if not self.spooling:
                        self._fail(records[index:], error)
                    return
                self._fail([records[index]], error, prefix=f"metric {key!r} rejected: ")
                continue
            self._delivered(1)

    def _require_run_id(self) -> str:
        if self.run_id is None:
            raise RuntimeError("the run does not exist on the server yet")
        return self.run_id

    def _retryable(self, error: APIError) -> bool:
        return self.options.retry.is_retryable(error)

    def _post(self, path: str, body: bytes) -> None:
        """One logical write, retried under the shared back-off; raises the final error."""
        if self.client is None:
            raise TransportError("offline", method="POST", path=path)
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
                self.server_down = self._retryable(error)
                delay = policy.next_delay(error, attempt, time.monotonic() - started)
                if delay is None or self._abandon.is_set():
                    if error.retry_after is not None:
                        # Out of budget, but whoever sends next still honours the server.
                        self._not_before = max(
                            self._not_before, time.monotonic() + error.retry_after
                        )
                    raise
                self._back_off(error, delay)
                with self._lock:
                    self.counters.retried += 1
                continue
            self.server_down = False
            self._rate_window.append(time.monotonic())
            return

    def _wait_for_backoff(self) -> None:
        delay = self._not_before - time.monotonic()
        if delay > 0:
            self._abandon.wait(delay)

    def _back_off(self, error: APIError, delay: float) -> None:
        self._not_before = max(self._not_before, time.monotonic() + delay)
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

    def _delivered(self, count: int) -> None:
        with self._lock:
            self.counters.delivered += count

    def _fail(self, records: Sequence[Record], error: APIError, prefix: str = "") -> None:
        if self._abandon.is_set():
            if not self.spooling:  # with a spool, abandon() already saved them
                with self._lock:
                    self.counters.fail(len(records), self._abandon_reason)
            return
        reason = f"{prefix}{_short_reason(error)}"
        with self._lock:
            self.counters.fail(len(records), reason)
        self.notifier.throttled(
            "failed", f"aidp-metrics: {len(records)} metric(s) not delivered: {prefix}{error}"
        )

    def _send_meta(self, meta: list[Meta]) -> None:
        run_id = self._require_run_id()
        params = [{"key": k, "value": v} for kind, k, v in meta if kind == "params"]
        tags = [{"key": k, "value": v} for kind, k, v in meta if kind == "tags"]
        statuses = [v for kind, _, v in meta if kind == "status"]
        for body in batch_bodies([], params, tags):
            body["run_id"] = run_id
            try:
                self._post("runs/log-batch", json.dumps(body).encode())
            except BadRequest:
                self._send_meta_one_by_one(body)
            except APIError as error:
                self.notifier.throttled("meta", f"aidp-metrics: params/tags not logged: {error}")
        if statuses:
            update = {"run_id": run_id, "status": statuses[-1]}
            try:
                self._post("runs/update", json.dumps(update).encode())
            except APIError as error:
                self.notifier.throttled("meta", f"aidp-metrics: run status not set: {error}")

    def _send_meta_one_by_one(self, body: dict[str, Any]) -> None:
        for field in ("params", "tags"):
            for entity in body.get(field, []):
                single = {"run_id": body["run_id"], field: [entity]}
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

    def run(self, tasks: Sequence[Callable[[], None]]) -> None:
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


def batch_body(run_id: str, records: Sequence[Record]) -> bytes:
    """The `runs/log-batch` JSON for `records`, built by string formatting: the sender runs
    beside training, and this is a third cheaper than `json.dumps` over a list of dicts."""
    parts = [
        _METRIC_JSON % (_json_key(key), _json_number(value), timestamp, step)
        for key, value, timestamp, step in records
    ]
    return f'{{"run_id":{json.dumps(run_id)},"metrics":[{",".join(parts)}]}}'.encode()


_METRIC_JSON = '{"key":%s,"value":%s,"timestamp":%d,"step":%d}'
_KEY_JSON: dict[str, str] = {}


def _json_key(key: str) -> str:
    encoded = _KEY_JSON.get(key)
    if encoded is None:
        if len(_KEY_JSON) > 10_000:  # a run inventing keys must not grow this forever
            _KEY_JSON.clear()
        encoded = _KEY_JSON[key] = json.dumps(key)
    return encoded


def _json_number(value: float) -> str:
    # float.__repr__ is what json.dumps writes for a finite float
    return repr(value) if math.isfinite(value) else json.dumps(encode_value(value))


def _batch_endpoint_missing(error: APIError) -> bool:
    if error.status not in _NO_BATCH_ENDPOINT:
        return False
    return not (isinstance(error, NotFound) and error.code in _MISSING_RESOURCE_CODES)


def _short_reason(error: APIError) -> str:
    status = f"HTTP {error.status}" if error.status is not None else type(error).__name__
    code = f" {error.code}" if error.code else ""
    return f"{status}{code}: {error.message[:160]}"
