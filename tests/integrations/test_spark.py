"""Spark, as AIDP Workbench notebooks run it: PySpark 4 in `local[2]` mode.

- `examples/spark_example.py`, run as a notebook runs it (`main(spark)`), configured through
  the environment only: `TorchDistributor(local_mode=True)` (torchrun on the driver) with
  Lightning DDP on CPU/gloo and `AIDPLogger` makes one run, every step once, FINISHED; its
  `applyInPandas` one FINISHED run per group.
- `TorchDistributor(local_mode=False)` (barrier tasks on the executors) with Lightning DDP:
  one run, every step once with the values global rank 0 computed, FINISHED.
- `groupBy(...).applyInPandas(fn)`: one `Run` per group, ended inside `fn`, on Python workers
  that Spark forks from its daemon and reuses across tasks and jobs.

Everything is read back from a real MLflow server. One SparkSession (one JVM) for the module.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytest.importorskip("pyspark")
pytest.importorskip("pandas")
pytest.importorskip("pyarrow")
torch = pytest.importorskip("torch")
if shutil.which("java") is None:
    pytest.skip("Spark needs Java (17 for PySpark 4)", allow_module_level=True)

from tests.integrations import spark_jobs  # noqa: E402
from tests.support.mlflow_server import (  # noqa: E402
    MLflowServer,
    get_metric_history,
    get_run,
    runs_in_experiment,
)

# One Spark driver per module: keep the module on one xdist worker.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("spark")]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def spark(tmp_path_factory: pytest.TempPathFactory, mlflow_server: MLflowServer) -> Iterator[Any]:
    """A `local[2]` SparkSession with small settings. Spark's Python workers inherit this
    environment as it is when the JVM starts; TorchDistributor's local-mode torchrun the
    driver's current one. Its endpoint is the session's MLflow server (the example reads it
    from there; the other tests pass theirs)."""
    from pyspark.sql import SparkSession

    mlflow_server.start()  # no-op unless an earlier test left it stopped (same port)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
        env.setenv(
            "PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        )
        env.setenv("PYSPARK_PYTHON", sys.executable)
        env.setenv("PYSPARK_DRIVER_PYTHON", sys.executable)
        env.setenv("OMP_NUM_THREADS", "1")
        env.setenv("AIDP_METRICS_DIR", str(tmp_path_factory.mktemp("spark-spool")))
        for name in (  # would point the workers elsewhere or into another run
            "AIDP_INSTANCE_ID",
            "AIDP_WORKSPACE_KEY",
            "AIDP_ENDPOINT",
            "AIDP_METRICS_MODE",
            "AIDP_RUN_ID",
            "MLFLOW_RUN_ID",
            "AIDP_EXPERIMENT_NAME",
            "MLFLOW_EXPERIMENT_NAME",
        ):
            env.delenv(name, raising=False)
        session = (
            SparkSession.builder.master("local[2]")
            .appName("aidp-metrics-tests")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.sql.shuffle.partitions", "2")
            .config("spark.default.parallelism", "2")
            .config("spark.driver.host", "127.0.0.1")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.driver.memory", "1g")
            .config("spark.local.dir", str(tmp_path_factory.mktemp("spark-local")))
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
            .getOrCreate()
        )
        session.sparkContext.setLogLevel("ERROR")
        try:
            yield session
        finally:
            session.stop()


@pytest.fixture
def url(mlflow_server: MLflowServer) -> str:
    mlflow_server.start()
    return mlflow_server.url


def _history(url: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((int(m["step"]), float(m["value"])) for m in get_metric_history(url, run_id, key))


def _metric_keys(url: str, run_id: str) -> set[str]:
    return {m["key"] for m in get_run(url, run_id)["data"].get("metrics", [])}


EXAMPLE = ROOT / "examples" / "spark_example.py"


def _load_example() -> ModuleType:
    """examples/spark_example.py as a notebook cell has it: a module the workers cannot
    import, so Spark and TorchDistributor ship its functions by value (as a script's)."""
    spec = importlib.util.spec_from_file_location("spark_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.lightning
def test_example_in_the_session_ddp_one_run_every_step_once_and_one_run_per_group(
    spark: Any,
    url: str,
    fresh_experiment: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    recwarn: pytest.WarningsRecorder,
) -> None:
    """`main(spark)` with TorchDistributor's local mode (torchrun on the driver), configured
    only through the environment: the endpoint from the session's (see `spark`), the rest
    read on the driver."""
    pytest.importorskip("lightning.pytorch")
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is needed")
    epochs, groups = 1, 3
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", fresh_experiment)
    monkeypatch.setenv("EPOCHS", str(epochs))
    monkeypatch.setenv("GROUPS", str(groups))

    _load_example().main(spark)

    # a notebook shows the user every warning of the cell (the example once made PySpark warn)
    assert [str(w.message) for w in recwarn if issubclass(w.category, UserWarning)] == []
    out = capsys.readouterr().out
    ddp = re.findall(r"^ddp: run ([0-9a-f]+)$", out, re.MULTILINE)  # global rank 0's return
    printed = {
        int(group): (run_id, loss)
        for group, run_id, loss in re.findall(
            r"^group (\d+): run ([0-9a-f]+), final loss (\S+)$", out, re.MULTILINE
        )
    }
    assert len(ddp) == 1, out
    assert sorted(printed) == list(range(groups)), out
    runs = {r["info"]["run_id"]: r for r in runs_in_experiment(url, fresh_experiment)}
    # one DDP run, the one rank 0's logger made (rank 1 made none), and one run per group
    assert sorted(runs) == sorted([ddp[0], *(run_id for run_id, _ in printed.values())])

    run_id = ddp[0]
    assert runs[run_id]["info"]["status"] == "FINISHED"
    assert runs[run_id]["info"]["run_name"] == "spark-ddp"
    assert {p["key"]: p["value"] for p in runs[run_id]["data"]["params"]} == {"lr": "0.05"}
    assert _metric_keys(url, run_id) == {"train_loss", "val_loss", "epoch"}
    # The example's settings: 512 samples over 2 ranks, batch 32, log_every_n_steps=2.
    batches = 512 // 2 // 32
    train_steps = [s for s in range(epochs * batches) if (s + 1) % 2 == 0]
    val_steps = [(epoch + 1) * batches - 1 for epoch in range(epochs)]
    # every step once: a second rank logging into this run would put each step there twice
    assert [s for s, _ in _history(url, run_id, "train_loss")] == train_steps
    assert [s for s, _ in _history(url, run_id, "val_loss")] == val_steps
    assert _history(url, run_id, "epoch") == [
        (s, float(s // batches)) for s in sorted({*train_steps, *val_steps})
    ]

    for group, (run_id, final_loss) in printed.items():
        run = runs[run_id]
        assert run["info"]["status"] == "FINISHED", group
        assert run["info"]["run_name"] == f"group-{group}", group
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        assert params == {"group": str(group), "lr": "0.1"}, group
        assert _metric_keys(url, run_id) == {"loss"}, group
        history = _history(url, run_id, "loss")
        assert [s for s, _ in history] == list(range(20)), group  # the example's 20 steps
        assert f"{history[-1][1]:.4f}" == final_loss, group  # the last point is the last loss


@pytest.mark.lightning
def test_torch_distributor_barrier_tasks_lightning_ddp_one_run_every_step_once(
    spark: Any, url: str, fresh_experiment: str, tmp_path: Path
) -> None:
    """`local_mode=False`: one barrier task per process on the executors, each a node of one
    process (local mode is the example's, above)."""
    pytest.importorskip("lightning.pytorch")
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is needed")
    from pyspark.ml.torch.distributor import TorchDistributor

    distributor = TorchDistributor(num_processes=2, local_mode=False, use_gpu=False)
    returned = distributor.run(spark_jobs.lightning_ddp, url, fresh_experiment, str(tmp_path))

    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    runs = runs_in_experiment(url, fresh_experiment)
    assert [r["info"]["run_id"] for r in runs] == [rank0["run_id"]]  # exactly one run
    run_id = rank0["run_id"]
    assert returned == run_id  # the output of partition 0 (global rank 0) comes back
    assert get_run(url, run_id)["info"]["status"] == "FINISHED"
    assert _metric_keys(url, run_id) == {"train_loss", "rank", "val_loss", "epoch"}
    # 8 optimizer steps, each once, with the values rank 0 computed; rank 1 sent nothing
    assert _history(url, run_id, "train_loss") == list(enumerate(rank0["loss"]))
    assert len(rank0["loss"]) == 8
    assert _history(url, run_id, "rank") == [(s, 0.0) for s in range(8)]
    assert [s for s, _ in _history(url, run_id, "val_loss")] == [3, 7]
    assert _history(url, run_id, "epoch") == [(s, 0.0 if s < 4 else 1.0) for s in range(8)]


def _train_groups(spark: Any, url: str, experiment: str, job: int) -> list[Any]:
    from pyspark.sql import functions as F

    rows = spark_jobs.GROUPS * spark_jobs.ROWS_PER_GROUP
    df = (
        spark.range(rows)
        .withColumn("group", (F.col("id") % spark_jobs.GROUPS).cast("long"))
        .withColumn("x1", F.sin(F.col("id").cast("double")))
        .withColumn("x2", F.cos(F.col("id").cast("double")))
        .withColumn("y", F.col("x1") * 2.0 - F.col("x2") + F.col("group") * 0.1)
    )

    def fn(pdf: Any) -> Any:
        return spark_jobs.train_group(pdf.sort_values("id"), url, experiment, job)

    out = df.groupBy("group").applyInPandas(fn, schema=spark_jobs.GROUP_RESULT_SCHEMA)
    return sorted(out.collect(), key=lambda row: row["group"])


def test_apply_in_pandas_one_finished_run_per_group_on_reused_workers(
    spark: Any, url: str, fresh_experiment: str
) -> None:
    jobs = 2  # the second job on the same session runs on the workers the first one left
    results = [_train_groups(spark, url, fresh_experiment, job) for job in range(jobs)]

    pids = [{row["pid"] for row in rows} for rows in results]
    assert pids[0] & pids[1], pids  # the second job ran on workers the first one left
    server_runs = {r["info"]["run_id"]: r for r in runs_in_experiment(url, fresh_experiment)}
    assert len(server_runs) == jobs * spark_jobs.GROUPS
    for job, rows in enumerate(results):
        assert [row["group"] for row in rows] == list(range(spark_jobs.GROUPS))
        for row in rows:
            where = f"job {job} group {row['group']} (pid {row['pid']})"
            # nothing left over from the group or task before in this worker
            assert (row["leftover_runs"], row["leftover_threads"]) == (0, ""), where
            assert row["delivered"] == row["logged"] == 2 * spark_jobs.GROUP_STEPS, where
            run = server_runs[row["run_id"]]
            assert run["info"]["status"] == "FINISHED", where
            assert run["info"]["run_name"] == f"job{job}-group{row['group']}", where
            params = {p["key"]: p["value"] for p in run["data"]["params"]}
            assert params == {"group": str(row["group"]), "job": str(job), "lr": "0.1"}, where
            assert _metric_keys(url, row["run_id"]) == {"loss", "group"}, where
            losses = json.loads(row["losses"])
            assert _history(url, row["run_id"], "loss") == list(enumerate(losses)), where
            assert _history(url, row["run_id"], "group") == [
                (s, float(row["group"])) for s in range(spark_jobs.GROUP_STEPS)
            ], where
