"""Stream training metrics into Oracle AI Data Platform MLOps or any MLflow tracking server.

The HTTP layer (httpx) loads on first use of a client or run, so importing the package
from a training script costs almost nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from aidp_metrics._connection.endpoint import Endpoint
from aidp_metrics._connection.retry import RetryPolicy
from aidp_metrics._errors import (
    AIDPError,
    AIDPMetricsWarning,
    APIError,
    BadRequest,
    ConfigurationError,
    Conflict,
    DeliveryError,
    InvalidMetric,
    NotFound,
    ServerError,
    TooManyRequests,
    TransportError,
    Unauthorized,
    UnexpectedResponse,
)
from aidp_metrics._metric import Metric, sanitize_key, validate_key
from aidp_metrics._queue.options import DeliveryOptions
from aidp_metrics._stats import RunStats
from aidp_metrics._version import __version__

if TYPE_CHECKING:
    from aidp_metrics._connection.client import MetricsClient, RunInfo, TrackingClient
    from aidp_metrics._connection.store_client import StoreClient
    from aidp_metrics._run.run import Run
    from aidp_metrics.cli._local_server import LocalMLflowServer
    from aidp_metrics.cli._plot import write_png

_LAZY = {
    "MetricsClient": "._connection.client",
    "RunInfo": "._connection.client",
    "StoreClient": "._connection.store_client",
    "TrackingClient": "._connection.client",
    "Run": "._run.run",
    # For trying the library without an account, and the quickstart's picture; they live
    # with the commands `local-server` and `plot` that use them.
    "LocalMLflowServer": ".cli._local_server",
    "write_png": ".cli._plot",
}

__all__ = [
    "AIDPError",
    "AIDPMetricsWarning",
    "APIError",
    "BadRequest",
    "ConfigurationError",
    "Conflict",
    "DeliveryError",
    "DeliveryOptions",
    "Endpoint",
    "InvalidMetric",
    "LocalMLflowServer",
    "Metric",
    "MetricsClient",
    "NotFound",
    "RetryPolicy",
    "Run",
    "RunInfo",
    "RunStats",
    "ServerError",
    "StoreClient",
    "TooManyRequests",
    "TrackingClient",
    "TransportError",
    "Unauthorized",
    "UnexpectedResponse",
    "__version__",
    "sanitize_key",
    "validate_key",
    "write_png",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'aidp_metrics' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
