"""Random keys, values, steps and timestamps through one `Run` against a real MLflow server:
`Run` never raises, bad input is counted and warned about, every valid point arrives exactly
as logged."""

from __future__ import annotations

import fractions
import itertools
import math
import os
import time
import warnings
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aidp_metrics import AIDPMetricsWarning, Run
from aidp_metrics._metric import INT64_MAX, INT64_MIN, key_error
from tests.reliability import FAST, MAX_FLOAT
from tests.support.mlflow_server import MLflowServer, get_metric_history

# -- strategies ------------------------------------------------------------------------------

_SEGMENT = st.text(
    alphabet=st.one_of(st.characters(categories=("L", "N")), st.sampled_from("_-. :")),
    min_size=1,
    max_size=12,
)
_ODD_KEYS = [
    "",
    ".",
    "..",
    "a/../b",
    "a/./b",
    "a//b",
    "/lead",
    "trail/",
    "at@sign",
    "tab\tkey",
    "new\nline",
    "semi;colon",
    "quo'te",
    "ключ/ü",
    "x" * 240,  # valid alone, too long with the per-point prefix
]
STR_KEYS = st.one_of(
    _SEGMENT,
    st.lists(_SEGMENT, min_size=1, max_size=3).map("/".join),
    st.sampled_from(_ODD_KEYS),
    st.text(max_size=20),
)
NON_STR_KEYS = st.sampled_from([None, 7, 2.5, b"bytes", ("t",)])

_FLOATS = st.one_of(
    st.floats(),
    st.sampled_from(
        [math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, -5e-324, -0.0, 2.2250738585e-308]
    ),
)
VALUES = st.one_of(
    _FLOATS,
    st.integers(),  # beyond float range too: rejected, never raised
    st.booleans(),
    st.none(),
    st.text(max_size=5),
    st.floats(width=32).map(np.float32),
    st.floats().map(np.float64),
    st.integers(INT64_MIN, INT64_MAX).map(np.int64),
    st.just(np.bool_(True)),
    _FLOATS.map(lambda x: np.array([x])),
    st.tuples(_FLOATS, _FLOATS).map(np.array),
    st.just(np.array([])),
)
STEPS = st.one_of(
    st.none(),
    st.integers(INT64_MIN, INT64_MAX),
    st.integers(),  # out of int64 too
    st.integers(INT64_MIN, INT64_MAX).map(np.int64),
    st.floats(),
    st.booleans(),
    st.text(max_size=3),
)
TIMESTAMPS = st.one_of(
    st.none(),
    st.integers(0, 4_102_444_800_000),
    st.integers(min_value=0),  # beyond int64 too
    st.integers(max_value=-1),  # negative: rejected at the call (MLflow refuses them)
    st.floats(allow_nan=False),
)


@dataclass(frozen=True)
class Call:
    metrics: dict[object, object]
    step: object
    timestamp: object
    single: bool  # log_metric instead of log_metrics (one metric only)


def _call(keys: st.SearchStrategy[list[object]]) -> st.SearchStrategy[Call]:
    return st.builds(
        lambda pairs, step, ts, single: Call(dict(pairs), step, ts, single and len(pairs) == 1),
        keys,
        STEPS,
        TIMESTAMPS,
        st.booleans(),
    )


CALLS = st.lists(
    st.one_of(
        _call(st.lists(st.tuples(STR_KEYS, VALUES), min_size=1, max_size=4)),
        _call(
            st.lists(st.tuples(st.one_of(STR_KEYS, NON_STR_KEYS), VALUES), min_size=1, max_size=4)
        ),
    ),
    min_size=1,
    max_size=3,
)

# -- the oracle --------------------------------------------------------------------------------


