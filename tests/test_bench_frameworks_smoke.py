"""Smoke test of the framework benchmark: one quick run of (a) and (b) for Lightning and
Accelerate (whichever is installed), in one benchmark process.

No timing assertions: the benchmark's numbers are informational.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FRAMEWORKS = [f for f in ("lightning", "accelerate") if importlib.util.find_spec(f) is not None]


@pytest.mark.slow
@pytest.mark.lightning
def test_bench_frameworks_quick(tmp_path: Path) -> None:
    if not FRAMEWORKS:
        pytest.skip("neither lightning nor accelerate is installed")
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.bench_frameworks",
            "--quick",
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
    assert data["quick"] is True
    assert data["plan"]["frameworks"] == FRAMEWORKS
    assert data["plan"]["servers"] == ["near"]
    runs = data["runs"]
    assert not [r for r in runs if "error" in r]
    for framework in FRAMEWORKS:
        mine = [r for r in runs if r["framework"] == framework]
        assert {(r["config"], r["server"]) for r in mine} == {("a", "-"), ("b", "near")}
        ours = next(r for r in mine if r["config"] == "b")
        assert ours["steps"] == data["plan"]["steps"][framework]
        assert ours["logged_points"] >= 3 * ours["steps"]
        assert ours["read_back_points"] == ours["logged_points"]
        assert ours["completeness"] == 1.0
        assert ours["timed_out"] is False
        cells = data["summary"][framework]["cells"]
        assert set(cells) == {"a/-", "b/near"}
        assert cells["b/near"]["completeness_min"] == 1.0
        assert "overhead_seconds_per_step" in cells["b/near"]
    assert "results" in result.stdout
