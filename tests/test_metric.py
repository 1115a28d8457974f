from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from aidp_metrics import InvalidMetric, Metric, sanitize_key, validate_key
from aidp_metrics._metric import (
    MAX_KEY_LENGTH,
    decode_value,
    encode_value,
    key_error,
    make_metric,
    to_float,
)


@pytest.mark.parametrize(
    "key", ["loss", "train/loss", "val loss:top-1", "épsilon", "a.b-c_d", "x" * MAX_KEY_LENGTH]
)
def test_valid_keys(key: str) -> None:
    assert validate_key(key) == key
    assert sanitize_key(key) == key


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        ("", "empty"),
        ("loss@top1", "'@'"),
        ("a//b", "normalised"),
        ("/loss", "normalised"),
        ("loss/", "normalised"),
        ("./loss", "normalised"),
        ("../loss", "normalised"),
        ("x" * (MAX_KEY_LENGTH + 1), "251 characters"),
        ("loss\n", "'\\n'"),  # 0.1: "$" matched before the trailing newline
        ("loss\nacc", "'\\n'"),
    ],
)
def test_invalid_keys_get_a_clear_error(key: str, fragment: str) -> None:
    with pytest.raises(InvalidMetric, match="metric key") as info:
        validate_key(key)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "key", ["loss@top1", "a//b", "/x/", ".", "..", "", "a/../b", "x" * 400, "ü" * 300, "a/./b"]
)
def test_sanitize_gives_a_valid_key_deterministically(key: str) -> None:
    cleaned = sanitize_key(key)
    assert key_error(cleaned) is None
    assert sanitize_key(key) == cleaned


def test_sanitize_keeps_long_keys_apart() -> None:
    assert sanitize_key("x" * 300 + "a") != sanitize_key("x" * 300 + "b")


def test_sanitize_maps_bad_characters_to_underscore() -> None:
    assert sanitize_key("acc@top1") == "acc_top1"
    assert sanitize_key("train//loss/") == "train/loss"


class FakeTensor:
    def __init__(self, values: list[float]) -> None:
        self.values = values

    def numel(self) -> int:
        return len(self.values)

    def item(self) -> float:
        if len(self.values) != 1:
            raise ValueError("only one element tensors can be converted")
        return self.values[0]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, 1.0),
        (2.5, 2.5),
        (np.float32(0.5), 0.5),
        (np.int64(7), 7.0),
        (np.float16(1.5), 1.5),
        (np.array([3.0]), 3.0),
        (np.array(4.0), 4.0),
        (FakeTensor([0.25]), 0.25),
        (Fraction(1, 4), 0.25),
    ],
)
def test_values_become_floats(value: object, expected: float) -> None:
    result = to_float(value, "k")
    assert type(result) is float
    assert result == expected


@pytest.mark.parametrize(
    "value",
    [True, np.bool_(True), "0.5", None, b"1", [1.0], np.array([1.0, 2.0]), FakeTensor([1, 2])],
)
def test_non_numbers_are_rejected_naming_the_key(value: object) -> None:
    with pytest.raises(InvalidMetric, match="'acc'"):
        to_float(value, "acc")


def test_nan_and_infinities_are_json_strings() -> None:
    assert encode_value(math.nan) == "NaN"
    assert encode_value(math.inf) == "Infinity"
    assert encode_value(-math.inf) == "-Infinity"
    assert encode_value(1.5) == 1.5
    assert math.isnan(decode_value("NaN"))
    assert decode_value("-Infinity") == -math.inf
    assert decode_value(2) == 2.0


def test_make_metric_validates_step_and_timestamp() -> None:
    metric = make_metric("loss", 1, np.int64(3), 1700000000000)
    assert metric == Metric("loss", 1.0, 1700000000000, 3)
    with pytest.raises(InvalidMetric, match="step"):
        make_metric("loss", 1.0, 2**63)
    with pytest.raises(InvalidMetric, match="step"):
        make_metric("loss", 1.0, 1.5)
    with pytest.raises(InvalidMetric, match="timestamp"):
        make_metric("loss", 1.0, 0, "now")


def test_timestamp_defaults_to_the_time_of_the_call() -> None:
    import time

    before = time.time_ns() // 1_000_000
    metric = make_metric("loss", 1.0)
    after = time.time_ns() // 1_000_000
    assert before <= metric.timestamp <= after
    assert metric.step == 0


def test_metric_json_never_holds_a_bare_nan() -> None:
    import json

    body = json.dumps(Metric("k", math.nan, 1, 2).to_json(), allow_nan=False)
    assert '"value": "NaN"' in body
