"""`aidp-metrics doctor` for an MLflow store URI (`sqlite:`, `file:`, `postgresql:`, ...):
MLflow's own client opens it, so the checks are that mlflow is installed and that one read
call through it works (a missing Default experiment counts as an answer)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from aidp_metrics._connection.endpoint import Endpoint
from aidp_metrics._errors import APIError, ConfigurationError, NotFound

if TYPE_CHECKING:
    from ._doctor import Report

_PROBE = ("GET", "experiments/get-by-name", {"experiment_name": "Default"})


def diagnose_store(endpoint: Endpoint, report: Report) -> None:
    from aidp_metrics._connection.retry import RetryPolicy
    from aidp_metrics._connection.store_client import StoreClient

    report.info("auth", "none of ours: MLflow's client opens the store")
    try:
        client = StoreClient(endpoint, retry=RetryPolicy.never())
    except ConfigurationError as exc:
        report.check(False, "mlflow: not installed", str(exc))
        return
    import mlflow

    report.check(True, f"mlflow: {mlflow.__version__} opens the store")
    method, path, params = _PROBE
    report.info("request", f"{path}?experiment_name=Default through MLflow's client")
    started = time.monotonic()
    try:
        client.send(method, path, params=params)
    except NotFound:
        pass  # no Default experiment yet: the store answered
    except ConfigurationError as exc:
        report.check(False, "store: MLflow's client cannot open it", str(exc))
        return
    except APIError as exc:
        report.check(
            False,
            f"store: MLflow's client could not use it ({exc})",
            "check the URI and that the database or directory can be reached and written",
        )
        return
    elapsed_ms = (time.monotonic() - started) * 1000
    report.check(True, f"store: MLflow's client answered in {elapsed_ms:.0f} ms")
