"""The MLflow tracking calls we make (`TrackingClient`) and `MetricsClient`, which sends
them over HTTP: the synchronous, thread-safe client for the MLflow REST API.

Every call is an MLflow REST call (path and JSON body) made by `send`, one attempt, and
retried by `request` as the failure policy says. `MetricsClient.send` is an HTTP request;
`StoreClient.send` (store_client.py) runs it through MLflow's own client instead.

`MetricsClient` holds one keep-alive `httpx.Client`; every write carries one
`opc-retry-token` shared by all its attempts and every attempt a fresh `opc-request-id`.
"""

from __future__ import annotations

import abc
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import orjson

from aidp_metrics._errors import (
    APIError,
    BadRequest,
    ConfigurationError,
    Conflict,
    NotFound,
    ServerError,
    TooManyRequests,
    TransportError,
    Unauthorized,
    UnexpectedResponse,
)
from aidp_metrics._metric import Metric, make_metric, metric_body
from aidp_metrics._version import __version__

from .endpoint import Endpoint
from .retry import RetryPolicy, Verdict, decide, parse_retry_after

# Server limits of runs/log-batch (MLflow's, which AIDP inherits).
MAX_BATCH_METRICS = 1000
MAX_BATCH_PARAMS = 100
MAX_BATCH_TAGS = 100
MAX_BATCH_ENTITIES = 1000
MAX_BATCH_BYTES = 1_000_000
MAX_PARAM_VALUE_LENGTH = 6000
MAX_TAG_VALUE_LENGTH = 8000

USER_AGENT = f"aidp-metrics/{__version__}"
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)

_STATUS_ERRORS: dict[int, type[APIError]] = {
    400: BadRequest,
    401: Unauthorized,
    404: NotFound,
    409: Conflict,
    429: TooManyRequests,
}


_Client = TypeVar("_Client", bound="TrackingClient")


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    experiment_id: str
    run_name: str | None
    status: str
    start_time: int | None = None
    end_time: int | None = None


