"""What every integration does to a framework's metrics dict before it reaches a `Run`.

Keys are made valid and prefixed, values become floats; a bad key or value is reported
once (per key), not on every step, and never raised into the training loop. One rule for
repeats in every integration: a point identical to the previous point of its key (same
step, same value) is sent once -- Lightning logs `epoch` with the training and the
validation metrics of one step, Transformers its `epoch` in the training and eval logs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from operator import itemgetter
from typing import Any

from aidp_metrics._errors import AIDPMetricsWarning, InvalidMetric
from aidp_metrics._metric import sanitize_key, to_float
from aidp_metrics._notice import notice

__all__ = ["AIDPMetricsWarning", "MetricConverter"]


class MetricConverter:
    """Map `{framework key: framework value}` to valid keys and float values.

    The key mapping is cached. A call with the keys of the last call that needed no
    conversion, float values and a step above every step seen so far cannot hold a repeat:
    it is answered without a Python-level loop, in a few C calls (the usual training step;
    each C routine a hook touches costs microseconds when training has left it cold), and
    its points become the keys' previous points only when a later call needs them
    (`_settle_recent`).
    """

    def __init__(self, prefix: str = "", separator: str = "-", *, nested: bool = False) -> None:
        self.prefix = prefix
        self.separator = separator
        # `nested`: a value that is a mapping holds grouped scalars (TensorBoard style):
        # `{"loss": {"train": x}}` is `loss/train`.
        self.nested = nested
        self._keys: dict[str, str] = {}
        self._dropped: set[str] = set()
        self._last: dict[str, tuple[int, float]] = {}  # key -> (step, value) last sent
        self._highest = _BEFORE_ANY_STEP  # the highest step a point was sent at
        # The last call that needed no conversion: (how many keys, its values in its
        # order from a dict, its keys). None yet: no dict has -1 keys.
        self._plain: tuple[int, Callable[[Mapping[str, object]], Any], list[str]] = (
            -1,
            _OneValue(""),
            [],
        )
        self._recent: tuple[int, list[str], list[float]] | None = None  # not in _last yet

    def points_at(self, metrics: Mapping[str, object], step: int) -> tuple[list[str], list[float]]:
        """The keys and values logged at `step`, converted, without the points identical to
        their key's previous one: what `Run.log_valid` takes (new lists, the caller's)."""
        count, values_of, keys = self._plain
        if step > self._highest and len(metrics) == count:
            try:  # a key it lacks, a value that is not a float: converted point by point
                values: list[float] = list(map(_FLOAT, values_of(metrics)))
            except (KeyError, TypeError):
                pass
            else:
                self._highest = step
                self._recent = (step, keys, list(values))  # the caller may add to its lists
                return list(keys), values
        return self._convert(metrics, step)

    def _convert(self, metrics: Mapping[str, object], step: int) -> tuple[list[str], list[float]]:
        """`points_at` point by point."""
        self._settle_recent()
        keys: list[str] = []
        values: list[float] = []
        known = self._keys
        last = self._last
        plain = True  # every value a float, every point sent
        for raw_key, value in metrics.items():
            key = known.get(raw_key)
            if key is None:
                key = self._key_for(raw_key)
            if type(value) is float:
                number: float = value
            else:
                plain = False
                if self.nested and isinstance(value, Mapping):
                    inner = {f"{raw_key}/{name}": each for name, each in value.items()}
                    inner_keys, inner_values = self._convert(inner, step)
                    keys += inner_keys
                    values += inner_values
                    continue
                try:
                    number = to_float(value, raw_key)
                except InvalidMetric as exc:
                    self._drop_once(raw_key, str(exc))
                    continue
            previous = last.get(key)
            if previous is not None and previous[0] == step and _same(previous[1], number):
                plain = False
                continue
            last[key] = (step, number)
            keys.append(key)
            values.append(number)
        self._highest = max(self._highest, step)
        if plain and keys:
            raw = tuple(metrics)
            values_of = itemgetter(*raw) if len(raw) > 1 else _OneValue(raw[0])
            self._plain = (len(raw), values_of, list(keys))
        return keys, values

    def _settle_recent(self) -> None:
        """The last fast call's points are their keys' previous points."""
        recent = self._recent
        if recent is not None:
            self._recent = None
            step, keys, values = recent
            for key, value in zip(keys, values, strict=True):
                self._last[key] = (step, value)

    def forget_repeats(self) -> None:
        """A new run: nothing was sent to it yet."""
        self._last.clear()
        self._recent = None
        self._highest = _BEFORE_ANY_STEP

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


_BEFORE_ANY_STEP = -(2**64)  # below every int64 step
# A float (a subclass too: numpy's float64) as an exact float; anything else (int, bool, a
# tensor, a nested dict) raises TypeError.
_FLOAT = float.__float__


class _OneValue:
    """`itemgetter(key)`, as a 1-tuple (`itemgetter` of one key gives the value itself).
    A class, not a closure: the converter is pickled with the logger that holds it."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self, metrics: Mapping[str, object]) -> tuple[object]:
        return (metrics[self.key],)


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))
