"""Stream training metrics into Oracle AI Data Platform MLOps or any MLflow tracking server.

The HTTP layer (httpx) loads on first use of a client or run, so importing the package
from a training script costs almost nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .endpoint import Endpoint
from .errors import (
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
from .metric import Metric, sanitize_key, validate_key
from .options import DeliveryOptions
from .retry import RetryPolicy
from .stats import RunStats

if TYPE_CHECKING:
    from .client import MetricsClient, RunInfo
    from .run import Run

_LAZY = {
    "MetricsClient": ".client",
    "RunInfo": ".client",
    "Run": ".run",
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
    "Metric",
    "MetricsClient",
    "NotFound",
    "RetryPolicy",
    "Run",
    "RunInfo",
    "RunStats",
    "ServerError",
    "TooManyRequests",
    "TransportError",
    "Unauthorized",
    "UnexpectedResponse",
    "__version__",
    "sanitize_key",
    "validate_key",
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
