"""Running a Python script in a process of its own against the tests' MLflow server (the
examples, the documentation's code blocks): its environment, and the run that must exit 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
TIMEOUT = 300
# Inherited variables that would point a child process elsewhere or into another run.
SCRUBBED = (
    "AIDP_INSTANCE_ID",
    "AIDP_WORKSPACE_KEY",
    "AIDP_ENDPOINT",
    "AIDP_RUN_ID",
    "AIDP_EXPERIMENT_NAME",
    "AIDP_METRICS_MODE",
    "MLFLOW_RUN_ID",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_TRACKING_URI",
)


def child_env(
    tracking_uri: str, workdir: Path, *, with_checkout: bool = False, **extra: str
) -> dict[str, str]:
    """This process' environment, scrubbed, pointed at `tracking_uri` with a spool under
    `workdir`; `with_checkout`: the checkout importable too (the examples' helpers)."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    env.update(
        MLFLOW_TRACKING_URI=tracking_uri,
        AIDP_METRICS_DIR=str(workdir / "spool"),
        KERAS_BACKEND=env.get("KERAS_BACKEND", "torch"),
        OMP_NUM_THREADS="1",  # tests share the machine; tiny models gain nothing from more
    )
    if with_checkout:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def run_script(
    args: list[str], env: dict[str, str], cwd: Path, *, label: str = "", timeout: float = TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """`python *args` in `cwd`; fails (AssertionError, with the output's tails) unless it
    exits 0."""
    result = subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, (
        f"{label}{': ' if label else ''}exit {result.returncode}\n--- stdout\n"
        f"{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
    )
    return result