def _int64(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        return None
    number = int(value)
    return number if INT64_MIN <= number <= INT64_MAX else None


def _number(value: object) -> float | None:
    """What the value means as a metric, or None when it is not one."""
    if isinstance(value, np.ndarray):
        if value.size != 1 or value.dtype.kind not in "iuf":
            return None
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        return None
    try:
        return float(value)
    except OverflowError:  # an int beyond the range of a double
        return None


@dataclass(frozen=True)
class Expected:
    key: str
    value: float
    step: int
    earliest: int  # timestamp bounds (equal when given)
    latest: int


def _stored(value: float) -> float:
    """The value MLflow hands back: infinities are clamped to the largest double."""
    if math.isinf(value):
        return math.copysign(MAX_FLOAT, value)
    return value


def _same(got: object, want: float) -> bool:
    if math.isnan(want):
        return got == "NaN"
    return isinstance(got, (int, float)) and float(got) == _stored(want)


# -- the test ----------------------------------------------------------------------------------


def test_random_input_never_raises_and_every_valid_point_arrives(
    mlflow_server: MLflowServer, fresh_experiment: str
) -> None:
    run = Run.start(experiment_name=fresh_experiment, endpoint=mlflow_server.url, **FAST)
    expected: list[Expected] = []
    rejected = 0
    warned = 0
    counter = itertools.count()

    @settings(
        max_examples=30,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(calls=CALLS)
    def feed(calls: list[Call]) -> None:
        nonlocal rejected, warned
        for call in calls:
            n = next(counter)
            metrics = {
                (f"h{n}m{i}/{key}" if isinstance(key, str) else key): value
                for i, (key, value) in enumerate(call.metrics.items())
            }
            step = 0 if call.step is None else _int64(call.step)
            stamp = None if call.timestamp is None else _int64(call.timestamp)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                before = time.time_ns() // 1_000_000
                if call.single:
                    ((key, value),) = metrics.items()
                    run.log_metric(key, value, call.step, call.timestamp)  # type: ignore[arg-type]
                else:
                    run.log_metrics(metrics, call.step, call.timestamp)  # type: ignore[arg-type]
                after = time.time_ns() // 1_000_000
            warned += sum(issubclass(w.category, AIDPMetricsWarning) for w in caught)
            bad_stamp = call.timestamp is not None and (stamp is None or stamp < 0)
            if step is None or bad_stamp:
                rejected += len(metrics)
                continue
            for key, value in metrics.items():
                number = _number(value)
                if key_error(key) is not None or number is None:
                    rejected += 1
                    continue
                assert isinstance(key, str)
                low, high = (before, after) if stamp is None else (stamp, stamp)
                expected.append(Expected(key, number, step, low, high))

    try:
        feed()
        assert run.flush(60)
        stats = run.stats
    finally:
        run.end(timeout=30)
    assert stats.rejected == rejected
    assert rejected == 0 or warned > 0, "invalid input was refused without a word"
    # Every call's metrics are counted once: delivered or rejected, nothing else.
    assert (stats.logged, stats.delivered, stats.failed, stats.dropped, stats.pending) == (
        len(expected) + rejected,
        len(expected),
        0,
        0,
        0,
    ), stats.failures
    for point in expected:
        history = get_metric_history(mlflow_server.url, run.run_id, point.key)
        assert len(history) == 1, f"{point}: {history}"
        (got,) = history
        assert int(got["step"]) == point.step, (point, got)
        assert point.earliest <= int(got["timestamp"]) <= point.latest, (point, got)
        assert _same(got["value"], point.value), (point, got)


# -- cases the generator found (regression tests) ---------------------------------------------


def offline_run() -> Run:
    os.environ["AIDP_METRICS_MODE"] = "offline"
    try:
        return Run.start(experiment_name="random-input")
    finally:
        del os.environ["AIDP_METRICS_MODE"]


@pytest.mark.parametrize(
    "value",
    [10**400, -(10**400), fractions.Fraction(10**400, 3)],
    ids=["int-1e400", "negative-int-1e400", "fraction-1e400"],
)
def test_value_beyond_float_range_is_rejected_not_raised(value: object) -> None:
    run = offline_run()  # nothing but the input handling runs
    try:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            run.log_metric("big", value, step=1)
        assert (run.stats.rejected, run.stats.logged) == (1, 1)
    finally:
        run.end(timeout=0)


def test_bad_step_with_mixed_key_types_is_rejected_not_raised() -> None:
    run = offline_run()  # nothing but the input handling runs
    try:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            run.log_metrics({"a": 1.0, None: 2.0}, step=1.5)  # type: ignore[dict-item, arg-type]
        assert run.stats.rejected == 2
    finally:
        run.end(timeout=0)


def test_negative_timestamp_is_rejected_at_the_call() -> None:
    run = offline_run()  # nothing but the input handling runs
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run.log_metric("t", 1.0, step=0, timestamp=-1)
        assert (run.stats.rejected, run.stats.logged) == (1, 1)
        assert any(issubclass(w.category, AIDPMetricsWarning) for w in caught)
    finally:
        run.end(timeout=0)
