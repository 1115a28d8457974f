"""Smoke test of the core benchmark: it runs end to end (`--smoke` sizes, against the
session's MLflow server) and reports every section.

No timing assertions: the benchmark's numbers are informational.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.mlflow_server import MLflowServer

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("caller_cost", "batch_delivery", "metric_transport", "queued_memory")


@pytest.mark.slow
def test_bench_core_smoke_writes_every_section(mlflow_server: MLflowServer, tmp_path: Path) -> None:
    mlflow_server.start()  # no-op unless an earlier test left it stopped
    out = tmp_path / "bench.json"
    command = ["-m", "benchmarks.bench_core", "--smoke", "--tracking-uri", mlflow_server.url]
    result = subprocess.run(
        [sys.executable, *command, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=540,  # generous for a loaded machine; pytest's own 600 s limit is the backstop
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    data = json.loads(out.read_text())
    assert data["size"] == "smoke"
    assert set(SECTIONS) <= set(data["sections"])
    assert data["machine"]["cores"] >= 1
    batch = data["sections"]["batch_delivery"]
    assert batch["completeness"] == 1.0
    assert batch["mismatched_points"] == 0
    assert batch["read_back"] == batch["metrics"] == data["sizes"]["delivery_metrics"]
    assert data["sections"]["metric_transport"]["failed"] == 0
    assert data["sections"]["system_metrics"]["complete"] is True
    assert data["sections"]["queued_memory"]["dropped"] == 0
    assert len(data["rows"]) >= len(SECTIONS)
    assert "results" in result.stdout
    # The server the benchmark was given is still up: section 4 cut a proxy, not the server.
    assert mlflow_server.running


@pytest.mark.slow
def test_bench_watch_smoke_reports_both_sections(
    mlflow_server: MLflowServer, tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    mlflow_server.start()
    out = tmp_path / "watch.json"
    command = ["-m", "benchmarks.bench_watch", "--smoke", "--tracking-uri", mlflow_server.url]
    result = subprocess.run(
        [sys.executable, *command, "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    data = json.loads(out.read_text())
    assert set(data["sections"]) == {"many_points", "watch", "run"}
    assert data["sections"]["watch"]["parameter_tensors"] == 100
    run = data["sections"]["run"]
    # 1 + 2 calls of 300 keys, then 2 logging steps of 100 tensors + total
    assert run["logged"] == run["delivered"] == 900 + 2 * 101
    assert "results" in result.stdout


@pytest.mark.slow
def test_bench_artifacts_smoke_reports_every_figure(
    mlflow_server: MLflowServer, tmp_path: Path
) -> None:
    mlflow_server.start()  # no-op unless an earlier test left it stopped
    out = tmp_path / "bench.json"
    command = ["-m", "benchmarks.bench_artifacts", "--smoke", "--tracking-uri", mlflow_server.url]
    result = subprocess.run(
        [sys.executable, *command, "--json", str(out)],
        cwd=tmp_path,  # its scratch files (a 16 MB checkpoint, the spool) go here
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    data = json.loads(out.read_text())
    assert data["size"] == "smoke"
    returns = data["result"]["returns"]
    assert set(returns) == {"copy", "link"}
    assert all(mode["complete"] for mode in returns.values())
    assert data["result"]["training"]["complete"] is True
    assert {s["how"] for s in data["result"]["snapshots"]} >= {"link"}
    assert len(data["rows"]) == 6
    assert "results" in result.stdout
