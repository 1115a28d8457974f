"""Smoke test of the framework benchmark: a `--smoke` run of (a) and (b) for Lightning and
Accelerate (whichever is installed), two interleaved repetitions, in one benchmark process,
logging to the session's MLflow server.

No timing assertions: the benchmark's numbers are informational.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.mlflow_server import MLflowServer

ROOT = Path(__file__).resolve().parent.parent
FRAMEWORKS = [f for f in ("lightning", "accelerate") if importlib.util.find_spec(f) is not None]


@pytest.mark.slow
@pytest.mark.lightning
def test_bench_frameworks_smoke(mlflow_server: MLflowServer, tmp_path: Path) -> None:
    if not FRAMEWORKS:
        pytest.skip("neither lightning nor accelerate is installed")
    mlflow_server.start()  # no-op unless an earlier test left it stopped
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.bench_frameworks",
            "--smoke",
            "--tracking-uri",
            mlflow_server.url,
            "--frameworks",
            ",".join(FRAMEWORKS),
            "--configs",
            "a,b",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=500,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    data = json.loads(out.read_text())
    assert data["benchmark"] == "frameworks"
    assert data["size"] == "smoke"
    assert data["plan"]["frameworks"] == FRAMEWORKS
    assert data["plan"]["servers"] == ["near"]
    runs = data["runs"]
    assert not [r for r in runs if "error" in r]
    steps = data["plan"]["steps"]
    for framework in FRAMEWORKS:
        mine = [r for r in runs if r["framework"] == framework]
        # Interleaved: (a) then (b) in the first repetition, (b) then (a) in the second.
        assert [(r["repetition"], r["cell"]) for r in mine] == [
            (0, "a/-"),
            (0, "b/near"),
            (1, "b/near"),
            (1, "a/-"),
        ]
        for run in mine:
            assert run["steps"] == steps
            assert run["warmup_steps"] + 1 + run["steady_steps"] == steps
            assert run["startup_seconds"] > 0
            assert run["step_cpu_seconds"] > 0
        for baseline in (r for r in mine if r["config"] == "a"):
            assert baseline["hook_cpu_seconds"] == 0.0  # no integration, no timed hook
        for ours in (r for r in mine if r["config"] == "b"):
            # The in-run split: our hooks ran on the training thread, inside its step.
            assert 0 < ours["hook_cpu_seconds"] < ours["step_cpu_seconds"]
            assert ours["hook_share"] > 0
            # Two clocks read one after the other: around zero it can be a hair below.
            assert ours["other_threads_cpu_seconds"] > -1e-4
            assert ours["logged_points"] >= 3 * steps
            assert ours["read_back_points"] == ours["logged_points"]
            assert ours["completeness"] == 1.0
            assert ours["timed_out"] is False
        cells = data["summary"][framework]["cells"]
        assert set(cells) == {"a/-", "b/near"}
        ours_cell = cells["b/near"]
        assert ours_cell["reps"] == 2
        assert ours_cell["completeness_min"] == 1.0
        for field in (
            "added_step_seconds",
            "added_step_cpu_seconds",
            "added_startup_seconds",
            "hook_share",
            "added_other_threads_cpu_seconds",
        ):
            assert ours_cell[field]["n"] == 2
            assert ours_cell[field]["ci_low"] <= ours_cell[field]["median"]
            assert ours_cell[field]["median"] <= ours_cell[field]["ci_high"]
    for title in (
        "steady state, training-thread CPU",
        "wall time per step",
        "split within each run",
        "start-up",
        "goals",
        "(b) CPU in its hooks / step",
    ):
        assert title in result.stdout


def test_median_interval_is_the_sign_test_interval() -> None:
    from benchmarks._frameworks_stats import median_interval

    # Six values: no pair of order statistics covers 95 % but min-max (1 - 2/64).
    assert median_interval([6.0, 1.0, 5.0, 2.0, 4.0, 3.0]) == (1.0, 6.0, 1 - 2 / 64)
    # Nine: x(2)..x(8) covers 1 - 2 * (1 + 9) / 512 = 96.1 %; x(3)..x(7) only 82 %.
    low, high, coverage = median_interval([float(v) for v in range(9, 0, -1)])
    assert (low, high) == (2.0, 8.0)
    assert coverage == 1 - 2 * 10 / 512


def test_paired_differences_match_repetitions() -> None:
    from benchmarks._frameworks_stats import paired, spread

    base = [{"repetition": r, "x": 10.0 + r} for r in range(3)]
    runs = [
        {"repetition": 2, "x": 15.0},
        {"repetition": 0, "x": 11.0},
        {"repetition": 1, "error": "exit 1"},
        {"repetition": 3, "x": 99.0},  # no (a) in that repetition: not paired
    ]
    assert paired(runs, base, "x") == [1.0, 3.0]
    result = spread([1.0, 3.0])
    assert result is not None
    assert (result.median, result.low, result.high, result.n) == (2.0, 1.0, 3.0, 2)
    assert not result.resolved  # the interval (1..3) is wider than the median (2)
