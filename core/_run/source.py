"""The tags MLflow's client gives every new run about where it comes from: user, source
file, and the git commit, branch and remote of the checkout that file is in.

MLflow reads git through GitPython, which needs a `git` executable; here the few facts are
read from the repository's files (`HEAD`, the ref it names, `packed-refs`, `config`), so
a container without git records them too. Read once per process.
"""

from __future__ import annotations

import configparser
import functools
import getpass
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

SOURCE_NAME_TAG = "mlflow.source.name"
SOURCE_TYPE_TAG = "mlflow.source.type"
USER_TAG = "mlflow.user"
GIT_COMMIT_TAG = "mlflow.source.git.commit"
GIT_BRANCH_TAG = "mlflow.source.git.branch"
GIT_REPO_URL_TAG = "mlflow.source.git.repoURL"
_HEAD_REF = "ref: "
_BRANCH_PREFIX = "refs/heads/"


def source_tags() -> dict[str, str]:
    """`mlflow.user`, `mlflow.source.name` (`sys.argv[0]` as given), `mlflow.source.type`
    and, inside a git checkout, `mlflow.source.git.*` -- as MLflow's context providers."""
    main_file = sys.argv[0] if sys.argv and sys.argv[0] else None
    tags = {SOURCE_NAME_TAG: main_file or "<console>", SOURCE_TYPE_TAG: "LOCAL"}
    try:
        tags[USER_TAG] = getpass.getuser()
    except Exception:  # no user name in some containers
        pass
    if main_file is not None:
        tags.update(_git_tags(os.path.dirname(os.path.abspath(main_file))))
    return tags


@functools.lru_cache(maxsize=8)
def _git_tags(start: str) -> dict[str, str]:
    try:
        found = _git_dirs(Path(start))
        if found is None:
            return {}
        git_dir, common_dir = found
        head = (git_dir / "HEAD").read_text().strip()
        tags: dict[str, str] = {}
        if head.startswith(_HEAD_REF):
            ref = head[len(_HEAD_REF) :].strip()
            commit = _resolve_ref(ref, git_dir, common_dir)
            if ref.startswith(_BRANCH_PREFIX):
                tags[GIT_BRANCH_TAG] = ref[len(_BRANCH_PREFIX) :]
        else:
            commit = head  # a detached HEAD holds the commit itself
        if not commit:
            return {}
        tags[GIT_COMMIT_TAG] = commit
        url = _first_remote_url(common_dir / "config")
        if url:
            tags[GIT_REPO_URL_TAG] = _without_credentials(url)
        return tags
    except (OSError, UnicodeDecodeError, configparser.Error):
        return {}


def _git_dirs(start: Path) -> tuple[Path, Path] | None:
    """(the git directory, the common directory holding refs and config) of the checkout
    `start` is in; a worktree's `.git` file points at its git directory."""
    for folder in (start, *start.parents):
        dot_git = folder / ".git"
        if dot_git.is_dir():
            return dot_git, dot_git
        if dot_git.is_file():
            text = dot_git.read_text().strip()
            if not text.startswith("gitdir:"):
                return None
            git_dir = (folder / text[len("gitdir:") :].strip()).resolve()
            common = git_dir / "commondir"
            common_dir = (
                (git_dir / common.read_text().strip()).resolve() if common.is_file() else git_dir
            )
            return git_dir, common_dir
    return None


def _resolve_ref(ref: str, git_dir: Path, common_dir: Path) -> str | None:
    for folder in (git_dir, common_dir):
        loose = folder / ref
        if loose.is_file():
            return loose.read_text().strip() or None
    packed = common_dir / "packed-refs"
    if packed.is_file():
        for line in packed.read_text().splitlines():
            commit, _, name = line.partition(" ")
            if name.strip() == ref and not line.startswith(("#", "^")):
                return commit
    return None  # a branch with no commit yet


def _first_remote_url(config_file: Path) -> str | None:
    if not config_file.is_file():
        return None
    config = configparser.ConfigParser(strict=False, interpolation=None)
    config.read(config_file)
    for section in config.sections():
        if section.startswith("remote ") and config.has_option(section, "url"):
            return config.get(section, "url")
    return None


def _without_credentials(url: str) -> str:
    """`https://user:token@host/repo` -> `https://host/repo` (a tag is shown to everyone)."""
    parts = urlsplit(url)
    if not parts.scheme or "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
