"""The examples run end to end against a real MLflow server, each in its own process.

`examples/quickstart.py --fast` is the smoke test of the README's first command; every
`examples/*_example.py` runs with one epoch. Each is checked by reading the server back.
`examples/spark_example.py` runs in tests/integrations/test_spark.py instead, as `main(spark)`
in that module's SparkSession (one JVM for all the Spark tests).
"""

from __future__ import annotations

import importlib.util
import re
import uuid
from pathlib import Path

import pytest

from aidp_metrics import MetricsClient
from tests.support.mlflow_server import MLflowServer
from tests.support.scripts import child_env, run_script

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
QUICKSTART_EXPERIMENT = "aidp-metrics-quickstart"
FRAMEWORKS = ("lightning", "transformers", "accelerate", "keras")


def finished_runs_with_metrics(url: str, experiment: str) -> list[dict[str, object]]:
    with MetricsClient(url) as client:
        found = client.get_experiment_by_name(experiment)
        assert found is not None, f"experiment {experiment!r} was not created"
        runs = client.search_runs([str(found["experiment_id"])])
    return [
        run
        for run in runs
        if run["info"]["status"] == "FINISHED" and run.get("data", {}).get("metrics")
    ]


def test_quickstart_fast(mlflow_server: MLflowServer, tmp_path: Path) -> None:
    png = tmp_path / "q.png"
    result = run_script(
        [str(EXAMPLES / "quickstart.py"), "--fast", "--output", str(png)],
        child_env(mlflow_server.url, tmp_path, with_checkout=True),
        cwd=tmp_path,
    )
    assert "starting a local MLflow server" not in result.stdout  # used the configured one
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    run_ids = dict(re.findall(r"^(\w+): run ([0-9a-f]+),", result.stdout, re.MULTILINE))
    assert set(run_ids) == set(FRAMEWORKS), result.stdout
    with MetricsClient(mlflow_server.url) as client:
        for framework, run_id in run_ids.items():
            run = client.get_run(run_id)
            assert run["info"]["status"] == "FINISHED", framework
            assert run["info"]["run_name"].startswith(framework)
            loss_key = "train_loss" if framework == "lightning" else "loss"
            assert client.get_metric_history(run_id, loss_key), framework
            # The table row: run id, framework, points > 0, last loss, status.
            row = re.search(
                rf"^{run_id}\s+{framework}\s+(\d+)\s+\S+.*FINISHED$", result.stdout, re.M
            )
            assert row is not None, result.stdout
            assert int(row.group(1)) > 0, result.stdout
    in_experiment = {
        str(run["info"]["run_id"])  # type: ignore[index]
        for run in finished_runs_with_metrics(mlflow_server.url, QUICKSTART_EXPERIMENT)
    }
    assert set(run_ids.values()) <= in_experiment


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_example_runs(mlflow_server: MLflowServer, tmp_path: Path, framework: str) -> None:
    if importlib.util.find_spec(framework) is None:  # importing it here would cost seconds
        pytest.skip(f"{framework} is not installed")
    experiment = f"example-{framework}-{uuid.uuid4().hex[:12]}"
    env = child_env(
        mlflow_server.url,
        tmp_path,
        with_checkout=True,
        MLFLOW_EXPERIMENT_NAME=experiment,
        AIDP_EXPERIMENT_NAME=experiment,
        EPOCHS="1",
        OUTPUT_DIR=str(tmp_path / "output"),
    )
    run_script([str(EXAMPLES / f"{framework}_example.py")], env, cwd=tmp_path)
    assert finished_runs_with_metrics(mlflow_server.url, experiment)
