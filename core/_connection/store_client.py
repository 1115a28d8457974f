"""`StoreClient`: the MLflow tracking calls made through MLflow's own client, for a tracking
URI that is a store rather than a server (`file:`, a local path, `sqlite:`, `postgresql:`,
`mysql:`, `mssql:`, `databricks`, a plugin's scheme).

It answers the same calls as `MetricsClient` (`TrackingClient`): each MLflow REST call the
package makes (`runs/log-batch`, `runs/create`, ...) is carried out by the matching
`mlflow.MlflowClient` method, synchronously, and its reply given in the REST shape (MLflow's
own protobuf JSON). So the delivery loop, `sync`, the CLI and the failure policy work on one
path whichever client they hold. MLflow's exceptions become our typed errors through
MLflow's own error-code-to-HTTP-status table (`RESOURCE_DOES_NOT_EXIST` -> 404 `NotFound`,
`INVALID_PARAMETER_VALUE` -> 400 `BadRequest`, a locked SQLite database's
`TEMPORARILY_UNAVAILABLE` -> 503, retried); a store that cannot be reached (`OSError`, a
database driver's error) is a `TransportError`, retried.

mlflow is imported when a `StoreClient` is made, never by `import aidp_metrics`; without it,
a `ConfigurationError` names the `[local]` extra. `MlflowClient` is made on the first call:
opening a store (creating a SQLite database, connecting to a server's database) is that
call's work, and its failure that call's error.

Thread safety: MLflow keeps one store per tracking URI per process (its file store, or its
SQLAlchemy store with one engine and a session per call), the same objects the
multi-threaded `mlflow server` serves requests with; calls from the delivery thread, `sync`
and the caller's thread need no lock of ours. Writers in other processes on one SQLite file
wait for SQLite's lock; past its timeout the call is retried like a 503.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from aidp_metrics._errors import APIError, ConfigurationError, NotFound, TransportError
from aidp_metrics._metric import decode_value

from .client import TrackingClient, status_error
from .endpoint import Endpoint
from .retry import RetryPolicy

if TYPE_CHECKING:
    from mlflow import MlflowClient

LOCAL_EXTRA = 'pip install "aidp-metrics[local]"'
# Errors of the layers under MLflow's stores that mean "not reachable now", not "refused".
_UNREACHABLE_MODULES = ("sqlalchemy", "sqlite3", "psycopg", "psycopg2", "pymysql", "pyodbc")

_Call = Callable[["MlflowClient", dict[str, Any], Mapping[str, str]], dict[str, Any]]


class StoreClient(TrackingClient):
    """The tracking calls through `mlflow.MlflowClient(tracking_uri)`; safe to share
    between threads. A string is taken as a tracking URI."""

    def __init__(self, endpoint: Endpoint | str, *, retry: RetryPolicy | None = None) -> None:
        if isinstance(endpoint, str):
            endpoint = Endpoint.mlflow(endpoint)
        if endpoint.kind != "store" or endpoint.store_uri is None:
            raise ConfigurationError(
                f"{endpoint.describe()} is not an MLflow store: use `MetricsClient`"
            )
        require_mlflow(endpoint)
        self.endpoint = endpoint
        self.retry = retry or RetryPolicy()
        self._sleep: Callable[[float], None] = time.sleep
        self._mlflow: MlflowClient | None = None  # made on the first call
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"StoreClient({self.endpoint.describe()})"

    def close(self) -> None:
        """Nothing to let go of: MLflow keeps one store per URI for the whole process."""

    def copy_for_child(self) -> StoreClient:
        """A client of its own for a forked child. MLflow's store for the URI is the
        parent's (cached per process): a database store's connection pool is dropped in the
        child without closing the parent's connections (SQLAlchemy's advice after fork)."""
        if self._mlflow is not None:
            _drop_inherited_pool(self._mlflow)
        return StoreClient(self.endpoint, retry=self.retry)

    def _client(self) -> MlflowClient:
        client = self._mlflow
        if client is None:
            with self._lock:
                if self._mlflow is None:
                    from mlflow import MlflowClient

                    assert self.endpoint.store_uri is not None
                    self._mlflow = MlflowClient(tracking_uri=self.endpoint.store_uri.uri)
                client = self._mlflow
        return client

    def send(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        params: Mapping[str, str] | None = None,
        retry_token: str | None = None,
    ) -> dict[str, Any]:
        """The REST call `method path` carried out by MLflow's client, once. A store call
        either happens or fails in this process (no reply can be lost on the way), so
        `retry_token` has nothing to deduplicate here."""
        call = _CALLS.get((method, path))
        if call is None:
            raise NotFound(
                f"MLflow's client has no call for {method} {path}",
                status=404,
                code="ENDPOINT_NOT_FOUND",
                method=method,
                path=path,
            )
        body: dict[str, Any] = orjson.loads(content) if content else {}
        try:
            return call(self._client(), body, params or {})
        except APIError:
            raise
        except ImportError as exc:  # the store's driver (psycopg2, pymysql, ...)
            raise ConfigurationError(
                f"MLflow's client cannot open {self.endpoint.describe()}: {exc}; install "
                "the database driver MLflow uses for it"
            ) from None
        except Exception as exc:
            error = store_error(exc, method, path)
            if error is None:
                raise
            raise error from None


def require_mlflow(endpoint: Endpoint) -> None:
    """`ConfigurationError` naming the `[local]` extra when mlflow cannot be imported."""
    try:
        import mlflow.tracking  # noqa: F401
    except ImportError:
        raise ConfigurationError(
            f"{endpoint.describe()} is opened with MLflow's own client, and mlflow is not "
            f"installed: {LOCAL_EXTRA}"
        ) from None


def store_error(exc: Exception, method: str, path: str) -> APIError | None:
    """Our typed error for what MLflow's client raised; None for anything else (a bug)."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        return status_error(
            int(exc.get_http_status_code()),  # type: ignore[no-untyped-call]
            str(exc.message),
            code=str(exc.error_code),
            method=method,
            path=path,
        )
    if isinstance(exc, OSError) or type(exc).__module__.startswith(_UNREACHABLE_MODULES):
        return TransportError(f"{type(exc).__name__}: {exc}", method=method, path=path)
    return None


