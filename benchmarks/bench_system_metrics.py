"""System metrics benchmark: what the sampler thread costs the training thread, and itself.

    python -m benchmarks.bench_system_metrics [--quick | --smoke] [--tracking-uri URL]
        [--json out.json]

Runs with and without `system_metrics=True` are interleaved (the order alternates every
repetition, so drift on a shared machine hits both alike) against a real local MLflow
server. Sampling is every 0.1 s instead of the default 10 s, 100 times as often, to make
any cost visible. In each run the training thread executes the same fixed loop: a fixed
amount of pure-Python work per step and `log_metrics` of 3 keys every 20 steps. Reported:

- the training thread's CPU time per step (`time.thread_time()`), median with vs without;
  goal: unchanged within noise, i.e. the median with system metrics no higher than the
  slowest run without them;
- the wall time per step the same way (GIL hand-overs to the sampler show up there);
- the sampler thread's own CPU per sample (its per-thread CPU clock), which at the
  default 10 s interval is the whole cost.

Sizes: full is 7 pairs of runs of 30 000 steps; `--quick` 2 pairs of 3 000 steps;
`--smoke` (the test suite's end-to-end check) 1 pair of 3 000 steps. `--tracking-uri URL`
logs to a running MLflow server instead of starting one.

`bench_system_metrics(server, size=...)` and `build_rows(result)` are what the core
benchmark calls; the numbers never fail anything.
"""

from __future__ import annotations

import argparse
import gc
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from aidp_metrics._bridges import system_metrics
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

EXPERIMENT = "aidp-bench-system-metrics"
KEYS = ("train/loss", "train/accuracy", "train/lr")
LOG_EVERY = 20
GOAL_SAMPLE_SECONDS = 0.01  # 10 ms per sample = 0.1 % of one core at the 10 s default


@dataclass(frozen=True)
class Sizes:
    repetitions: int  # pairs of runs (one with, one without system metrics)
    steps: int  # loop steps per run
    work: int  # pure-Python operations per step (~40-100 µs at 1000)
    interval: float  # sampling interval of the runs with system metrics


FULL = Sizes(repetitions=7, steps=30_000, work=1_000, interval=0.1)
QUICK = Sizes(repetitions=2, steps=3_000, work=1_000, interval=0.1)
# The loop still spans more than one sampling interval, so the runs with the sampler sample.
SMOKE = Sizes(repetitions=1, steps=3_000, work=1_000, interval=0.1)
SIZES = {"full": FULL, "quick": QUICK, "smoke": SMOKE}


def _step_work(work: int) -> int:
    total = 0
    for i in range(work):
        total += i * i & 0xFF
    return total


def _sampler() -> system_metrics.Sampler | None:
    for thread in threading.enumerate():
        if isinstance(thread, system_metrics.Sampler) and thread.is_alive():
            return thread
    return None


def _thread_cpu(thread: threading.Thread) -> float:
    assert thread.ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def _one_run(server: BenchServer, sizes: Sizes, enabled: bool, name: str) -> dict[str, Any]:
    run = Run.start(
        endpoint=server.url,
        experiment_name=EXPERIMENT,
        run_name=name,
        spool="off",
        system_metrics=enabled,
        system_metrics_interval=sizes.interval,
    )
    sampler = _sampler()
    if enabled:  # measure the steady state: the sampler has opened its sources and sampled
        deadline = time.monotonic() + 30
        while (sampler is None or sampler.samples < 1) and time.monotonic() < deadline:
            time.sleep(0.01)
            sampler = _sampler()
    samples_before = sampler.samples if sampler is not None else 0
    sampler_cpu_before = _thread_cpu(sampler) if sampler is not None else 0.0
    values = [0.5 + i * 1e-4 for i in range(1000)]
    k1, k2, k3 = KEYS
    gc.collect()
    gc.disable()
    try:
        cpu_start, wall_start = time.thread_time(), time.perf_counter()
        for step in range(sizes.steps):
            _step_work(sizes.work)
            if step % LOG_EVERY == 0:
                v = values[step % 1000]
                run.log_metrics({k1: v, k2: v, k3: v}, step=step)
        cpu = time.thread_time() - cpu_start
        wall = time.perf_counter() - wall_start
    finally:
        gc.enable()
    samples = (sampler.samples - samples_before) if sampler is not None else 0
    sampler_cpu = (_thread_cpu(sampler) - sampler_cpu_before) if sampler is not None else 0.0
    run.end()
    return {
        "cpu_per_step": cpu / sizes.steps,
        "wall_per_step": wall / sizes.steps,
        "samples": samples,
        "sampler_cpu": sampler_cpu,
        "delivered": run.stats.delivered,
        "logged": run.stats.logged,
    }


