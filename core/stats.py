"""Counters of what a run logged and what became of it."""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_REASONS = 20


@dataclass(frozen=True)
class RunStats:
    """A snapshot. Every logged metric ends up delivered, failed or dropped; until then pending.

    logged: accepted by `log_metric(s)`. rejected: refused as invalid input (never queued).
    delivered: acknowledged by the server. failed: given up on, with `failures` counting
    reasons. dropped: pushed out of a full queue. retried: requests sent again.
    requests / bytes: HTTP requests made for metrics and their body bytes.
    spooled: written to the on-disk journal (they stay pending until delivered from it).
    """

    logged: int
    delivered: int
    failed: int
    dropped: int
    rejected: int
    retried: int
    requests: int
    bytes: int
    spooled: int = 0
    failures: dict[str, int] = field(default_factory=dict)

    @property
    def pending(self) -> int:
        return self.logged - self.delivered - self.failed - self.dropped

    @property
    def undelivered(self) -> int:
        return self.failed + self.dropped + self.pending


class Counters:
    """The mutable side, updated under the sender's lock or by its single thread."""

    def __init__(self) -> None:
        self.logged = 0
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        self.rejected = 0
        self.retried = 0
        self.requests = 0
        self.bytes = 0
        self.spooled = 0
        self.failures: dict[str, int] = {}

    def fail(self, count: int, reason: str) -> None:
        self.failed += count
        if reason in self.failures or len(self.failures) < MAX_REASONS:
            self.failures[reason] = self.failures.get(reason, 0) + count
        else:
            self.failures["other"] = self.failures.get("other", 0) + count

    def snapshot(self) -> RunStats:
        return RunStats(
            logged=self.logged,
            delivered=self.delivered,
            failed=self.failed,
            dropped=self.dropped,
            rejected=self.rejected,
            retried=self.retried,
            requests=self.requests,
            bytes=self.bytes,
            spooled=self.spooled,
            failures=dict(self.failures),
        )