class TrackingClient(abc.ABC):
    """The MLflow tracking calls the package makes, each one REST call made by `send`
    (one attempt) and retried by `request`. Subclasses say how a call is sent."""

    endpoint: Endpoint
    retry: RetryPolicy
    _sleep: Callable[[float], None]

    @abc.abstractmethod
    def send(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        params: Mapping[str, str] | None = None,
        retry_token: str | None = None,
    ) -> dict[str, Any]:
        """Exactly one attempt at the MLflow REST call `method path` with the JSON body
        `content` (or the query `params`); the decoded reply, or a typed `APIError`."""

    @abc.abstractmethod
    def close(self) -> None:
        """Let go of connections; the client stays usable."""

    @abc.abstractmethod
    def copy_for_child(self) -> TrackingClient:
        """The same target with connections of its own, for a forked child."""

    def __enter__(self: _Client) -> _Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the seed call -------------------------------------------------------------------

    def log_metric(
        self,
        run_id: str,
        key: str,
        value: object,
        *,
        step: int = 0,
        timestamp: int | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        """One POST to `runs/log-metric` with `{key, run_id, step, timestamp, value}`."""
        metric = make_metric(key, value, step, timestamp)
        self.post_metric(run_id, metric, retry=retry)

    def post_metric(self, run_id: str, metric: Metric, *, retry: RetryPolicy | None = None) -> None:
        """`runs/log-metric` for an already validated metric."""
        self.request("POST", "runs/log-metric", content=metric_body(run_id, metric), retry=retry)

    # -- batches, params, tags ----------------------------------------------------------

    def log_batch(
        self,
        run_id: str,
        metrics: Iterable[Metric] = (),
        params: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        tags: Mapping[str, str] | Iterable[tuple[str, str]] = (),
        *,
        retry: RetryPolicy | None = None,
    ) -> int:
        """`runs/log-batch`, split into requests within the server's limits.

        Returns the number of requests sent.
        """
        requests = 0
        for chunk in batch_bodies([m.to_json() for m in metrics], _pairs(params), _pairs(tags)):
            chunk["run_id"] = run_id
            self.request("POST", "runs/log-batch", body=chunk, retry=retry)
            requests += 1
        return requests

    def log_params(self, run_id: str, params: Mapping[str, str]) -> None:
        self.log_batch(run_id, params=params)

    def set_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        self.log_batch(run_id, tags=tags)

    # -- experiments and runs -------------------------------------------------------------

    def get_experiment_by_name(
        self, name: str, *, retry: RetryPolicy | None = None
    ) -> dict[str, Any] | None:
        try:
            reply = self.request(
                "GET", "experiments/get-by-name", params={"experiment_name": name}, retry=retry
            )
        except NotFound:
            return None
        experiment: dict[str, Any] = expect(reply, "experiment", path="experiments/get-by-name")
        return experiment

    def create_experiment(
        self,
        name: str,
        tags: Mapping[str, str] | None = None,
        *,
        retry: RetryPolicy | None = None,
    ) -> str:
        body: dict[str, Any] = {"name": name}
        if tags:
            body["tags"] = _tag_list(tags)
        try:
            reply = self.request("POST", "experiments/create", body=body, retry=retry)
        except BadRequest as exc:
            # Another process created it between our lookup and our create.
            if exc.code not in ("RESOURCE_ALREADY_EXISTS", "ResourceAlreadyExists"):
                raise
            existing = self.get_experiment_by_name(name, retry=retry)
            if existing is None:
                raise
            return str(existing["experiment_id"])
        return str(expect(reply, "experiment_id", path="experiments/create"))

    def experiment_id_for(self, name: str, *, retry: RetryPolicy | None = None) -> str:
        """The id of experiment `name`, created if it does not exist."""
        existing = self.get_experiment_by_name(name, retry=retry)
        if existing is not None:
            return str(existing["experiment_id"])
        return self.create_experiment(name, retry=retry)

    def create_run(
        self,
        *,
        experiment_id: str | None = None,
        experiment_name: str | None = None,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        start_time: int | None = None,
        retry: RetryPolicy | None = None,
        retry_token: str | None = None,
    ) -> RunInfo:
        if experiment_id is None:
            experiment_id = self.experiment_id_for(experiment_name or "Default", retry=retry)
        body: dict[str, Any] = {
            "experiment_id": experiment_id,
            "start_time": start_time if start_time is not None else time.time_ns() // 1_000_000,
        }
        if run_name:
            body["run_name"] = run_name
        if tags:
            body["tags"] = _tag_list(tags)
        reply = self.request("POST", "runs/create", body=body, retry=retry, retry_token=retry_token)
        return _run_info(expect(reply, "run", "info", path="runs/create"))

    def search_runs(
        self, experiment_ids: list[str], filter_string: str = "", max_results: int = 100
    ) -> list[dict[str, Any]]:
        body = {
            "experiment_ids": experiment_ids,
            "filter": filter_string,
            "max_results": max_results,
        }
        runs: list[dict[str, Any]] = self.request("POST", "runs/search", body=body).get("runs", [])
        return runs

    def get_run(self, run_id: str, *, retry: RetryPolicy | None = None) -> dict[str, Any]:
        reply = self.request("GET", "runs/get", params={"run_id": run_id}, retry=retry)
        expect(reply, "run", "info", path="runs/get")
        run: dict[str, Any] = reply["run"]
        return run

    def get_run_info(self, run_id: str) -> RunInfo:
        return _run_info(self.get_run(run_id)["info"])

    def update_run(
        self,
        run_id: str,
        status: str,
        *,
        end_time: int | None = None,
        run_name: str | None = None,
    ) -> RunInfo:
        body: dict[str, Any] = {"run_id": run_id, "status": status}
        if end_time is not None:
            body["end_time"] = end_time
        if run_name:
            body["run_name"] = run_name
        reply = self.request("POST", "runs/update", body=body)
        info = reply.get("run_info")
        if info:
            return _run_info(info)
        return self.get_run_info(run_id)

    def get_metric_history(self, run_id: str, key: str) -> list[Metric]:
        """Every point of `key`, following all pages."""
        points: list[Metric] = []
        params = {"run_id": run_id, "metric_key": key, "max_results": "25000"}
        while True:
            reply = self.request("GET", "metrics/get-history", params=params)
            points.extend(Metric.from_json(m) for m in reply.get("metrics", []))
            token = reply.get("next_page_token")
            if not token:
                return points
            params = {**params, "page_token": token}

    # -- transport ------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
        retry: RetryPolicy | None = None,
        content: bytes | None = None,
        retry_token: str | None = None,
    ) -> dict[str, Any]:
        """One logical call, retried per the policy; returns the decoded JSON reply.

        `content` is an already encoded JSON body (instead of `body`); a write keeps one
        `opc-retry-token` (`retry_token`, or a new one) on every attempt."""
        policy = retry or self.retry
        if body is not None:
            content = dumps(body)
        if method != "GET" and retry_token is None:
            retry_token = new_retry_token()
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                return self.send(
                    method, path, content=content, params=params, retry_token=retry_token
                )
            except APIError as error:
                decision = decide(policy, error, attempt, time.monotonic() - started)
                if decision.verdict is Verdict.GIVE_UP:
                    raise
            self._sleep(decision.delay)


