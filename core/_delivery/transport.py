"""Sending one chunk of metrics: `runs/log-batch`, or per-key lanes of `runs/log-metric`.

Every point of the chunk gets an outcome here (delivered, or rejected with the server's
reason); a failure worth retrying leaves the rest without one and raises `Retry`:

- a 400 on a batch is split until the bad points are alone: the rest is delivered;
- 404/405/501 on `runs/log-batch` (not "no such run") switches to `runs/log-metric`;
- `runs/log-metric` sends one lane per key (its points in order), up to `max_in_flight`
  lanes at once on short-lived threads (no thread outlives a chunk).

Bodies use the one metric encoding (`metric.metric_json`), which the journal uses too.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from aidp_metrics._connection.client import TrackingClient, new_retry_token
from aidp_metrics._errors import APIError, BadRequest, NotFound, TooManyRequests
from aidp_metrics._metric import batch_body, metric_body
from aidp_metrics._notice import Notices
from aidp_metrics._queue.queue import DELIVERED, Chunk

# 404/405/501 on log-batch from something that is not MLflow saying "no such run".
_NO_BATCH_ENDPOINT = frozenset({404, 405, 501})
_MISSING_RESOURCE_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "NotAuthorizedOrNotFound"})
_MAX_ISOLATION_REQUESTS = 64


class Retry(Exception):
    """The current request failed in a way that is worth trying again later."""

    def __init__(self, error: APIError | Exception) -> None:
        super().__init__(str(error))
        self.error = error


class MetricTransport:
    """Posts chunks of one run's metrics; `count` is told the size of every request."""

    def __init__(
        self,
        client: TrackingClient,
        notices: Notices,
        *,
        transport: str,
        max_in_flight: int,
        count: Callable[[int], None],
    ) -> None:
        self.client = client
        self.notices = notices
        self.mode = transport
        self._max_in_flight = max_in_flight
        self._count = count
        self._sent_at: deque[float] = deque(maxlen=200)

    def send(self, chunk: Chunk, run_id: str, token: str) -> None:
        """Give every pending point of `chunk` an outcome, or raise `Retry`."""
        if self.mode == "batch":
            self._send_batch(chunk, run_id, token)
        else:
            self._send_each(chunk, run_id)

    def post(self, path: str, body: bytes, token: str | None, *, metrics: bool = True) -> None:
        if metrics:  # the stats count metric requests only
            self._count(len(body))
        self.client.send("POST", path, content=body, retry_token=token)
        self._sent_at.append(time.monotonic())

    def observed_rate(self) -> float:
        """Requests per second over the last 200."""
        times = list(self._sent_at)
        if len(times) < 2:
            return float(len(times))
        span = times[-1] - times[0]
        return (len(times) - 1) / span if span > 0 else float("inf")

    # -- runs/log-batch -------------------------------------------------------------------

    def _send_batch(self, chunk: Chunk, run_id: str, token: str) -> None:
        pending = chunk.pending()
        if not pending:
            return
        try:
            self.post("runs/log-batch", batch_body(run_id, chunk.records_at(pending)), token)
        except APIError as error:
            if _batch_endpoint_missing(error):
                self.mode = "metric"
                self.notices.once(
                    "fallback",
                    f"aidp-metrics: the server does not offer runs/log-batch ({error.status}); "
                    "sending each metric with runs/log-metric from now on",
                )
                self._send_each(chunk, run_id)
                return
            if isinstance(error, BadRequest) and len(pending) > 1:
                self._isolate(chunk, pending, run_id)
                return
            if isinstance(error, BadRequest):
                self._reject(chunk, pending, error)
                return
            raise Retry(error) from None
        chunk.set_outcome(pending, DELIVERED)

    def _isolate(self, chunk: Chunk, pending: list[int], run_id: str) -> None:
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
                body = batch_body(run_id, chunk.records_at(group))
                self.post("runs/log-batch", body, new_retry_token())
            except BadRequest as error:
                if len(group) == 1:
                    self._reject(chunk, group, error)
                else:
                    work += [group[: len(group) // 2], group[len(group) // 2 :]]
                continue
            except APIError as error:
                raise Retry(error) from None
            chunk.set_outcome(group, DELIVERED)

    # -- runs/log-metric ------------------------------------------------------------------

    def _send_each(self, chunk: Chunk, run_id: str) -> None:
        lanes: dict[str, list[int]] = {}
        for i in chunk.pending():
            lanes.setdefault(chunk.records[i][0], []).append(i)
        if not lanes:
            return
        errors: list[Exception] = []
        groups = list(lanes.values())
        width = min(self._max_in_flight, len(groups))

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
            raise Retry(errors[0])

    def _send_lane(
        self, chunk: Chunk, lane: list[int], run_id: str, errors: list[Exception]
    ) -> None:
        for i in lane:
            body = metric_body(run_id, chunk.records[i])
            try:
                self.post("runs/log-metric", body, new_retry_token())
            except BadRequest as error:
                self._reject(chunk, [i], error)
                continue
            except Exception as error:  # the lane thread must report, never die
                errors.append(error)
                return  # the rest of this key waits for the retry, in order
            chunk.set_outcome([i], DELIVERED)

    def _reject(
        self, chunk: Chunk, indices: list[int], error: APIError | None, reason: str = ""
    ) -> None:
        why = reason or (short_reason(error) if error is not None else "rejected")
        for i in indices:
            chunk.set_outcome([i], f"metric {chunk.records[i][0]!r} rejected: {why}")
        if error is not None:
            self.notices.throttled(
                "rejected",
                f"aidp-metrics: the server refused {len(indices)} metric(s) "
                f"(e.g. {chunk.records[indices[0]][0]!r}): {error}",
            )

    def rate_limited_hint(self, error: TooManyRequests, delay: float) -> str:
        hint = " as Retry-After asks" if error.retry_after is not None else ""
        return (
            f"aidp-metrics: the server is rate limiting (HTTP 429) at about "
            f"{self.observed_rate():.1f} requests/s; backing off {delay:.1f} s{hint}"
            " and slowing every request of this run"
        )


def _batch_endpoint_missing(error: APIError) -> bool:
    if error.status not in _NO_BATCH_ENDPOINT:
        return False
    return not (isinstance(error, NotFound) and error.code in _MISSING_RESOURCE_CODES)


def short_reason(error: object) -> str:
    if not isinstance(error, APIError):
        return f"{type(error).__name__}: {error}"[:200]
    status = f"HTTP {error.status}" if error.status is not None else type(error).__name__
    code = f" {error.code}" if error.code else ""
    return f"{status}{code}: {error.message[:160]}"
