"""TensorBoard follower benchmark: what `Run.follow_tensorboard` costs the training thread.

    python -m benchmarks.bench_tensorboard [--quick | --smoke] [--tracking-uri URL]
        [--json out.json]

Runs with and without a follower are interleaved (the order alternates every repetition, so
drift on a shared machine hits both alike) against a real local MLflow server. In each run
the training thread executes the same fixed loop: a fixed amount of pure-Python work per
step and `SummaryWriter.add_scalar` of 3 tags every 20 steps (torch's writer, its own
writer thread in both cases; `flush_secs=1` so the follower has something to read while the
loop runs). The follower polls every 0.1 s, ten times its default rate, to make any cost
visible. Reported:

- the training thread's CPU time per step (`time.thread_time()`), median with vs without
  (goal: unchanged within noise, i.e. the median with the follower no higher than the
  slowest run without it), and the spread of each;
- the wall time per step the same way (GIL hand-overs to the follower show up there);
- the follower thread's own CPU per scalar event it logged (its per-thread CPU clock);
- whether every scalar written reached the server (read back after `end()`).

Sizes: full is 7 pairs of runs of 30 000 steps; `--quick` 2 pairs of 3 000 steps;
`--smoke` (the test suite's end-to-end check) 1 pair of 600 steps (90 scalars per run; a
loop that short often ends before the writer's first flush, and the follower's CPU per event,
which counts only what it logged during the loop, is then left out).
Every size starts with one warm-up run with a follower. `--tracking-uri URL` logs to a
running MLflow server instead of starting one.

The numbers never fail anything.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aidp_metrics._run.run import Run

from ._common import (
    BenchServer,
    Repeated,
    Row,
    add_common_options,
    fmt_seconds,
    log,
    machine_info,
    print_header,
    print_table,
    server_line,
    size_name,
    size_suffix,
    tracking_server,
    write_json,
)

EXPERIMENT = "aidp-bench-tensorboard"
TAGS = ("train/loss", "train/accuracy", "train/lr")
LOG_EVERY = 20
INTERVAL = 0.1
FOLLOWER_THREAD = "aidp-metrics-tensorboard"
GOAL_EVENT_SECONDS = 200e-6  # follower CPU per scalar event: 0.2 ms


@dataclass(frozen=True)
class Sizes:
    repetitions: int  # pairs of runs (one with, one without the follower)
    steps: int  # loop steps per run
    work: int  # pure-Python operations per step


FULL = Sizes(repetitions=7, steps=30_000, work=1_000)
QUICK = Sizes(repetitions=2, steps=3_000, work=1_000)
SMOKE = Sizes(repetitions=1, steps=600, work=1_000)
SIZES = {"full": FULL, "quick": QUICK, "smoke": SMOKE}


def _step_work(work: int) -> int:
    total = 0
    for i in range(work):
        total += i * i & 0xFF
    return total


def _follower() -> threading.Thread | None:
    for thread in threading.enumerate():
        if thread.name == FOLLOWER_THREAD and thread.is_alive():
            return thread
    return None


def _thread_cpu(thread: threading.Thread | None) -> float:
    if thread is None or thread.ident is None:
        return 0.0
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    except (OSError, ProcessLookupError):  # the thread ended meanwhile
        return 0.0


def _one_run(server: BenchServer, sizes: Sizes, follow: bool, name: str) -> dict[str, Any]:
    from torch.utils.tensorboard import SummaryWriter

    with tempfile.TemporaryDirectory(prefix="aidp-bench-tb-") as tmp:
        logdir = Path(tmp)
        run = Run.start(endpoint=server.url, experiment_name=EXPERIMENT, run_name=name, spool="off")
        writer = SummaryWriter(str(logdir), flush_secs=1)
        if follow:
            run.follow_tensorboard(logdir, interval=INTERVAL)
        follower = _follower()
        values = [0.5 + i * 1e-4 for i in range(1000)]
        written = 0
        gc.collect()
        gc.disable()
        try:
            cpu_start, wall_start = time.thread_time(), time.perf_counter()
            for step in range(sizes.steps):
                _step_work(sizes.work)
                if step % LOG_EVERY == 0:
                    v = values[step % 1000]
                    for tag in TAGS:
                        writer.add_scalar(tag, v, step)
                    written += len(TAGS)
            cpu = time.thread_time() - cpu_start
            wall = time.perf_counter() - wall_start
        finally:
            gc.enable()
        # The follower's CPU so far and what it logged so far (it is the run's only logger).
        follower_cpu_in_loop = _thread_cpu(follower)
        logged_in_loop = run.stats.logged
        writer.close()
        stats = run.end()
    return {
        "cpu_per_step": cpu / sizes.steps,
        "wall_per_step": wall / sizes.steps,
        "written": written if follow else 0,
        "follower_cpu": follower_cpu_in_loop,
        "follower_events": logged_in_loop / len(TAGS),
        "delivered": stats.delivered,
        "logged": stats.logged,
        "thread_left": _follower() is not None,
    }


def bench_tensorboard(server: BenchServer, *, size: str = "full") -> dict[str, Any]:
    """The section (see the module docstring); `size` is 'full', 'quick' or 'smoke'."""
    sizes = SIZES[size]
    tag = uuid.uuid4().hex[:8]
    log(
        f"tensorboard follower: {sizes.repetitions} x 2 runs of {sizes.steps} steps, "
        f"polling every {INTERVAL} s when on"
    )
    _one_run(server, sizes, True, f"warmup-{tag}")  # loads torch and TensorBoard's reader
    measured: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    for rep in range(sizes.repetitions):
        for follow in (False, True) if rep % 2 == 0 else (True, False):
            name = f"{'on' if follow else 'off'}-{rep}-{tag}"
            measured[follow].append(_one_run(server, sizes, follow, name))

    def series(follow: bool, key: str) -> Repeated:
        return Repeated(tuple(r[key] for r in measured[follow]))

    cpu_off, cpu_on = series(False, "cpu_per_step"), series(True, "cpu_per_step")
    wall_off, wall_on = series(False, "wall_per_step"), series(True, "wall_per_step")
    per_event = Repeated(
        tuple(
            r["follower_cpu"] / r["follower_events"] for r in measured[True] if r["follower_events"]
        )
    )
    return {
        "sizes": sizes.__dict__,
        "interval": INTERVAL,
        "cpu_per_step_off": cpu_off,
        "cpu_per_step_on": cpu_on,
        "wall_per_step_off": wall_off,
        "wall_per_step_on": wall_on,
        "cpu_change": cpu_on.median / cpu_off.median - 1,
        "wall_change": wall_on.median / wall_off.median - 1,
        "within_noise": cpu_on.median <= cpu_off.worst,
        "follower_cpu_per_event": per_event,
        "complete": all(r["delivered"] == r["logged"] == r["written"] for r in measured[True]),
        "threads_left": any(r["thread_left"] for rs in measured.values() for r in rs),
    }


def build_rows(result: dict[str, Any]) -> list[Row]:
    cpu_off: Repeated = result["cpu_per_step_off"]
    cpu_on: Repeated = result["cpu_per_step_on"]
    wall_off: Repeated = result["wall_per_step_off"]
    wall_on: Repeated = result["wall_per_step_on"]
    per_event: Repeated = result["follower_cpu_per_event"]
    rows = [
        Row(
            f"TensorBoard follower every {result['interval']:g} s: training-thread CPU / step",
            f"{fmt_seconds(cpu_on.median)} on vs {fmt_seconds(cpu_off.median)} off "
            f"({result['cpu_change']:+.1%})",
            f"unchanged within noise: ≤ the slowest off run "
            f"(off: {fmt_seconds(cpu_off.best)}-{fmt_seconds(cpu_off.worst)}; "
            f"on: {fmt_seconds(cpu_on.best)}-{fmt_seconds(cpu_on.worst)})",
            f"{cpu_on.median / cpu_off.median:.3f}x",
            result["within_noise"],
        ),
        Row(
            "   training-thread wall time / step",
            f"{fmt_seconds(wall_on.median)} on vs {fmt_seconds(wall_off.median)} off "
            f"({result['wall_change']:+.1%})",
            f"off: {fmt_seconds(wall_off.best)}-{fmt_seconds(wall_off.worst)}; "
            f"on: {fmt_seconds(wall_on.best)}-{fmt_seconds(wall_on.worst)}",
            f"{wall_on.median / wall_off.median:.3f}x",
        ),
    ]
    if per_event.values:
        rows.append(
            Row(
                "   follower thread CPU / scalar event (3 tags each)",
                fmt_seconds(per_event.median),
                f"≤ {fmt_seconds(GOAL_EVENT_SECONDS)}",
                f"{per_event.median / GOAL_EVENT_SECONDS:.2f}x of budget",
                per_event.median <= GOAL_EVENT_SECONDS,
            )
        )
    rows.append(
        Row(
            "   every scalar written delivered, no thread left",
            str(result["complete"] and not result["threads_left"]),
            "True",
            "-",
            result["complete"] and not result["threads_left"],
        )
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_common_options(
        parser, quick="2 pairs of 3 000-step runs", smoke="1 pair of 600-step runs (a test)"
    )
    args = parser.parse_args(argv)
    size = size_name(args)
    info = machine_info()
    print_header(
        "aidp-metrics TensorBoard follower benchmark" + size_suffix(size),
        info,
        [
            server_line(args.tracking_uri),
            "note     numbers from one run on a possibly shared machine are noisy",
        ],
    )
    with tracking_server(args.tracking_uri) as server:
        result = bench_tensorboard(server, size=size)
    rows = build_rows(result)
    print_table(rows, "results")
    cpu_off: Repeated = result["cpu_per_step_off"]
    cpu_on: Repeated = result["cpu_per_step_on"]
    print(
        "details:\n"
        f"  CPU/step off: {', '.join(fmt_seconds(v) for v in cpu_off.values)}\n"
        f"  CPU/step on:  {', '.join(fmt_seconds(v) for v in cpu_on.values)}",
        flush=True,
    )
    if args.json:
        write_json(
            args.json,
            {"quick": args.quick, "size": size, "machine": info, "result": result, "rows": rows},
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
