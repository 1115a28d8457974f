"""Import TensorBoard event files as runs: one run per directory that holds event files.

A directory's run is named after its path relative to the log directory (the log
directory's own name for files directly in it) and is found again by a tag holding the
directory's identity (a digest of its absolute path). How far each file was read is kept
on the run as a tag per file (`aidp_metrics.tensorboard.read.<file>`: complete records and
their bytes), set after the points it covers: ops on a run are delivered after what was
logged before them, so an interrupted import resumes where the server's copy ends and
running it again imports nothing twice. A file whose size is what was recorded is not
read again.

`Importer.poll()` reads what is new once; `aidp-metrics tensorboard --follow` repeats it.
TensorBoard's reader loads on the first poll.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from aidp_metrics._metric import key_error
from aidp_metrics._notice import Notices

if TYPE_CHECKING:
    from aidp_metrics._bridges.tensorboard_events import EventFile
    from aidp_metrics._connection.client import TrackingClient
    from aidp_metrics._run.run import Run

SOURCE_TAG = "aidp_metrics.tensorboard.source"  # the directory's identity
DIRECTORY_TAG = "aidp_metrics.tensorboard.dir"  # its absolute path, for people
READ_TAG_PREFIX = "aidp_metrics.tensorboard.read."  # + file name: how far it was read
CHECKPOINT_RECORDS = 20_000  # within a large file, record the progress this often

__all__ = [
    "DIRECTORY_TAG",
    "READ_TAG_PREFIX",
    "SOURCE_TAG",
    "DirectoryImport",
    "Importer",
    "Mark",
    "identity",
    "read_tag",
]


class Progress(Protocol):
    """What a progress bar needs (tqdm's `update`)."""

    def update(self, n: int) -> Any: ...


@dataclass(frozen=True)
class Mark:
    """How far a file was read: `records` complete records, ending at byte `offset`."""

    records: int = 0
    offset: int = 0

    def tag_value(self) -> str:
        return json.dumps({"records": self.records, "offset": self.offset})

    @classmethod
    def parse(cls, text: str) -> Mark | None:
        try:
            data = json.loads(text)
            records, offset = int(data["records"]), int(data["offset"])
        except (ValueError, TypeError, KeyError):
            return None
        return cls(records, offset) if records >= 0 and offset >= 0 else None


def identity(directory: Path) -> str:
    """The tag value a directory's run is found by: a digest of its absolute path."""
    return hashlib.sha1(str(directory.resolve()).encode("utf-8")).hexdigest()


def read_tag(file_name: str) -> str:
    """The tag that holds how far `file_name` was read (a digest where the name itself
    would not make a valid tag key)."""
    key = READ_TAG_PREFIX + file_name
    if key_error(key) is None:
        return key
    return READ_TAG_PREFIX + hashlib.sha1(file_name.encode("utf-8")).hexdigest()


class DirectoryImport:
    """One directory of event files and its run: reads what is new, logs it, records how
    far. The run is opened (created, or attached when found) at the first new scalar."""

    def __init__(
        self,
        directory: Path,
        name: str,
        importer: Importer,
        *,
        run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        self.directory = directory
        self.name = name
        self.run_id = run_id
        self.points = 0  # metric points logged by this import
        self._importer = importer
        self._tags = dict(tags or {})
        self._marks: dict[str, Mark] = {}
        self._files: dict[str, EventFile] = {}
        self._run: Run | None = None
        self._status: str | None = None

    @property
    def opened(self) -> bool:
        return self._run is not None

    def mark(self, file_name: str) -> Mark:
        mark = self._marks.get(file_name)
        if mark is None:
            recorded = self._tags.get(read_tag(file_name))
            mark = (Mark.parse(recorded) if recorded is not None else None) or Mark()
            self._marks[file_name] = mark
        return mark

    def unread_bytes(self, paths: Iterable[Path]) -> int:
        return sum(max(0, _size(path) - self.mark(path.name).offset) for path in paths)

    def read(self, paths: Iterable[Path], progress: Progress | None, stop: threading.Event) -> None:
        """Read every file in `paths` on from its mark; log and record what is new."""
        for path in paths:
            if stop.is_set():
                return
            self._read_file(path, progress, stop)

    def end(self, status: str) -> None:
        run = self._run
        if run is not None and self._status != status:
            self._status = status
            run.end(status)

    def _read_file(self, path: Path, progress: Progress | None, stop: threading.Event) -> None:
        name = path.name
        mark = self.mark(name)
        size = _size(path)
        events = self._files.get(name)
        if events is None:
            if size <= mark.offset:
                return  # nothing since the mark (or the file shrank: nothing to add)
            events = self._files[name] = self._importer.open(path, self.name)
        shown, end = mark.offset, max(size, mark.offset)  # the bytes this read covers
        for point in events.points(skip_records=mark.records):
            self._log(point.values, point.step, point.timestamp)
            if progress is not None and min(events.offset, end) > shown:
                progress.update(min(events.offset, end) - shown)
                shown = min(events.offset, end)
            if events.records - self.mark(name).records >= CHECKPOINT_RECORDS:
                self._record(name, events)
            if stop.is_set():
                break
        if progress is not None and end > shown and not stop.is_set():
            progress.update(end - shown)  # what follows the last scalar (or a torn record)
        if self._run is not None:
            self._record(name, events)

    def _log(self, values: dict[str, float], step: int, timestamp: int) -> None:
        run = self._run
        if run is None:
            run = self._run = self._importer.open_run(self)
            self.run_id = run.run_id
        keys = self._importer.keys
        run.log_metrics(
            {keys(tag): value for tag, value in values.items()}, step=step, timestamp=timestamp
        )
        self.points += len(values)

    def _record(self, name: str, events: EventFile) -> None:
        mark = Mark(events.records, events.offset)
        if self._run is not None and mark.records > self.mark(name).records:
            self._marks[name] = mark
            self._run.set_tags({read_tag(name): mark.tag_value()})


class Importer:
    """Every directory with event files under `logdir`, each into its run in
    `experiment_name`, through `client` (shared by the runs, closed by its owner)."""

    def __init__(
        self,
        client: TrackingClient,
        logdir: Path,
        experiment_name: str,
        *,
        notices: Notices | None = None,
    ) -> None:
        # TensorBoard's reader; ImportError when missing
        from aidp_metrics._bridges import tensorboard_events

        self._events = tensorboard_events
        self.client = client
        self.logdir = logdir.resolve()
        self.experiment_name = experiment_name
        self.notices = notices or Notices()
        self.directories: dict[Path, DirectoryImport] = {}
        self._keys: dict[str, str] = {}
        self._experiment_id: str | None = None

    def scan(self) -> dict[DirectoryImport, list[Path]]:
        """The event files under `logdir` by directory, finding the run of a directory
        seen for the first time."""
        by_directory: dict[Path, list[Path]] = {}
        for path in self._events.event_files(self.logdir):
            by_directory.setdefault(path.parent, []).append(path)
        found: dict[DirectoryImport, list[Path]] = {}
        for directory, paths in by_directory.items():
            entry = self.directories.get(directory)
            if entry is None:
                entry = self.directories[directory] = self._find(directory)
            found[entry] = paths
        return found

    def poll(self, progress: Progress | None = None, stop: threading.Event | None = None) -> bool:
        """Read what is new in every file once; False when `stop` cut it short."""
        stop = stop or threading.Event()
        for entry, paths in self.scan().items():
            entry.read(paths, progress, stop)
            if stop.is_set():
                return False
        return True

    def unread_bytes(self) -> int:
        return sum(entry.unread_bytes(paths) for entry, paths in self.scan().items())

    def end(self, status: str = "FINISHED") -> None:
        """End every run this import opened (each flushes first)."""
        for entry in self.directories.values():
            entry.end(status)

    # -- for DirectoryImport ----------------------------------------------------------------

    def open(self, path: Path, where: str) -> EventFile:
        return self._events.EventFile(path, self.notices, where)

    def open_run(self, entry: DirectoryImport) -> Run:
        from aidp_metrics._run.run import Run

        if entry.run_id is not None:
            return Run.attach(
                entry.run_id,
                client=self.client,
                experiment_name=self.experiment_name,
                policy="block",
            )
        return Run.start(
            client=self.client,
            experiment_name=self.experiment_name,
            run_name=entry.name,
            tags={SOURCE_TAG: identity(entry.directory), DIRECTORY_TAG: str(entry.directory)},
            policy="block",  # a large import waits for room rather than drop a point
        )

    def keys(self, tag: str) -> str:
        """The metric key of a TensorBoard tag (sanitized, said once when it changes)."""
        key = self._keys.get(tag)
        if key is None:
            from aidp_metrics._metric import sanitize_key

            key = self._keys[tag] = sanitize_key(tag)
            if key != tag:
                self.notices.once(
                    f"tensorboard-key:{tag}",
                    f"aidp-metrics: TensorBoard tag {tag!r} is logged as {key!r} "
                    "(characters the server rejects replaced)",
                )
        return key

    def _find(self, directory: Path) -> DirectoryImport:
        relative = directory.relative_to(self.logdir).as_posix()
        name = (self.logdir.name or str(self.logdir)) if relative == "." else relative
        run = self._existing_run(directory)
        if run is None:
            return DirectoryImport(directory, name, self)
        tags = {str(t["key"]): str(t["value"]) for t in run.get("data", {}).get("tags", [])}
        return DirectoryImport(directory, name, self, run_id=str(run["info"]["run_id"]), tags=tags)

    def _existing_run(self, directory: Path) -> dict[str, Any] | None:
        """The newest active run of the experiment tagged with the directory's identity."""
        if self._experiment_id is None:
            found = self.client.get_experiment_by_name(self.experiment_name)
            if found is None:
                return None
            self._experiment_id = str(found["experiment_id"])
        wanted = f"tags.`{SOURCE_TAG}` = '{identity(directory)}'"
        runs = self.client.search_runs([self._experiment_id], wanted, max_results=1)
        return runs[0] if runs else None


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
