"""The run queue on its own: what each party gets, what it is told to do, what is counted.

No server, no thread: the test plays the training thread, the delivery loop and the end."""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable

from aidp_metrics._metric import Metric
from aidp_metrics._queue.options import DeliveryOptions
from aidp_metrics._queue.queue import (
    DELIVERED,
    SKIPPED,
    Chunk,
    EndStep,
    QueuedOp,
    QueueState,
    RunQueue,
    Wake,
)


def points(start: int, stop: int, key: str = "loss") -> list[Metric]:
    return [Metric(key, float(i), 1_700_000_000_000 + i, i) for i in range(start, stop)]


def queue(**options: object) -> RunQueue:
    settings = {"flush_interval": 0.0, "spool": "off", **options}
    return RunQueue(DeliveryOptions(**settings), local_id="local-test", run_id="run-1")  # type: ignore[arg-type]


def deliver(q: RunQueue, outcome: str = DELIVERED) -> Chunk:
    work = q.next_work(time.monotonic(), 1000)
    assert isinstance(work, Chunk)
    work.set_outcome(work.pending(), outcome)
    q.settle_chunk(work)
    return work


def test_append_says_when_to_wake_the_sender() -> None:
    q = queue()
    assert q.append(points(0, 1)) == Wake.SENDER  # the first point: the sender may sleep
    assert q.append(points(1, 2)) == Wake.NONE  # it knows already
    assert q.append(points(2, 1000)) == Wake.SENDER  # a full batch is ready
    assert q.append(points(1000, 1001)) == Wake.NONE


def test_chunks_come_in_order_and_every_point_is_counted_once() -> None:
    q = queue()
    q.append(points(0, 2500))
    sent = [deliver(q) for _ in range(3)]
    assert [(c.start, c.end) for c in sent] == [(0, 1000), (1000, 2000), (2000, 2500)]
    assert [m.step for c in sent for m in c.records] == list(range(2500))
    stats = q.stats()
    assert (stats.logged, stats.delivered, stats.pending) == (2500, 2500, 0)
    assert q.next_work(time.monotonic(), 1000) == math.inf  # nothing left: sleep until woken


def test_an_op_goes_after_the_metrics_logged_before_it() -> None:
    q = queue()
    q.append(points(0, 3))
    q.append_op("tags", {"items": [["a", "b"]]})
    q.append(points(3, 5))
    first = q.next_work(time.monotonic(), 1000)
    assert isinstance(first, Chunk)
    assert (first.start, first.end) == (0, 3)  # stops at the op
    first.set_outcome(first.pending(), DELIVERED)
    q.settle_chunk(first)
    op = q.next_work(time.monotonic(), 1000)
    assert isinstance(op, QueuedOp)
    assert op.op == ("tags", {"items": [["a", "b"]]})
    q.settle_op(op)
    rest = deliver(q)
    assert (rest.start, rest.end) == (3, 5)
    assert q.all_settled()


def test_nothing_is_sent_before_the_run_exists() -> None:
    q = RunQueue(DeliveryOptions(flush_interval=0.0, spool="off"), local_id="local-x")
    q.append_op("create", {"experiment_name": "e"})
    q.append(points(0, 2))
    create = q.next_work(time.monotonic(), 1000)
    assert isinstance(create, QueuedOp)
    q.settle_op(create)  # settled without a run id (given up): metrics still wait
    assert q.next_work(time.monotonic(), 1000) == math.inf
    q.resolved("run-9")
    assert q.run_id == "run-9"
    assert isinstance(q.next_work(time.monotonic(), 1000), Chunk)


def test_points_wait_for_the_flush_interval_unless_rushed() -> None:
    q = RunQueue(DeliveryOptions(flush_interval=60.0, spool="off"), local_id="l", run_id="r")
    q.append(points(0, 10))
    wait = q.next_work(time.monotonic(), 1000)
    assert isinstance(wait, float)
    assert 0 < wait <= 60.0
    q.rush(q.mark())  # flush() / end(): send it now
    rushed = q.next_work(time.monotonic(), 1000)
    assert isinstance(rushed, Chunk)
    assert (rushed.start, rushed.end) == (0, 10)


