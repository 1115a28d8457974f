"""The import contracts `nox -s lint` checks (pyproject's [tool.importlinter]) hold, and
break on an import against the declared order or a circle.

import-linter reads source files, so each test lays the package out as it is installed
(pyproject's package-dir: core/ and integrations/ into one package) in a temporary folder,
changes one file there, and runs `lint-imports` on it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"


@pytest.fixture
def package(tmp_path: Path) -> Path:
    """The package laid out as installed under `tmp_path`; returns the aidp_metrics folder."""
    config = tomllib.loads(PYPROJECT.read_text())
    package_dir: dict[str, str] = config["tool"]["setuptools"]["package-dir"]
    # parents first, so a subpackage mapped elsewhere lands inside its parent's copy
    for name, source in sorted(package_dir.items()):
        shutil.copytree(
            ROOT / source,
            tmp_path / name.replace(".", "/"),
            ignore=shutil.ignore_patterns("__pycache__"),
            dirs_exist_ok=True,
        )
    return tmp_path / "aidp_metrics"


def lint_imports(package: Path) -> subprocess.CompletedProcess[str]:
    lint = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(package.parent)}
    return subprocess.run(
        [str(lint), "--no-cache", str(PYPROJECT)],
        capture_output=True,
        text=True,
        env=env,
        cwd=package.parent,
        timeout=120,
    )


def add_import(module: Path, line: str) -> None:
    text = module.read_text()
    head, rest = text.split("from __future__ import annotations\n", 1)
    module.write_text(f"{head}from __future__ import annotations\n\n{line}\n{rest}")


def test_the_package_keeps_both_contracts(package: Path) -> None:
    result = lint_imports(package)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_an_import_of_a_higher_stage_breaks_the_layers(package: Path) -> None:
    # the connection stage reaching up into the run stage
    add_import(package / "_connection" / "client.py", "from aidp_metrics._run import run")
    result = lint_imports(package)
    assert result.returncode == 1
    assert "Stages import only the stages below them BROKEN" in result.stdout
    assert "aidp_metrics._connection.client -> aidp_metrics._run.run" in result.stdout


def test_a_circle_between_modules_of_one_stage_is_broken(package: Path) -> None:
    # queue.py imports buffer.py; buffer.py importing queue.py closes a circle
    add_import(package / "_queue" / "buffer.py", "from . import queue")
    result = lint_imports(package)
    assert result.returncode == 1
    assert "No import circle between sibling modules or folders BROKEN" in result.stdout
    assert "No cycles are allowed in aidp_metrics._queue." in result.stdout
    # the one import whose removal breaks the circle, whichever side the tool picks
    assert "- .buffer -> .queue (1 import)" in result.stdout or (
        "- .queue -> .buffer (1 import)" in result.stdout
    )


def test_an_import_for_the_type_checker_only_is_not_counted(package: Path) -> None:
    add_import(
        package / "_connection" / "client.py",
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from aidp_metrics._run import run",
    )
    result = lint_imports(package)
    assert result.returncode == 0, result.stdout + result.stderr
