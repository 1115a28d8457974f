"""When to retry a failed request and how long to wait (OCI SDK conventions).

`decide` is the one failure policy: the client's own retry loop and the delivery loop both
ask it what to do after a failed attempt -- retry after a delay, give up, or keep the
records and try again later (a run with a spool, `sync`, a run not created yet).
"""

from __future__ import annotations

import email.utils
import enum
import random
import time
from dataclasses import dataclass, field

from aidp_metrics._errors import APIError, Conflict, TransportError, UnexpectedResponse

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
RETRYABLE_CONFLICT_CODES = frozenset({"IncorrectState", "LockConflict"})


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, bounded by attempts and by total time.

    A server's `Retry-After` replaces the computed delay. 400, 401, 404 and 409s other
    than `IncorrectState`/`LockConflict` are never retried.
    """

    max_attempts: int = 8
    base_delay: float = 0.5
    max_delay: float = 30.0
    total_timeout: float = 120.0
    retry_statuses: frozenset[int] = RETRYABLE_STATUSES
    retry_conflict_codes: frozenset[str] = RETRYABLE_CONFLICT_CODES
    jitter: bool = field(default=True, compare=False)

    @classmethod
    def never(cls) -> RetryPolicy:
        return cls(max_attempts=1)

    def is_retryable(self, error: APIError) -> bool:
        if isinstance(error, (TransportError, UnexpectedResponse)):
            return True
        if isinstance(error, Conflict):
            return error.code in self.retry_conflict_codes
        return error.status in self.retry_statuses

    def backoff(self, attempt: int) -> float:
        """Delay before attempt number `attempt + 1` (attempt counts from 1)."""
        ceiling = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        return random.uniform(0, ceiling) if self.jitter else ceiling

    def next_delay(self, error: APIError, attempt: int, elapsed: float) -> float | None:
        """Seconds to wait before retrying, or None when this error ends the call."""
        if attempt >= self.max_attempts or not self.is_retryable(error):
            return None
        delay = error.retry_after if error.retry_after is not None else self.backoff(attempt)
        if elapsed + delay > self.total_timeout:
            return None
        return delay


REFUSED_RETRY = 60.0  # a definite refusal (401/403/404) that is kept: probe again this often


class Verdict(enum.Enum):
    RETRY = "retry"  # within the policy's budget: try again after `delay`
    GIVE_UP = "give up"  # out of budget, or refused, and nothing keeps the records
    KEEP = "keep"  # out of budget, but the records are kept: try again after `delay`


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    delay: float = 0.0
    retryable: bool = True  # False: a definite refusal (the caller reports it)


def decide(
    policy: RetryPolicy,
    error: APIError | None,
    attempts: int,
    elapsed: float,
    *,
    keep: bool = False,
) -> Decision:
    """What to do after attempt number `attempts` failed with `error` (None: an internal
    error, always worth another try), `elapsed` seconds after the first. With `keep`, the
    caller keeps the records whatever happens, so the answer is never GIVE_UP."""
    retryable = error is None or policy.is_retryable(error)
    if error is None:
        delay: float | None = policy.backoff(attempts)
    else:
        delay = policy.next_delay(error, attempts, elapsed)
    verdict = Verdict.RETRY
    if delay is None:
        if not keep:
            return Decision(Verdict.GIVE_UP, 0.0, retryable)
        verdict = Verdict.KEEP
        delay = policy.max_delay if retryable else REFUSED_RETRY
    if error is not None and error.retry_after is not None:
        delay = max(delay, error.retry_after)
    return Decision(verdict, delay, retryable)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """`Retry-After` as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)