def test_outcomes_are_counted_by_kind_and_reason() -> None:
    q = queue()
    q.append(points(0, 4), rejected=1)
    work = q.next_work(time.monotonic(), 1000)
    assert isinstance(work, Chunk)
    work.set_outcome([0], DELIVERED)
    work.set_outcome([1], SKIPPED)
    work.set_outcome([2, 3], "not delivered: HTTP 503")
    q.settle_chunk(work)
    q.settle_chunk(work)  # a second settle of the same chunk counts nothing
    stats = q.stats()
    assert (stats.logged, stats.delivered, stats.skipped, stats.failed, stats.rejected) == (
        5,
        1,
        1,
        2,
        1,
    )
    assert stats.failures == {"not delivered: HTTP 503": 2}
    assert stats.pending == 0


def test_resumed_runs_skip_what_the_server_holds() -> None:
    q = queue()
    q.set_skips({"loss": 2})
    q.append(points(0, 5))
    work = q.next_work(time.monotonic(), 1000)
    assert isinstance(work, Chunk)
    assert work.skip_logged(*q.skips()) == 3  # steps 0, 1, 2
    assert work.pending() == [3, 4]


def test_a_lost_jobs_sync_skips_what_its_resumed_job_logged_again() -> None:
    q = queue()
    q.set_skips({}, {"loss": 3})  # the resumed job logged "loss" from step 3 on
    q.append(points(0, 5))
    work = q.next_work(time.monotonic(), 1000)
    assert isinstance(work, Chunk)
    assert work.skip_logged(*q.skips()) == 2  # steps 3, 4
    assert work.pending() == [0, 1, 2]


def test_a_full_queue_without_a_spool_drops_the_oldest_and_counts_them() -> None:
    q = queue(max_queue=10)
    wake = q.append(points(0, 25))
    assert wake & Wake.FULL
    assert not wake & Wake.SPOOL  # no spool to spill to
    assert q.make_room() == 15
    chunk = deliver(q)
    assert [m.step for m in chunk.records] == list(range(15, 25))
    stats = q.stats()
    assert (stats.logged, stats.dropped, stats.delivered, stats.pending) == (25, 15, 10, 0)


def test_a_full_queue_with_a_spool_asks_for_the_writer() -> None:
    q = queue(max_queue=10, spool="on_failure")
    wake = q.append(points(0, 11))
    assert wake & Wake.FULL
    assert wake & Wake.SPOOL
    assert q.journal.plan() == (True, "run-1")


def test_the_first_failure_starts_the_journal_once() -> None:
    q = queue(spool="on_failure")
    assert q.journal.plan()[0] is False
    assert q.spill_on_failure() == (True, True)
    assert q.spill_on_failure() == (True, False)
    assert queue(spool="off").spill_on_failure() == (False, False)


def test_end_closes_a_settled_queue_and_logging_reopens_it() -> None:
    q = queue()
    q.append(points(0, 3))
    assert q.begin_end({"status": "FINISHED"}, repeat=False)
    assert q.state is QueueState.CLOSING
    deliver(q)
    status = q.next_work(time.monotonic(), 1000)
    assert isinstance(status, QueuedOp)
    assert status.op[0] == "status"
    q.settle_op(status)
    assert q.end_step(q.mark(), out_of_time=False, reason="r") is EndStep.DONE
    assert q.state is QueueState.CLOSED
    assert q.finish_close()
    assert not q.begin_end({"status": "FINISHED"}, repeat=True)  # idempotent
    assert q.next_work(time.monotonic(), 1000) == math.inf  # closed: nothing is delivered

    wake = q.append(points(3, 4))
    assert wake & Wake.REOPENED
    assert wake & Wake.SENDER
    assert q.state is QueueState.OPEN
    running = q.next_work(time.monotonic(), 1000)  # RUNNING again, before the new point
    assert isinstance(running, QueuedOp)
    assert running.op == ("status", {"status": "RUNNING"})


