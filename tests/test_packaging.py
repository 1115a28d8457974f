"""What a release carries: one version (core/_version.py) that CHANGELOG.md lists on top, and
the licence text the metadata names. `nox -s release` checks the same on the built wheel."""

from __future__ import annotations

import re
from importlib.metadata import metadata
from pathlib import Path

import aidp_metrics

ROOT = Path(__file__).resolve().parent.parent


def test_the_version_is_the_changelogs_top_entry() -> None:
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    top = re.search(r"^## \[([^\]]+)\]", text, re.MULTILINE)
    assert top is not None, "CHANGELOG.md has no `## [X.Y.Z]` entry"
    assert top.group(1) == aidp_metrics.__version__


def test_the_licence_file_is_shipped_and_the_test_tools_are_not_extras() -> None:
    installed = metadata("aidp-metrics")  # what pip made of pyproject.toml
    assert installed["Version"] == aidp_metrics.__version__
    assert installed["License-Expression"] == "Apache-2.0"
    assert installed.get_all("License-File") == ["LICENSE"]
    assert "Apache License" in (ROOT / "LICENSE").read_text(encoding="utf-8")
    extras = set(installed.get_all("Provides-Extra") or [])
    assert extras
    assert {"test", "dev"}.isdisjoint(extras)
