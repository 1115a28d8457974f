"""Reliability ("chaos") tests: faults between `Run` and a real server, kills, random input.

Shared helpers: short delivery options, a training-like loop that remembers what it logged,
and an exactly-once check against the server's full history (read straight from MLflow,
never through the code under test).
"""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from aidp_metrics import Run
from aidp_metrics._connection.retry import RetryPolicy
from tests.support.mlflow_server import get_metric_history

FAST_RETRY = RetryPolicy(max_attempts=4, base_delay=0.05, max_delay=0.5, total_timeout=3)
FAST: dict[str, Any] = {
    "retry": FAST_RETRY,
    "flush_interval": 0.05,
    "commit_interval": 0.05,
    "end_timeout": 60.0,
}
KEYS = ("loss", "acc", "lr", "grad_norm")
MAX_FLOAT = 1.7976931348623157e308  # what MLflow stores for +/-inf

Points = dict[str, list[tuple[int, float]]]


def value_of(key_index: int, step: int) -> float:
    """A value unique to (key, step), so a point at the wrong step cannot pass."""
    return step + key_index / 8 + 0.001


def train(
    run: Run, steps: Iterable[int], expected: Points, keys: Sequence[str] = KEYS
) -> list[float]:
    """Log `keys` at every step like a training loop; record the points in `expected`.

    Returns the caller's cost of each `log_metrics` call, in seconds per metric.
    """
    costs: list[float] = []
    clock = time.perf_counter
    for step in steps:
        metrics = {key: value_of(i, step) for i, key in enumerate(keys)}
        started = clock()
        run.log_metrics(metrics, step=step)
        costs.append((clock() - started) / len(keys))
        for key, value in metrics.items():
            expected.setdefault(key, []).append((step, value))
    return costs


def median_us(costs: Sequence[float]) -> float:
    return statistics.median(costs) * 1e6 if costs else math.nan


def server_points(url: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of every point of `key` on the server, NaN as float NaN."""
    return [
        (int(m["step"]), math.nan if m["value"] == "NaN" else float(m["value"]))
        for m in get_metric_history(url, run_id, key)
    ]


def assert_exactly_once(url: str, run_id: str, expected: Points) -> None:
    """The server holds every expected point once: nothing lost, nothing doubled, nothing else."""
    for key, points in expected.items():
        got = Counter(server_points(url, run_id, key))
        want = Counter(points)
        missing = want - got
        extra = got - want
        doubled = sorted(p for p, n in got.items() if n > 1)
        assert not missing, (
            f"{key}: {sum(missing.values())} of {len(points)} point(s) missing, "
            f"e.g. {sorted(missing)[:3]}"
        )
        assert not extra, (
            f"{key}: {sum(extra.values())} point(s) unexpected or duplicated, "
            f"e.g. {sorted(extra)[:3]} (doubled: {doubled[:3]})"
        )


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()