def test_end_without_a_spool_counts_the_rest_failed_but_keeps_the_opening() -> None:
    q = RunQueue(DeliveryOptions(spool="off"), local_id="local-y")
    q.append_op("create", {"experiment_name": "e"})
    q.append(points(0, 7))
    q.begin_end({"status": "FINISHED"}, repeat=False)
    step = q.end_step(q.mark(), out_of_time=True, reason="not delivered within 0 s")
    assert step is EndStep.DONE
    stats = q.stats()
    assert (stats.failed, stats.pending) == (7, 0)
    assert stats.failures == {"not delivered within 0 s": 7}
    q.append(points(7, 8))  # logging again must still create the run first
    opening = q.next_work(time.monotonic(), 1000)
    assert isinstance(opening, QueuedOp)
    assert opening.op[0] == "create"


def test_end_with_a_spool_asks_to_spill() -> None:
    q = queue(spool="on_failure")
    q.append(points(0, 2))
    q.begin_end({"status": "FINISHED"}, repeat=False)
    mark = q.mark()
    assert q.end_step(mark, out_of_time=True, reason="r") is EndStep.SPILL
    assert q.journal.take_commit_request()  # the writer fsyncs at once
    q.end_after_spill(mark, reason="r")
    assert q.state is QueueState.CLOSED
    assert q.stats().pending == 2  # kept for the journal, not counted failed


def settle_next(q: RunQueue) -> Chunk | QueuedOp:
    """Play the delivery loop once: deliver the next chunk or op."""
    work = q.next_work(time.monotonic(), 1000)
    if isinstance(work, Chunk):
        work.set_outcome(work.pending(), DELIVERED)
        q.settle_chunk(work)
        return work
    assert isinstance(work, QueuedOp)
    q.settle_op(work)
    return work


def test_end_settles_what_was_logged_before_it_and_logging_meanwhile_reopens() -> None:
    q = queue()
    q.append(points(0, 3))
    mark = q.begin_end({"status": "FINISHED"}, repeat=False)
    assert mark == (3, 1)  # the three points and the status op
    wake = q.append(points(3, 5))  # another thread logs while end() runs
    assert wake & Wake.REOPENED
    assert q.state is QueueState.OPEN
    assert q.end_step(mark, out_of_time=False, reason="r") is EndStep.AGAIN  # not yet settled
    first = settle_next(q)
    assert isinstance(first, Chunk)
    assert (first.start, first.end) == (0, 3)  # stops at the end
    assert settle_next(q).op == ("status", {"status": "FINISHED"})  # type: ignore[union-attr]
    # end()'s share is settled: it is done while the later points still wait
    assert q.end_step(mark, out_of_time=False, reason="r") is EndStep.DONE
    assert q.state is QueueState.OPEN  # reopened: not closed under the other thread
    assert not q.finish_close()
    assert q.stats().pending == 2
    assert settle_next(q).op == ("status", {"status": "RUNNING"})  # type: ignore[union-attr]
    later = settle_next(q)
    assert isinstance(later, Chunk)
    assert [m.step for m in later.records] == [3, 4]
    stats = q.stats()
    assert (stats.logged, stats.delivered, stats.pending) == (5, 5, 0)


def test_an_op_logged_while_end_runs_reopens_the_run_after_the_end() -> None:
    q = queue()
    mark = q.begin_end({"status": "FINISHED"}, repeat=False)
    assert mark is not None
    assert q.append_op("tags", {"items": [["a", "b"]]}) & Wake.REOPENED
    kinds = [settle_next(q).op for _ in range(3)]  # type: ignore[union-attr]
    assert kinds == [
        ("status", {"status": "FINISHED"}),
        ("status", {"status": "RUNNING"}),
        ("tags", {"items": [["a", "b"]]}),
    ]
    assert q.end_step(mark, out_of_time=False, reason="r") is EndStep.DONE
    assert q.state is QueueState.OPEN


