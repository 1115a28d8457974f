"""MetricsClient against a real MLflow server, directly and through the signing AIDP gateway."""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from aidp_metrics import BadRequest, Endpoint, Metric, MetricsClient, NotFound, RetryPolicy
from aidp_metrics._connection.auth import oci_signer_auth
from tests.support.gateway import AIDPGateway
from tests.support.mlflow_server import MLflowServer, get_metric_history, get_run

TARGETS = ["mlflow", "aidp-api_key", "aidp-security_token"]


@pytest.fixture(params=TARGETS)
def client(
    request: pytest.FixtureRequest, mlflow_server: MLflowServer, aidp_gateway: AIDPGateway
) -> Iterator[MetricsClient]:
    target: str = request.param
    if target == "mlflow":
        made = MetricsClient(Endpoint.mlflow(mlflow_server.url))
    else:
        mode = target.split("-", 1)[1]
        keys = request.getfixturevalue(f"oci_{mode}")
        endpoint = Endpoint.aidp(
            aidp_gateway.instance_id,
            aidp_gateway.workspace_key,
            endpoint=aidp_gateway.url,
            user_principal="tester@example.com",
        )
        auth = oci_signer_auth(mode, config_file=keys.config_file, profile=keys.profile)
        made = MetricsClient(endpoint, auth=auth)
    with made:
        yield made


def new_run(client: MetricsClient) -> str:
    return client.create_run(experiment_name=f"exp-{uuid.uuid4().hex}", run_name="t").run_id


def test_log_metric_round_trip_exact(client: MetricsClient, mlflow_server: MLflowServer) -> None:
    run_id = new_run(client)
    client.log_metric(run_id, "train/loss", 0.125, step=7, timestamp=1_700_000_000_123)
    client.log_metric(run_id, "train/loss", 2, step=8, timestamp=1_700_000_000_456)
    expected = [
        Metric("train/loss", 0.125, 1_700_000_000_123, 7),
        Metric("train/loss", 2.0, 1_700_000_000_456, 8),
    ]
    assert client.get_metric_history(run_id, "train/loss") == expected
    # Read back independently of the code under test, straight from the server.
    raw = get_metric_history(mlflow_server.url, run_id, "train/loss")
    assert [(m["key"], m["value"], m["step"], m["timestamp"]) for m in raw] == [
        ("train/loss", 0.125, 7, 1_700_000_000_123),
        ("train/loss", 2.0, 8, 1_700_000_000_456),
    ]


def test_nan_and_infinities_round_trip(client: MetricsClient) -> None:
    run_id = new_run(client)
    for step, value in enumerate([math.nan, math.inf, -math.inf, 1e-300]):
        client.log_metric(run_id, "odd", value, step=step, timestamp=1000 + step)
    values = [m.value for m in client.get_metric_history(run_id, "odd")]
    assert math.isnan(values[0])
    # MLflow clamps infinities to the largest double.
    assert values[1] == pytest.approx(1.7976931348623157e308)
    assert values[2] == pytest.approx(-1.7976931348623157e308)
    assert values[3] == 1e-300


def test_log_batch_chunks_and_reads_back(client: MetricsClient) -> None:
    run_id = new_run(client)
    metrics = [Metric("acc", i / 10, 1_000 + i, i) for i in range(2_345)]
    params = {f"p{i}": str(i) for i in range(150)}
    requests = client.log_batch(run_id, metrics, params=params, tags={"team": "ml"})
    assert requests == 4  # 1000 + 1000 + (345 metrics, 100 params) + (50 params, 1 tag)
    assert client.get_metric_history(run_id, "acc") == metrics
    run = client.get_run(run_id)
    stored_params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert stored_params == params
    assert {t["key"]: t["value"] for t in run["data"]["tags"]}["team"] == "ml"


def test_run_lifecycle(client: MetricsClient, mlflow_server: MLflowServer) -> None:
    name = f"exp-{uuid.uuid4().hex}"
    assert client.get_experiment_by_name(name) is None
    info = client.create_run(experiment_name=name, run_name="first", tags={"a": "b"})
    assert info.status == "RUNNING"
    assert client.get_experiment_by_name(name)["experiment_id"] == info.experiment_id
    second = client.create_run(experiment_name=name)
    assert second.experiment_id == info.experiment_id
    finished = client.update_run(info.run_id, "FINISHED", end_time=1_700_000_999_000)
    assert finished.status == "FINISHED"
    stored = get_run(mlflow_server.url, info.run_id)["info"]
    assert stored["status"] == "FINISHED"
    assert int(stored["end_time"]) == 1_700_000_999_000
    assert stored["run_name"] == "first"


def test_bad_requests_are_not_retried(client: MetricsClient) -> None:
    run_id = new_run(client)
    client.log_params(run_id, {"lr": "0.1"})
    with pytest.raises(BadRequest) as info:
        client.log_params(run_id, {"lr": "0.2"})
    assert info.value.status == 400
    with pytest.raises(NotFound):
        client.get_run("0" * 32)


def test_eight_threads_share_one_client(client: MetricsClient) -> None:
    run_id = new_run(client)
    errors: list[BaseException] = []

    def worker(thread: int) -> None:
        try:
            for i in range(10):
                client.log_metric(run_id, f"t{thread}", float(i), step=i, timestamp=10 + i)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for t in range(8):
        history = client.get_metric_history(run_id, f"t{t}")
        assert [(m.step, m.value) for m in history] == [(i, float(i)) for i in range(10)]


