"""The public face of `aidp_metrics`: exactly these names, each importable, and a light import.

Changing `__all__` is a decision: this list changes with it, in the same commit.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

import aidp_metrics

PUBLIC_API = [
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

# Nothing a training script has not asked for: no framework, no SDK, no HTTP stack.
HEAVY = (
    "httpx",
    "oci",
    "mlflow",
    "torch",
    "lightning",
    "pytorch_lightning",
    "transformers",
    "accelerate",
    "keras",
    "tensorflow",
    "jax",
    "matplotlib",
    "numpy",
    "psutil",
    "pynvml",
)


def test_public_api_is_exactly_this() -> None:
    assert sorted(aidp_metrics.__all__) == PUBLIC_API
    assert len(set(aidp_metrics.__all__)) == len(aidp_metrics.__all__)
    assert dir(aidp_metrics) == PUBLIC_API


def test_every_public_name_is_importable() -> None:
    for name in aidp_metrics.__all__:
        namespace: dict[str, object] = {}
        exec(f"from aidp_metrics import {name}", namespace)
        assert namespace[name] is getattr(aidp_metrics, name), name


def test_public_classes_and_functions_say_they_belong_to_the_package() -> None:
    for name in aidp_metrics.__all__:
        value = getattr(aidp_metrics, name)
        module = getattr(value, "__module__", None)
        if module is not None and callable(value):
            assert module == "aidp_metrics" or module.startswith("aidp_metrics."), (name, module)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="NoSuchThing"):
        getattr(aidp_metrics, "NoSuchThing")  # noqa: B009


def test_import_loads_no_framework_sdk_or_http_stack() -> None:
    code = f"import sys, aidp_metrics\nprint([m for m in {HEAVY!r} if m in sys.modules])"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
