"""What every integration does to a framework's metrics dict before it reaches a `Run`.

Keys are made valid and prefixed, values become floats; a bad key or value is reported
once (per key), not on every step, and never raised into the training loop. One rule for
repeats in every integration: a point identical to the previous point of its key (same
step, same value) is sent once -- Lightning logs `epoch` with the training and the
validation metrics of one step, Transformers its `epoch` in the training and eval logs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from aidp_metrics._errors import AIDPMetricsWarning, InvalidMetric
from aidp_metrics._metric import sanitize_key, to_float
from aidp_metrics._notice import notice

__all__ = ["AIDPMetricsWarning", "MetricConverter"]


class MetricConverter:
    """Map `{framework key: framework value}` to `{valid key: float}`.

    The key mapping is cached, so the per-step cost after the first step is a dict lookup
    and a float conversion per metric.
    """

    def __init__(self, prefix: str = "", separator: str = "-") -> None:
        self.prefix = prefix
        self.separator = separator
        self._keys: dict[str, str] = {}
        self._dropped: set[str] = set()
        self._last: dict[str, tuple[int, float]] = {}  # key -> (step, value) last sent

    def convert_at(self, metrics: Mapping[str, object], step: int) -> dict[str, float]:
        """The metrics logged at `step`, converted, without the points identical to their
        key's previous one. One loop: it runs inside every logging hook."""
        fresh: dict[str, float] = {}
        keys = self._keys
        last = self._last
        for raw_key, value in metrics.items():
            key = keys.get(raw_key)
            if key is None:
                key = self._key_for(raw_key)
            if type(value) is float:
                number: float = value
            else:
                try:
                    number = to_float(value, raw_key)
                except InvalidMetric as exc:
                    self._drop_once(raw_key, str(exc))
                    continue
            previous = last.get(key)
            if previous is not None and previous[0] == step and _same(previous[1], number):
                continue
            last[key] = (step, number)
            fresh[key] = number
        return fresh

    def forget_repeats(self) -> None:
        """A new run: nothing was sent to it yet."""
        self._last.clear()

    def _key_for(self, raw_key: str) -> str:
        full = f"{self.prefix}{self.separator}{raw_key}" if self.prefix else str(raw_key)
        key = sanitize_key(full)
        if key != full:
            notice(
                f"aidp-metrics: metric key {full!r} is not valid for the server; "
                f"logging it as {key!r}",
                stacklevel=4,
            )
        self._keys[raw_key] = key
        return key

    def _drop_once(self, raw_key: str, reason: str) -> None:
        if raw_key in self._dropped:
            return
        self._dropped.add(raw_key)
        notice(f"aidp-metrics: not logging {raw_key!r}: {reason}", stacklevel=4)


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))
