"""What a release carries: one version (core/_version.py) that CHANGELOG.md lists on top, and
the licence text the metadata names. `nox -s release` checks the same on the built wheel."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import aidp_metrics

ROOT = Path(__file__).resolve().parent.parent


def test_the_version_is_the_changelogs_top_entry() -> None:
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    top = re.search(r"^## \[([^\]]+)\]", text, re.MULTILINE)
    assert top is not None, "CHANGELOG.md has no `## [X.Y.Z]` entry"
    assert top.group(1) == aidp_metrics.__version__


def test_the_licence_file_is_shipped_and_the_test_tools_are_not_extras() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    assert "Apache License" in (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert {"test", "dev"}.isdisjoint(project["optional-dependencies"])