class MetricsClient(TrackingClient):
    """Synchronous client; safe to share between threads.

    With no endpoint, `Endpoint.from_env()` decides; a string is taken as an MLflow
    tracking URI. With no auth, the endpoint's kind decides: OCI request signing from the
    environment for AIDP, `MLFLOW_TRACKING_TOKEN` / username+password (or nothing) for MLflow.
    """

    def __init__(
        self,
        endpoint: Endpoint | str | None = None,
        *,
        auth: httpx.Auth | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
        user_principal: str | None = None,
    ) -> None:
        if endpoint is None:
            endpoint = Endpoint.from_env()
        elif isinstance(endpoint, str):
            endpoint = Endpoint.mlflow(endpoint)
        if endpoint.kind == "store":
            raise ConfigurationError(
                f"{endpoint.describe()} is not served over HTTP: use `StoreClient` (or pass the "
                "tracking URI to `Run.start` / the integration, which picks the client)"
            )
        self.endpoint = endpoint
        self.retry = retry or RetryPolicy()
        self.auth = auth if auth is not None else default_auth(endpoint)
        headers = {"user-agent": USER_AGENT, "accept": "application/json"}
        principal = user_principal or endpoint.user_principal
        if principal:
            headers["dh-user-principal"] = principal
        self._http_options: dict[str, Any] = {
            "auth": self.auth,
            "timeout": timeout,
            "headers": headers,
            "transport": transport,
            "follow_redirects": False,
        }
        self._http: httpx.Client | None = None  # opened on first use, again after close()
        self._http_lock = threading.Lock()
        self._sleep: Callable[[float], None] = time.sleep

    def __repr__(self) -> str:
        auth = type(self.auth).__name__ if self.auth is not None else "none"
        return f"MetricsClient({self.endpoint.describe()}, auth={auth})"

    def close(self) -> None:
        """Close the connections. The client stays usable: the next request reconnects."""
        with self._http_lock:
            http, self._http = self._http, None
        if http is not None:
            http.close()

    def copy_for_child(self) -> MetricsClient:
        """The same endpoint and auth with connections of its own: for a forked child,
        which must not share the parent's sockets (or a lock a parent thread held)."""
        twin = object.__new__(MetricsClient)
        twin.__dict__.update(self.__dict__)
        twin._http = None
        twin._http_lock = threading.Lock()
        return twin

    def _connection(self) -> httpx.Client:
        http = self._http
        if http is None:
            with self._http_lock:
                if self._http is None:
                    self._http = httpx.Client(**self._http_options)
                http = self._http
        return http

    def send(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        params: Mapping[str, str] | None = None,
        retry_token: str | None = None,
    ) -> dict[str, Any]:
        """Exactly one HTTP attempt with a fresh `opc-request-id`; raises an `APIError`.

        Callers that retry on their own pass the same `retry_token` on every attempt.
        """
        request_id = new_request_id()
        headers = {"opc-request-id": request_id}
        if content is not None:
            headers["content-type"] = "application/json"
        if retry_token is not None:
            headers["opc-retry-token"] = retry_token
        try:
            response = self._connection().request(
                method, self.endpoint.url(path), content=content, params=params, headers=headers
            )
        except httpx.HTTPError as exc:
            raise TransportError(
                f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__,
                opc_request_id=request_id,
                method=method,
                path=path,
            ) from None
        if response.is_success:
            return _json_object(response, method, path, request_id)
        raise error_from_response(response, method, path, request_id)


def default_auth(endpoint: Endpoint) -> httpx.Auth | None:
    """`MLFLOW_TRACKING_AUTH`'s provider, else OCI request signing for AIDP, else for MLflow
    the URI's user:password, else the env's (`aidp_metrics._connection.auth.endpoint_auth`)."""
    from . import auth

    return auth.endpoint_auth(endpoint)


def new_request_id() -> str:
    return uuid.uuid4().hex.upper()


def new_retry_token() -> str:
    return uuid.uuid4().hex


