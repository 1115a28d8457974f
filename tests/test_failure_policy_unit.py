"""The one failure policy (`retry.decide`) that the client and the delivery loop share."""

from __future__ import annotations

from aidp_metrics._connection.retry import REFUSED_RETRY, RetryPolicy, Verdict, decide
from aidp_metrics._errors import ServerError, TooManyRequests, TransportError, Unauthorized

POLICY = RetryPolicy(max_attempts=3, base_delay=1.0, max_delay=8.0, total_timeout=60, jitter=False)


def down() -> TransportError:
    return TransportError("ConnectError", method="POST", path="runs/log-batch")


def test_a_retryable_failure_is_retried_with_backoff_within_the_budget() -> None:
    first = decide(POLICY, down(), 1, 0.0)
    second = decide(POLICY, down(), 2, 1.0)
    assert (first.verdict, first.delay, first.retryable) == (Verdict.RETRY, 1.0, True)
    assert (second.verdict, second.delay) == (Verdict.RETRY, 2.0)


def test_out_of_budget_gives_up_unless_the_records_are_kept() -> None:
    assert decide(POLICY, down(), 3, 3.0).verdict is Verdict.GIVE_UP
    kept = decide(POLICY, down(), 3, 3.0, keep=True)
    assert (kept.verdict, kept.delay, kept.retryable) == (Verdict.KEEP, 8.0, True)
    late = decide(POLICY, down(), 1, 59.5)  # the next wait would pass total_timeout
    assert late.verdict is Verdict.GIVE_UP


def test_a_definite_refusal_is_not_retried_but_kept_is_probed_slowly() -> None:
    refused = Unauthorized("no", status=401, method="POST", path="runs/log-batch")
    given_up = decide(POLICY, refused, 1, 0.0)
    assert (given_up.verdict, given_up.retryable) == (Verdict.GIVE_UP, False)
    kept = decide(POLICY, refused, 1, 0.0, keep=True)
    assert (kept.verdict, kept.delay, kept.retryable) == (Verdict.KEEP, REFUSED_RETRY, False)


def test_retry_after_is_honoured() -> None:
    limited = TooManyRequests("slow down", status=429, retry_after=5.0, path="runs/log-batch")
    assert decide(POLICY, limited, 1, 0.0).delay == 5.0
    busy = ServerError("busy", status=503, retry_after=20.0, path="runs/log-batch")
    kept = decide(POLICY, busy, 3, 0.0, keep=True)  # out of attempts, kept: still waits 20 s
    assert (kept.verdict, kept.delay) == (Verdict.KEEP, 20.0)


def test_an_internal_error_is_always_worth_another_try() -> None:
    decision = decide(POLICY, None, 5, 100.0)
    assert (decision.verdict, decision.delay, decision.retryable) == (Verdict.RETRY, 8.0, True)
