"""A training loop through `Run` while a proxy injects faults between it and a real MLflow
server: the caller never waits on the network, and every point ends on the server exactly
once (its full history is read back straight from MLflow)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from aidp_metrics import Endpoint, MetricsClient, Run
from aidp_metrics._connection.auth import oci_signer_auth
from aidp_metrics._connection.client import MAX_BATCH_METRICS
from aidp_metrics._connection.retry import RetryPolicy
from tests.reliability import (
    FAST,
    Points,
    assert_exactly_once,
    median_us,
    train,
    wait_until,
)
from tests.support.chaos_proxy import ChaosProxy
from tests.support.gateway import AIDPGateway
from tests.support.mlflow_server import MLflowServer
from tests.support.oci_keys import OCICredentials

STEPS = 300  # per phase (healthy, then under the fault), x 4 metrics


@dataclass(frozen=True)
class Case:
    inject: Callable[[ChaosProxy], object]
    transport: str = "batch"
    steps: int = STEPS
    client_timeout: float | None = None  # a MetricsClient with this read timeout
    faults_seen: int = 3  # requests that must meet the fault before it is lifted

    @property
    def path(self) -> str:
        return "runs/log-batch" if self.transport == "batch" else "runs/log-metric"


CASES = {
    # 6 > max_attempts: the retry budget runs out and the batch goes through the spool.
    "429-retry-after": Case(lambda p: p.burst(429, None, retry_after=0.3), faults_seen=6),
    "500-burst": Case(lambda p: p.burst(500, None)),
    "503-burst": Case(lambda p: p.burst(503, None)),
    "reset-before-forwarding": Case(lambda p: p.reset_before(times=None)),
    "reset-after-the-server-applied-it": Case(lambda p: p.reset_after(times=None)),
    "reset-after-log-metric": Case(
        lambda p: p.reset_after(times=None, path="runs/log-metric"), transport="metric", steps=12
    ),
    "hold-the-answer": Case(lambda p: p.hold(2.0, times=None)),
    "hold-past-the-client-timeout": Case(
        lambda p: p.hold(2.5, times=None), steps=50, client_timeout=1.5, faults_seen=2
    ),
    "fully-down": Case(lambda p: p.down(5.0), faults_seen=0),
}


@pytest.mark.parametrize("name", list(CASES))
def test_training_loop_under_fault_delivers_exactly_once(
    name: str, chaos_proxy: ChaosProxy, mlflow_server: MLflowServer, fresh_experiment: str
) -> None:
    case = CASES[name]
    client = None
    if case.client_timeout is not None:
        client = MetricsClient(chaos_proxy.url, timeout=case.client_timeout)
    run = Run.start(
        experiment_name=fresh_experiment,
        endpoint=None if client else chaos_proxy.url,
        client=client,
        transport=case.transport,
        **FAST,
    )
    expected: Points = {}
    try:
        healthy = train(run, range(case.steps), expected)
        assert run.flush(60)
        before = run.stats
        assert before.delivered == before.logged == 4 * case.steps

        case.inject(chaos_proxy)
        faulty = train(run, range(case.steps, 2 * case.steps), expected)
        # Not blocked by the network: every point was accepted while not one of them has
        # been acknowledged (the fault answers nothing successfully).
        during = run.stats
        assert during.logged == 8 * case.steps
        assert during.delivered == before.delivered
        assert during.rejected == during.dropped == during.failed == 0

        # The fault really stood between the run and the server before it was lifted.
        if name == "hold-the-answer":
            assert wait_until(lambda: chaos_proxy.holding >= 1)
        elif name == "fully-down":  # nothing reaches the proxy: the client saw it refused
            assert wait_until(lambda: run.stats.retried >= 1)
        else:
            assert wait_until(lambda: len(chaos_proxy.faulted(case.path)) >= case.faults_seen)
        assert run.stats.delivered == before.delivered
        chaos_proxy.clear()

        # flush first: end() right after an outage caps its wait (Run.end, DOWN_WAIT).
        assert run.flush(60)
        stats = run.end(timeout=60)
    finally:
        run.end(timeout=0)
        if client is not None:
            client.close()
    print(
        f"\n{name}: caller cost per metric, median: healthy {median_us(healthy):.1f} µs, "
        f"under fault {median_us(faulty):.1f} µs; {stats.retried} retried, "
        f"{stats.spooled} spooled"
    )
    assert (stats.logged, stats.delivered, stats.failed, stats.dropped) == (
        8 * case.steps,
        8 * case.steps,
        0,
        0,
    )
    assert_exactly_once(mlflow_server.url, run.run_id, expected)

    if name.startswith("reset-after") or name == "hold-past-the-client-timeout":
        # The server received the very same write again: it is the server's dedup of an
        # identical point that keeps the history exact.
        assert max(chaos_proxy.body_counts(case.path).values()) >= 2


def test_retry_after_is_honoured_when_the_retry_budget_runs_out(
    chaos_proxy: ChaosProxy, fresh_experiment: str
) -> None:
    retry = RetryPolicy(max_attempts=2, base_delay=0.05, max_delay=0.5, total_timeout=10)
    run = Run.start(
        experiment_name=fresh_experiment,
        endpoint=chaos_proxy.url,
        **{**FAST, "retry": retry},
    )
    try:
        chaos_proxy.burst(429, None, retry_after=1)
        run.log_metric("m", 1.0, step=0)
        assert wait_until(lambda: len(chaos_proxy.faulted("runs/log-batch")) >= 3)
        chaos_proxy.clear()
    finally:
        run.end(timeout=30)
    faulted = chaos_proxy.faulted("runs/log-batch")
    gaps = [round(b.at - a.at, 3) for a, b in itertools.pairwise(faulted)]
    # Attempt 2 comes after Retry-After (1 s); then the budget (2 attempts) is spent and the
    # batch is spooled; the next try, from the spool, must still wait out the Retry-After.
    assert min(gaps) >= 0.9, f"requests {gaps} s apart despite Retry-After: 1"


def test_memory_stays_bounded_while_the_server_is_down(
    chaos_proxy: ChaosProxy, mlflow_server: MLflowServer, fresh_experiment: str
) -> None:
    max_queue = 250
    steps = 1250  # 5000 points, 20x the queue
    run = Run.start(
        experiment_name=fresh_experiment, endpoint=chaos_proxy.url, max_queue=max_queue, **FAST
    )
    expected: Points = {}
    chaos_proxy.down()
    biggest_queue = biggest_inflight = biggest_transient = 0
    directory = None
    for start in range(0, steps, 25):
        train(run, range(start, start + 25), expected)
        # The spool writer moves what is on disk out of memory on its own thread; until it
        # has, the caller may hold up to twice the bound (then the queue policy applies).
        biggest_transient = max(biggest_transient, run._queue.sizes()[0])
        assert wait_until(lambda: run._queue.sizes()[0] <= max_queue, 5)
        in_memory, in_flight = run._queue.sizes()
        biggest_queue = max(biggest_queue, in_memory)
        biggest_inflight = max(biggest_inflight, in_flight)
        directory = directory or run.spool_directory
    stats = run.stats
    assert biggest_queue <= max_queue
    assert biggest_transient <= 2 * max_queue
    assert biggest_inflight <= MAX_BATCH_METRICS
    assert stats.logged == 4 * steps
    assert stats.delivered == stats.dropped == stats.failed == 0
    # What does not fit in memory went to disk (spool="on_failure", the default).
    assert stats.spooled >= 4 * steps - max_queue - MAX_BATCH_METRICS
    assert directory is not None
    assert (Path(directory) / "records.log").stat().st_size > 0

    chaos_proxy.up()
    assert run.flush(60)  # end() right after an outage caps its wait (Run.end, DOWN_WAIT)
    stats = run.end(timeout=60)
    assert (stats.delivered, stats.failed, stats.dropped, stats.pending) == (4 * steps, 0, 0, 0)
    assert_exactly_once(mlflow_server.url, run.run_id, expected)
    assert not Path(directory).exists()  # everything delivered: the journal is discarded


def test_reset_after_through_the_aidp_gateway_keeps_signatures_and_exactly_once(
    aidp_gateway: AIDPGateway,
    oci_api_key: OCICredentials,
    mlflow_server: MLflowServer,
    fresh_experiment: str,
) -> None:
    """The proxy forwards headers (Host included) untouched: OCI signatures still verify."""
    with ChaosProxy(aidp_gateway.url) as proxy:
        endpoint = Endpoint.aidp(
            aidp_gateway.instance_id, aidp_gateway.workspace_key, endpoint=proxy.url
        )
        auth = oci_signer_auth(
            "api_key", config_file=oci_api_key.config_file, profile=oci_api_key.profile
        )
        with MetricsClient(endpoint, auth=auth) as client:
            run = Run.start(experiment_name=fresh_experiment, client=client, **FAST)
            expected: Points = {}
            proxy.reset_after(times=3)
            proxy.reset_before(times=2)
            train(run, range(100), expected)
            assert run.flush(60)
            stats = run.end(timeout=60)
    assert aidp_gateway.auth_failures == []
    assert (stats.delivered, stats.failed) == (400, 0)
    assert len(proxy.faulted("runs/log-batch")) == 5
    assert_exactly_once(mlflow_server.url, run.run_id, expected)
    # Every attempt of one write carried the same opc-retry-token (and body).
    by_token: dict[str | None, set[bytes]] = {}
    for request in aidp_gateway.requests_to("runs/log-batch"):
        by_token.setdefault(request.retry_token, set()).add(request.body)
    assert None not in by_token
    assert all(len(bodies) == 1 for bodies in by_token.values())
