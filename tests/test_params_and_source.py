"""Param values that say what the value is, and the source tags of a new run (git read from
the repository's files): no server, no framework."""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aidp_metrics._run.params import param_value
from aidp_metrics._run.source import source_tags


class Plain:
    def __init__(self) -> None:
        self.gamma = 0.5
        self.name = "step"
        self._hidden = object()


class Busy:
    def __init__(self) -> None:
        self.child = Plain()


def test_values_say_what_they_are() -> None:
    assert param_value(functools.partial(sorted, reverse=True)) == (
        "functools.partial(sorted, reverse=True)"
    )
    assert param_value(functools.partial(int, "7", base=8)) == "functools.partial(int, '7', base=8)"
    assert param_value(Path) == "pathlib.Path"
    assert param_value(test_values_say_what_they_are) == (
        f"{__name__}.test_values_say_what_they_are"
    )
    assert param_value(Plain()) == f"{__name__}.Plain(gamma=0.5, name='step')"
    assert param_value(Busy()) == f"{__name__}.Busy"  # an attribute that is no plain value
    assert param_value([Busy()]) == f"['{__name__}.Busy']"
    assert "0x" not in param_value({"scheduler": Plain()})


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git to build the repository")
def test_git_tags_of_a_checkout_and_its_worktree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "remote", "add", "origin", "https://user:secret@example.com/team/repo.git")
    (repo / "train.py").write_text("")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    _git(repo, "pack-refs", "--all")  # the branch's commit only in packed-refs
    commit = _git(repo, "rev-parse", "HEAD")
    _git(repo, "worktree", "add", "-q", "-b", "side", str(tmp_path / "side"))

    for folder, branch in ((repo, "main"), (tmp_path / "side", "side")):
        monkeypatch.setattr(sys, "argv", [str(folder / "train.py")])
        tags = source_tags()
        assert tags["mlflow.source.name"] == str(folder / "train.py")
        assert tags["mlflow.source.type"] == "LOCAL"
        assert tags["mlflow.source.git.commit"] == commit
        assert tags["mlflow.source.git.branch"] == branch
        assert tags["mlflow.source.git.repoURL"] == "https://example.com/team/repo.git"

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    monkeypatch.setattr(sys, "argv", [str(outside / "x.py")])
    assert not any(key.startswith("mlflow.source.git") for key in source_tags())