def test_end_out_of_time_gives_up_only_on_what_was_logged_before_it() -> None:
    q = RunQueue(DeliveryOptions(spool="off", flush_interval=0.0), local_id="l", run_id="r")
    q.append(points(0, 4))
    mark = q.begin_end({"status": "FINISHED"}, repeat=False)
    assert mark is not None
    q.append(points(4, 10))  # logged while end() waits on a server that does not answer
    assert q.end_step(mark, out_of_time=True, reason="gone") is EndStep.DONE
    stats = q.stats()
    assert (stats.logged, stats.failed, stats.pending) == (10, 4, 6)
    assert stats.failures == {"gone": 4}
    assert q.state is QueueState.OPEN
    assert settle_next(q).op == ("status", {"status": "RUNNING"})  # type: ignore[union-attr]
    later = settle_next(q)
    assert isinstance(later, Chunk)
    assert [m.step for m in later.records] == list(range(4, 10))
    stats = q.stats()
    assert (stats.delivered, stats.failed, stats.pending) == (6, 4, 0)


def test_end_after_a_spill_leaves_a_run_reopened_meanwhile_open() -> None:
    q = queue(spool="on_failure")
    q.append(points(0, 2))
    mark = q.begin_end({"status": "FINISHED"}, repeat=False)
    assert mark is not None
    assert q.end_step(mark, out_of_time=True, reason="r") is EndStep.SPILL
    q.append(points(2, 3))  # reopens: the spill of end()'s share does not wait for it
    q.end_after_spill(mark, reason="r")
    assert q.state is QueueState.OPEN
    assert q.stats().pending == 3


def calls(start: int, stop: int, width: int = 3) -> list[tuple[list[str], list[float], int, int]]:
    """`log_metrics` calls of `width` points each, as `Run.log_metrics` queues them unbuilt:
    call i holds keys k0..k{width-1} at step i."""
    return [
        (
            [f"k{j}" for j in range(width)],
            [i + j / 10 for j in range(width)],
            (1_700_000_000_000 + i) * 1_000_000,  # ns, as time.time_ns()
            i,
        )
        for i in range(start, stop)
    ]


