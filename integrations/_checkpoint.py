"""Run settings as JSON, for an integration rebuilt from a checkpoint (Transformers'
stateful callbacks): the endpoint without its credential, `Run` options with `retry` as its
fields and paths as strings, and back.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aidp_metrics import Endpoint

__all__ = ["endpoint_from_state", "endpoint_state", "options_from_state", "options_state"]

_ENDPOINT_FIELDS = ("kind", "base_url", "user_principal", "region", "instance_id", "workspace_key")


def endpoint_state(endpoint: Endpoint | str | None) -> dict[str, Any] | str | None:
    """An endpoint as JSON, never with its credential (read from the environment again):
    a tracking URI's `user:password@` is left out too."""
    from aidp_metrics import Endpoint
    from aidp_metrics._errors import ConfigurationError
    from aidp_metrics._redact import redact_url

    if isinstance(endpoint, str):
        try:
            return Endpoint.mlflow(endpoint).public_url()
        except ConfigurationError:  # not a URL: kept (masked) so the rebuilt one says so too
            return redact_url(endpoint)
    if not isinstance(endpoint, Endpoint):
        return endpoint
    return {name: getattr(endpoint, name) for name in _ENDPOINT_FIELDS}


def endpoint_from_state(value: Endpoint | str | Mapping[str, Any] | None) -> Endpoint | str | None:
    from aidp_metrics import Endpoint

    if isinstance(value, Mapping):
        return Endpoint(**{k: v for k, v in value.items() if k in _ENDPOINT_FIELDS})
    return value


def options_state(options: Mapping[str, Any]) -> dict[str, Any]:
    """Run options as JSON (`retry` as its fields, a path as a string)."""
    from aidp_metrics._connection.retry import RetryPolicy

    state: dict[str, Any] = {}
    for name, value in options.items():
        if isinstance(value, RetryPolicy):
            fields = {f: getattr(value, f) for f in RetryPolicy.__dataclass_fields__}
            value = {f: sorted(v) if isinstance(v, frozenset) else v for f, v in fields.items()}
        elif isinstance(value, os.PathLike):  # spool_dir=Path(...)
            value = os.fspath(value)
        state[name] = value
    return state


def options_from_state(options: Mapping[str, Any]) -> dict[str, Any]:
    from aidp_metrics._connection.retry import RetryPolicy

    restored = dict(options)
    retry = restored.get("retry")
    if isinstance(retry, Mapping):
        fields: dict[str, Any] = {
            k: frozenset(v) if isinstance(v, list) else v for k, v in retry.items()
        }
        restored["retry"] = RetryPolicy(**fields)
    return restored
