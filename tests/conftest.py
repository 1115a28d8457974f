"""Shared fixtures live in tests/support/fixtures.py."""

import warnings

import pytest

pytest_plugins = ["tests.support.fixtures"]


@pytest.fixture(autouse=True)
def _spool_in_tmp(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Journals written by tests (and their subprocesses) go to a fresh temp dir, never
    into the working tree."""
    monkeypatch.setenv("AIDP_METRICS_DIR", str(tmp_path_factory.mktemp("spool")))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On an xdist worker with `--dist loadgroup`, xdist has suffixed each grouped test's id
    with `@group` by now; a pytest that loses the suffix (pytest-dev/pytest-xdist#1386) spreads
    the group over the workers without a word (the Spark module then starts a JVM on each)."""
    if not getattr(config.option, "loadgroup", False):
        return
    lost = [i.nodeid for i in items if i.get_closest_marker("xdist_group") and "@" not in i.nodeid]
    if lost:
        warnings.warn(
            pytest.PytestWarning(
                f"xdist_group is not honoured by this pytest/pytest-xdist pair: {lost[0]} "
                f"and {len(lost) - 1} more run on any worker"
            ),
            stacklevel=1,
        )