# -- AIDP specifics: headers and retries through the gateway ------------------------------


@pytest.fixture
def aidp_client(aidp_gateway: AIDPGateway, oci_api_key: object) -> Iterator[MetricsClient]:
    endpoint = Endpoint.aidp(
        aidp_gateway.instance_id,
        aidp_gateway.workspace_key,
        endpoint=aidp_gateway.url,
        user_principal="tester@example.com",
    )
    auth = oci_signer_auth(
        "api_key",
        config_file=oci_api_key.config_file,  # type: ignore[attr-defined]
        profile=oci_api_key.profile,  # type: ignore[attr-defined]
    )
    with MetricsClient(endpoint, auth=auth, retry=RetryPolicy(base_delay=0.05)) as made:
        yield made


def test_seed_request_shape(aidp_client: MetricsClient, aidp_gateway: AIDPGateway) -> None:
    run_id = new_run(aidp_client)
    aidp_gateway.clear()
    aidp_client.log_metric(run_id, "loss", 0.5, step=3, timestamp=1_700_000_000_000)
    (request,) = aidp_gateway.requests
    assert request.method == "POST"
    assert request.path.endswith(
        f"/20260430/aiDataPlatforms/{aidp_gateway.instance_id}/workspaces/"
        f"{aidp_gateway.workspace_key}/mlops/api/2.0/mlflow/runs/log-metric"
    )
    import json

    assert json.loads(request.body) == {
        "key": "loss",
        "value": 0.5,
        "timestamp": 1_700_000_000_000,
        "step": 3,
        "run_id": run_id,
    }
    assert request.headers["dh-user-principal"] == "tester@example.com"
    assert 1 <= len(request.headers["opc-retry-token"]) <= 64
    assert request.headers["opc-request-id"].replace("-", "").replace("_", "").isalnum()
    assert request.status == 200


def test_503_then_200_stores_one_point_with_one_retry_token(
    aidp_client: MetricsClient, aidp_gateway: AIDPGateway
) -> None:
    run_id = new_run(aidp_client)
    aidp_gateway.clear()
    aidp_gateway.inject("runs/log-metric", status=503, times=2)
    aidp_client.log_metric(run_id, "loss", 1.5, step=1, timestamp=1234)
    attempts = aidp_gateway.requests
    assert [r.status for r in attempts] == [503, 503, 200]
    assert len({r.headers["opc-retry-token"] for r in attempts}) == 1
    assert len({r.headers["opc-request-id"] for r in attempts}) == 3
    assert aidp_client.get_metric_history(run_id, "loss") == [Metric("loss", 1.5, 1234, 1)]


def test_dropped_connection_after_the_write_is_idempotent(
    aidp_client: MetricsClient, aidp_gateway: AIDPGateway
) -> None:
    run_id = new_run(aidp_client)
    aidp_gateway.inject("runs/log-metric", drop=True, forward_first=True)
    aidp_client.log_metric(run_id, "loss", 1.5, step=1, timestamp=1234)
    assert aidp_client.get_metric_history(run_id, "loss") == [Metric("loss", 1.5, 1234, 1)]


def test_429_retry_after_is_honoured(aidp_client: MetricsClient, aidp_gateway: AIDPGateway) -> None:
    run_id = new_run(aidp_client)
    aidp_gateway.clear()
    aidp_gateway.inject("runs/log-metric", status=429, retry_after="1")
    started = time.monotonic()
    aidp_client.log_metric(run_id, "loss", 1.0, step=0, timestamp=1)
    assert time.monotonic() - started >= 1.0
    assert [r.status for r in aidp_gateway.requests] == [429, 200]


@pytest.mark.parametrize("status", [400, 404])
def test_400_and_404_are_not_retried(
    aidp_client: MetricsClient, aidp_gateway: AIDPGateway, status: int
) -> None:
    aidp_gateway.clear()
    aidp_gateway.inject("runs/log-metric", status=status, times=5)
    with pytest.raises((BadRequest, NotFound)) as info:
        aidp_client.log_metric("r" * 32, "loss", 1.0)
    assert info.value.status == status
    assert info.value.opc_request_id == aidp_gateway.requests[0].headers["opc-request-id"]
    assert len(aidp_gateway.requests) == 1


def test_wrong_key_is_rejected_with_401(aidp_gateway: AIDPGateway, tmp_path: object) -> None:
    from aidp_metrics import Unauthorized
    from tests.support.oci_keys import write_oci_config

    stranger, _ = write_oci_config(tmp_path)  # type: ignore[arg-type]  # a key the gateway does not know
    endpoint = Endpoint.aidp(
        aidp_gateway.instance_id, aidp_gateway.workspace_key, endpoint=aidp_gateway.url
    )
    auth = oci_signer_auth("api_key", config_file=stranger.config_file, profile=stranger.profile)
    with MetricsClient(endpoint, auth=auth) as made, pytest.raises(Unauthorized) as info:
        made.log_metric("r", "loss", 1.0)
    assert info.value.code == "NotAuthenticated"
    assert "BEGIN" not in str(info.value)