def _drop_inherited_pool(client: MlflowClient) -> None:
    # `MlflowClient` does not expose its store; SQLAlchemy's `Engine.dispose(close=False)`
    # is the documented way to leave the parent's pooled connections alone in a child.
    store = getattr(getattr(client, "_tracking_client", None), "store", None)
    engine = getattr(store, "engine", None)
    dispose = getattr(engine, "dispose", None)
    if callable(dispose):
        try:
            dispose(close=False)
        except Exception:  # an older SQLAlchemy without `close=`: a fresh pool is a nicety
            pass


# -- the calls: REST request in, REST reply out -------------------------------------------


def _proto_dict(entity: Any) -> dict[str, Any]:
    """An MLflow entity as the REST API's JSON (MLflow's own protobuf encoding)."""
    from mlflow.utils.proto_json_utils import message_to_json

    reply: dict[str, Any] = json.loads(message_to_json(entity.to_proto(), pretty=False))
    return reply


def _pairs(items: object) -> dict[str, str]:
    return {str(item["key"]): str(item["value"]) for item in items or ()}  # type: ignore[attr-defined]


def _log_batch(client: MlflowClient, body: dict[str, Any], _: Mapping[str, str]) -> dict[str, Any]:
    from mlflow.entities import Metric, Param, RunTag

    client.log_batch(
        str(body["run_id"]),
        metrics=[
            Metric(m["key"], decode_value(m["value"]), int(m["timestamp"]), int(m.get("step", 0)))
            for m in body.get("metrics") or ()
        ],
        params=[Param(key, value) for key, value in _pairs(body.get("params")).items()],
        tags=[RunTag(key, value) for key, value in _pairs(body.get("tags")).items()],
        synchronous=True,
    )
    return {}


def _log_metric(client: MlflowClient, body: dict[str, Any], _: Mapping[str, str]) -> dict[str, Any]:
    client.log_metric(
        str(body["run_id"]),
        body["key"],
        decode_value(body["value"]),
        timestamp=int(body["timestamp"]),
        step=int(body.get("step", 0)),
        synchronous=True,
    )
    return {}


def _update_run(client: MlflowClient, body: dict[str, Any], _: Mapping[str, str]) -> dict[str, Any]:
    """`runs/update`: a status with an end time ends the run (`set_terminated`), one without
    (RUNNING again, on attach) keeps it; a run name renames it."""
    run_id = str(body["run_id"])
    status, end_time = body.get("status"), body.get("end_time")
    if end_time is not None:
        client.set_terminated(run_id, status, int(end_time))
    elif status:
        client.update_run(run_id, status=status)
    if body.get("run_name"):
        client.update_run(run_id, name=body["run_name"])
    return {}


def _create_run(client: MlflowClient, body: dict[str, Any], _: Mapping[str, str]) -> dict[str, Any]:
    run = client.create_run(
        str(body["experiment_id"]),
        start_time=body.get("start_time"),
        tags=_pairs(body.get("tags")),
        run_name=body.get("run_name"),
    )
    return {"run": _proto_dict(run)}


def _get_run(client: MlflowClient, _: dict[str, Any], params: Mapping[str, str]) -> dict[str, Any]:
    return {"run": _proto_dict(client.get_run(params["run_id"]))}


def _search_runs(
    client: MlflowClient, body: dict[str, Any], _: Mapping[str, str]
) -> dict[str, Any]:
    runs = client.search_runs(
        [str(i) for i in body["experiment_ids"]],
        filter_string=body.get("filter") or "",
        max_results=int(body.get("max_results", 100)),
    )
    return {"runs": [_proto_dict(run) for run in runs]}


def _get_experiment_by_name(
    client: MlflowClient, _: dict[str, Any], params: Mapping[str, str]
) -> dict[str, Any]:
    name = params["experiment_name"]
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        raise NotFound(
            f"Could not find experiment with name '{name}'",
            status=404,
            code="RESOURCE_DOES_NOT_EXIST",
            method="GET",
            path="experiments/get-by-name",
        )
    return {"experiment": _proto_dict(experiment)}


def _create_experiment(
    client: MlflowClient, body: dict[str, Any], _: Mapping[str, str]
) -> dict[str, Any]:
    tags = _pairs(body.get("tags")) or None
    return {"experiment_id": client.create_experiment(body["name"], tags=tags)}


def _get_metric_history(
    client: MlflowClient, _: dict[str, Any], params: Mapping[str, str]
) -> dict[str, Any]:
    points = client.get_metric_history(params["run_id"], params["metric_key"])
    return {"metrics": [_proto_dict(point) for point in points]}


_CALLS: dict[tuple[str, str], _Call] = {
    ("POST", "runs/log-batch"): _log_batch,
    ("POST", "runs/log-metric"): _log_metric,
    ("POST", "runs/update"): _update_run,
    ("POST", "runs/create"): _create_run,
    ("GET", "runs/get"): _get_run,
    ("POST", "runs/search"): _search_runs,
    ("GET", "experiments/get-by-name"): _get_experiment_by_name,
    ("POST", "experiments/create"): _create_experiment,
    ("GET", "metrics/get-history"): _get_metric_history,
}
