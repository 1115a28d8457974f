"""Framework benchmark: start-up, steady-state overhead per step and tail of per-step
logging, ours vs MLflow's integrations.

    python -m benchmarks.bench_frameworks [--quick | --smoke] [--tracking-uri URL]
        [--frameworks lightning,transformers,keras,accelerate] [--configs a,b,c,d,e]
        [--servers near,far] [--delay 0.05] [--steps N] [--warmup-share 0.2]
        [--min-repetitions 6] [--max-repetitions 20] [--budget-minutes M]
        [--c-repetitions N] [--json out.json] [--png out.png]

One real MLflow server (sqlite, `--workers 1`) and, in front of it, a latency proxy adding
`--delay` seconds each way per request (a stand-in for a cloud endpoint). For each framework
a tiny model on synthetic data logs every optimizer step (>= 3 metrics per step) with:

  (a) no logger,
  (b) our integration (default options),
  (c) MLflow's integration as users get it by default,
  (d) MLflow's integration with async logging,
  (e) MLflow's best: async plus MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS=1,

(b)-(e) against the near server and/or the far (proxied) one.

Method. Each run is a fresh process, forked for it by a per-framework fork server that
imported the framework once (`_frameworks_forkserver`), so MLflow's process-global state
never leaks between runs and the framework's import is in no figure. A repetition runs every
configuration once, in alternating order (a, b, ..., e, then e, ..., b, a), and repetitions
continue until, on the training thread's CPU clock, every configuration's added time per step
has an interval smaller than its effect (or, for (b), an interval wholly within the 2 %
goal), with at least `--min-repetitions` and at most `--max-repetitions` or the time budget.
Each run reports, on the wall clock and on the training thread's CPU clock
(`time.thread_time`, which a loaded machine perturbs much less):

- start-up: from just before the integration is imported and built (run creation and the
  framework's set-up included) to the end of the first step;
- steady state: time per step over the steps after the first and a warm-up
  (`--warmup-share` of the steps);
- teardown (last step -> fit and the finishing call returned) and tail (last step -> every
  logged point readable on the server, polled directly on the near server);
- completeness (distinct (key, step) points read back / points handed to the integration).

Sizes: full is 300 steps per run, 6-20 repetitions, near and far servers; `--quick` 30
steps, 2 repetitions, near only; `--smoke` (the test suite's end-to-end check) 10 steps, 2
repetitions (the fewest that interleave), near only. `--tracking-uri URL` logs to a running
MLflow server (the "near" one) instead of starting one.

A configuration's added cost in a repetition is its figure minus (a)'s in the same
repetition; over repetitions we report the median, quartiles and a distribution-free
interval for the median (see `_frameworks_stats`). Numbers are informational: nothing here
fails on a goal.

Note: MLflow's Transformers `MLflowCallback` and `mlflow.keras.MlflowCallback` always log
with `synchronous=False`, so for those two (c) is already asynchronous and (d) only adds
MLFLOW_ENABLE_ASYNC_LOGGING=true. Accelerate is a plain loop calling `accelerator.log` every
step: (a) with no tracker configured (the call is then a no-op), (b) `AIDPTracker`, (c)-(e)
Accelerate's own `log_with="mlflow"` (`MLflowTracker`, `mlflow.log_metrics` per call,
synchronous unless MLFLOW_ENABLE_ASYNC_LOGGING); `end_training()` is part of the teardown.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._common import (
    add_common_options,
    fmt_seconds,
    load_average,
    log,
    machine_info,
    print_grid,
    print_header,
    print_table,
    server_line,
    size_name,
    size_suffix,
    tracking_server,
    write_json,
)
from ._frameworks_forkserver import ForkServer
from ._frameworks_report import (
    CONFIG_LABELS,
    GOAL_OVERHEAD_SHARE,
    IN_RUN_HEADERS,
    MIN_COVERAGE,
    STARTUP_HEADERS,
    STEADY_HEADERS,
    goal_rows,
    in_run_grid,
    startup_grid,
    steady_grid,
    summarize,
    write_png,
)
from ._frameworks_stats import Spread
from ._frameworks_workers import WorkerArgs

FRAMEWORKS = ("lightning", "transformers", "keras", "accelerate")
CONFIGS = ("a", "b", "c", "d", "e")
FULL_STEPS = 300
QUICK_STEPS = 30
SMOKE_STEPS = 10
WORKER_TIMEOUT = 1800.0


@dataclasses.dataclass(frozen=True)
class Plan:
    frameworks: tuple[str, ...]
    configs: tuple[str, ...]
    servers: tuple[str, ...]
    steps: int
    warmup: int
    min_repetitions: int
    max_repetitions: int
    budget_seconds: float | None  # all frameworks together
    c_repetitions: int | None  # (c) only in the first N repetitions (None: in all)

    @property
    def cells(self) -> list[str]:
        """(a) once, each other configuration per server: "config/server"."""
        return ["a/-"] + [f"{c}/{s}" for c in self.configs if c != "a" for s in self.servers]

    def order(self, repetition: int) -> list[str]:
        """This repetition's cells: forward in even repetitions, backward in odd ones, so
        a drift in machine load hits every configuration alike."""
        cells = [
            key
            for key in self.cells
            if not (
                key.startswith("c/")
                and self.c_repetitions is not None
                and repetition >= self.c_repetitions
            )
        ]
        return cells if repetition % 2 == 0 else cells[::-1]


def worker_env(config: str, target: str | None, experiment: str, spool: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_", "AIDP_")) and k != "DISABLE_MLFLOW_INTEGRATION"
    }
    env.update(
        AIDP_METRICS_DIR=str(spool),
        KERAS_BACKEND="torch",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_NO_ADVISORY_WARNINGS="1",
        GIT_PYTHON_REFRESH="quiet",
        PYTHONWARNINGS="ignore",
    )
    if config in ("c", "d", "e"):
        assert target is not None
        env.update(MLFLOW_TRACKING_URI=target, MLFLOW_EXPERIMENT_NAME=experiment)
    if config in ("d", "e"):
        env["MLFLOW_ENABLE_ASYNC_LOGGING"] = "true"
    if config == "e":
        env["MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS"] = "1"
    return env


@dataclasses.dataclass(frozen=True)
class Setting:
    """Where runs log to and leave their files."""

    urls: dict[str, str | None]  # server name -> URL ("-": none)
    near: str
    spool: Path
    results: Path


def run_one(
    server: ForkServer, framework: str, key: str, repetition: int, plan: Plan, where: Setting
) -> dict[str, Any]:
    config, server_name = key.split("/")
    tag = uuid.uuid4().hex[:8]
    experiment = f"bench-{framework}-{config}-{server_name}-{tag}"
    target = where.urls[server_name]
    worker = WorkerArgs(framework, config, plan.steps, plan.warmup, target, where.near, experiment)
    started = time.perf_counter()
    result = server.run(
        {
            "env": worker_env(config, target, experiment, where.spool),
            "worker": dataclasses.asdict(worker),
            "result_path": str(where.results / f"{tag}.json"),
            "timeout": WORKER_TIMEOUT,
        }
    )
    result.update(
        framework=framework,
        config=config,
        server=server_name,
        cell=key,
        repetition=repetition,
        process_seconds=time.perf_counter() - started,
    )
    if "error" in result:
        log(f"    {framework} {key} failed: {result['error']}\n{result.get('stderr_tail', '')}")
    else:
        log(
            f"    rep {repetition + 1} {framework} ({config}) {server_name}: start-up "
            f"{fmt_seconds(result['startup_seconds'])}, step "
            f"{fmt_seconds(result['step_seconds'])} wall / "
            f"{fmt_seconds(result['step_cpu_seconds'])} CPU, tail "
            f"{fmt_seconds(result['tail_seconds'])}, {result['read_back_points']}/"
            f"{result['logged_points']} points"
        )
    return result


def _settled(cell: dict[str, Any], key: str, base_step: Spread | None) -> bool:
    """On the CPU clock: spread < effect, or (b)'s interval wholly within its goal."""
    added: Spread | None = cell.get("added_step_cpu_seconds")
    if added is None:
        return False
    if added.resolved:
        return True
    return (
        key.startswith("b/")
        and base_step is not None
        and added.coverage >= MIN_COVERAGE
        and added.ci_high <= GOAL_OVERHEAD_SHARE * base_step.median
    )


