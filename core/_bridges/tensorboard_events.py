"""Read TensorBoard event files: scalars with their step and wall time, nothing else.

Files are read with TensorBoard's own loader, `LegacyEventFileLoader`: `EventFileLoader`
without its compat layers, which would rebuild every classic `simple_value` as a scalar
tensor (`make_tensor_proto`, three quarters of the reading cost, on a thread that shares the
GIL with training). Both forms are read here: `simple_value` (classic `add_scalar`,
tensorboardX, TF1) and the scalar tensor of `add_scalar(..., new_style=True)`, TF2 and
Keras summaries. TensorFlow is not needed. Imports `tensorboard`: load this module only
where event files are read.

A record that is not complete (a writer mid-write, or one killed mid-write) ends a read
without being counted; the next read of the same `EventFile` starts at it again, so a
file still being written is read in full once it is complete, and a torn last record
costs nothing that came before it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from tensorboard.backend.event_processing.event_file_loader import (
    LegacyEventFileLoader,
    RawEventFileLoader,
)
from tensorboard.backend.event_processing.io_wrapper import IsTensorFlowEventsFile
from tensorboard.compat.proto import summary_pb2, types_pb2
from tensorboard.util import tensor_util

from aidp_metrics._notice import Notices

RECORD_FRAMING = 16  # bytes around each record: length (8), its CRC (4), the data's CRC (4)
SCALARS_PLUGIN = "scalars"
_SCALAR = "scalar"
# Summary.Value fields of the classic non-scalar summaries, by the plugin that shows them.
_CLASSIC_KINDS = {
    "image": "images",
    "histo": "histograms",
    "obsolete_old_style_histogram": "histograms",
    "audio": "audio",
}
_NUMBER_KINDS = frozenset("fiub")  # numpy dtype kinds that convert to a float

__all__ = ["EventFile", "Point", "event_files", "wall_time_ms"]


class Point(NamedTuple):
    """The scalars of one event: `{tag: value}` at `step`, stamped `timestamp` (ms)."""

    step: int
    timestamp: int
    values: dict[str, float]


def event_files(root: Path) -> list[Path]:
    """Every event file under `root` (itself included), directory by directory; within a
    directory by name, which for TensorBoard's writers is the order they were created."""
    found: list[Path] = []
    for directory, subdirectories, names in os.walk(root):
        subdirectories.sort()
        found.extend(Path(directory, name) for name in sorted(names) if _is_event_file(name))
    return found


def _is_event_file(name: str) -> bool:
    return bool(IsTensorFlowEventsFile(name))


def wall_time_ms(wall_time: float) -> int:
    """An event's wall time (seconds, a double) as whole milliseconds since the epoch."""
    return max(0, int(wall_time * 1000))


class _CountedRecords(RawEventFileLoader):  # type: ignore[misc]
    """The raw loader, counting the records it hands on and their bytes in the file."""

    records = 0
    offset = 0  # where the next record starts

    def Load(self) -> Iterator[bytes]:  # TensorBoard's name
        for record in super().Load():
            self.records += 1
            self.offset += len(record) + RECORD_FRAMING
            yield record


class _Loader(LegacyEventFileLoader, _CountedRecords):  # type: ignore[misc]
    """`LegacyEventFileLoader`, unchanged, over `_CountedRecords`: its `Load()` reads through
    `_CountedRecords.Load()` (method resolution order), so the counts say how far the
    events yielded so far reach in the file."""


class EventFile:
    """One event file, read on from where the last `points()` stopped.

    `records` and `offset` (bytes) say how far it has been read: complete records only. Tags of
    non-scalar summaries (images, histograms, text, ...) are skipped with one notice each
    through `notices`; `where` names the file's directory in that notice.
    """

    def __init__(self, path: Path, notices: Notices, where: str) -> None:
        self.path = path
        self._notices = notices
        self._where = where
        self._loader: Any = _Loader(str(path))  # yields Event protos, counting records
        # A tag's kind comes from its first value: TF2 writers put the metadata there only.
        self._kinds: dict[str, str] = {}

    @property
    def records(self) -> int:
        return int(self._loader.records)

    @property
    def offset(self) -> int:
        return int(self._loader.offset)

    def points(self, skip_records: int = 0) -> Iterator[Point]:
        """The scalars of every complete record not read yet, one `Point` per event that
        has any. The first `skip_records` records of the file are read but not yielded
        (already imported); a record counts once it is yielded, so stopping early (or a
        torn record) leaves `records` exactly at what was handed on."""
        loader = self._loader
        for event in loader.Load():
            if event.WhichOneof("what") != "summary":
                continue
            values: dict[str, float] = {}
            for value in event.summary.value:
                number = self._scalar(value)
                if number is not None:
                    values[value.tag] = number
            if values and loader.records > skip_records:
                yield Point(int(event.step), wall_time_ms(event.wall_time), values)

    def _scalar(self, value: Any) -> float | None:
        tag: str = value.tag
        kind = self._kinds.get(tag)
        if kind is None:
            kind = self._kinds[tag] = _kind(value)
            if kind != _SCALAR:
                self._notices.once(
                    f"tensorboard-skip:{self._where}:{tag}",
                    f"aidp-metrics: TensorBoard tag {tag!r} in {self._where} holds {kind} "
                    "summaries; only scalars are logged, so it is skipped",
                )
        if kind != _SCALAR:
            return None
        field = value.WhichOneof("value")
        if field == "simple_value":
            return float(value.simple_value)
        number = _number(value.tensor) if field == "tensor" else None
        if number is None:
            self._notices.once(
                f"tensorboard-not-a-number:{self._where}:{tag}",
                f"aidp-metrics: a value of TensorBoard scalar {tag!r} in {self._where} is "
                "not one number; such values are skipped",
            )
        return number


def _kind(value: Any) -> str:
    """`_SCALAR` for a scalar summary, else what it is (its plugin's name). TF2 writers put
    the metadata on a tag's first value only: this is asked once per tag."""
    field = value.WhichOneof("value")
    if field == "simple_value":
        return _SCALAR
    if field in _CLASSIC_KINDS:
        return _CLASSIC_KINDS[field]
    metadata = value.metadata
    plugin: str = metadata.plugin_data.plugin_name
    if plugin == SCALARS_PLUGIN or metadata.data_class == summary_pb2.DATA_CLASS_SCALAR:
        return _SCALAR
    if plugin:
        return plugin
    # No plugin named (a raw `tf.summary.write`): a single number is a scalar.
    if field == "tensor" and _number(value.tensor) is not None:
        return _SCALAR
    return "non-scalar"


def _number(tensor: Any) -> float | None:
    # The common cases (every writer's float32 / float64 scalars) without numpy.
    if tensor.dtype == types_pb2.DT_FLOAT and len(tensor.float_val) == 1:
        return float(tensor.float_val[0])
    if tensor.dtype == types_pb2.DT_DOUBLE and len(tensor.double_val) == 1:
        return float(tensor.double_val[0])
    try:
        array = tensor_util.make_ndarray(tensor)
    except Exception:  # a dtype numpy cannot hold (strings, variants, ...)
        return None
    if array.size != 1 or array.dtype.kind not in _NUMBER_KINDS:
        return None
    return float(array.reshape(()).item())
