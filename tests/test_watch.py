"""`Run.watch` in a plain torch loop against a real MLflow server, read back: every
parameter's key at exactly the updates `log_freq` selects, values equal to torch's own
norms of the gradients the optimizer applied (accumulation, bf16 autocast, a closure),
the hook gone after `unwatch` / `end()`, the model picklable."""

from __future__ import annotations

import math
import pickle
import warnings
from typing import Any

import pytest

from aidp_metrics import AIDPMetricsWarning, Run
from tests.support.mlflow_server import get_metric_history, get_run

torch = pytest.importorskip("torch")
torch.set_num_threads(1)
optimizer_module = pytest.importorskip("torch.optim.optimizer")


def tiny_model() -> Any:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8), torch.nn.Linear(8, 1)
    )


def global_hooks() -> int:
    return len(optimizer_module._global_optimizer_pre_hooks)


def history(url: str, run_id: str, key: str) -> dict[int, float]:
    return {int(m["step"]): float(m["value"]) for m in get_metric_history(url, run_id, key)}


def metric_keys(url: str, run_id: str) -> set[str]:
    return {m["key"] for m in get_run(url, run_id)["data"].get("metrics", [])}


def train(
    model: Any, updates: int, *, accumulate: int = 1, bf16: bool = False
) -> dict[int, dict[str, float]]:
    """Train `updates` optimizer updates; torch's own norms of the gradients each update
    applied, read right before the step (the watcher's hook runs inside it)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    generator = torch.Generator().manual_seed(1)
    seen: dict[int, dict[str, float]] = {}
    for update in range(1, updates + 1):
        for _ in range(accumulate):
            x = torch.randn(16, 4, generator=generator)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model(x).float().pow(2).mean() / accumulate
            loss.backward()
        seen[update] = {
            name: float(torch.linalg.vector_norm(p.grad)) for name, p in model.named_parameters()
        }
        optimizer.step()
        optimizer.zero_grad()
    return seen


def expected_total(norms: dict[str, float]) -> float:
    return math.sqrt(sum(v * v for v in norms.values()))


@pytest.mark.parametrize(("accumulate", "bf16"), [(1, False), (3, False), (2, True)])
def test_gradient_norms_at_every_selected_update(
    mlflow_server: Any, fresh_experiment: str, accumulate: int, bf16: bool
) -> None:
    model = tiny_model()
    names = [name for name, _ in model.named_parameters()]
    hooks = global_hooks()
    with Run.start(endpoint=mlflow_server.url, experiment_name=fresh_experiment) as run:
        run.watch(model, log="gradients", log_freq=3)
        assert global_hooks() == hooks + 1
        seen = train(model, 10, accumulate=accumulate, bf16=bf16)
    assert global_hooks() == hooks  # end() removed it

    url, run_id = mlflow_server.url, run.run_id
    assert metric_keys(url, run_id) == {f"grad_norm/{n}" for n in names} | {"grad_norm/total"}
    for name in names:
        points = history(url, run_id, f"grad_norm/{name}")
        assert sorted(points) == [3, 6, 9]
        for step, value in points.items():
            assert value == pytest.approx(seen[step][name], rel=1e-6)
    total = history(url, run_id, "grad_norm/total")
    assert {s: pytest.approx(expected_total(seen[s]), rel=1e-6) for s in (3, 6, 9)} == total
    assert run.stats.failed == 0


def test_weight_norms_and_a_closure(mlflow_server: Any, fresh_experiment: str) -> None:
    """A step with a closure computes the gradients inside it: they are read after it."""
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(2))
    weights: dict[int, dict[str, float]] = {}
    grads: dict[int, float] = {}

    def closure() -> Any:
        optimizer.zero_grad()
        loss = model(x).pow(2).mean()
        loss.backward()
        grads[len(weights)] = expected_total(
            {n: float(p.grad.norm()) for n, p in model.named_parameters()}
        )
        return loss

    with Run.start(endpoint=mlflow_server.url, experiment_name=fresh_experiment) as run:
        run.watch(model, log="all", log_freq=2)
        for update in range(1, 5):
            weights[update] = {n: float(p.detach().norm()) for n, p in model.named_parameters()}
            optimizer.step(closure)
    url, run_id = mlflow_server.url, run.run_id
    for name in weights[1]:
        points = history(url, run_id, f"weight_norm/{name}")
        assert points == {s: pytest.approx(weights[s][name], rel=1e-6) for s in (2, 4)}
    assert history(url, run_id, "grad_norm/total") == {
        s: pytest.approx(grads[s], rel=1e-6) for s in (2, 4)
    }


def test_unwatch_removes_the_hook_and_the_model_stays_picklable(
    mlflow_server: Any, fresh_experiment: str
) -> None:
    model = tiny_model()
    hooks = global_hooks()
    with Run.start(endpoint=mlflow_server.url, experiment_name=fresh_experiment) as run:
        run.watch(model, log="parameters", log_freq=1)
        run.watch(model, log="parameters", log_freq=1)  # watching again replaces
        assert global_hooks() == hooks + 1
        copy = pickle.loads(pickle.dumps(model))
        assert [n for n, _ in copy.named_parameters()] == [n for n, _ in model.named_parameters()]
        train(model, 2)
        run.unwatch(model)
        assert global_hooks() == hooks
        train(model, 2)  # no longer logged
        run.watch(copy, log="gradients", log_freq=1)
        run.unwatch()
        assert global_hooks() == hooks
    assert sorted(history(mlflow_server.url, run.run_id, "weight_norm/0.weight")) == [1, 2]


def test_an_optimizer_of_another_model_is_not_counted(
    mlflow_server: Any, fresh_experiment: str
) -> None:
    model, other = tiny_model(), tiny_model()
    with Run.start(endpoint=mlflow_server.url, experiment_name=fresh_experiment) as run:
        run.watch(model, log_freq=2)
        train(other, 3)
        train(model, 2)
    assert sorted(history(mlflow_server.url, run.run_id, "grad_norm/total")) == [2]


def test_bad_arguments_warn_once_and_watch_nothing() -> None:
    run = Run.start(offline=True, experiment_name="watch")
    hooks = global_hooks()
    try:
        with pytest.warns(AIDPMetricsWarning, match="log must be one of"):
            run.watch(tiny_model(), log="histograms")
        with pytest.warns(AIDPMetricsWarning, match="log_freq must be a positive int"):
            run.watch(tiny_model(), log_freq=0)
        with pytest.warns(AIDPMetricsWarning, match="needs a torch.nn.Module"):
            run.watch(object())
        assert global_hooks() == hooks
    finally:
        run.end()


def test_bad_arguments_raise_with_strict() -> None:
    run = Run.start(offline=True, experiment_name="watch", strict=True)
    try:
        with pytest.raises(ValueError, match="log_freq"):
            run.watch(tiny_model(), log_freq=-1)
    finally:
        run.end()


def test_sharded_parameters_are_named_once() -> None:
    model = tiny_model()
    model[0].weight.ds_id = 7  # what DeepSpeed ZeRO-3 marks a partitioned parameter with
    run = Run.start(offline=True, experiment_name="watch")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run.watch(model, log_freq=1)
        said = [str(w.message) for w in caught if issubclass(w.category, AIDPMetricsWarning)]
        assert len(said) == 1
        assert "1 sharded parameter(s) (0.weight)" in said[0]
        assert "Logged: the 5 parameter(s)" in said[0]
    finally:
        run.end()


def test_a_failing_step_source_warns_once_and_counts_updates(
    mlflow_server: Any, fresh_experiment: str
) -> None:
    """E.g. a LightningModule not attached to a Trainer: training goes on, counted from 1."""
    model = tiny_model()

    def broken() -> int:
        raise RuntimeError("not attached to a Trainer")

    with Run.start(endpoint=mlflow_server.url, experiment_name=fresh_experiment) as run:
        run.watch(model, log_freq=2, step=broken)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train(model, 4)
    said = [str(w.message) for w in caught if issubclass(w.category, AIDPMetricsWarning)]
    assert len(said) == 1
    assert "not attached to a Trainer" in said[0]
    assert sorted(history(mlflow_server.url, run.run_id, "grad_norm/total")) == [2, 4]