def unsettled(runs: Sequence[dict[str, Any]], framework: str, plan: Plan) -> list[str]:
    cells = summarize(runs, [framework], plan.cells)[framework]["cells"]
    base = cells.get("a/-", {}).get("step_cpu_seconds")
    return [k for k in plan.cells if k != "a/-" and not _settled(cells[k], k, base)]


def run_framework(
    framework: str, plan: Plan, where: Setting, budget: float | None
) -> list[dict[str, Any]]:
    """Interleaved repetitions of every cell, until settled, `max_repetitions` or the
    budget (a repetition that started always finishes)."""
    runs: list[dict[str, Any]] = []
    started = time.perf_counter()
    env = worker_env("a", None, "", where.spool)
    with ForkServer(framework, env, where.results / f"forkserver-{framework}.log") as server:
        log(f"{framework}: fork server ready ({server.info})")
        for repetition in range(plan.max_repetitions):
            for key in plan.order(repetition):
                runs.append(run_one(server, framework, key, repetition, plan, where))
            done = repetition + 1
            elapsed = time.perf_counter() - started
            open_cells = unsettled(runs, framework, plan)
            log(
                f"{framework}: {done} repetition(s) in {elapsed:.0f} s; "
                f"spread >= effect (CPU): {', '.join(open_cells) or 'none'}"
            )
            if done < plan.min_repetitions:
                continue
            if not open_cells:
                break
            if budget is not None and elapsed * (done + 1) / done > budget:
                log(f"{framework}: stopping, another repetition would exceed the budget")
                break
    return runs


