"""The spill to disk on its own: the journal lines, the spool task and the read-back.

No server and no writer thread: the test serves the spool task itself."""

from __future__ import annotations

import json
import math
import time
import warnings
import zlib
from pathlib import Path

import pytest

from aidp_metrics._durability.spool import SpoolTask
from aidp_metrics._errors import AIDPMetricsWarning
from aidp_metrics._metric import Metric, batch_body, metric_json
from aidp_metrics._queue.journal import (
    Journal,
    RunDescriptor,
    decode_line,
    encode_metric,
    encode_op,
    read_metrics,
)
from aidp_metrics._queue.options import DeliveryOptions
from aidp_metrics._queue.queue import Chunk, ReadBack, RunQueue, Wake
from aidp_metrics._queue.spill import Spill


def points(start: int, stop: int) -> list[Metric]:
    return [Metric("loss", i / 4, 1_700_000_000_000 + i, i) for i in range(start, stop)]


def spooled(tmp_path: Path, **options: object) -> tuple[RunQueue, SpoolTask]:
    settings = {"spool": "always", "flush_interval": 0.0, **options}
    queue = RunQueue(DeliveryOptions(**settings), local_id="local-abc", run_id="run-1")  # type: ignore[arg-type]
    descriptor = RunDescriptor(local_id="local-abc", run_id="run-1")
    return queue, SpoolTask(queue, tmp_path, descriptor)


def journal_records(queue: RunQueue) -> list[object]:
    directory = queue.journal_dir
    assert directory is not None
    journal = Journal.open(Path(directory))
    return [line.record for line in journal.lines(0)]


def test_a_metric_has_one_encoding_on_the_wire_and_on_disk() -> None:
    metric = Metric('a/"b"', math.nan, 5, -3)
    encoded = metric_json(metric)
    assert (
        json.loads(encoded)
        == metric.to_json()
        == {
            "key": 'a/"b"',
            "value": "NaN",
            "timestamp": 5,
            "step": -3,
        }
    )
    line = encode_metric(metric)
    crc, _, payload = line.rstrip(b"\n").partition(b" ")
    assert payload == encoded
    assert int(crc, 16) == zlib.crc32(payload)
    assert b'"metrics":[' + encoded + b"]" in batch_body("r", [metric])
    decoded = decode_line(line.rstrip(b"\n"))
    assert isinstance(decoded, Metric)
    assert decoded.key == 'a/"b"'
    assert math.isnan(decoded.value)


def test_journals_of_the_previous_format_are_still_read() -> None:
    payload = b'["loss",0.5,7,3]'
    line = b"%08x %s" % (zlib.crc32(payload), payload)
    assert decode_line(line) == Metric("loss", 0.5, 7, 3)
    op = encode_op(("tags", {"items": [["k", "v"]]}))
    assert decode_line(op.rstrip(b"\n")) == ("tags", {"items": [["k", "v"]]})
    with pytest.raises(ValueError, match="checksum"):
        decode_line(b"00000000 " + payload)  # wrong checksum


def test_the_spool_task_writes_every_record_in_queue_order(tmp_path: Path) -> None:
    queue, task = spooled(tmp_path)
    queue.append_op("params", {"items": [["lr", "0.1"]]})
    queue.append(points(0, 3))
    queue.append_op("tags", {"items": [["k", "v"]]})
    queue.append(points(3, 5))
    queue.commit_soon()  # a flush waits for the disk: fsync now, not at the next interval
    task.serve()
    assert journal_records(queue) == [
        ("params", {"items": [["lr", "0.1"]]}),
        *points(0, 3),
        ("tags", {"items": [["k", "v"]]}),
        *points(3, 5),
    ]
    assert queue.stats().spooled == 5
    assert queue.durable_or_settled(queue.mark())  # committed (fsynced) too


def test_memory_lets_go_of_what_is_on_disk_and_delivery_reads_it_back(tmp_path: Path) -> None:
    queue, task = spooled(tmp_path, max_queue=10)
    wake = queue.append(points(0, 30))
    assert wake & Wake.FULL
    assert wake & Wake.SPOOL
    task.serve()  # writes all 30, then memory keeps only max_queue of them
    assert queue.make_room() == 0  # nothing dropped
    work = queue.next_work(time.monotonic(), 1000)
    assert isinstance(work, ReadBack)
    assert (work.start, work.stop) == (0, 20)
    records = read_metrics(work.directory, work.offset, work.stop - work.start)
    assert records == points(0, 20)
    chunk = queue.read_back_done(work, records)
    assert isinstance(chunk, Chunk)
    assert chunk.records == points(0, 20)


def test_an_unreadable_journal_counts_its_points_lost(tmp_path: Path) -> None:
    queue, task = spooled(tmp_path, max_queue=5)
    queue.append(points(0, 12))
    task.serve()
    queue.make_room()
    work = queue.next_work(time.monotonic(), 1000)
    assert isinstance(work, ReadBack)
    assert queue.read_back_done(work, points(0, 3)) is not None  # the rest was torn
    stats = queue.stats()
    assert stats.failures == {"lost from the spool": work.stop - work.start - 3}


def test_the_acked_offset_follows_delivery(tmp_path: Path) -> None:
    queue, task = spooled(tmp_path)
    queue.append(points(0, 4))
    task.serve()
    work = queue.next_work(time.monotonic(), 2)
    assert isinstance(work, Chunk)
    work.set_outcome(work.pending(), "")
    queue.settle_chunk(work)
    task.serve()
    directory = queue.journal_dir
    assert directory is not None
    journal = Journal.open(Path(directory))
    left = [line.record for line in journal.lines(journal.acked)]
    assert left == points(2, 4)


def test_a_spool_that_cannot_be_written_says_so_once(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    queue, task = spooled(not_a_dir)
    queue.append(points(0, 2))
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        task.serve()
        task.serve()
    spool = [w for w in said if "cannot write the spool" in str(w.message)]
    assert len(spool) == 1  # once, however often the writer tries
    assert spool[0].category is AIDPMetricsWarning
    assert str(not_a_dir) in str(spool[0].message)
    assert not queue.can_spool()
    assert queue.durable_or_failed(queue.mark())


def test_the_spill_index_maps_metrics_to_offsets() -> None:
    index = Spill(allowed=True, wanted=True)
    index.add(0, [10, 20, 30], 0)
    index.add(3, [45], 30)  # contiguous: one segment
    index.add(10, [70, 80], 60)  # after a gap: a new segment
    first = index.segment_for(2)
    assert first is not None
    assert (first.start, first.stop) == (0, 4)
    assert first.offset_of(0) == 0
    assert first.offset_of(2) == 20
    assert index.segment_for(5) is None
    assert index.ack_offset(2, 80) == 20
    index.settled_below(4)
    assert index.segment_for(2) is None
    assert index.ack_offset(12, 80) == 80