def built(start: int, stop: int, width: int = 3) -> list[tuple[str, float, int, int]]:
    return [
        (k, v, stamp_ns // 1_000_000, at)
        for keys, values, stamp_ns, at in calls(start, stop, width)
        for k, v in zip(keys, values, strict=True)
    ]


def test_calls_are_built_in_order_between_records_and_across_chunks() -> None:
    q = queue()
    for each in calls(0, 2):
        q.append_call(each)
    q.append([Metric("loss", 9.0, 1, 2)])  # a checked record between calls
    for each in calls(2, 400):
        q.append_call(each)
    assert q.sizes() == (1201, 0)
    sent = [deliver(q) for _ in range(2)]
    assert [(c.start, c.end) for c in sent] == [(0, 1000), (1000, 1201)]
    expected = [*built(0, 2), ("loss", 9.0, 1, 2), *built(2, 400)]
    assert [tuple(m) for c in sent for m in c.records] == expected
    stats = q.stats()
    assert (stats.logged, stats.delivered, stats.pending) == (1201, 1201, 0)


def test_a_full_queue_drops_the_oldest_points_of_unbuilt_calls_and_counts_them() -> None:
    q = queue(max_queue=10)
    wake = 0
    for each in calls(0, 5):
        wake |= q.append_call(each)
    assert wake & Wake.FULL
    assert q.make_room() == 5
    chunk = deliver(q)
    assert [tuple(m) for m in chunk.records] == built(0, 5)[5:]
    stats = q.stats()
    assert (stats.logged, stats.dropped, stats.delivered) == (15, 5, 10)


def test_the_journal_and_an_out_of_time_end_see_unbuilt_calls() -> None:
    q = queue(spool="on_failure")
    for each in calls(0, 4):
        q.append_call(each)
    start, records, _ = q.journal.unwritten(100)
    assert (start, [tuple(m) for m in records]) == (0, built(0, 4))
    q = RunQueue(DeliveryOptions(spool="off", flush_interval=0.0), local_id="l", run_id="r")
    for each in calls(0, 4):
        q.append_call(each)
    mark = q.begin_end({"status": "FINISHED"}, repeat=False)
    assert mark is not None
    assert q.end_step(mark, out_of_time=True, reason="gone") is EndStep.DONE
    stats = q.stats()
    assert (stats.logged, stats.failed, stats.pending) == (12, 12, 0)


# -- calls that skip the lock (`Inbox`) ----------------------------------------------------


def single(i: int) -> tuple[list[str], list[float], int, int]:
    return ["loss"], [float(i)], (1_700_000_000_000 + i) * 1_000_000, i


def test_calls_that_skip_the_lock_still_say_when_to_wake_the_sender() -> None:
    q = queue()
    assert q.append_call(single(0)) == Wake.SENDER  # the first point: the sender may sleep
    assert all(q.append_call(single(i)) == Wake.NONE for i in range(1, 999))
    assert q.append_call(single(999)) == Wake.SENDER  # a full batch is ready
    assert q.append_call(single(1000)) == Wake.NONE
    chunk = deliver(q)  # the sender took everything: it may sleep again
    assert [m[3] for m in chunk.records] == list(range(1000))
    deliver(q)
    assert q.append_call(single(1001)) == Wake.SENDER
    assert q.append_call(single(1002)) == Wake.NONE


def test_calls_that_skip_the_lock_are_in_every_mark_count_and_end() -> None:
    q = queue()
    for i in range(5):
        q.append_call(single(i))
    assert q.mark() == (5, 0)
    q.append_call(single(5))
    q.append_op("tags", {"items": [["a", "b"]]})  # after the six points
    q.append_call(single(6))
    assert q.stats().logged == 7
    mark = q.begin_end({"status": "FINISHED"}, repeat=False)
    assert mark == (7, 2)
    first = deliver(q)
    assert [m[3] for m in first.records] == list(range(6))


def test_calls_that_skip_the_lock_never_pass_a_full_queue() -> None:
    q = queue(max_queue=50)
    wakes = [q.append_call(single(i)) for i in range(51)]
    assert wakes[0] == Wake.SENDER
    assert all(wake == Wake.NONE for wake in wakes[1:50])
    assert wakes[50] & Wake.FULL  # the 51st point is over: the caller is told at once


def test_calls_that_skip_the_lock_wake_the_spool_writer_once_it_rests() -> None:
    q = queue(spool="always")
    assert q.append_call(single(0)) == Wake.SENDER | Wake.SPOOL
    assert all(q.append_call(single(i)) == Wake.NONE for i in range(1, 5))  # it is busy
    start, records, _ = q.journal.unwritten(100)
    assert [m[3] for m in records] == list(range(5))
    q.journal.mark_written(start, [10 * (i + 1) for i in range(5)], 0, [])
    q.journal.mark_durable()
    q.journal.step(waiting_for_id=False)  # all on disk: the writer rests
    assert q.append_call(single(5)) == Wake.SPOOL


class DrainingKeys(list[str]):
    """Keys whose length, read by `Inbox.put` before it queues the call, first runs
    `drain`: a drain on another thread landing between the caller's budget read and its
    append, which then misses the call."""

    def __init__(self, keys: list[str], drain: Callable[[], object]) -> None:
        super().__init__(keys)
        self.drain = drain

    def __len__(self) -> int:
        drain, self.drain = self.drain, lambda: None
        drain()
        return super().__len__()


def test_a_call_a_drain_missed_is_taken_in_under_the_lock() -> None:
    q = queue()
    assert q.append_call(single(0)) == Wake.SENDER  # the budget is open after this
    # The delivery loop sends everything just before the caller appends: the sender may
    # sleep now on an empty queue, so the caller must not return quietly.
    keys = DrainingKeys(["loss"], lambda: deliver(q))
    assert q.append_call((keys, [1.0], 1, 1)) == Wake.SENDER
    assert [m[3] for m in deliver(q).records] == [1]
    stats = q.stats()
    assert (stats.logged, stats.delivered, stats.pending) == (2, 2, 0)


def test_a_call_another_thread_took_in_still_wakes_the_sender() -> None:
    """The caller's call is queued without the lock, the caller waits for the lock, and
    another thread (not the sender) takes the call in first, into an empty memory: the
    caller finds nothing to take in but must still wake the sender. The interleaving is
    forced through the queue's private lock and inbox (no public way to hold it)."""
    q = queue()
    answer: list[int] = []
    caller = threading.Thread(target=lambda: answer.append(q.append_call(single(0))))
    with q._lock:
        caller.start()
        deadline = time.monotonic() + 30
        while not q._inbox._calls and time.monotonic() < deadline:
            time.sleep(0.001)
        assert q._inbox.drain(q._metrics) == 1  # the other thread's drain
    caller.join(30)
    assert answer == [Wake.SENDER]
    assert [m[3] for m in deliver(q).records] == [0]


def test_calls_racing_the_delivery_loop_and_an_end_arrive_once_in_order() -> None:
    """The training thread logs while the delivery loop sends (sleeping until it is woken,
    as the real one), another thread reads the stats and an end() runs again and again:
    every point is delivered once, in order, and no wake is lost, whatever the
    interleaving (threads switch every microsecond)."""
    q = queue()
    total = 20_000
    woken = threading.Event()
    logging_done = threading.Event()
    delivered: list[int] = []
    missed_wakes = 0

    def sender() -> None:
        nonlocal missed_wakes
        while True:
            woken.clear()
            work = q.next_work(time.monotonic(), 1000)
            if isinstance(work, Chunk):
                delivered.extend(m[3] for m in work.records)
                work.set_outcome(work.pending(), DELIVERED)
                q.settle_chunk(work)
            elif isinstance(work, QueuedOp):
                q.settle_op(work)
            elif logging_done.is_set() and q.all_settled():
                return
            elif not woken.wait(min(work, 10.0)) and work > 10.0:
                missed_wakes += 1  # asleep for good, unwoken, while the training thread logs

    def reader() -> None:
        while not logging_done.is_set():
            q.stats()  # a drain that is not the sender's
            time.sleep(0)

    def ender() -> None:
        for _ in range(20):
            mark = q.begin_end({"status": "FINISHED"}, repeat=False)
            while mark is not None:
                if q.end_step(mark, out_of_time=False, reason="") is EndStep.DONE:
                    break
                woken.set()
                time.sleep(0)
            time.sleep(0.002)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    threads = [threading.Thread(target=part) for part in (sender, reader, ender)]
    try:
        for thread in threads:
            thread.start()
        for i in range(total):
            if q.append_call(single(i)) & (Wake.SENDER | Wake.REOPENED):
                woken.set()
        threads[2].join()
        if q.append_call(single(total)):  # after the last end: it reopens the run
            woken.set()
        logging_done.set()
        woken.set()
        threads[0].join(60)
        threads[1].join(60)
    finally:
        sys.setswitchinterval(interval)
    assert delivered == list(range(total + 1))
    stats = q.stats()
    assert (stats.logged, stats.delivered, stats.pending) == (total + 1, total + 1, 0)
    assert missed_wakes == 0