def run_plan(plan: Plan, where: Setting) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    started = time.perf_counter()
    for index, framework in enumerate(plan.frameworks):
        budget = None
        if plan.budget_seconds is not None:
            left = plan.budget_seconds - (time.perf_counter() - started)
            budget = max(left, 0.0) / (len(plan.frameworks) - index)
        log(
            f"{framework}: {plan.steps} steps, cells {', '.join(plan.cells)}, budget "
            + ("none" if budget is None else f"{budget:.0f} s")
        )
        runs += run_framework(framework, plan, where, budget)
    return runs


def _csv(value: str, allowed: Sequence[str], what: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    bad = [v for v in items if v not in allowed]
    if bad or not items:
        raise SystemExit(f"--{what}: {bad or value!r} not in {', '.join(allowed)}")
    return items


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add = parser.add_argument
    add_common_options(
        parser,
        quick=f"{QUICK_STEPS} steps, 2 repetitions, near only",
        smoke=f"{SMOKE_STEPS} steps, 2 repetitions, near only (a test, not a measurement)",
    )
    add("--frameworks", default=",".join(FRAMEWORKS))
    add("--configs", default=",".join(CONFIGS), help="(a) is always run: the baseline")
    add("--servers", default=None, help="near,far (quick, smoke: near)")
    add("--delay", type=float, default=0.05, help="proxy delay each way, s")
    add("--steps", type=int, default=None, help=f"steps per run (default {FULL_STEPS})")
    add("--warmup-share", type=float, default=0.2, help="share of steps before steady state")
    add("--min-repetitions", type=int, default=None, help="default 6 (quick, smoke: 2)")
    add("--max-repetitions", type=int, default=None, help="default 20 (quick, smoke: 2)")
    add("--budget-minutes", type=float, default=None, help="stop adding repetitions after")
    add("--c-repetitions", type=int, default=None, help="run (c) in the first N only")
    add("--png", metavar="PATH", help="also draw a bar chart")
    return parser.parse_args(argv)


def make_plan(args: argparse.Namespace) -> Plan:
    configs = _csv(args.configs, CONFIGS, "configs")
    small = args.quick or args.smoke
    steps = args.steps or (SMOKE_STEPS if args.smoke else QUICK_STEPS if small else FULL_STEPS)
    low = args.min_repetitions or (2 if small else 6)
    return Plan(
        frameworks=_csv(args.frameworks, FRAMEWORKS, "frameworks"),
        configs=configs if "a" in configs else ("a", *configs),
        servers=_csv(args.servers or ("near" if small else "near,far"), ("near", "far"), "servers"),
        steps=steps,
        warmup=max(1, round(steps * args.warmup_share)),
        min_repetitions=low,
        max_repetitions=max(low, args.max_repetitions or (2 if small else 20)),
        budget_seconds=None if args.budget_minutes is None else args.budget_minutes * 60,
        c_repetitions=args.c_repetitions,
    )


def print_report(summary: dict[str, Any], plan: Plan) -> list[Any]:
    print_grid(
        STEADY_HEADERS,
        steady_grid(summary, "cpu"),
        f"results: steady state, training-thread CPU per step (steps {plan.warmup + 2}-"
        f"{plan.steps}); added = run minus (a) in the same repetition, over repetitions",
    )
    print_grid(STEADY_HEADERS, steady_grid(summary, "wall"), "steady state, wall time per step")
    print_grid(
        IN_RUN_HEADERS,
        in_run_grid(summary),
        "steady state, split within each run: the training thread's CPU inside the "
        "integration's hooks, and the other threads' CPU (delivery, MLflow's async queue), "
        "per step; share = (hooks - timer) / (the run's CPU per step - hooks - timer), where "
        "timer is the probe's own cost, an empty call timed the same way after each hook",
    )
    print_grid(
        STARTUP_HEADERS,
        startup_grid(summary),
        "start-up (integration imported and built -> end of step 1; medians), teardown (last "
        "step -> fit and finish returned) and tail (last step -> all points on the server)",
    )
    rows = goal_rows(summary, plan.servers)
    if rows:
        print_table(rows, "goals (informational; this benchmark never fails on them)")
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    plan = make_plan(args)
    size = size_name(args)
    info = machine_info()
    print_header(
        "aidp-metrics framework benchmark" + size_suffix(size),
        info,
        [
            f"{server_line(args.tracking_uri)}; far = "
            f"latency proxy +{args.delay * 1e3:.0f} ms each way",
            f"plan     {', '.join(plan.frameworks)}; {plan.steps} steps (steady state after "
            f"step {plan.warmup + 1}); cells {', '.join(plan.cells)}; {plan.min_repetitions}-"
            f"{plan.max_repetitions} interleaved repetitions"
            + ("" if plan.budget_seconds is None else f", budget {args.budget_minutes:g} min"),
            "method   one forked process per run; added = paired difference to (a) in the "
            "same repetition; interval = distribution-free interval of the median",
        ],
    )
    started = time.perf_counter()
    from .latency_proxy import LatencyProxy

    with (
        tracking_server(args.tracking_uri, "aidp-bench-fw-") as server,
        LatencyProxy(server.url, args.delay) as proxy,
        tempfile.TemporaryDirectory(prefix="aidp-bench-fw-results-") as results,
    ):
        log(f"server {server.url}, proxy {proxy.url} (+{args.delay * 1e3:.0f} ms each way)")
        urls = {"near": server.url, "far": proxy.url, "-": None}
        where = Setting(urls, server.url, server.directory / "spool", Path(results))
        runs = run_plan(plan, where)
        proxied = {"requests": proxy.requests, "failures": proxy.failures}
    elapsed = time.perf_counter() - started
    summary = summarize(runs, plan.frameworks, plan.cells)
    rows = print_report(summary, plan)
    load = load_average()
    load_text = " ".join(f"{x:.2f}" for x in load) if load else "n/a"
    failed = sum(1 for r in runs if "error" in r)
    print(
        f"total {elapsed:.0f} s ({elapsed / 60:.1f} min), {len(runs)} runs, {failed} failed; "
        f"proxy {proxied['requests']} requests, {proxied['failures']} failed; "
        f"load {load_text} (1/5/15 min) at the end",
        flush=True,
    )
    if args.png:
        write_png(args.png, summary, plan.configs, plan.servers)
        log(f"wrote {args.png}")
    if args.json:
        info["load_average_end"] = load
        plan_json = {**dataclasses.asdict(plan), "cells": plan.cells}
        write_json(
            args.json,
            {
                "benchmark": "frameworks",
                "quick": args.quick,
                "size": size,
                "delay_seconds": args.delay,
                "plan": plan_json,
                "config_labels": CONFIG_LABELS,
                "machine": info,
                "seconds": elapsed,
                "proxy": proxied,
                "summary": summary,
                "runs": runs,
                "rows": rows,
            },
        )
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
