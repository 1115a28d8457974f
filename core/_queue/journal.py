"""The on-disk journal of one run: the run's records, checksummed, in stream order.

Layout under the spool directory (`AIDP_METRICS_DIR`, default `./aidp-metrics`):

    runs/<local id>/run.json     which run this is: local id, server run id once known,
                                 endpoint, experiment and name (never a credential)
    runs/<local id>/records.log  one record per line: "<crc32 hex> <json>\\n"
    runs/<local id>/acked        byte offset in records.log before which every record is settled
    runs/<local id>/uploads/     the run's artifact uploads: their own run.json, uploads.log
                                 and the snapshots (`aidp_metrics._uploads.ledger`)
    ids/<local id>               the server run id a local id became (kept after the journal)

A metric line is the metric's one JSON encoding (`metric.metric_json`, the same the wire
carries; journals of 0.2 wrote an array `[key, value, timestamp, step]`, still read); any
other record (create, attach, params, tags, status) is a JSON object `{"op": kind, ...}`.
Each line carries its own CRC-32, so a write torn by a power cut or `kill -9` is found on
read, reported and skipped, and every record before and after it is kept. Nothing is
rewritten in place except the two small files, which are replaced atomically.

Journals written by version 0.1 (`metrics.log`, params/tags/status in `run.json`) are read
as if their run.json fields were records, so `aidp-metrics sync` still delivers them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO

from aidp_metrics._env import AIDP_METRICS_DIR
from aidp_metrics._metric import Metric, MetricRecord, decode_value, metric_json

FORMAT_VERSION = 2
DEFAULT_DIR = "aidp-metrics"
RECORDS_FILE = "records.log"
V1_RECORDS_FILE = "metrics.log"
ACKED_FILE = "acked"
DESCRIPTOR_FILE = "run.json"

Op = tuple[str, dict[str, Any]]  # kind, payload (plain JSON data)
Record = Metric | Op  # told apart by length: a metric has four fields, an op two
OP_KINDS = frozenset({"create", "attach", "params", "tags", "status"})


def spool_root(directory: str | os.PathLike[str] | None = None) -> Path:
    """The spool directory: the argument, else `AIDP_METRICS_DIR`, else ./aidp-metrics."""
    chosen = directory or os.environ.get(AIDP_METRICS_DIR) or DEFAULT_DIR
    return Path(chosen).expanduser().absolute()


def new_local_id() -> str:
    return "local-" + uuid.uuid4().hex


@dataclass
class RunDescriptor:
    """What `sync` needs to know about the run besides its records."""

    local_id: str
    run_id: str | None = None
    endpoint: str | None = None
    experiment_name: str | None = None
    experiment_id: str | None = None
    run_name: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT_VERSION, **asdict(self)}

    def for_child(self, local_id: str, run_id: str | None) -> RunDescriptor:
        """The same run as a forked child that took it over logs it: its own journal."""
        return dataclasses.replace(self, local_id=local_id, run_id=run_id)

    def opened_as(self, run_id: str, experiment_id: str | None, run_name: str | None) -> None:
        """The server has the run now (as `run_id`)."""
        self.run_id = run_id
        self.experiment_id = experiment_id or self.experiment_id
        self.run_name = run_name or self.run_name

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunDescriptor:
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in names})


# -- lines ----------------------------------------------------------------------------------


def encode_metric(metric: MetricRecord) -> bytes:
    payload = metric_json(metric)
    return b"%08x %s\n" % (zlib.crc32(payload), payload)


def encode_op(op: Op) -> bytes:
    kind, body = op
    return encode_record({"op": kind, **body})


def encode_record(data: dict[str, Any]) -> bytes:
    """A JSON object as one checksummed line (the format of every journal line)."""
    payload = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
    return b"%08x %s\n" % (zlib.crc32(payload), payload)


def decode_record(line: bytes) -> Any:
    """The JSON of one line without its newline; raises ValueError when torn or corrupt."""
    crc_text, _, payload = line.partition(b" ")
    if len(crc_text) != 8 or int(crc_text, 16) != zlib.crc32(payload):
        raise ValueError("checksum mismatch")
    return json.loads(payload)


def decode_line(line: bytes) -> Record:
    """One journal line without its newline; raises ValueError when torn or corrupt."""
    data = decode_record(line)
    if isinstance(data, list):  # a 0.2 journal
        key, value, timestamp, step = data
        return Metric(str(key), decode_value(value), int(timestamp), int(step))
    if isinstance(data, dict) and "op" not in data:
        try:
            return Metric.from_json(data)
        except KeyError as exc:
            raise ValueError(f"a metric without {exc}") from None
    if isinstance(data, dict) and data.get("op") in OP_KINDS:
        body = dict(data)
        kind = str(body.pop("op"))
        return kind, body
    raise ValueError("not a record")


@dataclass(frozen=True)
class Line:
    """A line read back: `record` is None for a torn or corrupt line (`problem` says which)."""

    start: int
    end: int
    record: Record | None
    problem: str | None = None


# -- one journal ----------------------------------------------------------------------------


class Journal:
    """A run's journal directory. Appends are buffered; `commit()` makes them durable.

    Not thread-safe: the spool writer is its only user in a training process (and `sync`
    outside one).
    """

    def __init__(
        self,
        directory: Path,
        descriptor: RunDescriptor,
        *,
        legacy_fields: dict[str, Any] | None = None,
    ) -> None:
        self.directory = directory
        self.descriptor = descriptor
        # A 0.1 journal: its run.json also held tags, params and status, read as records.
        self.legacy_fields = legacy_fields
        legacy = legacy_fields is not None
        self.records_path = directory / (V1_RECORDS_FILE if legacy else RECORDS_FILE)
        self._file: BinaryIO | None = None
        self.written = self._size()
        self.committed = self.written
        self.acked = self._read_acked()
        self._saved_acked = self.acked

    @classmethod
    def create(cls, root: Path, descriptor: RunDescriptor) -> Journal:
        """Open the journal of `descriptor` under `root`, creating it (or appending to it)."""
        directory = root / "runs" / descriptor.local_id
        directory.mkdir(parents=True, exist_ok=True)
        journal = cls(directory, descriptor)
        journal.save_descriptor()
        return journal

    @classmethod
    def open(cls, directory: Path) -> Journal:
        """An existing journal, as `sync` finds it."""
        data = read_descriptor(directory)
        legacy = data if int(data.get("format", 1)) < 2 else None
        return cls(directory, RunDescriptor.from_json(data), legacy_fields=legacy)

    # -- writing ------------------------------------------------------------------------

    def append(self, data: bytes) -> int:
        """Append encoded lines; returns the offset at which they start."""
        if self._file is None:
            self._file = open(self.records_path, "ab")  # noqa: SIM115 - kept open on purpose
        start = self.written
        self._file.write(data)
        self._file.flush()  # readers (the delivery loop) open the file on their own
        self.written += len(data)
        return start

    def commit(self) -> None:
        """Flush and fsync what was appended (the group commit)."""
        if self._file is not None and self.committed < self.written:
            self._file.flush()
            os.fsync(self._file.fileno())
        self.committed = self.written

    def save_acked(self, offset: int) -> None:
        """Record that every record before `offset` is settled. Not fsynced: a lagging
        offset only makes `sync` resend points the server then keeps once."""
        self.acked = max(self.acked, offset)
        if self.acked != self._saved_acked:
            _atomic_write(self.directory / ACKED_FILE, str(self.acked), durable=False)
            self._saved_acked = self.acked

    def save_descriptor(self) -> None:
        write_descriptor(self.directory, self.descriptor)

    def close(self) -> None:
        if self._file is not None:
            self.commit()
            self._file.close()
            self._file = None

    def remove(self) -> None:
        self.close()
        for name in (RECORDS_FILE, V1_RECORDS_FILE, ACKED_FILE, DESCRIPTOR_FILE):
            (self.directory / name).unlink(missing_ok=True)
        for leftover in self.directory.glob("*.tmp"):
            leftover.unlink(missing_ok=True)
        try:
            self.directory.rmdir()
        except OSError:
            pass

    # -- reading ------------------------------------------------------------------------

    def lines(self, start: int, end: int | None = None) -> Iterator[Line]:
        """Every line from byte offset `start` (to `end`), torn and corrupt ones included."""
        stop = self.written if end is None else min(end, self.written)
        try:
            handle = open(self.records_path, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            return
        with handle:
            handle.seek(start)
            offset = start
            while offset < stop:
                raw = handle.readline()
                if not raw:
                    return
                line_end = offset + len(raw)
                if not raw.endswith(b"\n"):
                    yield Line(offset, line_end, None, f"torn record of {len(raw)} bytes")
                    return
                try:
                    yield Line(offset, line_end, decode_line(raw[:-1]))
                except (ValueError, TypeError, UnicodeDecodeError):
                    yield Line(offset, line_end, None, f"corrupt record of {len(raw)} bytes")
                offset = line_end

    def _size(self) -> int:
        try:
            return self.records_path.stat().st_size
        except FileNotFoundError:
            return 0

    def _read_acked(self) -> int:
        try:
            return int((self.directory / ACKED_FILE).read_text().strip() or 0)
        except (OSError, ValueError):
            return 0


def read_metrics(directory: str | os.PathLike[str], offset: int, count: int) -> list[MetricRecord]:
    """Up to `count` metrics from byte `offset` of a journal (ops skipped), stopping at a
    damaged line: the delivery loop reading back what it moved out of memory."""
    metrics: list[MetricRecord] = []
    with open(Path(directory) / RECORDS_FILE, "rb") as handle:
        handle.seek(offset)
        while len(metrics) < count:
            raw = handle.readline()
            if not raw.endswith(b"\n"):
                break
            try:
                record = decode_line(raw[:-1])
            except (ValueError, TypeError, UnicodeDecodeError):
                break
            if isinstance(record, Metric):
                metrics.append(record)
    return metrics


def write_descriptor(directory: Path, descriptor: RunDescriptor) -> None:
    """`run.json`, replaced atomically (and durably)."""
    _atomic_write(directory / DESCRIPTOR_FILE, json.dumps(descriptor.to_json(), indent=1))


def read_descriptor(directory: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((directory / DESCRIPTOR_FILE).read_text(encoding="utf-8"))
    return data


def find_journals(root: Path) -> list[Path]:
    runs = root / "runs"
    if not runs.is_dir():
        return []
    return sorted(p for p in runs.iterdir() if (p / DESCRIPTOR_FILE).is_file())


def save_run_id(root: Path, local_id: str, run_id: str) -> None:
    """Remember what a local id became, for checkpoints that saved the local id."""
    ids = root / "ids"
    ids.mkdir(parents=True, exist_ok=True)
    _atomic_write(ids / local_id, run_id, durable=False)


def run_id_for(local_id: str, root: Path | None = None) -> str | None:
    """The server run id that `local_id` became, if this spool directory knows it."""
    base = root or spool_root()
    try:
        return (base / "ids" / local_id).read_text(encoding="utf-8").strip() or None
    except OSError:
        pass
    try:
        data = json.loads((base / "runs" / local_id / DESCRIPTOR_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return None
    run_id = data.get("run_id") if isinstance(data, dict) else None
    return str(run_id) if run_id else None


def _atomic_write(path: Path, text: str, *, durable: bool = True) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        if durable:
            handle.flush()
            os.fsync(handle.fileno())
    os.replace(tmp, path)


__all__ = [
    "DEFAULT_DIR",
    "Journal",
    "Line",
    "Metric",
    "Op",
    "Record",
    "RunDescriptor",
    "decode_line",
    "decode_record",
    "encode_metric",
    "encode_op",
    "encode_record",
    "find_journals",
    "new_local_id",
    "read_descriptor",
    "read_metrics",
    "run_id_for",
    "save_run_id",
    "spool_root",
    "write_descriptor",
]
