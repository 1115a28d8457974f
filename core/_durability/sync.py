"""`aidp-metrics sync`: deliver what the spool holds, in order, resumably, without duplicates.

Metric journals first (they create the runs that exist only locally), then the runs'
upload journals (`aidp_metrics._uploads.replay`): every artifact not uploaded yet.

Each journal is replayed from its `acked` offset through the same `StreamSender` (and so the
same `RunOpener` and failure policy) the delivery loop uses, told to keep retrying, a group
of records at a time: create or attach, metrics, params, tags and status reach the server
in the order they were logged (a status set while offline arrives after the metrics). The
offset moves forward only once a group is settled, so an interrupted sync resumes where it
stopped; a group acknowledged just before a crash may be
sent again, and the server keeps one copy of identical points. A run that exists only
locally is created first, tagged with its local id, so a sync after a crash finds the run
an earlier attempt created instead of creating another.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aidp_metrics._connection.client import TrackingClient
from aidp_metrics._connection.retry import RetryPolicy
from aidp_metrics._delivery.opener import RunOpener
from aidp_metrics._delivery.sender import StreamSender
from aidp_metrics._errors import AIDPError
from aidp_metrics._metric import Metric
from aidp_metrics._notice import Notices
from aidp_metrics._queue.journal import Journal, Line, Op, find_journals, save_run_id
from aidp_metrics._queue.options import DeliveryOptions
from aidp_metrics._queue.queue import RunQueue
from aidp_metrics._uploads.replay import UploadSyncResult, sync_uploads

Progress = Callable[[int, int], None]
_GROUP = 1000  # metrics replayed (and acknowledged) together, with the ops among them
SYNC_RETRY = RetryPolicy(max_attempts=6, base_delay=0.5, max_delay=5.0, total_timeout=30.0)
_STALL = 60.0  # give up on a journal when nothing moved for this long


@dataclass
class RunSyncResult:
    local_id: str
    run_id: str | None
    experiment: str | None
    points: int  # points the journal held that the server had not acknowledged
    sent: int = 0
    skipped: list[str] = field(default_factory=list)
    error: str | None = None
    artifacts: int = 0  # files the upload journal held that were not uploaded yet
    artifacts_sent: int = 0


class _Recorder(Notices):
    """Collects what the sender would say, for the result instead of the console."""

    def __init__(self, result: RunSyncResult) -> None:
        super().__init__()
        self.result = result

    def once(self, topic: str, message: str) -> bool:
        self._note(message)
        return True

    def throttled(self, topic: str, message: str) -> None:
        self._note(message)

    def _note(self, message: str) -> None:
        if "refused" in message or "not logged" in message or "could not" in message:
            self.result.skipped.append(message.removeprefix("aidp-metrics: "))


def sync_directory(
    root: Path,
    client: TrackingClient | None,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> list[RunSyncResult]:
    """Replay every journal under `root`. With `dry_run` (client may be None) only count."""
    journals = [Journal.open(path) for path in find_journals(root)]
    plans = [(journal, count_unacked(journal)) for journal in journals]
    total = sum(points for _, (points, _) in plans)
    results: list[RunSyncResult] = []
    done = 0
    # A journal attached to a local id waits for the journal that creates that run.
    plans.sort(key=lambda plan: _attaches_to_local_id(plan[0]))
    for journal, (points, problems) in plans:
        descriptor = journal.descriptor
        result = RunSyncResult(
            local_id=descriptor.local_id,
            run_id=descriptor.run_id,
            experiment=descriptor.experiment_name or descriptor.experiment_id,
            points=points,
            skipped=list(problems),
        )
        results.append(result)
        if dry_run or client is None or (not points and not _has_unacked_ops(journal)):
            continue
        try:
            done = _replay(journal, root, client, result, done, total, progress)
        except AIDPError as exc:
            result.error = str(exc)
        finally:
            journal.close()
    uploads = sync_uploads(root, client, retry=SYNC_RETRY, dry_run=dry_run or client is None)
    return _with_uploads(results, uploads)


def _with_uploads(
    results: list[RunSyncResult], uploads: list[UploadSyncResult]
) -> list[RunSyncResult]:
    """Each run's artifacts on its metric journal's result (or a result of their own)."""
    index = {result.local_id: n for n, result in enumerate(results)}
    for done in uploads:
        n = index.get(done.local_id)
        base = (
            results[n]
            if n is not None
            else RunSyncResult(done.local_id, done.run_id, done.experiment, points=0)
        )
        errors = [error for error in (base.error, done.error) if error]
        merged = dataclasses.replace(
            base,
            run_id=base.run_id or done.run_id,
            artifacts=done.files,
            artifacts_sent=done.sent,
            skipped=[*base.skipped, *done.skipped],
            error="; ".join(errors) or None,
        )
        if n is None:
            results.append(merged)
        else:
            results[n] = merged
    return results


def _attaches_to_local_id(journal: Journal) -> bool:
    for line in journal.lines(journal.acked):
        if line.record is not None:
            return line.record[0] == "attach" and "local_id" in line.record[1]  # type: ignore[operator]
    return False


def count_unacked(journal: Journal) -> tuple[int, list[str]]:
    points = 0
    problems: list[str] = []
    for line in journal.lines(journal.acked):
        if line.record is None:
            problems.append(f"skipped a {line.problem} at offset {line.start}")
        elif isinstance(line.record, Metric):
            points += 1
    return points, problems


def _has_unacked_ops(journal: Journal) -> bool:
    if journal.legacy_fields is not None and journal.acked < journal.written:
        return True
    return any(
        line.record is not None and not isinstance(line.record, Metric)
        for line in journal.lines(journal.acked)
    )


def _replay(
    journal: Journal,
    root: Path,
    client: TrackingClient,
    result: RunSyncResult,
    done: int,
    total: int,
    progress: Progress | None,
) -> int:
    descriptor = journal.descriptor
    options = DeliveryOptions(retry=SYNC_RETRY, flush_interval=0.0, spool="off")
    queue = RunQueue(options, local_id=descriptor.local_id, run_id=descriptor.run_id)
    sender = StreamSender(queue, client, notices=_Recorder(result), spool_root=root, keep=True)
    for group in _groups(journal):
        ops_before = queue.mark()[1]
        for line in group:
            record = line.record
            if isinstance(record, Metric):
                queue.append([record])
            elif record is not None:
                _queue(queue, record, sender.opener, journal)
        _drive(queue, sender)
        run_id = queue.run_id
        if run_id is not None and descriptor.run_id != run_id:
            descriptor.opened_as(run_id, None, None)
            journal.save_descriptor()
            save_run_id(root, descriptor.local_id, run_id)
        stats = queue.stats()
        sent = stats.delivered + stats.failed + stats.skipped
        done += sent - result.sent
        result.sent = sent
        result.run_id = run_id
        if group and group[-1].end > journal.acked:
            journal.save_acked(group[-1].end)
        if progress is not None and (sent or queue.mark()[1] > ops_before):
            progress(done, total)
    failures = queue.stats().failures
    for reason, count in failures.items():
        result.skipped.append(f"{count} metric(s) {reason}")
    return done


def _queue(queue: RunQueue, op: Op, opener: RunOpener, journal: Journal) -> None:
    kind, payload = op
    if kind == "create" and queue.run_id is None:
        existing = _find_created(opener, journal, payload)
        if existing is not None:
            queue.resolved(existing)
            queue.set_skips({}, opener.resumed_steps(existing, journal.descriptor.local_id))
            return
    if kind == "create" and queue.run_id is not None:
        return  # created by an earlier sync (or the process, or a resumed job)
    if queue.run_id is None and not _opening_queued(queue) and kind not in ("create", "attach"):
        raise AIDPError(
            f"journal {journal.directory} does not say which run it belongs to "
            "(no run id and no create record)"
        )
    queue.append_op(kind, payload)


def _opening_queued(queue: RunQueue) -> bool:
    """A create or attach is queued (not settled yet)."""
    return queue.progress()[1] < queue.mark()[1] and queue.run_id is None


def _drive(queue: RunQueue, sender: StreamSender) -> None:
    """Serve the sender on this thread until every queued record is settled."""
    last_progress = time.monotonic()
    before = queue.progress()
    while not queue.all_settled():
        delay = sender.serve()
        now = time.monotonic()
        state = queue.progress()
        if state != before:
            before, last_progress = state, now
        elif now - last_progress > _STALL or sender.stuck:
            raise AIDPError(sender.stuck or sender.last_error or "the server did not answer")
        if delay > 0:
            time.sleep(min(delay, 1.0))


def _groups(journal: Journal) -> Iterator[list[Line]]:
    """The unacknowledged lines in groups; a 0.1 journal's run.json fields as records."""
    legacy = journal.legacy_fields
    if legacy is not None and journal.acked == 0:
        yield [Line(0, 0, op) for op in _legacy_opening(legacy)]
    group: list[Line] = []
    metrics = 0
    for line in journal.lines(journal.acked):
        group.append(line)
        metrics += isinstance(line.record, Metric)
        if metrics >= _GROUP:
            yield group
            group, metrics = [], 0
    if legacy is not None:
        status = legacy.get("status") or "RUNNING"
        if status != "RUNNING" or legacy.get("end_time") is not None:
            end = group[-1].end if group else journal.acked
            group.append(Line(end, end, ("status", _status_payload(legacy))))
    if group:
        yield group


