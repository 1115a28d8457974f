"""The one place that picks the client for an endpoint: `StoreClient` (MLflow's own client)
for an MLflow store URI, `MetricsClient` (HTTP) for a tracking server or an AIDP workspace."""

from __future__ import annotations

from typing import Any

from .client import MetricsClient, TrackingClient
from .endpoint import Endpoint


def connect(endpoint: Endpoint | str | None = None, **http_options: Any) -> TrackingClient:
    """The client for `endpoint` (None: `Endpoint.from_env()`; a string: a tracking URI).

    `http_options` are `MetricsClient`'s (`auth`, `timeout`, `retry`, ...); a store client
    takes only `retry` (MLflow's client authenticates to `databricks` on its own)."""
    if endpoint is None:
        endpoint = Endpoint.from_env()
    elif isinstance(endpoint, str):
        endpoint = Endpoint.mlflow(endpoint)
    if endpoint.kind == "store":
        from .store_client import StoreClient

        return StoreClient(endpoint, retry=http_options.get("retry"))
    return MetricsClient(endpoint, **http_options)
