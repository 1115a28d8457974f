"""`aidp-metrics sync`: deliver what the spool holds, resumably and without duplicates.

Each journal is replayed from its `acked` offset in batches; the offset moves forward
only after the server acknowledged a batch, so an interrupted sync resumes where it
stopped. A batch acknowledged just before a crash may be sent again: it carries the same
(key, timestamp, step, value) as before, and the server keeps one copy of identical points.
A run that exists only locally is created first, tagged with its local id, so a second
sync after a crash finds it instead of creating another.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .client import MAX_BATCH_METRICS, MetricsClient
from .delivery import batch_body
from .errors import AIDPError, BadRequest
from .journal import Journal, Record, find_journals
from .run import LOCAL_ID_TAG, create_run_for

Progress = Callable[[int, int], None]


@dataclass
class RunSyncResult:
    local_id: str
    run_id: str | None
    experiment: str | None
    points: int  # points the journal held that the server had not acknowledged
    sent: int = 0
    skipped: list[str] = field(default_factory=list)
    error: str | None = None


def sync_directory(
    root: Path,
    client: MetricsClient | None,
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
    for journal, (points, skipped) in plans:
        record = journal.record
        result = RunSyncResult(
            local_id=record.local_id,
            run_id=record.run_id,
            experiment=record.experiment_name or record.experiment_id,
            points=points,
            skipped=skipped,
        )
        results.append(result)
        if dry_run or client is None:
            continue
        try:
            done = _sync_one(journal, client, result, done, total, progress)
        except AIDPError as exc:
            result.error = str(exc)
        finally:
            journal.close()
    return results


def count_unacked(journal: Journal) -> tuple[int, list[str]]:
    points = 0
    skipped: list[str] = []
    for chunk in journal.iter_unacked(MAX_BATCH_METRICS):
        points += len(chunk.records)
        skipped.extend(chunk.skipped)
    return points, skipped


def _sync_one(
    journal: Journal,
    client: MetricsClient,
    result: RunSyncResult,
    done: int,
    total: int,
    progress: Progress | None,
) -> int:
    record = journal.record
    if record.run_id is None:
        existing = _find_created(client, journal)
        record.run_id = existing or create_run_for(client, record).run_id
        journal.save_record()
    run_id = record.run_id
    result.run_id = run_id
    if record.params or record.tags:
        _log_params_and_tags(client, run_id, record.params, record.tags, result)
    for chunk in journal.iter_unacked(MAX_BATCH_METRICS):
        if chunk.records:
            _send_chunk(client, run_id, chunk.records, result)
        journal.ack(chunk.end)
        result.sent += len(chunk.records)
        done += len(chunk.records)
        if progress is not None:
            progress(done, total)
    if record.status != "RUNNING" or record.end_time is not None:
        client.update_run(run_id, record.status, end_time=record.end_time)
    return done


def _send_chunk(
    client: MetricsClient, run_id: str, records: list[Record], result: RunSyncResult
) -> None:
    try:
        client.request("POST", "runs/log-batch", content=batch_body(run_id, records))
    except BadRequest:
        # Find the points the server refuses; send the rest one by one.
        for point in records:
            try:
                client.request("POST", "runs/log-batch", content=batch_body(run_id, [point]))
            except BadRequest as exc:
                result.skipped.append(
                    f"metric {point[0]!r} step {point[3]} rejected: {exc.message}"
                )


def _log_params_and_tags(
    client: MetricsClient,
    run_id: str,
    params: dict[str, str],
    tags: dict[str, str],
    result: RunSyncResult,
) -> None:
    try:
        client.log_batch(run_id, params=params, tags=tags)
    except BadRequest:
        for key, value in params.items():
            try:
                client.log_batch(run_id, params={key: value})
            except BadRequest as exc:  # a param the server already has with another value
                result.skipped.append(f"param {key!r} not logged: {exc.message}")
        if tags:
            client.log_batch(run_id, tags=tags)


def _find_created(client: MetricsClient, journal: Journal) -> str | None:
    """The server run an earlier, interrupted sync created for this journal, if any."""
    record = journal.record
    if not record.experiment_id and record.experiment_name:
        experiment = client.get_experiment_by_name(record.experiment_name)
        if experiment is None:
            return None
        record.experiment_id = str(experiment["experiment_id"])
    if not record.experiment_id:
        return None
    runs = client.search_runs(
        [record.experiment_id], f"tags.`{LOCAL_ID_TAG}` = '{record.local_id}'", max_results=1
    )
    return str(runs[0]["info"]["run_id"]) if runs else None
