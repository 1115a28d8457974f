"""What every integration does to a framework's metrics dict before it reaches a `Run`.

Keys are made valid and prefixed, values become floats; a bad key or value is reported
once (per key), not on every step, and never raised into the training loop.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

from aidp_metrics.errors import AIDPMetricsWarning, InvalidMetric
from aidp_metrics.metric import sanitize_key, to_float

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

    def convert(self, metrics: Mapping[str, object]) -> dict[str, float]:
        converted: dict[str, float] = {}
        for raw_key, value in metrics.items():
            key = self._keys.get(raw_key)
            if key is None:
                key = self._key_for(raw_key)
            try:
                converted[key] = to_float(value, raw_key)
            except InvalidMetric as exc:
                self._drop_once(raw_key, str(exc))
        return converted

    def _key_for(self, raw_key: str) -> str:
        full = f"{self.prefix}{self.separator}{raw_key}" if self.prefix else str(raw_key)
        key = sanitize_key(full)
        if key != full:
            warnings.warn(
                f"aidp-metrics: metric key {full!r} is not valid for the server; "
                f"logging it as {key!r}",
                AIDPMetricsWarning,
                stacklevel=4,
            )
        self._keys[raw_key] = key
        return key

    def _drop_once(self, raw_key: str, reason: str) -> None:
        if raw_key in self._dropped:
            return
        self._dropped.add(raw_key)
        warnings.warn(
            f"aidp-metrics: not logging {raw_key!r}: {reason}", AIDPMetricsWarning, stacklevel=4
        )
