"""Core delivery benchmark: one process, one real local MLflow server, numbers and ratios.

    python -m benchmarks.bench_core [--quick | --smoke] [--tracking-uri URL] [--json out.json]

1. Caller-thread cost per metric of `Run.log_metrics` vs MLflow's sync and async clients.
2. End-to-end delivery rate of the batch transport vs the server's raw `runs/log-batch`
   capacity (plain httpx, same run), then a complete read-back.
3. `transport="metric"` rate vs the best plain-httpx `runs/log-metric` rate at 1/4/8 senders.
4. RSS growth with 100 000 metrics queued against a stopped server.
5. The system-metrics sampler's cost (`bench_system_metrics`): training-thread time with and
   without it, interleaved.

Every figure is printed next to its goal; the benchmark never fails on a goal. The
machine may be shared, so treat single runs as noisy.

Sizes (`FULL`, `QUICK`, `SMOKE` below): full is what docs/benchmarks.md reports (e.g. 5 x 20 000
caller calls, 100 000 metrics delivered and queued, 1 504 metrics per `log-metric` rate);
`--quick` makes every size ~10x smaller; `--smoke` is the test suite's end-to-end check:
one repetition and the fewest metrics that still run every section and code path once
(its numbers mean little). `--tracking-uri URL` logs to a running MLflow server instead of
starting one; section 4 then cuts a pass-through proxy in front of it instead of stopping
the server.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import io
import json
import logging
import os
import statistics
import sys
import threading
import time
import tracemalloc
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from aidp_metrics._connection.client import MetricsClient
from aidp_metrics._delivery.sender import loop as delivery_loop
from aidp_metrics._metric import now_ms
from aidp_metrics._queue.options import DeliveryOptions
from aidp_metrics._run.run import Run
from aidp_metrics.cli._local_server import LocalMLflowServer

from ._common import (
    MB,
    BenchServer,
    Repeated,
    Row,
    Timer,
    add_common_options,
    fmt_rate,
    fmt_seconds,
    fmt_times,
    load_average,
    log,
    machine_info,
    peak_rss_bytes,
    print_header,
    print_table,
    release_free_memory,
    repeat,
    reset_peak_rss,
    rss_bytes,
    server_line,
    size_name,
    size_suffix,
    tracking_server,
    write_json,
)
from .bench_system_metrics import bench_system_metrics
from .bench_system_metrics import build_rows as system_metrics_rows

EXPERIMENT = "aidp-bench-core"
API = "/api/2.0/mlflow"
JSON_HEADERS = {"content-type": "application/json"}

# Goals (reported, never enforced).
GOAL_CALLER_SECONDS = 2e-6
GOAL_SENDER_CPU_SECONDS = 3e-6
GOAL_VS_ASYNC = 30.0
GOAL_VS_SYNC = 1000.0
GOAL_BATCH_SHARE = 0.90
GOAL_METRIC_SHARE = 0.90
GOAL_RSS_BYTES_PER_100K = 50 * MB

CALLER_KEYS = ("train/loss", "train/accuracy", "train/lr")
DELIVERY_KEYS = tuple(f"train/metric_{i}" for i in range(10))
METRIC_TRANSPORT_KEYS = tuple(f"eval/metric_{i:02d}" for i in range(16))
SENDER_COUNTS = (1, 4, 8)


@dataclass(frozen=True)
class Sizes:
    caller_calls: int  # log_metrics calls (3 keys) per repetition
    caller_reps: int
    sync_calls: int  # MlflowClient.log_metric calls per repetition
    sync_reps: int
    async_calls: int  # mlflow.log_metrics(synchronous=False) calls (3 keys) per repetition
    async_reps: int
    delivery_metrics: int  # multiple of 1000
    metric_transport_metrics: int  # multiple of len(METRIC_TRANSPORT_KEYS)
    far_metric_transport_metrics: int  # the same, behind the latency proxy
    rss_metrics: int  # multiple of len(DELIVERY_KEYS)
    far_rounds: int = 2  # interleaved (1, 8 in flight) rounds behind the latency proxy


FULL = Sizes(
    caller_calls=20_000,
    caller_reps=5,
    sync_calls=100,
    sync_reps=3,
    async_calls=1_000,
    async_reps=3,
    delivery_metrics=100_000,
    metric_transport_metrics=1_504,
    far_metric_transport_metrics=96,
    rss_metrics=100_000,
)
QUICK = Sizes(
    caller_calls=2_000,
    caller_reps=3,
    sync_calls=10,
    sync_reps=3,
    async_calls=100,
    async_reps=3,
    delivery_metrics=10_000,
    metric_transport_metrics=160,
    far_metric_transport_metrics=32,
    rss_metrics=10_000,
)
SMOKE = Sizes(
    caller_calls=100,
    caller_reps=1,
    sync_calls=2,
    sync_reps=1,
    async_calls=10,
    async_reps=1,
    delivery_metrics=1_000,
    metric_transport_metrics=len(METRIC_TRANSPORT_KEYS),
    far_metric_transport_metrics=len(METRIC_TRANSPORT_KEYS),
    rss_metrics=1_000,
    far_rounds=1,
)
SIZES = {"full": FULL, "quick": QUICK, "smoke": SMOKE}


def _values(count: int) -> list[float]:
    """Distinct, exactly representable-in-JSON floats (repr round-trips)."""
    return [0.5 + i * 1e-4 for i in range(count)]


def _supports(option: str) -> bool:
    return option in {f.name for f in dataclasses.fields(DeliveryOptions)}


def _memory_only() -> dict[str, Any]:
    """Options that keep undelivered points in memory (no on-disk spool), where supported."""
    return {"spool": "off"} if _supports("spool") else {}


def _discard(run: Run, reason: str) -> dict[str, int]:
    """End a run without waiting for delivery (what is left counts as failed)."""
    stats = run.end(timeout=0)
    return {"failed": stats.failed, "pending": stats.pending}


# -- 1. caller cost ---------------------------------------------------------------------------


def bench_caller_cost(server: BenchServer, sizes: Sizes) -> dict[str, Any]:
    values = _values(1000)
    k1, k2, k3 = CALLER_KEYS
    calls = sizes.caller_calls

    # The harness alone (dict building and the loop) for reference; not subtracted.
    def noop(metrics: dict[str, object], step: int | None = None) -> None:
        return None

    def loop(log: Callable[..., object], start: int, **extra: Any) -> Timer:
        with Timer() as timer:
            for i in range(start, start + calls):
                v = values[i % 1000]
                log({k1: v, k2: v, k3: v}, step=i, **extra)
        return timer

    overhead = repeat(lambda: loop(noop, 0).seconds / (calls * 3), sizes.caller_reps)

    log(f"caller cost: Run.log_metrics, {sizes.caller_reps} x {calls} calls of 3 metrics")
    # A fresh run per repetition, abandoned right after its timed loop: the caller's cost
    # does not depend on what happens afterwards, and the server need not ingest 60 000
    # points per repetition (delivery is section 2). The sender thread runs, and competes
    # for the GIL, during the loop as it would in training.
    cpu: list[float] = []
    totals = {"logged": 0, "delivered_during_loop": 0, "dropped": 0}

    def fresh_run(name: str) -> Run:
        return Run.start(
            endpoint=server.url, experiment_name=EXPERIMENT, run_name=name, **_memory_only()
        )

    def discard(run: Run) -> None:
        stats = run.stats
        totals["logged"] += stats.logged
        totals["delivered_during_loop"] += stats.delivered
        totals["dropped"] += stats.dropped
        _discard(run, "benchmark: caller cost only")

    warmup = fresh_run("caller-cost-warmup")
    loop(warmup.log_metrics, 0)
    _discard(warmup, "benchmark: warm-up")
    runs: list[Run] = []

    def measure() -> float:
        run = fresh_run(f"caller-cost-{len(runs)}")
        runs.append(run)
        timer = loop(run.log_metrics, 0)
        cpu.append(timer.cpu_seconds / (calls * 3))
        return timer.seconds / (calls * 3)

    ours = repeat(measure, sizes.caller_reps, between=lambda: discard(runs[-1]))

    sync = _mlflow_sync_cost(server, sizes)
    async_ = _mlflow_async_cost(server, sizes)
    return {
        "calls_per_repetition": calls,
        "metrics_per_call": 3,
        "run_seconds_per_metric": ours,
        "run_thread_cpu_seconds_per_metric": Repeated(tuple(cpu)),
        "harness_seconds_per_metric": overhead,
        "run_options": _memory_only(),
        "run_counts": totals,
        "mlflow_sync_seconds_per_metric": sync,
        "mlflow_async_seconds_per_metric": async_,
        "ratio_vs_mlflow_sync": sync.median / ours.median,
        "ratio_vs_mlflow_async": async_.median / ours.median,
    }


def _quiet_mlflow() -> None:
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="mlflow")


def _mlflow_sync_cost(server: BenchServer, sizes: Sizes) -> Repeated:
    import mlflow

    _quiet_mlflow()
    log(f"caller cost: MlflowClient.log_metric (sync), {sizes.sync_reps} x {sizes.sync_calls}")
    client = mlflow.MlflowClient(tracking_uri=server.url)
    experiment_id = client.create_experiment(f"{EXPERIMENT}-mlflow-sync-{uuid.uuid4().hex[:8]}")
    run_id = client.create_run(experiment_id, run_name="mlflow-sync").info.run_id
    values = _values(1000)
    client.log_metric(run_id, "warmup", 0.0, step=0)
    step = 0

    def measure() -> float:
        nonlocal step
        log_metric = client.log_metric
        start = step
        with Timer() as timer:
            for i in range(start, start + sizes.sync_calls):
                log_metric(run_id, "train/loss", values[i % 1000], step=i)
        step += sizes.sync_calls
        return timer.seconds / sizes.sync_calls

    result = repeat(measure, sizes.sync_reps)
    with contextlib.redirect_stdout(io.StringIO()):  # mlflow prints "View run ..." links
        client.set_terminated(run_id)
    return result


def _mlflow_async_cost(server: BenchServer, sizes: Sizes) -> Repeated:
    import mlflow

    _quiet_mlflow()
    log(
        f"caller cost: mlflow.log_metrics(synchronous=False), "
        f"{sizes.async_reps} x {sizes.async_calls} calls of 3 metrics"
    )
    mlflow.set_tracking_uri(server.url)
    mlflow.set_experiment(f"{EXPERIMENT}-mlflow-async")
    values = _values(1000)
    k1, k2, k3 = CALLER_KEYS
    calls = sizes.async_calls
    mlflow.start_run(run_name="mlflow-async")
    try:
        mlflow.log_metrics({k1: 0.0, k2: 0.0, k3: 0.0}, step=0, synchronous=False)
        mlflow.flush_async_logging()
        step = 1

        def measure() -> float:
            nonlocal step
            log_metrics = mlflow.log_metrics
            start = step
            with Timer() as timer:
                for i in range(start, start + calls):
                    v = values[i % 1000]
                    log_metrics({k1: v, k2: v, k3: v}, step=i, synchronous=False)
            step += calls
            return timer.seconds / (calls * 3)

        result = repeat(measure, sizes.async_reps, between=mlflow.flush_async_logging)
    finally:
        with contextlib.redirect_stdout(io.StringIO()):  # "View run ..." links
            mlflow.end_run()
    return result


# -- 2. batch delivery rate -------------------------------------------------------------------


def _new_run(client: MetricsClient, name: str) -> str:
    experiment_id = client.experiment_id_for(EXPERIMENT)
    return client.create_run(experiment_id=experiment_id, run_name=name).run_id


def raw_batch_rate(server: BenchServer, total: int) -> tuple[float, float]:
    """(metrics/s, thread CPU seconds per metric) of one keep-alive httpx.Client posting
    pre-encoded 1000-metric batches: the server's capacity, and the floor under the
    delivery thread's CPU (it posts the same batches through httpx, after encoding them)."""
    with MetricsClient(server.url) as client:
        run_id = _new_run(client, "raw-log-batch")
    keys = DELIVERY_KEYS
    steps_per_body = 1000 // len(keys)
    stamp = now_ms()
    bodies = []
    for first in range(0, total // len(keys), steps_per_body):
        metrics = [
            {"key": key, "value": step + 0.25, "timestamp": stamp, "step": step}
            for step in range(first, first + steps_per_body)
            for key in keys
        ]
        payload = {"run_id": run_id, "metrics": metrics}
        bodies.append(json.dumps(payload, separators=(",", ":")).encode())
    url = f"{server.url}{API}/runs/log-batch"
    warmup = json.dumps({"run_id": run_id, "metrics": []}).encode()
    with httpx.Client(timeout=120, headers=JSON_HEADERS) as http:
        http.post(url, content=warmup).raise_for_status()
        cpu_start = time.thread_time()
        with Timer() as timer:
            for body in bodies:
                http.post(url, content=body).raise_for_status()
        cpu = time.thread_time() - cpu_start
    sent = len(bodies) * 1000
    return sent / timer.seconds, cpu / sent


def bench_batch_delivery(server: BenchServer, sizes: Sizes) -> dict[str, Any]:
    total = sizes.delivery_metrics
    log(f"batch delivery: raw runs/log-batch capacity, {total} metrics")
    raw_before, raw_cpu_before = raw_batch_rate(server, total)

    log(f"batch delivery: Run (default options), {total} metrics + flush")
    keys = DELIVERY_KEYS
    steps = total // len(keys)
    run = Run.start(endpoint=server.url, experiment_name=EXPERIMENT, run_name="batch-delivery")
    try:
        log_metrics = run.log_metrics
        cpu_start = time.process_time()
        sender_start = delivery_loop.cpu_seconds()
        with Timer() as timer:
            for step in range(steps):
                log_metrics({key: step + i * 0.125 for i, key in enumerate(keys)}, step=step)
            flushed = run.flush(timeout=600)
        sender_cpu = delivery_loop.cpu_seconds() - sender_start
        process_cpu = time.process_time() - cpu_start
        stats = run.stats
    finally:
        run.end()
    ours = total / timer.seconds

    log(f"batch delivery: raw runs/log-batch capacity again, {total} metrics")
    raw_after, raw_cpu_after = raw_batch_rate(server, total)
    capacity = (raw_before + raw_after) / 2  # bracketing: the database grows meanwhile

    log("batch delivery: reading every key's history back")
    read_back = 0
    wrong = 0
    with MetricsClient(server.url) as client:
        for i, key in enumerate(keys):
            history = client.get_metric_history(run.run_id, key)
            read_back += len(history)
            got = {(m.step, m.value) for m in history}
            expected = {(step, step + i * 0.125) for step in range(steps)}
            wrong += len(expected ^ got)
    return {
        "metrics": total,
        "keys": len(keys),
        "run_seconds": timer.seconds,
        "run_rate": ours,
        "flushed": flushed,
        "process_cpu_seconds_per_metric": process_cpu / total,
        "sender_cpu_seconds_per_metric": sender_cpu / max(1, stats.delivered),
        "stats": {
            "logged": stats.logged,
            "delivered": stats.delivered,
            "failed": stats.failed,
            "dropped": stats.dropped,
            "requests": stats.requests,
            "retried": stats.retried,
        },
        "raw_rate_before": raw_before,
        "raw_rate_after": raw_after,
        "raw_capacity": capacity,
        "raw_cpu_seconds_per_metric": (raw_cpu_before + raw_cpu_after) / 2,
        "share_of_capacity": ours / capacity,
        "read_back": read_back,
        "mismatched_points": wrong,
        "completeness": read_back / total,
    }


# -- 3. metric transport rate -----------------------------------------------------------------


def raw_metric_rate(server: BenchServer, total: int, senders: int) -> float:
    """Metrics/s of `senders` threads, each with its own keep-alive httpx.Client, posting
    pre-encoded `runs/log-metric` bodies (the work split round-robin)."""
    with MetricsClient(server.url) as client:
        run_id = _new_run(client, f"raw-log-metric-{senders}")
    keys = METRIC_TRANSPORT_KEYS
    stamp = now_ms()
    bodies = [
        json.dumps(
            {
                "run_id": run_id,
                "key": keys[n % len(keys)],
                "value": n + 0.5,
                "timestamp": stamp,
                "step": n // len(keys),
            },
            separators=(",", ":"),
        ).encode()
        for n in range(total)
    ]
    url = f"{server.url}{API}/runs/log-metric"
    warmup = json.dumps(
        {"run_id": run_id, "key": "warmup", "value": 0.0, "timestamp": stamp, "step": 0}
    ).encode()
    barrier = threading.Barrier(senders + 1)
    errors: list[BaseException] = []

    def send(share: list[bytes]) -> None:
        try:
            with httpx.Client(timeout=120, headers=JSON_HEADERS) as http:
                http.post(url, content=warmup).raise_for_status()
                barrier.wait()
                for body in share:
                    http.post(url, content=body).raise_for_status()
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()

    threads = [
        threading.Thread(target=send, args=(bodies[i::senders],), daemon=True)
        for i in range(senders)
    ]
    for thread in threads:
        thread.start()
    barrier.wait()
    with Timer() as timer:
        for thread in threads:
            thread.join()
    if errors:
        raise RuntimeError(f"raw log-metric sender failed: {errors[0]!r}") from errors[0]
    return total / timer.seconds


def bench_metric_transport(server: BenchServer, sizes: Sizes) -> dict[str, Any]:
    total = sizes.metric_transport_metrics
    raw: dict[int, float] = {}
    for senders in SENDER_COUNTS:
        log(f"metric transport: raw runs/log-metric, {senders} sender(s), {total} metrics")
        raw[senders] = raw_metric_rate(server, total, senders)
    best_senders = max(raw, key=lambda s: raw[s])
    best = raw[best_senders]

    keys = METRIC_TRANSPORT_KEYS
    ours: dict[int, float] = {}
    delivered = failed = 0
    flushed = True
    for in_flight in (1, 8):  # do requests in flight help? measured, not assumed
        log(f"metric transport: Run(transport='metric', max_in_flight={in_flight}), {total}")
        run = Run.start(
            endpoint=server.url,
            experiment_name=EXPERIMENT,
            run_name=f"metric-transport-{in_flight}",
            transport="metric",
            max_in_flight=in_flight,
        )
        try:
            log_metrics = run.log_metrics
            with Timer() as timer:
                for step in range(total // len(keys)):
                    log_metrics({key: step + i * 0.5 for i, key in enumerate(keys)}, step=step)
                flushed = run.flush(timeout=600) and flushed
            stats = run.stats
        finally:
            run.end()
        ours[in_flight] = total / timer.seconds
        delivered += stats.delivered
        failed += stats.failed
    far = _far_metric_rates(server, sizes.far_metric_transport_metrics, sizes.far_rounds)
    return {
        "metrics": total,
        "keys": len(keys),
        "max_in_flight": 8,
        "run_rate": ours[8],
        "run_rate_one_in_flight": ours[1],
        "far_metrics": sizes.far_metric_transport_metrics,
        "far_rates": {str(k): v for k, v in far.items()},
        "flushed": flushed,
        "delivered": delivered,
        "failed": failed,
        "raw_rates": {str(s): rate for s, rate in raw.items()},
        "raw_best_senders": best_senders,
        "raw_best_rate": best,
        "share_of_best": ours[8] / best,
    }


def _far_metric_rates(server: BenchServer, total: int, rounds: int) -> dict[int, float]:
    """`transport="metric"` behind a proxy adding 50 ms each way: 1 vs 8 in flight,
    interleaved `rounds` times (medians)."""
    from .latency_proxy import LatencyProxy

    keys = METRIC_TRANSPORT_KEYS
    rates: dict[int, list[float]] = {1: [], 8: []}
    with LatencyProxy(server.url, 0.05) as proxy:
        for in_flight in (1, 8) * rounds:
            log(f"metric transport, far (+50 ms each way): {in_flight} in flight, {total}")
            run = Run.start(
                endpoint=proxy.url,
                experiment_name=EXPERIMENT,
                run_name=f"metric-transport-far-{in_flight}",
                transport="metric",
                max_in_flight=in_flight,
            )
            with Timer() as timer:
                for step in range(total // len(keys)):
                    run.log_metrics({key: step + i for i, key in enumerate(keys)}, step=step)
                run.flush(timeout=600)
            run.end()
            rates[in_flight].append(total / timer.seconds)
    return {n: statistics.median(values) for n, values in rates.items()}


# -- 4. memory with the server down -----------------------------------------------------------


def _fill(run: Run, total: int) -> None:
    keys = DELIVERY_KEYS
    log_metrics = run.log_metrics
    for step in range(total // len(keys)):
        log_metrics({key: step + i * 0.125 for i, key in enumerate(keys)}, step=step)


def _outage_target(server: BenchServer) -> tuple[str, Callable[[], None]]:
    """The URL to log to and how to take it down: the local server itself, or (for a server
    the benchmark must not stop) a pass-through proxy in front of it, whose stop also cuts
    the connections it kept alive, so that from then on every request is refused."""
    if isinstance(server, LocalMLflowServer):
        return server.url, server.stop
    from .latency_proxy import LatencyProxy

    proxy = LatencyProxy(server.url, 0.0).start()
    return proxy.url, proxy.stop


def bench_queued_memory(server: BenchServer, sizes: Sizes) -> dict[str, Any]:
    """Memory growth with `rss_metrics` queued while the server is down. Stops the server
    (or the proxy in front of a server given with --tracking-uri).

    The goal is about the in-memory queue, so the runs keep everything in memory (no
    on-disk spool, where the options have one) with a queue bound that drops nothing.
    Two runs: one for RSS (after returning free heap to the OS, so that memory freed by
    earlier sections is not silently reused), one for the Python heap under tracemalloc
    (exact, but tracemalloc's own bookkeeping would distort RSS, hence a second run).
    """
    total = sizes.rss_metrics
    max_queue = max(200_000, 2 * total)
    options: dict[str, Any] = {"max_queue": max_queue, **_memory_only()}
    log(f"queued memory: stopping the server, then queueing {total} metrics (twice)")
    endpoint, take_down = _outage_target(server)
    rss_run = Run.start(
        endpoint=endpoint, experiment_name=EXPERIMENT, run_name="queued-rss", **options
    )
    heap_run = Run.start(
        endpoint=endpoint, experiment_name=EXPERIMENT, run_name="queued-heap", **options
    )
    take_down()
    # Connection refused and retrying are expected from here on: keep the log quiet.
    logging.getLogger("aidp_metrics").setLevel(logging.ERROR)

    gc.collect()
    trimmed = release_free_memory()
    peak_reset = reset_peak_rss()
    before = rss_bytes()
    peak_before = peak_rss_bytes()
    _fill(rss_run, total)
    gc.collect()
    after = rss_bytes()
    peak_after = peak_rss_bytes()
    rss_stats = rss_run.stats
    rss_abandoned = _discard(rss_run, "benchmark over")  # no waiting, nothing left at exit

    gc.collect()
    tracemalloc.start()
    heap_before = tracemalloc.get_traced_memory()[0]
    _fill(heap_run, total)
    gc.collect()
    heap_after, heap_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    heap_stats = heap_run.stats
    _discard(heap_run, "benchmark over")

    rss_growth = after - before
    heap_growth = heap_after - heap_before
    growth = max(rss_growth, heap_growth)
    return {
        "metrics": total,
        "max_queue": max_queue,
        "options": options,
        "rss_before": before,
        "rss_after": after,
        "rss_growth": rss_growth,
        "heap_growth": heap_growth,
        "heap_peak_growth": heap_peak - heap_before,
        "growth": growth,
        "growth_per_100k": growth * 100_000 / total,
        "bytes_per_metric": growth / total,
        "free_memory_released": trimmed,
        "peak_reset": peak_reset,
        "rss_peak_growth": peak_after - peak_before if peak_reset else None,
        "logged": rss_stats.logged + heap_stats.logged,
        "dropped": rss_stats.dropped + heap_stats.dropped,
        "abandoned": rss_abandoned,
    }


# -- the table ----------------------------------------------------------------------------------


def build_rows(results: dict[str, Any], sizes: Sizes) -> list[Row]:
    rows: list[Row] = []
    caller = results["caller_cost"]
    ours = caller["run_seconds_per_metric"].median
    rows.append(
        Row(
            "1. Run.log_metrics caller cost / metric",
            f"{fmt_seconds(ours)} (median of {sizes.caller_reps}x{sizes.caller_calls} calls)",
            f"≤ {fmt_seconds(GOAL_CALLER_SECONDS)}",
            f"{ours / GOAL_CALLER_SECONDS:.2f}x of budget",
            ours <= GOAL_CALLER_SECONDS,
        )
    )
    mlflow_async = caller["mlflow_async_seconds_per_metric"].median
    rows.append(
        Row(
            "   vs mlflow.log_metrics(synchronous=False)",
            f"mlflow {fmt_seconds(mlflow_async)} / metric",
            f"≥ {GOAL_VS_ASYNC:.0f}x cheaper",
            fmt_times(caller["ratio_vs_mlflow_async"]),
            caller["ratio_vs_mlflow_async"] >= GOAL_VS_ASYNC,
        )
    )
    mlflow_sync = caller["mlflow_sync_seconds_per_metric"].median
    rows.append(
        Row(
            "   vs MlflowClient.log_metric (sync)",
            f"mlflow {fmt_seconds(mlflow_sync)} / metric",
            f"≥ {GOAL_VS_SYNC:.0f}x cheaper",
            fmt_times(caller["ratio_vs_mlflow_sync"]),
            caller["ratio_vs_mlflow_sync"] >= GOAL_VS_SYNC,
        )
    )
    batch = results["batch_delivery"]
    rows.append(
        Row(
            f"2. Run batch delivery, {batch['metrics']:,} metrics",
            fmt_rate(batch["run_rate"]),
            f"≥ {GOAL_BATCH_SHARE:.0%} of raw log-batch ({fmt_rate(batch['raw_capacity'])})",
            f"{batch['share_of_capacity']:.1%}",
            batch["share_of_capacity"] >= GOAL_BATCH_SHARE,
        )
    )
    rows.append(
        Row(
            "   read-back completeness",
            f"{batch['read_back']:,} / {batch['metrics']:,} points",
            "100 %",
            f"{batch['completeness']:.1%}",
            batch["completeness"] == 1.0 and batch["mismatched_points"] == 0,
        )
    )
    sender = batch["sender_cpu_seconds_per_metric"]
    raw_cpu = batch["raw_cpu_seconds_per_metric"]
    rows.append(
        Row(
            "   delivery thread CPU / delivered metric",
            f"{fmt_seconds(sender)} (thread CPU time over the {batch['metrics']:,}-metric run)",
            f"≤ {fmt_seconds(GOAL_SENDER_CPU_SECONDS)}",
            f"{sender / GOAL_SENDER_CPU_SECONDS:.2f}x of budget",
            sender <= GOAL_SENDER_CPU_SECONDS,
        )
    )
    rows.append(
        Row(
            "   of which plain httpx would cost (same batches)",
            f"{fmt_seconds(raw_cpu)}: ours adds {fmt_seconds(sender - raw_cpu)} / metric",
            "-",
            f"{sender / raw_cpu:.2f}x plain httpx" if raw_cpu > 0 else "n/a",
            None,
        )
    )
    metric = results["metric_transport"]
    rows.append(
        Row(
            f"3. Run transport=metric, 8 in flight, {metric['metrics']:,}",
            fmt_rate(metric["run_rate"]),
            f"≥ {GOAL_METRIC_SHARE:.0%} of best raw log-metric "
            f"({fmt_rate(metric['raw_best_rate'])}, {metric['raw_best_senders']} senders)",
            f"{metric['share_of_best']:.1%}",
            metric["share_of_best"] >= GOAL_METRIC_SHARE,
        )
    )
    far_one, far_eight = metric["far_rates"]["1"], metric["far_rates"]["8"]
    rows.append(
        Row(
            "   far server (+50 ms each way): 8 vs 1 in flight",
            f"{fmt_rate(far_eight)} vs {fmt_rate(far_one)}",
            "in-flight lanes pay for their threads (> 1x)",
            fmt_times(far_eight / far_one),
            far_eight > far_one,
        )
    )
    memory = results["queued_memory"]
    per_100k = memory["growth_per_100k"]
    scaled = "" if memory["metrics"] == 100_000 else f" (-> {per_100k / MB:.1f} MB per 100k)"
    rows.append(
        Row(
            f"4. Memory growth, {memory['metrics']:,} queued, server down",
            f"RSS +{memory['rss_growth'] / MB:.1f} MB, heap +{memory['heap_growth'] / MB:.1f} MB"
            + scaled,
            f"≤ {GOAL_RSS_BYTES_PER_100K / MB:.0f} MB per 100k",
            f"{per_100k / GOAL_RSS_BYTES_PER_100K:.2f}x of budget",
            per_100k <= GOAL_RSS_BYTES_PER_100K,
        )
    )
    return rows


def print_details(results: dict[str, Any]) -> None:
    caller = results["caller_cost"]
    ours: Repeated = caller["run_seconds_per_metric"]
    cpu: Repeated = caller["run_thread_cpu_seconds_per_metric"]
    harness: Repeated = caller["harness_seconds_per_metric"]
    sync: Repeated = caller["mlflow_sync_seconds_per_metric"]
    async_: Repeated = caller["mlflow_async_seconds_per_metric"]
    batch = results["batch_delivery"]
    metric = results["metric_transport"]
    memory = results["queued_memory"]

    def spread(r: Repeated) -> str:
        return ", ".join(fmt_seconds(v) for v in r.values)

    raw_rates = ", ".join(
        f"{s} sender(s) {fmt_rate(rate)}" for s, rate in metric["raw_rates"].items()
    )
    peak = memory["rss_peak_growth"]
    peak_text = f"{peak / MB:.1f} MB" if peak is not None else "n/a (could not reset VmHWM)"
    lines = [
        "details:",
        f"  1. Run per-metric wall times: {spread(ours)}",
        f"     Run per-metric caller-thread CPU: {spread(cpu)} (excludes GIL waits)",
        f"     harness alone (dict + loop, included above): {fmt_seconds(harness.median)}",
        f"     MLflow sync per metric: {spread(sync)}; async per metric: {spread(async_)}",
        f"  2. Run {batch['run_seconds']:.2f} s incl. flush; raw log-batch "
        f"{fmt_rate(batch['raw_rate_before'])} before, {fmt_rate(batch['raw_rate_after'])} "
        f"after (capacity = their mean); {batch['stats']['requests']} requests, "
        f"{batch['stats']['dropped']} dropped, {batch['stats']['failed']} failed, "
        f"{batch['mismatched_points']} mismatched points; in-process CPU (caller + sender) "
        f"{fmt_seconds(batch['process_cpu_seconds_per_metric'])} per metric",
        f"  3. raw log-metric: {raw_rates}; Run with 1 in flight "
        f"{fmt_rate(metric['run_rate_one_in_flight'])}, with 8 {fmt_rate(metric['run_rate'])}; "
        f"{metric['delivered']} delivered, {metric['failed']} failed; far (+50 ms each way, "
        f"{metric['far_metrics']} metrics): 1 in flight {fmt_rate(metric['far_rates']['1'])}, "
        f"8 in flight {fmt_rate(metric['far_rates']['8'])}",
        f"  4. {memory['bytes_per_metric']:.0f} B/metric (the larger of RSS and heap growth); "
        f"RSS peak (VmHWM) growth {peak_text}; heap peak growth "
        f"{memory['heap_peak_growth'] / MB:.1f} MB; {memory['dropped']} dropped; "
        f"left at end {memory['abandoned']}; options {memory['options']}",
    ]
    print("\n".join(lines), flush=True)


# -- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_common_options(
        parser,
        quick="every size ~10x smaller",
        smoke="one repetition, the fewest metrics that run every section (a test, not a "
        "measurement)",
    )
    args = parser.parse_args(argv)
    size = size_name(args)
    sizes = SIZES[size]

    info = machine_info()
    buffering = os.environ.get("MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS")
    print_header(
        "aidp-metrics core benchmark" + size_suffix(size),
        info,
        [
            server_line(args.tracking_uri),
            f"note     numbers from one run on a possibly shared machine are noisy"
            f"{'; MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS=' + buffering if buffering else ''}",
        ],
    )
    started = time.perf_counter()
    results: dict[str, Any] = {}
    log("starting the MLflow server" if args.tracking_uri is None else "using the given server")
    with tracking_server(args.tracking_uri) as server:
        log(f"server up at {server.url}")
        # Any on-disk spool goes to the temp dir, never to ./aidp-metrics.
        os.environ["AIDP_METRICS_DIR"] = str(server.directory / "spool")
        results["caller_cost"] = bench_caller_cost(server, sizes)
        results["batch_delivery"] = bench_batch_delivery(server, sizes)
        results["metric_transport"] = bench_metric_transport(server, sizes)
        results["system_metrics"] = bench_system_metrics(server, size=size)
        results["queued_memory"] = bench_queued_memory(server, sizes)  # stops the server: last
    elapsed = time.perf_counter() - started

    rows = build_rows(results, sizes) + system_metrics_rows(results["system_metrics"])
    print_table(rows, "results (goals are informational; this benchmark never fails on them)")
    print_details(results)
    load = load_average()
    load_text = " ".join(f"{x:.2f}" for x in load) if load else "n/a"
    print(f"total {elapsed:.0f} s; load {load_text} (1/5/15 min) at the end", flush=True)

    if args.json:
        info["load_average_end"] = load
        write_json(
            args.json,
            {
                "benchmark": "core",
                "quick": args.quick,
                "size": size,
                "sizes": sizes.__dict__,
                "machine": info,
                "seconds": elapsed,
                "sections": results,
                "rows": rows,
            },
        )
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
