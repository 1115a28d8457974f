"""A run's artifact uploads: snapshot and journal on the caller's thread, upload on our own.

    training thread --log_artifact--> UploadStage: snapshot + journal entry, then returns
                                          |  (uploader: a process-wide `ProcessWorker`)
                                          v
                                   ArtifactStore (MLflow's repository) --> artifact store

The caller's thread does the snapshot (`snapshot.py`: reflink, copy or hard link) and writes
the entry to the run's upload journal (`ledger.py`) before the call returns, so a crash or
SIGKILL from then on leaves the file for `aidp-metrics sync`. The uploader thread, one per
process for every run (beside the delivery loop, which keeps sending metrics meanwhile),
uploads one file at a time in the order logged. After a failed attempt the one failure
policy (`retry.decide`) says when to try again; the journal keeps the file meanwhile (with
`spool="off"`, the policy's budget decides, then the file counts as failed). A refusal of
one file (HTTP 400, a snapshot that can no longer be read, a hard-linked file rewritten in
place) fails that file only. `end()` waits for what was logged before it, within its
timeout, then says what it left for `sync`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import posixpath
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypedDict

from aidp_metrics._connection.client import TrackingClient
from aidp_metrics._connection.retry import RetryPolicy, Verdict, decide
from aidp_metrics._delivery.transport import short_reason
from aidp_metrics._delivery.worker import ProcessWorker
from aidp_metrics._errors import AIDPError, APIError, BadRequest, NotFound, Unauthorized
from aidp_metrics._notice import Notices, notice
from aidp_metrics._queue.journal import RunDescriptor, spool_root
from aidp_metrics._queue.options import DeliveryOptions

from . import content, snapshot
from .ledger import FAILED, PENDING, UPLOADED, Entry, UploadLedger
from .store import MISSING, ArtifactStore, mlflow_available

uploader = ProcessWorker("aidp-metrics-uploads")
_process_notices = Notices()

DOWN_WAIT = 2.0  # end() stops waiting once uploads fail and nothing moved for this long
_POLL = 0.2
_INTERNAL_ERRORS_BEFORE_GIVING_UP = 3
_PROBE = RetryPolicy.never()


class ArtifactCounts(TypedDict):
    """The artifact fields of `RunStats`."""

    artifacts: int
    artifacts_uploaded: int
    artifacts_failed: int
    artifact_bytes: int
    artifact_bytes_uploaded: int
    artifact_bytes_failed: int


class _Counts:
    __slots__ = ("bytes", "bytes_failed", "bytes_uploaded", "failed", "logged", "uploaded")

    def __init__(self) -> None:
        self.logged = self.uploaded = self.failed = 0
        self.bytes = self.bytes_uploaded = self.bytes_failed = 0

    @property
    def settled(self) -> int:
        return self.uploaded + self.failed


class UploadStage:
    """The uploads of one run (created on its first `log_artifact`-like call)."""

    def __init__(
        self,
        client: TrackingClient | None,
        options: DeliveryOptions,
        descriptor: RunDescriptor,
        run_id: Callable[[], str | None],
        notices: Notices,
    ) -> None:
        self.client = client
        self.options = options
        self.root = spool_root(options.spool_dir)
        self.notices = notices
        self._descriptor = descriptor
        self._run_id = run_id
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._pending: deque[Entry] = deque()  # in the order logged; [0] is next
        self._counts = _Counts()
        self._ledger: UploadLedger | None = None
        self._closed = False
        self._adding = 0  # calls writing into the journal right now: it must stay
        self._store: ArtifactStore | None = None
        self._failures = 0  # failed attempts at the entry in hand
        self._first_failure = 0.0
        self._internal = 0
        self._not_before = 0.0
        self._reported = 0  # failed count end() last reported
        self.can_upload = client is not None and mlflow_available()
        if client is not None and not self.can_upload:
            _process_notices.once(  # once per process, however many runs
                "artifacts-extra",
                f"aidp-metrics: {MISSING}; artifacts are kept in {self.root} for "
                "`aidp-metrics sync` (metrics are not affected)",
            )

    # -- the caller's side --------------------------------------------------------------

    def log_file(self, local_path: Any, artifact_path: str | None, mode: str) -> None:
        with self._refusals(local_path):
            _check_mode(mode)
            directory = _artifact_dir(artifact_path)
            source = os.fspath(local_path)
            if not os.path.isfile(source):
                raise FileNotFoundError(f"not a file: {source}")
            self._add(directory, os.path.basename(source), _taker(source, mode))

    def log_dir(self, local_dir: Any, artifact_path: str | None, mode: str) -> None:
        """Every file under `local_dir`, each at its relative path (as MLflow lays it out)."""
        with self._refusals(local_dir):
            _check_mode(mode)
            base = _artifact_dir(artifact_path)
            top = os.path.abspath(os.fspath(local_dir))
            if not os.path.isdir(top):
                raise NotADirectoryError(f"no such directory: {top}")
            for folder, _, names in sorted(os.walk(top)):
                relative = os.path.relpath(folder, top).replace(os.sep, "/")
                parts = [p for p in (base, None if relative == "." else relative) if p]
                directory = posixpath.join(*parts) if parts else None
                for name in sorted(names):
                    self._add(directory, name, _taker(os.path.join(folder, name), mode))

    def log_figure(self, figure: Any, artifact_file: str, save_kwargs: dict[str, Any]) -> None:
        self.log_written(artifact_file, lambda p: content.write_figure(figure, p, save_kwargs))

    def log_dict(self, dictionary: Any, artifact_file: str) -> None:
        self.log_written(artifact_file, lambda p: content.write_dict(dictionary, p))

    def log_text(self, text: str, artifact_file: str) -> None:
        self.log_written(artifact_file, lambda p: content.write_text(text, p))

    def log_written(self, artifact_file: str, write: Callable[[Path], None]) -> None:
        """`log_text`, `log_dict`, `log_figure`: `write` makes the file in the spool."""
        with self._refusals(artifact_file):
            directory, name = content.split_artifact_file(artifact_file)
            _artifact_dir(directory)

            def make(target: Path) -> str:
                write(target)
                return "written"

            self._add(directory, name, make)

    def _add(self, directory: str | None, name: str, make: Callable[[Path], str]) -> None:
        ledger = self._open_ledger()  # kept (`_adding`) until the entry is queued
        try:
            number, target = ledger.new_entry(directory, name)
            try:
                how = make(target)
                stat = target.stat()
            except BaseException:
                ledger.discard(number)
                raise
            entry = Entry(number, directory, name, stat.st_size, how, mtime=stat.st_mtime_ns)
            ledger.record(entry)
        except BaseException:
            with self._lock:
                self._adding -= 1
            raise
        with self._lock:
            self._adding -= 1
            self._pending.append(entry)
            self._counts.logged += 1
            self._counts.bytes += entry.size
            self._closed = False
        if self.can_upload:
            uploader.register(self, self)

    def _open_ledger(self) -> UploadLedger:
        with self._lock:
            ledger = self._ledger
            if ledger is None:
                run_id = self._descriptor.run_id or self._run_id()
                descriptor = dataclasses.replace(self._descriptor, run_id=run_id)
                ledger = self._ledger = UploadLedger.create(self.root, descriptor)
            self._adding += 1
            return ledger

    @contextlib.contextmanager
    def _refusals(self, what: object) -> Iterator[None]:
        """Bad input (no such file, a bad path, a figure of another library) or a spool that
        cannot be written: counted failed with one warning, raised only with `strict`."""
        try:
            yield
        except (OSError, ValueError, TypeError, ImportError) as exc:
            if self.options.strict:
                raise
            with self._lock:
                self._counts.logged += 1
                self._counts.failed += 1
            reason = f"{type(exc).__name__}: {exc}"
            self.notices.once(
                f"artifact:{what}", f"aidp-metrics: artifact {what} not logged: {reason}"
            )

    # -- waiting ------------------------------------------------------------------------

    def mark(self) -> int:
        with self._lock:
            return self._counts.logged

    def wait(self, mark: int, timeout: float | None) -> bool:
        """Wait until every file logged before `mark` is settled -- or, where nothing can be
        uploaded now (offline, no mlflow-skinny), is in the spool (it is from the start)."""
        if not self.can_upload:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while self._counts.settled < mark and not self._closed:
                remaining = 1.0 if deadline is None else deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 1.0))
            return self._counts.settled >= mark

    def finish(self, mark: int, wait: float, server_down: Callable[[], bool]) -> None:
        """For `end()`: wait up to `wait` seconds for the files logged before `mark` (a
        progress bar in bytes when stderr is a terminal) -- not at all for a run the server
        does not have, and no longer once uploads fail (or the metrics found the server
        down) and nothing moved for `DOWN_WAIT` -- then stop serving the run: what is left
        stays in the spool for `sync` (without a spool, it counts as failed)."""
        if self.can_upload and self._run_id() is not None:
            with _progress(self) as bar:
                self._wait_settled(mark, time.monotonic() + wait, bar, server_down)
        with self._lock:
            if self._counts.logged > mark:  # another thread logged meanwhile: not ours to
                return  # wait for; the uploader goes on (the next end() settles them)
            self._closed = True
            self._changed.notify_all()
            if self.options.spool == "off":  # no spool to keep them: they count as failed
                while self._pending:
                    entry = self._pending[0]
                    if self._ledger is not None:
                        self._ledger.settle(entry.id, FAILED, "not uploaded by end()")
                    self._count_locked(entry, FAILED)
            self._let_go_locked()

    def _wait_settled(
        self,
        mark: int,
        deadline: float,
        bar: Callable[[int], None],
        server_down: Callable[[], bool],
    ) -> None:
        moved_at = time.monotonic()
        done = -1
        while True:
            failing = self._failures > 0 or server_down()
            with self._changed:
                now = time.monotonic()
                if self._counts.settled >= mark or now >= deadline:
                    return
                if self._counts.bytes_uploaded != done:
                    done, moved_at = self._counts.bytes_uploaded, now
                elif failing and now - moved_at > DOWN_WAIT:
                    return  # the store keeps failing: the journal keeps the rest
                self._changed.wait(min(_POLL, deadline - now))
                done_now = self._counts.bytes_uploaded + self._counts.bytes_failed
            bar(done_now)

    def report_end(self, run_id: str) -> None:
        """Say what became of the files that are not uploaded."""
        with self._lock:
            pending = len(self._pending)
            pending_bytes = sum(e.size for e in self._pending)
            failed, self._reported = self._counts.failed - self._reported, self._counts.failed
        if pending:
            notice(
                f"aidp-metrics: {pending} artifact(s) ({_size(pending_bytes)}) of run {run_id} "
                f"are saved in {self.root}; upload them with: aidp-metrics sync {self.root}"
            )
        if failed > 0:
            notice(f"aidp-metrics: {failed} artifact(s) of run {run_id} not uploaded (see above)")

    def counts(self) -> ArtifactCounts:
        with self._lock:
            c = self._counts
            return {
                "artifacts": c.logged,
                "artifacts_uploaded": c.uploaded,
                "artifacts_failed": c.failed,
                "artifact_bytes": c.bytes,
                "artifact_bytes_uploaded": c.bytes_uploaded,
                "artifact_bytes_failed": c.bytes_failed,
            }

    # -- the uploader's side ------------------------------------------------------------

    def serve(self) -> float:
        with self._lock:
            if self._closed or not self._pending:
                self._let_go_locked()
                return float("inf")
            entry = self._pending[0]
            ledger = self._ledger
        now = time.monotonic()
        if now < self._not_before:
            return self._not_before - now
        run_id = self._run_id()
        if run_id is None or ledger is None or self.client is None:
            return 0.5  # the run is not on the server yet
        try:
            if ledger.descriptor.run_id != run_id:
                ledger.save_run_id(run_id)
            ledger.commit()
            if self._store is None or self._failures:  # after a failure: is it back?
                self._store = ArtifactStore.for_run(self.client, run_id, retry=_PROBE)
            problem = upload(self._store, ledger, entry)
        except APIError as error:
            self._failed_attempt(error, entry)
        except AIDPError as error:  # the configuration (e.g. OCI keys): keep, say once
            self._failed_attempt(None, entry, refused=str(error))
        except OSError as exc:  # the snapshot cannot be read
            self._settle(entry, FAILED, f"cannot read its snapshot: {exc}")
        except Exception as exc:  # never let a bug stop the uploader: report, retry, give up
            self._internal_error(exc, entry)
        else:
            self._settle(entry, FAILED if problem else UPLOADED, problem)
        return 0.0

    def _settle(self, entry: Entry, state: str, reason: str | None = None) -> None:
        if reason is not None:
            self.notices.throttled(
                "artifact-failed", f"aidp-metrics: artifact {entry.artifact_path} {reason}"
            )
        ledger = self._ledger
        if ledger is not None:  # the line first: once popped, end() may delete the journal
            ledger.settle(entry.id, state, reason)
        with self._lock:
            self._count_locked(entry, state)
            if self._closed and not self._pending:
                self._let_go_locked()

    def _count_locked(self, entry: Entry, state: str) -> None:
        if entry.state != PENDING:  # end() gave up on it meanwhile (spool="off")
            return
        entry.state = state
        if self._pending and self._pending[0] is entry:
            self._pending.popleft()
        counts = self._counts
        if state == UPLOADED:
            counts.uploaded += 1
            counts.bytes_uploaded += entry.size
        else:
            counts.failed += 1
            counts.bytes_failed += entry.size
        self._failures = self._internal = 0
        self._changed.notify_all()

    def _let_go_locked(self) -> None:
        """Nothing left to upload, or ended: stop being served. An ended run's journal is
        deleted once every entry is settled (and no call is writing into it), else closed
        with the rest for `sync`."""
        uploader.unregister(self)
        ledger = self._ledger
        if ledger is None or not self._closed:
            return
        if self._pending or self._adding:
            ledger.close()
        else:
            ledger.remove()
            self._ledger = None

    def _failed_attempt(self, error: APIError | None, entry: Entry, refused: str = "") -> None:
        now = time.monotonic()
        self._failures += 1
        if self._failures == 1:
            self._first_failure = now
        if isinstance(error, BadRequest):  # about this file, not the store: the next one
            self._settle(entry, FAILED, f"refused: {short_reason(error)}")
            return
        if isinstance(error, (NotFound, Unauthorized)):
            self._store = None
        keep = self.options.spool != "off"
        elapsed = now - self._first_failure
        decision = decide(self.options.retry, error, self._failures, elapsed, keep=keep)
        if refused:
            decision = dataclasses.replace(decision, verdict=Verdict.KEEP, retryable=False)
        if decision.verdict is Verdict.GIVE_UP:
            self._settle(entry, FAILED, f"not uploaded: {short_reason(error)}")
            return
        self._not_before = now + decision.delay
        with self._lock:
            self._changed.notify_all()  # end() may stop waiting
        why = refused or str(error)
        if not decision.retryable:
            self.notices.once(
                "artifacts-refused",
                f"aidp-metrics: artifact uploads refused ({why}); the files are kept in "
                f"{self.root} and `aidp-metrics sync` uploads them once this is fixed",
            )
        else:
            self.notices.throttled(
                "artifacts-retrying",
                f"aidp-metrics: artifact upload failed ({why}); retrying in "
                f"{decision.delay:.1f} s (the files are kept in {self.root})",
            )

    def _internal_error(self, exc: Exception, entry: Entry) -> None:
        self._internal += 1
        if self._internal >= _INTERNAL_ERRORS_BEFORE_GIVING_UP:
            self._settle(entry, FAILED, f"not uploaded: {type(exc).__name__}: {exc}")
            return
        self.notices.once(
            "artifact-internal",
            f"aidp-metrics: unexpected error while uploading ({type(exc).__name__}: {exc}); "
            "retrying",
        )
        self._failed_attempt(None, entry)


def upload(store: ArtifactStore, ledger: UploadLedger, entry: Entry) -> str | None:
    """Upload `entry`'s snapshot; a reason when it must not count as uploaded: a snapshot
    that changed since it was logged (a hard link to a file rewritten in place, a copy a
    power cut cut short). Raises what the store raises."""
    path = ledger.snapshot_path(entry)
    if _changed(path, entry):
        return "changed after it was logged (rewritten in place?); not uploaded"
    store.upload(str(path), entry.directory)
    if _changed(path, entry):
        return "changed while it was uploaded (rewritten in place?); the stored copy may be torn"
    return None


def _changed(path: Path, entry: Entry) -> bool:
    stat = path.stat()
    return stat.st_size != entry.size or (
        entry.mtime is not None and stat.st_mtime_ns != entry.mtime
    )


def _taker(source: str, mode: str) -> Callable[[Path], str]:
    return lambda target: snapshot.take(source, target, mode)  # type: ignore[arg-type]


def _check_mode(mode: str) -> None:
    if mode not in snapshot.MODES:
        raise ValueError(f"snapshot={mode!r} is not one of {', '.join(map(repr, snapshot.MODES))}")


def _artifact_dir(artifact_path: str | None) -> str | None:
    """A run-relative directory in posix form; None for the root."""
    if artifact_path is None or artifact_path in ("", "."):
        return None
    norm = posixpath.normpath(str(artifact_path).replace("\\", "/"))
    if norm.startswith("/") or norm == ".." or norm.startswith("../"):
        raise ValueError(f"artifact path {artifact_path!r} must be relative, inside the run")
    return None if norm == "." else norm


def _size(count: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:,.0f} {unit}" if unit == "B" else f"{count:,.1f} {unit}"
        count /= 1000  # type: ignore[assignment]
    return f"{count} B"


@contextlib.contextmanager
def _progress(stage: UploadStage) -> Iterator[Callable[[int], None]]:
    """A tqdm bar in bytes on a terminal (`done` is the bytes settled so far); else nothing."""
    with stage._lock:
        start = stage._counts.bytes_uploaded + stage._counts.bytes_failed
        total = stage._counts.bytes
    bar: Any = None
    if sys.stderr.isatty() and total > start:
        try:
            from tqdm import tqdm

            bar = tqdm(
                total=total - start,
                unit="B",
                unit_scale=True,
                desc="aidp-metrics: uploading artifacts",
                leave=False,
            )
        except ImportError:
            bar = None
    shown = 0

    def update(done: int) -> None:
        nonlocal shown
        if bar is not None and done - start > shown:
            bar.update(done - start - shown)
            shown = done - start

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()
