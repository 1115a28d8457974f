"""`Run.watch` and many-point `log_metrics` benchmark: the training thread's cost.

    python -m benchmarks.bench_watch [--quick | --smoke] [--tracking-uri URL] [--json out.json]

1. A `log_metrics` call of 300 keys (what `watch` logs for a model of ~300 parameter
   tensors): the caller's CPU per point beside a bare loop that only converts each value
   with `float()` into a list, interleaved in the same process. Goals: at most 0.3 µs per
   point, at most 3x the bare loop.
2. `watch(model, log="gradients", log_freq=1)` on a CPU model of 100 parameter tensors:
   the CPU `optimizer.step()` costs with the watcher minus without it (the added
   training-thread cost of a logging step), beside the norm computation alone (torch's
   fused norms and the one host transfer, without any logging). Interleaved per
   repetition; medians with min-max.

Thread CPU time (`time.thread_time`) throughout; the delivery thread runs meanwhile, as in
training. Numbers from a shared machine are noisy: compare the ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any

from aidp_metrics._run.run import Run

from ._common import (
    Repeated,
    Row,
    add_common_options,
    log,
    machine_info,
    print_header,
    print_table,
    repeat,
    server_line,
    size_name,
    size_suffix,
    tracking_server,
    write_json,
)

EXPERIMENT = "bench-watch"
KEYS = 300
LAYERS = 50  # Linear layers: 100 parameter tensors
WIDTH = 64
POINT_GOAL = 0.3e-6
RATIO_GOAL = 3.0


@dataclass(frozen=True)
class Sizes:
    reps: int
    calls: int  # log_metrics calls (of KEYS points) per repetition
    steps: int  # optimizer steps per variant and repetition


SIZES = {
    "full": Sizes(reps=15, calls=200, steps=200),
    "quick": Sizes(reps=7, calls=40, steps=40),
    "smoke": Sizes(reps=1, calls=2, steps=2),
}


def bench_many_points(run: Run, sizes: Sizes) -> dict[str, Any]:
    metrics = {f"grad_norm/layers.{i}.weight": 0.5 + i * 1e-4 for i in range(KEYS)}
    run.log_metrics(metrics, step=0)  # keys seen once, as at every logging step after the first
    step = [1]

    def bare() -> float:
        start = time.thread_time()
        for _ in range(sizes.calls):
            out: list[float] = []
            for value in metrics.values():
                out.append(float(value))
        return (time.thread_time() - start) / (sizes.calls * KEYS)

    def ours() -> float:
        start = time.thread_time()
        for _ in range(sizes.calls):
            run.log_metrics(metrics, step=step[0])
            step[0] += 1
        return (time.thread_time() - start) / (sizes.calls * KEYS)

    bare_values: list[float] = []
    ours_values: list[float] = []

    def both() -> float:
        bare_values.append(bare())
        ours_values.append(ours())
        return ours_values[-1] / bare_values[-1]

    log(f"log_metrics of {KEYS} keys: {sizes.reps} x {sizes.calls} calls, interleaved with bare")
    ratio = repeat(both, sizes.reps, between=lambda: run.flush(60))
    return {
        "keys": KEYS,
        "ours_seconds_per_point": Repeated(tuple(ours_values)),
        "bare_seconds_per_point": Repeated(tuple(bare_values)),
        "ratio": ratio,
    }


def bench_watch(run: Run, sizes: Sizes) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(*(torch.nn.Linear(WIDTH, WIDTH) for _ in range(LAYERS)))
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=1e-6)
    model(torch.randn(8, WIDTH)).pow(2).mean().backward()  # gradients stay: steps reuse them
    grads = [p.grad for p in params if p.grad is not None]

    def steps() -> float:
        start = time.thread_time()
        for _ in range(sizes.steps):
            optimizer.step()
        return (time.thread_time() - start) / sizes.steps

    def norms_alone() -> float:
        start = time.thread_time()
        for _ in range(sizes.steps):
            with torch.no_grad():
                norms = torch.stack(torch._foreach_norm(grads, 2))
                total = torch.linalg.vector_norm(norms).reshape(1)
                torch.cat([norms, total]).tolist()
        return (time.thread_time() - start) / sizes.steps

    plain: list[float] = []
    watched: list[float] = []
    alone: list[float] = []

    def one() -> float:
        plain.append(steps())
        run.watch(model, log="gradients", log_freq=1)
        watched.append(steps())
        run.unwatch(model)
        alone.append(norms_alone())
        return watched[-1] - plain[-1]

    log(f"watch: {len(params)} parameter tensors, {sizes.reps} x {sizes.steps} steps a variant")
    added = repeat(one, sizes.reps, between=lambda: run.flush(60))
    return {
        "parameter_tensors": len(params),
        "step_seconds": Repeated(tuple(plain)),
        "watched_step_seconds": Repeated(tuple(watched)),
        "added_seconds_per_logging_step": added,
        "norms_alone_seconds": Repeated(tuple(alone)),
        "added_over_norms": added.median / statistics.median(alone),
    }


def _spread(values: Repeated, scale: float = 1e6) -> str:
    return f"{values.median * scale:.3g} ({values.best * scale:.3g}-{values.worst * scale:.3g})"


def build_rows(results: dict[str, Any]) -> list[Row]:
    many, watch = results["many_points"], results["watch"]
    ours, bare = many["ours_seconds_per_point"], many["bare_seconds_per_point"]
    ratio = many["ratio"]
    added, alone = watch["added_seconds_per_logging_step"], watch["norms_alone_seconds"]
    return [
        Row(
            f"log_metrics, {KEYS} keys: caller CPU per point (µs)",
            _spread(ours),
            f"<= {POINT_GOAL * 1e6:g} µs",
            f"bare float() loop {_spread(bare)} µs",
            ours.median <= POINT_GOAL,
        ),
        Row(
            f"log_metrics, {KEYS} keys vs bare float() loop",
            f"{ratio.median:.2f}x ({ratio.best:.2f}-{ratio.worst:.2f})",
            f"<= {RATIO_GOAL:g}x",
            "same run, interleaved",
            ratio.median <= RATIO_GOAL,
        ),
        Row(
            f"watch, {watch['parameter_tensors']} tensors, log_freq=1: added CPU per step (µs)",
            _spread(added),
            "norms + logging",
            f"norms alone {_spread(alone)} µs; {watch['added_over_norms']:.2f}x",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_common_options(parser, quick="fewer repetitions", smoke="one short repetition (a test)")
    args = parser.parse_args(argv)
    size = size_name(args)
    sizes = SIZES[size]
    info = machine_info()
    print_header(
        "aidp-metrics watch benchmark" + size_suffix(size),
        info,
        [server_line(args.tracking_uri), "note     a shared machine is noisy: read the ratios"],
    )
    results: dict[str, Any] = {}
    with tracking_server(args.tracking_uri) as server:
        os.environ["AIDP_METRICS_DIR"] = str(server.directory / "spool")
        run = Run.start(endpoint=server.url, experiment_name=EXPERIMENT, spool="off")
        try:
            results["many_points"] = bench_many_points(run, sizes)
            results["watch"] = bench_watch(run, sizes)
        finally:
            stats = run.end()
        results["run"] = {"logged": stats.logged, "delivered": stats.delivered}
    rows = build_rows(results)
    print_table(rows, "results (goals are informational; this benchmark never fails on them)")
    if args.json:
        write_json(args.json, {"benchmark": "watch", "size": size, "sections": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