def bench_system_metrics(server: BenchServer, *, size: str = "full") -> dict[str, Any]:
    """The section the core benchmark reports (see the module docstring); `size` is one of
    'full', 'quick', 'smoke'."""
    sizes = SIZES[size]
    tag = uuid.uuid4().hex[:8]
    log(
        f"system metrics: {sizes.repetitions} x 2 runs of {sizes.steps} steps, "
        f"sampling every {sizes.interval} s when on"
    )
    _one_run(server, sizes, False, f"warmup-{tag}")
    measured: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    for rep in range(sizes.repetitions):
        for enabled in (False, True) if rep % 2 == 0 else (True, False):
            name = f"{'on' if enabled else 'off'}-{rep}-{tag}"
            measured[enabled].append(_one_run(server, sizes, enabled, name))

    def series(enabled: bool, key: str) -> Repeated:
        return Repeated(tuple(r[key] for r in measured[enabled]))

    cpu_off, cpu_on = series(False, "cpu_per_step"), series(True, "cpu_per_step")
    wall_off, wall_on = series(False, "wall_per_step"), series(True, "wall_per_step")
    samples = sum(r["samples"] for r in measured[True])
    sampler_cpu = sum(r["sampler_cpu"] for r in measured[True])
    per_sample = Repeated(
        tuple(r["sampler_cpu"] / r["samples"] for r in measured[True] if r["samples"])
    )
    return {
        "sizes": sizes.__dict__,
        "cpu_per_step_off": cpu_off,
        "cpu_per_step_on": cpu_on,
        "wall_per_step_off": wall_off,
        "wall_per_step_on": wall_on,
        "cpu_change": cpu_on.median / cpu_off.median - 1,
        "wall_change": wall_on.median / wall_off.median - 1,
        "within_noise": cpu_on.median <= cpu_off.worst,
        "samples": samples,
        "sampler_cpu_per_sample": per_sample,
        "sampler_cpu_share_at_interval": sampler_cpu / samples / sizes.interval if samples else 0,
        "complete": all(r["delivered"] == r["logged"] for rs in measured.values() for r in rs),
    }


def build_rows(result: dict[str, Any]) -> list[Row]:
    interval = result["sizes"]["interval"]
    cpu_off: Repeated = result["cpu_per_step_off"]
    cpu_on: Repeated = result["cpu_per_step_on"]
    wall_off: Repeated = result["wall_per_step_off"]
    wall_on: Repeated = result["wall_per_step_on"]
    per_sample: Repeated = result["sampler_cpu_per_sample"]
    rows = [
        Row(
            f"system metrics every {interval:g} s: training-thread CPU / step",
            f"{fmt_seconds(cpu_on.median)} on vs {fmt_seconds(cpu_off.median)} off "
            f"({result['cpu_change']:+.1%})",
            f"unchanged within noise: ≤ the slowest off run "
            f"(off: {fmt_seconds(cpu_off.best)}-{fmt_seconds(cpu_off.worst)})",
            f"{cpu_on.median / cpu_off.median:.3f}x",
            result["within_noise"],
        ),
        Row(
            "   training-thread wall time / step",
            f"{fmt_seconds(wall_on.median)} on vs {fmt_seconds(wall_off.median)} off "
            f"({result['wall_change']:+.1%})",
            "-",
            f"{wall_on.median / wall_off.median:.3f}x",
        ),
    ]
    if per_sample.values:
        at_default = per_sample.median / 10.0
        rows.append(
            Row(
                "   sampler thread CPU / sample",
                f"{fmt_seconds(per_sample.median)} ({result['samples']} samples; "
                f"{at_default:.3%} of a core at the 10 s default)",
                f"≤ {fmt_seconds(GOAL_SAMPLE_SECONDS)}",
                f"{per_sample.median / GOAL_SAMPLE_SECONDS:.2f}x of budget",
                per_sample.median <= GOAL_SAMPLE_SECONDS,
            )
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_common_options(
        parser, quick="2 pairs of 3 000-step runs", smoke="1 pair of 3 000-step runs (a test)"
    )
    args = parser.parse_args(argv)
    size = size_name(args)
    info = machine_info()
    print_header(
        "aidp-metrics system metrics benchmark" + size_suffix(size),
        info,
        [
            server_line(args.tracking_uri),
            "note     numbers from one run on a possibly shared machine are noisy",
        ],
    )
    with tracking_server(args.tracking_uri) as server:
        result = bench_system_metrics(server, size=size)
    rows = build_rows(result)
    print_table(rows, "results")
    cpu_off: Repeated = result["cpu_per_step_off"]
    cpu_on: Repeated = result["cpu_per_step_on"]
    print(
        "details:\n"
        f"  CPU/step off: {', '.join(fmt_seconds(v) for v in cpu_off.values)}\n"
        f"  CPU/step on:  {', '.join(fmt_seconds(v) for v in cpu_on.values)}\n"
        f"  every logged metric delivered: {result['complete']}",
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
