"""The on-disk spool: one append-only journal per run, replayed by the sender or by `sync`.

Layout under the spool directory (`AIDP_METRICS_DIR`, default `./aidp-metrics`):

    runs/<local id>/run.json     what `sync` needs to recreate the run (never credentials)
    runs/<local id>/metrics.log  one metric per line: "<crc32 hex> <json>\\n"
    runs/<local id>/acked        byte offset in metrics.log up to which the server has the points

Each line carries its own CRC-32, so a write torn by a power cut or `kill -9` is found on
read, reported and skipped, and every record before and after it is kept. Nothing is ever
rewritten in place except the two small files, which are replaced atomically.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from .metric import decode_value, encode_value

FORMAT_VERSION = 1
DEFAULT_DIR = "aidp-metrics"
Record = tuple[str, float, int, int]  # key, value, timestamp (ms), step


def spool_root(directory: str | os.PathLike[str] | None = None) -> Path:
    """The spool directory: the argument, else `AIDP_METRICS_DIR`, else ./aidp-metrics."""
    chosen = directory or os.environ.get("AIDP_METRICS_DIR") or DEFAULT_DIR
    return Path(chosen).expanduser().absolute()


def new_local_id() -> str:
    return "local-" + uuid.uuid4().hex


@dataclass
class RunRecord:
    """The run as the journal knows it; `run_id` is None until the server has created it."""

    local_id: str
    run_id: str | None = None
    endpoint: str | None = None
    experiment_name: str | None = None
    experiment_id: str | None = None
    run_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    status: str = "RUNNING"
    start_time: int | None = None
    end_time: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT_VERSION, **self.__dict__}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True)
class ReadResult:
    records: list[Record]
    end: int  # byte offset just past the last line read
    skipped: list[str]  # one description per torn or corrupt line


def encode_line(record: Record) -> bytes:
    key, value, timestamp, step = record
    payload = json.dumps(
        [key, encode_value(value), timestamp, step], separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")
    return b"%08x %s\n" % (zlib.crc32(payload), payload)


def decode_line(line: bytes) -> Record:
    """One journal line (without its newline); raises ValueError when torn or corrupt."""
    crc_text, _, payload = line.partition(b" ")
    if len(crc_text) != 8 or int(crc_text, 16) != zlib.crc32(payload):
        raise ValueError("checksum mismatch")
    key, value, timestamp, step = json.loads(payload)
    return str(key), decode_value(value), int(timestamp), int(step)


class Journal:
    """One run's journal. Appends are buffered; `commit()` makes them durable (fsync)."""

    def __init__(self, directory: Path, record: RunRecord) -> None:
        self.directory = directory
        self.record = record
        self.metrics_path = directory / "metrics.log"
        self.acked_path = directory / "acked"
        self._lock = threading.Lock()
        self._file: BinaryIO | None = None  # opened on first append
        self._written = 0  # bytes appended (committed or not)
        self._committed = 0  # bytes known to be on disk
        self._acked = 0
        self.last_commit = time.monotonic()

    @classmethod
    def create(cls, root: Path, record: RunRecord) -> Journal:
        directory = root / "runs" / record.local_id
        directory.mkdir(parents=True, exist_ok=True)
        journal = cls(directory, record)
        journal.save_record()
        return journal

    @classmethod
    def open(cls, directory: Path) -> Journal:
        data = json.loads((directory / "run.json").read_text())
        journal = cls(directory, RunRecord.from_json(data))
        size = journal.metrics_path.stat().st_size if journal.metrics_path.exists() else 0
        journal._written = journal._committed = size
        journal._acked = journal.read_acked()
        return journal

    # -- the run's description ----------------------------------------------------------

    def save_record(self) -> None:
        _atomic_write(self.directory / "run.json", json.dumps(self.record.to_json(), indent=1))

    # -- metrics --------------------------------------------------------------------------

    def append(self, records: Sequence[Record]) -> None:
        if not records:
            return
        data = b"".join(encode_line(r) for r in records)
        with self._lock:
            if self._file is None:
                self._file = open(self.metrics_path, "ab")  # noqa: SIM115 - kept open on purpose
                self._written = self._file.tell()
            self._file.write(data)
            self._written += len(data)

    def commit(self) -> None:
        """Flush and fsync what was appended (the group commit)."""
        with self._lock:
            if self._file is not None and self._committed < self._written:
                self._file.flush()
                os.fsync(self._file.fileno())
                self._committed = self._written
            self.last_commit = time.monotonic()

    @property
    def committed(self) -> int:
        return self._committed

    @property
    def acked(self) -> int:
        return self._acked

    def unsent_bytes(self) -> int:
        return self._written - self._acked

    def read(self, start: int, limit: int, *, upto: int | None = None) -> ReadResult:
        """Up to `limit` records from byte offset `start` (never past `upto`)."""
        with self._lock:
            if self._file is not None:
                self._file.flush()
            written = self._written
        end_limit = written if upto is None else min(upto, written)
        records: list[Record] = []
        skipped: list[str] = []
        offset = start
        if not self.metrics_path.exists():
            return ReadResult(records, offset, skipped)
        with open(self.metrics_path, "rb") as handle:
            handle.seek(start)
            while len(records) < limit and offset < end_limit:
                line = handle.readline()
                if not line:
                    break
                if not line.endswith(b"\n"):
                    skipped.append(f"torn record of {len(line)} bytes at offset {offset}")
                    offset += len(line)
                    break
                try:
                    records.append(decode_line(line[:-1]))
                except (ValueError, TypeError, UnicodeDecodeError):
                    skipped.append(f"corrupt record of {len(line)} bytes at offset {offset}")
                offset += len(line)
        return ReadResult(records, offset, skipped)

    def iter_unacked(self, batch: int = 1000) -> Iterator[ReadResult]:
        offset = self._acked
        while True:
            result = self.read(offset, batch)
            if result.end == offset:
                return
            yield result
            offset = result.end

    def ack(self, offset: int) -> None:
        self._acked = max(self._acked, offset)
        _atomic_write(self.acked_path, str(self._acked))

    def read_acked(self) -> int:
        try:
            return int(self.acked_path.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def close(self) -> None:
        self.commit()
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def remove(self) -> None:
        for path in (self.metrics_path, self.acked_path, self.directory / "run.json"):
            path.unlink(missing_ok=True)
        try:
            self.directory.rmdir()
        except OSError:
            pass


def find_journals(root: Path) -> list[Path]:
    runs = root / "runs"
    if not runs.is_dir():
        return []
    return sorted(p for p in runs.iterdir() if (p / "run.json").is_file())


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
