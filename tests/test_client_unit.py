"""Client behaviour that needs a fault a real server cannot produce on demand."""

from __future__ import annotations

import email.utils
import json
import time

import httpx
import pytest

from aidp_metrics import (
    BadRequest,
    Conflict,
    Endpoint,
    Metric,
    MetricsClient,
    NotFound,
    RetryPolicy,
    ServerError,
    TooManyRequests,
    TransportError,
    Unauthorized,
)
from aidp_metrics._connection.client import (
    MAX_BATCH_BYTES,
    MAX_BATCH_METRICS,
    MAX_BATCH_PARAMS,
    USER_AGENT,
    batch_bodies,
)
from aidp_metrics._connection.retry import parse_retry_after

ENDPOINT = Endpoint.mlflow("http://127.0.0.1:9")
FAST = RetryPolicy(base_delay=0.0, max_delay=0.0, total_timeout=5.0)


def client_with(handler: object, retry: RetryPolicy = FAST) -> MetricsClient:
    transport = httpx.MockTransport(handler)  # type: ignore[arg-type]
    return MetricsClient(ENDPOINT, auth=None, transport=transport, retry=retry)


@pytest.mark.parametrize(
    ("status", "body", "error_type", "code", "message"),
    [
        (
            400,
            {"code": "InvalidParameter", "message": "bad"},
            BadRequest,
            "InvalidParameter",
            "bad",
        ),
        (
            401,
            {"code": "NotAuthenticated", "message": "no"},
            Unauthorized,
            "NotAuthenticated",
            "no",
        ),
        (404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "gone"}, NotFound, None, "gone"),
        (409, {"code": "Other", "message": "busy"}, Conflict, "Other", "busy"),
        (418, b"<html>teapot</html>", ServerError, None, "<html>teapot</html>"),
        (500, b"", ServerError, None, "Internal Server Error"),
    ],
)
def test_errors_are_typed_and_read_both_body_shapes(
    status: int, body: object, error_type: type, code: str | None, message: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"opc-request-id": "SERVER-ID"}
        if isinstance(body, bytes):
            return httpx.Response(status, content=body, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    with client_with(handler, RetryPolicy.never()) as client, pytest.raises(error_type) as info:
        client.log_metric("run1", "loss", 1.0)
    error = info.value
    assert error.status == status
    assert error.message == message
    assert error.code == (code or (body.get("error_code") if isinstance(body, dict) else None))
    assert error.opc_request_id == "SERVER-ID"
    text = str(error)
    assert text.startswith(f"HTTP {status}")
    assert "POST runs/log-metric" in text
    assert "SERVER-ID" in text
    assert "\n" not in text


def test_connection_errors_become_transport_errors_with_the_request_id() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    with client_with(handler, RetryPolicy.never()) as client, pytest.raises(TransportError) as info:
        client.log_metric("run1", "loss", 1.0)
    assert info.value.opc_request_id
    assert "connection refused" in str(info.value)


def test_timeouts_are_retried_with_the_same_retry_token() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) < 3:
            raise httpx.ReadTimeout("timed out")
        return httpx.Response(200, json={})

    with client_with(handler) as client:
        client.log_metric("run1", "loss", 1.0, step=3, timestamp=5)
    assert len(seen) == 3
    assert len({r.headers["opc-retry-token"] for r in seen}) == 1
    assert len({r.headers["opc-request-id"] for r in seen}) == 3
    assert json.loads(seen[-1].content) == {
        "key": "loss",
        "value": 1.0,
        "timestamp": 5,
        "step": 3,
        "run_id": "run1",
    }
    assert seen[0].headers["user-agent"] == USER_AGENT


@pytest.mark.parametrize(("code", "retried"), [("IncorrectState", True), ("Other", False)])
def test_conflicts_retried_only_for_transient_codes(code: str, retried: bool) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 1:
            return httpx.Response(409, json={"code": code, "message": "conflict"})
        return httpx.Response(200, json={})

    with client_with(handler) as client:
        if retried:
            client.log_metric("r", "k", 1.0)
        else:
            with pytest.raises(Conflict):
                client.log_metric("r", "k", 1.0)
    assert len(calls) == (2 if retried else 1)


def test_attempts_are_bounded() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(503, json={"code": "Unavailable", "message": "down"})

    policy = RetryPolicy(max_attempts=4, base_delay=0.0, max_delay=0.0)
    with client_with(handler, policy) as client, pytest.raises(ServerError):
        client.log_metric("r", "k", 1.0)
    assert len(calls) == 4


def test_retry_after_beyond_the_total_budget_stops_retrying() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(429, headers={"retry-after": "3600"}, json={"message": "slow"})

    with client_with(handler) as client, pytest.raises(TooManyRequests) as info:
        client.log_metric("r", "k", 1.0)
    assert len(calls) == 1
    assert info.value.retry_after == 3600.0


def test_retry_after_as_http_date() -> None:
    now = time.time()
    header = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(header, now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_backoff_is_capped_full_jitter() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=30.0)
    for attempt in range(1, 12):
        ceiling = min(30.0, 0.5 * 2 ** (attempt - 1))
        delays = [policy.backoff(attempt) for _ in range(50)]
        assert all(0 <= d <= ceiling for d in delays)
    assert RetryPolicy(jitter=False).backoff(3) == 2.0


def test_batches_respect_every_limit_and_keep_order() -> None:
    metrics = [Metric(f"m{i}", float(i), 1, i).to_json() for i in range(2500)]
    params = [{"key": f"p{i}", "value": "v"} for i in range(250)]
    tags = [{"key": "t", "value": "v"}]
    bodies = list(batch_bodies(metrics, params, tags))
    assert all(len(b.get("metrics", [])) <= MAX_BATCH_METRICS for b in bodies)
    assert all(len(b.get("params", [])) <= MAX_BATCH_PARAMS for b in bodies)
    assert all(sum(len(v) for v in b.values()) <= 1000 for b in bodies)
    assert [m for b in bodies for m in b.get("metrics", [])] == metrics
    assert [p for b in bodies for p in b.get("params", [])] == params
    assert [t for b in bodies for t in b.get("tags", [])] == tags


def test_batches_respect_the_byte_limit() -> None:
    params = [{"key": f"p{i}", "value": "x" * 6000} for i in range(400)]
    bodies = list(batch_bodies([], params, []))
    for body in bodies:
        assert len(json.dumps({"run_id": "r" * 32, **body}).encode()) <= MAX_BATCH_BYTES
    assert sum(len(b["params"]) for b in bodies) == 400


def test_user_principal_header_is_sent() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={})

    transport = httpx.MockTransport(handler)
    with MetricsClient(ENDPOINT, transport=transport, user_principal="alice") as client:
        client.log_metric("r", "k", 1.0)
    assert seen[0].headers["dh-user-principal"] == "alice"


def test_repr_and_errors_hold_no_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "s3cr3t-token")

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Bearer s3cr3t-token"
        return httpx.Response(401, json={"message": "bad token"})

    transport = httpx.MockTransport(handler)
    with MetricsClient(ENDPOINT, transport=transport) as client:
        assert "s3cr3t" not in repr(client)
        assert "s3cr3t" not in repr(client.auth)
        with pytest.raises(Unauthorized) as info:
            client.log_metric("r", "k", 1.0)
    assert "s3cr3t" not in str(info.value)
    assert "s3cr3t" not in repr(info.value)
