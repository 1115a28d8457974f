"""The sender's hand-built log-batch JSON must equal what json.dumps would write."""

from __future__ import annotations

import json
import math

from aidp_metrics._metric import Metric, batch_body


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
