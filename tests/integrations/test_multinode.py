"""A two-node job simulated on this machine, for every integration, against the real server.

Two torchrun agents side by side, `--nnodes 2 --nproc-per-node 1 --node-rank {0,1}`, same
`--master-addr 127.0.0.1 --master-port P`, gloo: the process of node 1 has LOCAL_RANK=0
but RANK=1, so an integration that asked the local rank would log from both nodes. One
launch per integration trains twice in the same processes (multinode_job.py): first with
AIDP_EXPERIMENT_NAME (a new run), then with an AIDP_RUN_ID handed to both nodes. Shown for
each: only global rank 0 creates (or attaches to) the run and sends; node 1 holds no run and
sends nothing; the given run is honoured once (by global rank 0) and no run is created
anywhere else; the run ends FINISHED with exactly the expected keys, steps and values.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from aidp_metrics import MetricsClient  # noqa: E402
from tests.support.mlflow_server import (  # noqa: E402
    free_port,
    get_metric_history,
    get_run,
    runs_in_experiment,
)

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TIMEOUT = 240
NODES = 2

if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
    pytest.skip("torch.distributed with gloo is needed", allow_module_level=True)


def launch_two_nodes(
    script: Path, args: list[str], env: dict[str, str], cwd: Path
) -> list[subprocess.CompletedProcess[str]]:
    """Start one torchrun agent per node side by side; wait for both (kill both on timeout)."""
    port = free_port()
    agents = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                str(NODES),
                "--nproc-per-node",
                "1",
                "--node-rank",
                str(node),
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                str(port),
                str(script),
                *args,
            ],
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for node in range(NODES)
    ]
    results = []
    try:
        for agent in agents:
            stdout, stderr = agent.communicate(timeout=TIMEOUT)
            done = subprocess.CompletedProcess(agent.args, agent.returncode, stdout, stderr)
            results.append(done)
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
    for node, result in enumerate(results):
        assert result.returncode == 0, f"node {node}:\n{result.stderr[-4000:]}"
    return results


def job_env(url: str) -> dict[str, str]:
    """The tracking server; no AIDP_/MLFLOW_ variable of this process (the plan sets them)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIDP_", "MLFLOW_"))}
    env.update(
        MLFLOW_TRACKING_URI=url,
        AIDP_METRICS_DIR=os.environ["AIDP_METRICS_DIR"],
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
        OMP_NUM_THREADS="1",
        KERAS_BACKEND="torch",
    )
    return env


def read_ranks(out: Path) -> dict[int, dict[str, Any]]:
    states = [json.loads(p.read_text()) for p in sorted(out.glob("rank-*.json"))]
    return {state["rank"]: state for state in states}


