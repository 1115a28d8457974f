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
    APIError,
    BadRequest,
    ConfigurationError,
    Conflict,
    InvalidMetric,
    NotFound,
    ServerError,
    TooManyRequests,
    TransportError,
    Unauthorized,
)
from .metric import Metric, sanitize_key, validate_key
from .retry import RetryPolicy

if TYPE_CHECKING:
    from .client import MetricsClient, RunInfo

_LAZY = {
    "MetricsClient": ".client",
    "RunInfo": ".client",
}

__all__ = [
    "AIDPError",
    "APIError",
    "BadRequest",
    "ConfigurationError",
    "Conflict",
    "Endpoint",
    "InvalidMetric",
    "Metric",
    "MetricsClient",
    "NotFound",
    "RetryPolicy",
    "RunInfo",
    "ServerError",
    "TooManyRequests",
    "TransportError",
    "Unauthorized",
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
