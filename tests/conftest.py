"""Shared fixtures live in tests/support/fixtures.py."""

pytest_plugins = ["tests.support.fixtures"]


import os  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _spool_in_tmp(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Journals written by tests go to a temp dir, never into the working tree."""
    if "AIDP_METRICS_DIR" not in os.environ or "pytest" not in os.environ["AIDP_METRICS_DIR"]:
        monkeypatch.setenv("AIDP_METRICS_DIR", str(tmp_path_factory.mktemp("spool")))