def server_points(url: str, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every point of every key of the run, as the server has them (duplicates kept)."""
    keys = {m["key"] for m in get_run(url, run_id)["data"].get("metrics", [])}
    return {key: sorted(_pairs(get_metric_history(url, run_id, key))) for key in keys}


def _pairs(history: list[dict[str, Any]]) -> list[tuple[int, float]]:
    return [(int(m["step"]), float(m["value"])) for m in history]


def steps_once(points: list[tuple[int, float]]) -> list[int]:
    steps = [step for step, _ in points]
    assert len(steps) == len(set(steps)), f"a step logged twice: {points}"
    return steps


def check_lightning(points: dict[str, list[tuple[int, float]]], ranks: Any) -> None:
    assert set(points) == {"train_loss", "rank", "val_loss", "epoch"}
    assert steps_once(points["train_loss"]) == list(range(8))
    assert points["rank"] == [(step, 0.0) for step in range(8)]  # from global rank 0 only
    assert steps_once(points["val_loss"]) == [3, 7]
    # Lightning hands `epoch` over with the training and again with the validation metrics
    # of steps 3 and 7: the repeat is sent once, and nothing comes from node 1.
    assert sorted(points["epoch"]) == [(s, 0.0 if s < 4 else 1.0) for s in range(8)]


def check_transformers(points: dict[str, list[tuple[int, float]]], ranks: Any) -> None:
    assert steps_once(points["loss"]) == [5, 10, 15, 20]
    assert steps_once(points["eval_loss"]) == [10, 20]
    assert steps_once(points["train_loss"]) == [20]
    for values in points.values():
        steps_once(values)


def check_keras(points: dict[str, list[tuple[int, float]]], ranks: Any) -> None:
    assert set(points) == {"loss", "epoch", "learning_rate"}
    assert steps_once(points["loss"]) == list(range(1, 9))
    assert points["epoch"] == [(4, 1.0), (8, 2.0)]
    assert [step for step, _ in points["learning_rate"]] == [4, 8]  # the optimizer's, each epoch


def check_accelerate(points: dict[str, list[tuple[int, float]]], ranks: Any) -> None:
    # 48 samples over 2 processes, batch 4, 2 epochs: 12 steps; rank 0 wrote what it logged
    logged = ranks[0]["logged"]
    assert [step for step, _ in logged] == list(range(12))
    for key in ("loss", "epoch", "rank"):
        assert points[key] == [(step, values[key]) for step, values in logged], key
    assert set(points) == {"loss", "epoch", "rank"}
    assert {value for _, value in points["rank"]} == {0.0}


Check = Callable[[dict[str, list[tuple[int, float]]], Any], None]
JOBS: dict[str, tuple[str, Check]] = {
    "lightning": ("lightning.pytorch", check_lightning),
    "transformers": ("transformers", check_transformers),
    "keras": ("keras", check_keras),
    "accelerate": ("accelerate", check_accelerate),
}


def check_node_one(ranks: dict[int, dict[str, Any]]) -> None:
    assert set(ranks) == {0, 1}
    assert (ranks[1]["rank"], ranks[1]["local_rank"]) == (1, 0)  # node 1: local rank 0
    assert ranks[1]["run_id"] is None  # created, attached to, sent nothing


def check_new_run(url: str, experiment: str, out: Path, check: Check) -> None:
    """Phase `new-run`: rank 0 created the one run of the experiment (read after both
    phases: the `given-run` phase created nothing here either)."""
    ranks = read_ranks(out)
    check_node_one(ranks)
    runs = runs_in_experiment(url, experiment)
    assert [r["info"]["run_id"] for r in runs] == [ranks[0]["run_id"]]
    run_id = ranks[0]["run_id"]
    assert get_run(url, run_id)["info"]["status"] == "FINISHED"
    check(server_points(url, run_id), ranks)


def check_given_run(
    url: str, given: str, given_in: str, elsewhere: str, out: Path, check: Check
) -> None:
    """Phase `given-run`: rank 0 attached to AIDP_RUN_ID; nothing was created in the
    experiment AIDP_EXPERIMENT_NAME named, nor beside the given run."""
    ranks = read_ranks(out)
    check_node_one(ranks)
    assert runs_in_experiment(url, elsewhere) == []  # no run created anywhere else
    assert ranks[0]["run_id"] == given
    assert [r["info"]["run_id"] for r in runs_in_experiment(url, given_in)] == [given]
    assert get_run(url, given)["info"]["status"] == "FINISHED"
    check(server_points(url, given), ranks)


@pytest.mark.parametrize("framework", list(JOBS))
def test_two_nodes_one_run_every_point_once(
    framework: str, mlflow_server: Any, fresh_experiment: str, tmp_path: Path
) -> None:
    """One launch, two phases: a new run (AIDP_EXPERIMENT_NAME), then a given one (AIDP_RUN_ID)."""
    module, check = JOBS[framework]
    if importlib.util.find_spec(module.split(".")[0]) is None:
        pytest.skip(f"{module} is not installed")
    mlflow_server.start()
    url: str = mlflow_server.url
    out = tmp_path / "out"
    out.mkdir()
    given_in = f"{fresh_experiment}-given"
    with MetricsClient(url) as client:
        given = client.create_run(experiment_name=given_in, run_name="given").run_id
    # The experiment a new run would go to in the given-run phase: anything created shows up there.
    elsewhere = f"{fresh_experiment}-new"
    plan = [
        {"name": "new-run", "environment": {"AIDP_EXPERIMENT_NAME": fresh_experiment}},
        {
            "name": "given-run",
            "environment": {"AIDP_RUN_ID": given, "AIDP_EXPERIMENT_NAME": elsewhere},
        },
    ]
    (out / "plan.json").write_text(json.dumps(plan))

    launch_two_nodes(HERE / "multinode_job.py", [framework, str(out)], job_env(url), cwd=tmp_path)

    check_new_run(url, fresh_experiment, out / "new-run", check)
    check_given_run(url, given, given_in, elsewhere, out / "given-run", check)
