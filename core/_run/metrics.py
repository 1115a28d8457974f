"""`Run`'s metric logging: the training thread's hot path.

`log_metrics` queues a call of valid keys (seen before) and plain numbers as one unbuilt
`Call` -- no record is made on the caller's thread (the delivery loop builds them) -- and
checks anything else point by point (`_log_checked`): a new key, a value to convert, a step
or timestamp to check, `strict` raising on the caller. `log_valid` is the integrations'
way in for points their converter made valid already.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from aidp_metrics._errors import InvalidMetric
from aidp_metrics._metric import (
    INT64_MAX,
    INT64_MIN,
    MetricRecord,
    check_timestamp,
    key_error,
    now_ms,
    to_float,
    to_int64,
)
from aidp_metrics._notice import Notices
from aidp_metrics._queue.buffer import Call
from aidp_metrics._queue.options import DeliveryOptions
from aidp_metrics._queue.queue import RunQueue

from .lifecycle import ProcessRole

_FLOAT_INT_LIMIT = 2**1023  # ints beyond this do not fit a double: to_float says so
_PLAIN = frozenset((float, int))  # value types converted in bulk (not bool: a subclass)


class MetricMethods:
    """Mixed into `Run`, which owns the state these methods use."""

    options: DeliveryOptions
    last_step: int  # the step of the last log call (system metrics sample at it)
    _role: ProcessRole
    _queue: RunQueue
    _keys: dict[str, str]  # raw key -> key, for every key seen valid
    _notices: Notices

    def _act(self, wake: int) -> None:
        raise NotImplementedError

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
        if self._role.inherited:
            return
        # The usual call, inline (it runs inside every logging hook): a step, no timestamp,
        # keys seen valid before, plain numbers.
        at = 0 if step is None else step
        if type(at) is int and timestamp is None and INT64_MIN <= at <= INT64_MAX:
            call = _plain_call(metrics, self._keys, time.time_ns(), at)
            if call is not None:
                self.last_step = at
                wake = self._queue.append_call(call)
                if wake:
                    self._act(wake)
                return
        self._log_checked(metrics, step, timestamp)

    def log_valid(self, keys: list[str], values: list[float], step: int) -> None:
        """For the integrations: points already made valid by their converter (keys that
        `sanitize_key` gave, float values, an int step), queued as they are, unchecked (one
        hook's cost is mostly its checks)."""
        if self._role.inherited:
            return
        if not INT64_MIN <= step <= INT64_MAX:
            self.log_metrics(dict(zip(keys, values, strict=True)), step)  # the check says
            return
        self.last_step = step
        wake = self._queue.append_call((keys, values, time.time_ns(), step))
        if wake:
            self._act(wake)

    def _log_checked(
        self, metrics: Mapping[str, object], step: object, timestamp: int | None
    ) -> None:
        """`log_metrics` point by point: a new key, a value other than float/int, a step or
        timestamp to check."""
        try:
            at = _check_step(step)
            stamp = now_ms() if timestamp is None else check_timestamp(timestamp)
        except InvalidMetric as exc:
            keys = ", ".join(repr(key) for key in metrics)
            if self.options.strict:
                raise
            self._queue.reject(len(metrics))
            self._notices.once(f"step/timestamp of {keys}", f"aidp-metrics: not logged: {exc}")
            return
        records, problems = self._checked_records(metrics, stamp, at)
        if problems and self.options.strict:
            raise InvalidMetric("; ".join(reason for _, reason in problems))
        self.last_step = at
        wake = self._queue.append(records, len(problems))
        if wake:
            self._act(wake)
        for key, reason in problems:
            self._notices.once(f"metric:{key}", f"aidp-metrics: not logged: {reason}")

    def _checked_records(
        self, metrics: Mapping[str, object], stamp: int, at: int
    ) -> tuple[list[MetricRecord], list[tuple[str, str]]]:
        """Every point checked one by one: a new key, or a value other than float/int."""
        records: list[MetricRecord] = []
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
        return records, problems


def _plain_call(
    metrics: Mapping[str, object], known: dict[str, str], stamp_ns: int, at: int
) -> Call | None:
    """The points of a call whose keys were all seen valid before and whose values are
    all plain floats or ints, as one `Call` (the delivery loop makes the records); None
    when any point needs checking one by one. No Python-level loop: `watch` logs a few
    hundred points a call."""
    keys = metrics.keys()
    if not keys <= known.keys():
        return None
    values: list[Any] = list(metrics.values())
    types = set(map(type, values))
    if not types <= _PLAIN:  # bool, str, numpy, tensors: checked one by one
        return None
    if int in types:
        try:
            values = list(map(float, values))
        except OverflowError:  # an int too large for a double: said by the check
            return None
    return tuple(keys), values, stamp_ns, at


def _check_step(step: object) -> int:
    if step is None:
        return 0
    if type(step) is int and INT64_MIN <= step <= INT64_MAX:
        return step
    return to_int64(step, "step")
