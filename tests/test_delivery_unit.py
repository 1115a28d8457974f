"""The delivery thread's per-chunk work without a server: the log-batch JSON (what json.dumps
of `Metric.to_json()` would write), each point's outcome, and counting a settled chunk."""

from __future__ import annotations

import json
import math

from aidp_metrics._metric import Metric, batch_body
from aidp_metrics._queue.records import DELIVERED, SKIPPED, Chunk
from aidp_metrics._stats import Counters


def test_batch_body_is_the_json_of_the_metrics() -> None:
    records = [
        ('a/b é"x\\', 0.1, 1, 2),
        ("n", math.nan, 3, -4),
        ("i", math.inf, 5, 6),
        ("m", -math.inf, 7, 8),
        ("z", -0.0, 9, 2**62),
        ("e", 1e-300, 0, 0),
        ("big", 1.7976931348623157e308, 1, 1),
    ]
    body = json.loads(batch_body('run "1"', records))
    expected = {
        "run_id": 'run "1"',
        "metrics": [Metric(k, v, t, s).to_json() for k, v, t, s in records],
    }
    assert body == expected
    assert b"NaN," not in batch_body("r", records)  # never a bare NaN token


def test_batch_body_of_finite_values_whose_sum_overflows_keeps_every_value() -> None:
    """All finite, but their sum is not: the body still holds the values, not "Infinity"."""
    records = [("a", 1.7976931348623157e308, 1, 0), ("a", 1.7976931348623157e308, 1, 1)]
    body = json.loads(batch_body("r", records))
    assert [m["value"] for m in body["metrics"]] == [1.7976931348623157e308] * 2
    finite = [("a", 0.5, 1, 0), ("b", -2.0, 1, 0)]
    assert json.loads(batch_body("r", finite))["metrics"] == [
        Metric(k, v, t, s).to_json() for k, v, t, s in finite
    ]


def test_a_chunk_tracks_each_points_outcome_whole_or_in_part() -> None:
    records = [("a", float(i), 1, i) for i in range(4)]
    chunk = Chunk(10, records)
    assert chunk.pending() == [0, 1, 2, 3]
    assert chunk.records_at([0, 1, 2, 3]) is records
    chunk.set_outcome([1, 3], "no")
    assert chunk.pending() == [0, 2]
    assert chunk.records_at([0, 2]) == [records[0], records[2]]
    chunk.set_outcome([0, 2], DELIVERED)
    assert chunk.pending() == []
    assert chunk.outcomes == [DELIVERED, "no", DELIVERED, "no"]
    whole = Chunk(0, records)
    whole.set_outcome(whole.pending(), DELIVERED)
    assert whole.outcomes == [DELIVERED] * 4


def test_counters_settle_a_chunk_whole_or_point_by_point() -> None:
    counters = Counters()
    counters.settle([DELIVERED] * 3, DELIVERED, SKIPPED)
    counters.settle([DELIVERED, SKIPPED, "refused", None, "refused", "lost"], DELIVERED, SKIPPED)
    assert (counters.delivered, counters.skipped, counters.failed) == (4, 1, 3)
    assert counters.failures == {"refused": 2, "lost": 1}
