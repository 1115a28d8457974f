"""`run.url`: the run's page in the MLflow UI, against the real MLflow server; None while
the run exists only locally; announced once on the `aidp_metrics` logger."""

from __future__ import annotations

import logging

import httpx
import pytest

from aidp_metrics import AIDPMetricsWarning, Run
from tests.reliability import FAST
from tests.support.chaos_proxy import ChaosProxy
from tests.support.mlflow_server import MLflowServer, get_run


def announced(caplog: pytest.LogCaptureFixture, url: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "aidp_metrics" and url in r.getMessage()]


def test_run_url_is_the_run_page_and_is_announced_once(
    mlflow_server: MLflowServer, fresh_experiment: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aidp_metrics")
    with Run.start(experiment_name=fresh_experiment, endpoint=mlflow_server.url, **FAST) as run:
        run.log_metric("loss", 0.5, step=1)
        started_url = run.url
    info = get_run(mlflow_server.url, run.run_id)["info"]
    expected = f"{mlflow_server.url}/#/experiments/{info['experiment_id']}/runs/{run.run_id}"
    assert started_url == run.url == expected
    [line] = announced(caplog, expected)
    assert line.levelno == logging.INFO
    # The UI is served where the URL points (the part after '#' is the UI's own route).
    page = httpx.get(expected.partition("#")[0], timeout=30)
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]

    with Run.attach(run.run_id, endpoint=mlflow_server.url, **FAST) as again:
        assert again.url == expected
    assert len(announced(caplog, expected)) == 2  # once more, for the attached run


def test_run_url_is_none_while_the_run_is_local_and_set_once_created(
    chaos_proxy: ChaosProxy,
    mlflow_server: MLflowServer,
    fresh_experiment: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="aidp_metrics")
    chaos_proxy.down()
    with pytest.warns(AIDPMetricsWarning, match="starts locally"):
        run = Run.start(experiment_name=fresh_experiment, endpoint=chaos_proxy.url, **FAST)
    assert run.url is None
    assert run.run_id.startswith("local-")
    run.log_metric("loss", 0.5, step=1)
    assert run.url is None
    assert announced(caplog, chaos_proxy.url) == []

    chaos_proxy.up()
    assert run.flush(60)
    run_id = run.run_id
    assert not run_id.startswith("local-")
    experiment_id = get_run(mlflow_server.url, run_id)["info"]["experiment_id"]
    # The experiment's run page when the run learnt its experiment id, else MLflow's direct
    # run route (`#/runs/{id}`, which the UI redirects to that page).
    assert run.url in (
        f"{chaos_proxy.url}/#/experiments/{experiment_id}/runs/{run_id}",
        f"{chaos_proxy.url}/#/runs/{run_id}",
    )
    run.end()


def test_offline_run_has_no_url(fresh_experiment: str) -> None:
    with Run.start(experiment_name=fresh_experiment, offline=True) as run:
        run.log_metric("loss", 0.5, step=1)
        assert run.url is None
