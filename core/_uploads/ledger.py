"""A run's upload journal: which files it logged, where their snapshots are, which are done.

    runs/<local id>/uploads/run.json      the run (as the metric journal's run.json)
    runs/<local id>/uploads/uploads.log   one checksummed line per event, in order:
        {"op": "artifact", "id": 3, "dir": "ckpt", "name": "last.ckpt", "size": 1234,
         "how": "link"}                   written on the caller's thread before its call returns
        {"op": "uploaded", "id": 3}       once the store has it
        {"op": "failed", "id": 3, "reason": "..."}   given up (never retried)
    runs/<local id>/uploads/files/3/last.ckpt     the snapshot, deleted once settled

Lines use the metric journal's format (`journal.encode_record`): a torn or corrupt line is
reported and skipped. Uploads are idempotent by artifact path (the same bytes to the same
place), so an upload whose `uploaded` line a crash cut off is simply done again by `sync`.
The journal is deleted once every entry is settled and the run is done with it.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from aidp_metrics._queue.journal import (
    RunDescriptor,
    decode_record,
    encode_record,
    read_descriptor,
    write_descriptor,
)

UPLOADS_DIR = "uploads"
LOG_FILE = "uploads.log"
FILES_DIR = "files"
PENDING, UPLOADED, FAILED = "pending", "uploaded", "failed"


@dataclass
class Entry:
    """One logged file: its place among the run's artifacts and its snapshot."""

    id: int
    directory: str | None  # the artifact directory (`artifact_path`), None for the root
    name: str
    size: int
    how: str  # reflink, copy, link, or "written" (log_text, log_dict, log_figure)
    mtime: int | None = None  # the snapshot's st_mtime_ns when logged
    state: str = PENDING
    reason: str | None = None

    @property
    def artifact_path(self) -> str:
        return posixpath.join(self.directory, self.name) if self.directory else self.name

    def record(self) -> dict[str, object]:
        return {
            "op": "artifact",
            "id": self.id,
            "dir": self.directory,
            "name": self.name,
            "size": self.size,
            "how": self.how,
            "mtime": self.mtime,
        }


class UploadLedger:
    """The upload journal of one run. Appends are serialised by a lock of its own (the
    caller's thread logs, the uploader settles)."""

    def __init__(self, directory: Path, descriptor: RunDescriptor) -> None:
        self.directory = directory
        self.descriptor = descriptor
        self.problems: list[str] = []  # torn or corrupt lines found when read back
        self._lock = threading.Lock()
        self._file: BinaryIO | None = None
        self._next_id = 0
        self._unsynced = False

    @classmethod
    def create(cls, root: Path, descriptor: RunDescriptor) -> UploadLedger:
        directory = upload_dir(root, descriptor.local_id)
        directory.mkdir(parents=True, exist_ok=True)
        ledger = cls(directory, descriptor)
        write_descriptor(directory, descriptor)
        return ledger

    @classmethod
    def open(cls, directory: Path) -> tuple[UploadLedger, list[Entry]]:
        """An existing journal (as `sync` finds it) and its entries in the order logged."""
        ledger = cls(directory, RunDescriptor.from_json(read_descriptor(directory)))
        entries = ledger.read()
        ledger._next_id = max((e.id for e in entries), default=-1) + 1
        return ledger, entries

    # -- writing ------------------------------------------------------------------------

    def new_entry(self, directory: str | None, name: str) -> tuple[int, Path]:
        """A fresh id and the (empty) folder its snapshot goes into."""
        with self._lock:
            number = self._next_id
            self._next_id += 1
        folder = self.directory / FILES_DIR / str(number)
        folder.mkdir(parents=True, exist_ok=True)
        return number, folder / name

    def snapshot_path(self, entry: Entry) -> Path:
        return self.directory / FILES_DIR / str(entry.id) / entry.name

    def record(self, entry: Entry) -> None:
        """The entry, on disk before the caller's `log_*` returns (flushed to the OS: a
        killed process keeps it; `commit` makes it survive a power cut too)."""
        self._append(encode_record(entry.record()))

    def settle(self, number: int, state: str, reason: str | None = None) -> None:
        """Mark entry `number` uploaded or failed, then let go of its snapshot."""
        line: dict[str, object] = {"op": state, "id": number}
        if reason:
            line["reason"] = reason
        self._append(encode_record(line))
        self.discard(number)

    def discard(self, number: int) -> None:
        """Delete the snapshot of entry `number` (settled, or never recorded)."""
        shutil.rmtree(self.directory / FILES_DIR / str(number), ignore_errors=True)

    def commit(self) -> None:
        """fsync what was appended (the uploader does it before each upload)."""
        with self._lock:
            if self._file is not None and self._unsynced:
                os.fsync(self._file.fileno())
            self._unsynced = False

    def save_run_id(self, run_id: str) -> None:
        self.descriptor.opened_as(run_id, None, None)
        write_descriptor(self.directory, self.descriptor)

    def _append(self, data: bytes) -> None:
        with self._lock:
            if self._file is None:
                self._file = open(self.directory / LOG_FILE, "ab")  # noqa: SIM115 - kept open
            self._file.write(data)
            self._file.flush()
            self._unsynced = True

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def remove(self) -> None:
        """Delete the journal (every entry settled), and the run's folder if it is empty."""
        self.close()
        shutil.rmtree(self.directory, ignore_errors=True)
        try:
            self.directory.parent.rmdir()  # the metric journal may still be there
        except OSError:
            pass

    # -- reading ------------------------------------------------------------------------

    def read(self) -> list[Entry]:
        """Every entry with its last known state."""
        entries: dict[int, Entry] = {}
        try:
            handle = open(self.directory / LOG_FILE, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            return []
        with handle:
            offset = 0
            for raw in handle:
                start, offset = offset, offset + len(raw)
                try:
                    data = decode_record(raw.removesuffix(b"\n"))
                    op, number = data["op"], int(data["id"])
                    if op == "artifact":
                        entries[number] = Entry(
                            number,
                            data["dir"],
                            str(data["name"]),
                            int(data["size"]),
                            str(data["how"]),
                            data.get("mtime"),
                        )
                    elif op in (UPLOADED, FAILED) and number in entries:
                        entries[number].state, entries[number].reason = op, data.get("reason")
                except (ValueError, KeyError, TypeError):  # torn (a crash mid-write) or corrupt
                    self.problems.append(f"skipped a damaged upload record at offset {start}")
        return list(entries.values())


def upload_dir(root: Path, local_id: str) -> Path:
    return root / "runs" / local_id / UPLOADS_DIR


def find_upload_journals(root: Path) -> list[Path]:
    runs = root / "runs"
    if not runs.is_dir():
        return []
    return sorted(
        path / UPLOADS_DIR for path in runs.iterdir() if (path / UPLOADS_DIR / "run.json").is_file()
    )
