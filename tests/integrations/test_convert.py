"""The integrations' converter on its own: the repeat rule holds whether a call takes the
loop-free path (same keys as the last plain call, floats, a new highest step) or the loop."""

from __future__ import annotations

import pickle
import warnings

import pytest

from aidp_metrics.integrations._convert import AIDPMetricsWarning, MetricConverter


def test_a_training_step_then_an_eval_at_the_same_step_sends_epoch_once() -> None:
    converter = MetricConverter()
    assert converter.points_at({"loss": 1.0, "epoch": 0.5}, 10) == (["loss", "epoch"], [1.0, 0.5])
    # Same keys, a new highest step: the loop-free path; its points are still the previous ones.
    assert converter.points_at({"loss": 0.9, "epoch": 0.6}, 20) == (["loss", "epoch"], [0.9, 0.6])
    assert converter.points_at({"eval_loss": 2.0, "epoch": 0.6}, 20) == (["eval_loss"], [2.0])
    assert converter.points_at({"eval_loss": 2.0, "epoch": 0.7}, 20) == (
        ["epoch"],
        [0.7],
    )  # a changed value is sent


def test_an_older_step_after_loop_free_calls_compares_with_the_latest_point() -> None:
    converter = MetricConverter()
    converter.points_at({"a": 1.0}, 3)
    converter.points_at({"a": 2.0}, 5)  # loop-free
    # Step 3 again with a's value at step 3: not a repeat of a's previous point (step 5).
    assert converter.points_at({"a": 1.0}, 3) == (["a"], [1.0])
    assert converter.points_at({"a": 1.0}, 3) == ([], [])  # now it is


def test_the_lists_returned_are_the_callers() -> None:
    converter = MetricConverter()
    converter.points_at({"a": 1.0}, 1)
    keys, values = converter.points_at({"a": 2.0}, 2)  # loop-free
    keys.append("epoch")  # Keras adds its own point to the lists
    values.append(1.0)
    # The converter never sent an `epoch`: at the same step it is no repeat; `a` is.
    assert converter.points_at({"a": 2.0, "epoch": 1.0}, 2) == (["epoch"], [1.0])


def test_each_value_stays_with_its_key_whatever_changes() -> None:
    converter = MetricConverter(prefix="train", separator="/")
    converter.points_at({"a": 1.0, "b": 2.0}, 1)
    # The same keys in another order (loop-free: in the first call's order)
    assert converter.points_at({"b": 3.0, "a": 4.0}, 2) == (["train/a", "train/b"], [4.0, 3.0])
    # as many keys, one of them new; then an int: the loop
    assert converter.points_at({"a": 5.0, "c": 6.0}, 3) == (["train/a", "train/c"], [5.0, 6.0])
    assert converter.points_at({"a": 7.0, "c": 8}, 4) == (["train/a", "train/c"], [7.0, 8.0])
    assert converter.points_at({"b": 5, "a": 6.0}, 5) == (["train/b", "train/a"], [5.0, 6.0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert converter.points_at({"b": "x", "a": 7.0}, 6) == (["train/a"], [7.0])
    assert [w for w in caught if issubclass(w.category, AIDPMetricsWarning)]


def test_a_new_run_forgets_every_previous_point() -> None:
    converter = MetricConverter()
    converter.points_at({"a": 1.0}, 1)
    converter.points_at({"a": 2.0}, 2)  # loop-free
    converter.forget_repeats()
    assert converter.points_at({"a": 2.0}, 2) == (["a"], [2.0])
    assert converter.points_at({"a": 2.0}, 1) == (["a"], [2.0])


def test_nested_groups_flatten_at_any_depth() -> None:
    converter = MetricConverter(nested=True)
    metrics = {"loss": {"train": 1.0, "eval": {"top1": 0.5}}, "lr": 0.1}
    assert converter.points_at(metrics, 1) == (
        ["loss/train", "loss/eval/top1", "lr"],
        [1.0, 0.5, 0.1],
    )
    assert converter.points_at(metrics, 1) == ([], [])


def test_one_key_and_float_subclasses_take_the_loop_free_path_as_exact_floats() -> None:
    class Precise(float):
        pass

    converter = MetricConverter()
    assert converter.points_at({"loss": 1.0}, 1) == (["loss"], [1.0])
    keys, values = converter.points_at({"loss": Precise(2.5)}, 2)
    assert (keys, values, type(values[0])) == (["loss"], [2.5], float)
    with pytest.warns(AIDPMetricsWarning, match="bool"):  # a bool is no float: the loop says
        assert converter.points_at({"loss": True}, 3) == ([], [])


def test_a_converter_pickles_after_any_call() -> None:
    """Loggers holding one are pickled (Lightning's DDP spawn, checkpoints)."""
    for metrics in ({"loss": 1.0}, {"loss": 1.0, "acc": 0.5}):
        converter = MetricConverter()
        converter.points_at(metrics, 1)
        copy = pickle.loads(pickle.dumps(converter))
        assert copy.points_at(dict(metrics), 2) == (list(metrics), list(metrics.values()))
