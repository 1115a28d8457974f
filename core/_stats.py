"""Counters of what a run logged and what became of it."""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_REASONS = 20


@dataclass(frozen=True)
class RunStats:
    """A snapshot. Every metric handed to `log_metric(s)` is counted in `logged` once and,
    at every moment, in exactly one of the other buckets:

        logged == delivered + failed + dropped + rejected + skipped + pending

    rejected: refused at the call as invalid input. delivered: acknowledged by the server.
    failed: given up on (`failures` counts the reasons). dropped: pushed out of a full queue
    with no spool to hold it. skipped: already on the server when a run was resumed (a step
    at or below the last one the run held for that key). pending: not settled yet, in memory
    or in the spool; `spooled` of all logged points were written to the on-disk journal.
    retried / requests / bytes: metric requests sent again, in all, and their body bytes.

    Artifacts (`log_artifact(s)`, `log_figure`, `log_dict`, `log_text`) are counted by file:
    every file logged is in `artifacts` once and, at every moment, in exactly one of
    `artifacts_uploaded`, `artifacts_failed` or `artifacts_pending` (in the spool: being
    uploaded, waiting, or left for `aidp-metrics sync`); the `artifact_bytes*` fields count
    their sizes the same way.
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
    skipped: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    artifacts: int = 0
    artifacts_uploaded: int = 0
    artifacts_failed: int = 0
    artifact_bytes: int = 0
    artifact_bytes_uploaded: int = 0
    artifact_bytes_failed: int = 0

    @property
    def pending(self) -> int:
        settled = self.delivered + self.failed + self.dropped + self.rejected + self.skipped
        return self.logged - settled

    @property
    def artifacts_pending(self) -> int:
        return self.artifacts - self.artifacts_uploaded - self.artifacts_failed

    @property
    def artifact_bytes_pending(self) -> int:
        return self.artifact_bytes - self.artifact_bytes_uploaded - self.artifact_bytes_failed

    @property
    def undelivered(self) -> int:
        """Valid points that did not reach the server (and never will, or not yet)."""
        return self.failed + self.dropped + self.pending


class Counters:
    """The mutable side, owned by a run's queue and updated under its lock."""

    __slots__ = (
        "bytes",
        "delivered",
        "dropped",
        "failed",
        "failures",
        "rejected",
        "requests",
        "retried",
        "skipped",
        "spooled",
    )

    def __init__(self) -> None:
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        self.rejected = 0
        self.skipped = 0
        self.retried = 0
        self.requests = 0
        self.bytes = 0
        self.spooled = 0
        self.failures: dict[str, int] = {}

    def reject(self, count: int) -> None:
        """`count` invalid points were logged (the valid ones are counted by the buffer)."""
        self.rejected += count

    def drop(self, count: int) -> None:
        self.dropped += count

    def spool(self, count: int) -> None:
        self.spooled += count

    def request(self, size: int) -> None:
        self.requests += 1
        self.bytes += size

    def retry(self) -> None:
        self.retried += 1

    def settle(self, outcomes: list[str | None], delivered: str, skipped: str) -> None:
        """Count a chunk's outcomes: `delivered`, `skipped`, else the reason it failed."""
        done = outcomes.count(delivered)
        held = outcomes.count(skipped)
        self.delivered += done
        self.skipped += held
        if done + held == len(outcomes):  # the usual chunk: no need to look at each point
            return
        failures: dict[str, int] = {}
        for outcome in outcomes:
            if outcome is not None and outcome != delivered and outcome != skipped:
                failures[outcome] = failures.get(outcome, 0) + 1
        for reason, count in failures.items():
            self.fail(count, reason)

    def fail(self, count: int, reason: str) -> None:
        if count <= 0:
            return
        self.failed += count
        if reason in self.failures or len(self.failures) < MAX_REASONS:
            self.failures[reason] = self.failures.get(reason, 0) + count
        else:
            self.failures["other"] = self.failures.get("other", 0) + count

    def snapshot(self, valid: int) -> RunStats:
        """The counts, with `valid` points logged besides the rejected ones."""
        return RunStats(
            logged=valid + self.rejected,
            delivered=self.delivered,
            failed=self.failed,
            dropped=self.dropped,
            rejected=self.rejected,
            retried=self.retried,
            requests=self.requests,
            bytes=self.bytes,
            spooled=self.spooled,
            skipped=self.skipped,
            failures=dict(self.failures),
        )
