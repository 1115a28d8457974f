"""Test modules run again in a child pytest, for what one process cannot hold twice.

Keras binds its backend at its first import, and importing `pytorch_lightning` next to
`lightning.pytorch` changes what every later test sees; so those modules run a second time in
a child pytest (one process, `-n 0`) with the environment that picks the other variant. The
outcome of every test comes back from the child's JUnit report.
"""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_modules(
    modules: Sequence[str], env: Mapping[str, str], report: Path, timeout: float = 540
) -> tuple[dict[str, str], subprocess.CompletedProcess[str]]:
    """Run `modules` (paths from the repository root) in a child pytest with `env`; returns
    `{module path::test name: passed | failed | error | skipped}` and the finished process."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            *modules,
            "-p",
            "no:cacheprovider",
            "-q",
            "-n",
            "0",
            f"--junitxml={report}",
        ],
        cwd=ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert report.is_file(), (result.stdout + result.stderr)[-4000:]
    return outcomes(report), result


def outcomes(report: Path) -> dict[str, str]:
    """`{module path::test name: passed | failed | error | skipped}` from a JUnit report."""
    found: dict[str, str] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        module = (case.get("classname") or "").replace(".", "/") + ".py"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed"}.get(child.tag, child.tag)
        found[f"{module}::{case.get('name')}"] = outcome
    return found
