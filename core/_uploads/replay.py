"""`aidp-metrics sync` for artifacts: upload what runs' upload journals still hold.

Run after the metric journals (which create runs that exist only locally), one journal at a
time, in the order the files were logged, through the same `ArtifactStore` and failure
policy as a live run. Each upload is marked in the journal once the store has it; an upload
a crash cut short is simply done again (the same bytes to the same artifact path), so a
sync interrupted at any point resumes without harm and a second sync does nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from aidp_metrics._connection.client import TrackingClient
from aidp_metrics._connection.retry import RetryPolicy, Verdict, decide
from aidp_metrics._delivery.opener import RunOpener
from aidp_metrics._delivery.transport import short_reason
from aidp_metrics._errors import AIDPError, APIError, BadRequest, ConfigurationError

from .ledger import FAILED, PENDING, UPLOADED, Entry, UploadLedger, find_upload_journals
from .stage import upload
from .store import MISSING, ArtifactStore, mlflow_available


@dataclass
class UploadSyncResult:
    local_id: str
    run_id: str | None
    experiment: str | None
    files: int  # files the journal held that were not uploaded yet
    sent: int = 0
    skipped: list[str] = field(default_factory=list)
    error: str | None = None


def sync_uploads(
    root: Path, client: TrackingClient | None, *, retry: RetryPolicy, dry_run: bool = False
) -> list[UploadSyncResult]:
    """Finish every upload journal under `root`; with `dry_run` (client may be None), count."""
    results: list[UploadSyncResult] = []
    for directory in find_upload_journals(root):
        ledger, entries = UploadLedger.open(directory)
        pending = [entry for entry in entries if entry.state == PENDING]
        skipped = list(ledger.problems)
        sent: list[Entry] = []
        error = None
        if not dry_run and client is not None:
            try:
                if pending:
                    _replay(ledger, pending, root, client, retry, sent, skipped)
                ledger.remove()
            except AIDPError as exc:
                error = str(exc)
            finally:
                ledger.close()
        descriptor = ledger.descriptor
        results.append(
            UploadSyncResult(
                descriptor.local_id,
                descriptor.run_id,
                descriptor.experiment_name or descriptor.experiment_id,
                len(pending),
                len(sent),
                skipped,
                error,
            )
        )
    return results


def _replay(
    ledger: UploadLedger,
    pending: list[Entry],
    root: Path,
    client: TrackingClient,
    retry: RetryPolicy,
    sent: list[Entry],
    skipped: list[str],
) -> None:
    """Upload `pending` in order, noting each settled one in `sent`; raises what stops it."""
    if not mlflow_available():
        raise ConfigurationError(MISSING)
    descriptor = ledger.descriptor
    run_id = descriptor.run_id or RunOpener(client, root).resolve(
        descriptor.local_id, descriptor.experiment_name, descriptor.experiment_id
    )
    if run_id is None:
        raise AIDPError(
            f"run {descriptor.local_id} is not on the server (its metric journal creates it)"
        )
    if descriptor.run_id != run_id:
        ledger.save_run_id(run_id)
    store = ArtifactStore.for_run(client, run_id)
    for entry in pending:
        state, reason = _upload(store, ledger, entry, retry)
        ledger.settle(entry.id, state, reason)
        if reason is not None:
            skipped.append(f"artifact {entry.artifact_path} {reason}")
        sent.append(entry)


def _upload(
    store: ArtifactStore, ledger: UploadLedger, entry: Entry, retry: RetryPolicy
) -> tuple[str, str | None]:
    """Upload one file, retried as the policy says; its outcome, or the error that stops
    this journal (the rest waits for the next sync)."""
    attempts, started = 0, time.monotonic()
    while True:
        attempts += 1
        try:
            problem = upload(store, ledger, entry)
        except BadRequest as error:
            return FAILED, f"refused: {short_reason(error)}"
        except OSError as exc:
            return FAILED, f"cannot read its snapshot: {exc}"
        except APIError as error:
            decision = decide(retry, error, attempts, time.monotonic() - started)
            if decision.verdict is Verdict.GIVE_UP:
                raise
            time.sleep(decision.delay)
            continue
        return (FAILED, problem) if problem else (UPLOADED, None)
