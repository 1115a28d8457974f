"""Smoke test of the core benchmark: it runs end to end and reports every section.

No timing assertions: the benchmark's numbers are informational.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("caller_cost", "batch_delivery", "metric_transport", "queued_memory")


@pytest.mark.slow
def test_bench_core_quick_writes_every_section(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_core", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        # generous: on a loaded machine the server alone can take a minute to start (pytest's
        # own 600 s limit stays the backstop)
        timeout=540,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    data = json.loads(out.read_text())
    assert data["quick"] is True
    assert set(SECTIONS) <= set(data["sections"])
    assert data["machine"]["cores"] >= 1
    batch = data["sections"]["batch_delivery"]
    assert batch["completeness"] == 1.0
    assert batch["mismatched_points"] == 0
    assert len(data["rows"]) >= len(SECTIONS)
    assert "results" in result.stdout