def _legacy_opening(fields: dict[str, Any]) -> list[Op]:
    ops: list[Op] = []
    if not fields.get("run_id"):
        spec = {
            "experiment_name": fields.get("experiment_name"),
            "experiment_id": fields.get("experiment_id"),
            "run_name": fields.get("run_name"),
            "tags": dict(fields.get("tags") or {}),
            "start_time": fields.get("start_time"),
        }
        ops.append(("create", spec))
    if fields.get("params"):
        ops.append(("params", {"items": [[k, v] for k, v in fields["params"].items()]}))
    if fields.get("tags"):
        ops.append(("tags", {"items": [[k, v] for k, v in fields["tags"].items()]}))
    return ops


def _status_payload(fields: dict[str, Any]) -> dict[str, Any]:
    payload: dict[str, Any] = {"status": fields.get("status") or "FINISHED"}
    if fields.get("end_time") is not None:
        payload["end_time"] = fields["end_time"]
    return payload


def _find_created(opener: RunOpener, journal: Journal, spec: dict[str, Any]) -> str | None:
    """The server run an earlier, interrupted sync, the process, or a resumed job that
    attached to this local id created, if any."""
    experiment = spec.get("experiment_name") or journal.descriptor.experiment_name
    experiment_id = spec.get("experiment_id") or journal.descriptor.experiment_id
    return opener.resolve(journal.descriptor.local_id, experiment, experiment_id)