def error_from_response(
    response: httpx.Response, method: str, path: str, request_id: str | None = None
) -> APIError:
    """The typed error for a failed response; reads AIDP's and MLflow's error bodies."""
    code: str | None = None
    message = ""
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        raw_code = data.get("code") or data.get("error_code")
        code = str(raw_code) if raw_code else None
        message = str(data.get("message") or "")
    if not message:
        text = response.text.strip().replace("\n", " ")
        message = text[:200] if text else response.reason_phrase or "no message"
    return status_error(
        response.status_code,
        message,
        code=code,
        opc_request_id=response.headers.get("opc-request-id") or request_id,
        method=method,
        path=path,
        retry_after=parse_retry_after(response.headers.get("retry-after")),
    )


def status_error(
    status: int,
    message: str,
    *,
    code: str | None,
    method: str,
    path: str,
    opc_request_id: str | None = None,
    retry_after: float | None = None,
) -> APIError:
    """The typed error for an HTTP status (400 `BadRequest`, 404 `NotFound`, ...; any
    other `ServerError`)."""
    error_type = _STATUS_ERRORS.get(status, ServerError)
    return error_type(
        message,
        status=status,
        code=code,
        opc_request_id=opc_request_id,
        method=method,
        path=path,
        retry_after=retry_after,
    )


def batch_bodies(
    metrics: list[dict[str, Any]],
    params: list[dict[str, str]],
    tags: list[dict[str, str]],
) -> Iterator[dict[str, Any]]:
    """Split entities into log-batch bodies within every server limit, keeping order."""
    limits = {"metrics": MAX_BATCH_METRICS, "params": MAX_BATCH_PARAMS, "tags": MAX_BATCH_TAGS}
    overhead = 128  # braces, field names and the run id
    body: dict[str, list[Any]] = {"metrics": [], "params": [], "tags": []}
    size = overhead
    count = 0
    for field, entities in (("metrics", metrics), ("params", params), ("tags", tags)):
        for entity in entities:
            entity_size = len(dumps(entity)) + 1
            if count and (
                len(body[field]) >= limits[field]
                or count >= MAX_BATCH_ENTITIES
                or size + entity_size > MAX_BATCH_BYTES
            ):
                yield {k: v for k, v in body.items() if v}
                body = {"metrics": [], "params": [], "tags": []}
                size, count = overhead, 0
            body[field].append(entity)
            size += entity_size
            count += 1
    if count:
        yield {k: v for k, v in body.items() if v}


def dumps(body: Mapping[str, Any]) -> bytes:
    return orjson.dumps(body)


def _json_object(
    response: httpx.Response, method: str, path: str, request_id: str
) -> dict[str, Any]:
    """The JSON object of a 2xx answer; anything else is `UnexpectedResponse`."""
    if not response.content:
        return {}
    content_type = response.headers.get("content-type", "")
    data: object = None
    if "json" in content_type or not content_type:
        try:
            data = response.json()
        except ValueError:
            data = None
    if isinstance(data, dict):
        return data
    raise UnexpectedResponse(
        f"expected a JSON object, got {content_type or 'no content type'} "
        f"({len(response.content)} bytes): a proxy or login page in front of the server?",
        status=response.status_code,
        code=None,
        opc_request_id=response.headers.get("opc-request-id") or request_id,
        method=method,
        path=path,
    )


def expect(reply: dict[str, Any], *keys: str, path: str) -> Any:
    """`reply[k1][k2]...`, or `UnexpectedResponse` naming what was missing."""
    value: Any = reply
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            raise UnexpectedResponse(
                f"the answer has no {'.'.join(keys)}", status=200, method="", path=path
            )
        value = value[key]
    return value


def _pairs(items: Mapping[str, str] | Iterable[tuple[str, str]]) -> list[dict[str, str]]:
    pairs = items.items() if isinstance(items, Mapping) else items
    return [{"key": str(k), "value": str(v)} for k, v in pairs]


def _tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return _pairs(tags)


def _run_info(info: Mapping[str, Any]) -> RunInfo:
    if "run_id" not in info or "experiment_id" not in info:
        raise UnexpectedResponse("the run has no run_id or experiment_id", status=200)
    return RunInfo(
        run_id=str(info["run_id"]),
        experiment_id=str(info["experiment_id"]),
        run_name=info.get("run_name"),
        status=str(info.get("status", "")),
        start_time=_optional_int(info.get("start_time")),
        end_time=_optional_int(info.get("end_time")),
    )


def _optional_int(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]
