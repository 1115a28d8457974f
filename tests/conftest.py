"""Shared fixtures live in tests/support/fixtures.py."""

import pytest

pytest_plugins = ["tests.support.fixtures"]


@pytest.fixture(autouse=True)
def _spool_in_tmp(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Journals written by tests (and their subprocesses) go to a fresh temp dir, never
    into the working tree."""
    monkeypatch.setenv("AIDP_METRICS_DIR", str(tmp_path_factory.mktemp("spool")))
