"""Lightning's tests/tests_pytorch/loggers/test_mlflow.py (2.6.x) with AIDPLogger.

Lightning checks `MLFlowLogger` against a mocked `mlflow` module (which client method was
called with what). Here `AIDPLogger` takes its place and every assertion is on what a real
MLflow server holds afterwards (runs, experiments, params, tags, metric histories, status),
or on the requests a recording proxy (tests/support/chaos_proxy.py) saw where Lightning
counts client calls. Each test keeps Lightning's name. The module runs in the
`lightning.pytorch` namespace here and in the `pytorch_lightning` namespace through
test_lightning_suites_in_pytorch_lightning.py.

Deliberate differences from `MLFlowLogger` the ports take into account:

* The experiment name defaults to the environment (`AIDP_EXPERIMENT_NAME`,
  `MLFLOW_EXPERIMENT_NAME`), then "lightning_logs"; `logger.experiment_name` reads it.
* `save_dir` is None without a `file:` tracking URI (MLFlowLogger's is the `./mlruns` file
  store): AIDPLogger writes nothing locally but its spool. So `trainer.log_dir` is None and
  checkpoints go to `default_root_dir/<experiment id>/<run id>/checkpoints`.
* A metric key the server refuses is logged with each bad character replaced by `_` (one
  warning), where MLFlowLogger deletes them: "[some_metric]" -> "_some_metric_", not
  "some_metric" (`sanitize_key`, the one rule of every integration).
* Param values are cut at the server's limit, 6000 characters (MLFlowLogger cuts at 250).
* With the default `log_model=False` no checkpoint is uploaded: paths and best score are tags.

Not ported:

* `test_mlflow_logger_experiment_calls_with_synchronous[False/True]` and
  `test_mlflow_logger_no_synchronous_support`: they count MLflow client calls. AIDPLogger
  takes `synchronous` (a log call then returns once delivered or spooled: `Run.flush`);
  test_parity_lightning.py trains with it against MLFlowLogger.
* The `log_model="all"`/`True` variants of `test_mlflow_log_model` (they count client
  calls; test_lightning.py checks the uploaded layout against `MLFlowLogger`'s on a real
  server) and the `artifact_location` argument of `test_mlflow_logger_experiment_calls`.
  `test_mlflow_log_model` checks the checkpoint tags, and that `log_model=False` uploads
  nothing.
* The file-store half of `test_mlflow_logger_dirs_creation` (the `mlruns` folder layout:
  `.trash`, `meta.yaml`, `metrics/`, `params/`): there is no local store; the port checks the
  same facts (one experiment, one run, the `epoch` metric, the params) on the server, and
  that nothing is written under `save_dir`'s place.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from aidp_metrics import Endpoint
from aidp_metrics._errors import AIDPMetricsWarning
from tests.integrations import lightning_namespace as ns
from tests.integrations.lightning_namespace import AIDPLogger, BoringModel
from tests.support.chaos_proxy import ChaosProxy
from tests.support.mlflow_server import get_metric_history, get_run, runs_in_experiment

pytestmark = pytest.mark.lightning
env = ns.env

RUN_NAME_TAG = "mlflow.runName"


def _history(url: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(int(m["step"]), float(m["value"])) for m in get_metric_history(url, run_id, key)]


def _params(url: str, run_id: str) -> dict[str, str]:
    return {p["key"]: p["value"] for p in get_run(url, run_id)["data"].get("params", [])}


def _tags(url: str, run_id: str) -> dict[str, str]:
    return {t["key"]: t["value"] for t in get_run(url, run_id)["data"].get("tags", [])}


def _info(url: str, run_id: str) -> dict[str, Any]:
    info: dict[str, Any] = get_run(url, run_id)["info"]
    return info


def _run_ids(url: str, experiment_name: str) -> list[str]:
    return sorted(r["info"]["run_id"] for r in runs_in_experiment(url, experiment_name))


def _create_run(url: str, experiment_name: str, metrics: dict[str, list[float]]) -> tuple[str, str]:
    """An experiment and a run holding `metrics` (steps 0, 1, ...), made straight through
    MLflow's REST API: (experiment id, run id)."""
    api = f"{url}/api/2.0/mlflow"
    with httpx.Client(timeout=30) as client:
        created = client.post(f"{api}/experiments/create", json={"name": experiment_name})
        created.raise_for_status()
        experiment_id: str = created.json()["experiment_id"]
        now = int(time.time() * 1000)
        run = client.post(f"{api}/runs/create", json={"experiment_id": experiment_id})
        run.raise_for_status()
        run_id: str = run.json()["run"]["info"]["run_id"]
        points = [
            {"key": key, "value": value, "step": step, "timestamp": now}
            for key, values in metrics.items()
            for step, value in enumerate(values)
        ]
        client.post(
            f"{api}/runs/log-batch", json={"run_id": run_id, "metrics": points}
        ).raise_for_status()
    return experiment_id, run_id


@pytest.fixture
def proxy(env: str) -> Any:
    """A recording proxy in front of the server, where Lightning counts client calls."""
    with ChaosProxy(env) as recording:
        yield recording


def test_mlflow_logger_exists(env: str, fresh_experiment: str) -> None:
    """Test launching three independent loggers with either same or different experiment name."""
    logger = AIDPLogger(experiment_name=fresh_experiment)
    assert logger._handle.run is None
    assert runs_in_experiment(env, fresh_experiment) == []  # nothing before it is needed
    experiment_id = logger.experiment_id
    assert _info(env, logger.run_id)["experiment_id"] == experiment_id
    assert _run_ids(env, fresh_experiment) == [logger.run_id]

    # same name leads to same experiment id, but different runs get recorded
    logger2 = AIDPLogger(experiment_name=fresh_experiment)
    assert logger2.experiment_id == experiment_id
    assert logger2.run_id != logger.run_id
    assert _info(env, logger2.run_id)["experiment_id"] == experiment_id
    assert _run_ids(env, fresh_experiment) == sorted([logger.run_id, logger2.run_id])

    # logger with new experiment name causes new experiment id and new run id to be created
    logger3 = AIDPLogger(experiment_name=f"{fresh_experiment}-new")
    assert logger3.experiment_id != experiment_id
    assert _info(env, logger3.run_id)["experiment_id"] == logger3.experiment_id
    assert _run_ids(env, f"{fresh_experiment}-new") == [logger3.run_id]
    for each in (logger, logger2, logger3):
        each.finalize("success")


def test_mlflow_run_name_setting(env: str) -> None:
    """Test that the run_name argument makes the MLFLOW_RUN_NAME tag."""
    # run_name is appended to tags
    logger = AIDPLogger(run_name="run-name-1")
    _ = logger.experiment
    assert _info(env, logger.run_id)["run_name"] == "run-name-1"
    assert _tags(env, logger.run_id)[RUN_NAME_TAG] == "run-name-1"

    # run_name overrides tags[MLFLOW_RUN_NAME]
    logger2 = AIDPLogger(run_name="run-name-1", tags={RUN_NAME_TAG: "run-name-2"})
    _ = logger2.experiment
    assert _info(env, logger2.run_id)["run_name"] == "run-name-1"
    assert _tags(env, logger2.run_id)[RUN_NAME_TAG] == "run-name-1"

    # default run_name (= None) does not append new tag: the server names the run
    logger3 = AIDPLogger()
    _ = logger3.experiment
    server_name = _info(env, logger3.run_id)["run_name"]
    assert server_name not in ("", "run-name-1", "run-name-2")
    assert _tags(env, logger3.run_id)[RUN_NAME_TAG] == server_name
    for each in (logger, logger2, logger3):
        each.finalize("success")


def test_mlflow_run_id_setting(tmp_path: Path, env: str, fresh_experiment: str) -> None:
    """Test that the run_id argument uses the provided run_id (and resumes it: the steps it
    already holds are not logged again)."""
    experiment_id, run_id = _create_run(env, fresh_experiment, {"train_loss": [100.0, 101.0]})
    logger = AIDPLogger(run_id=run_id)
    _ = logger.experiment
    assert logger.experiment_id == experiment_id
    assert logger.run_id == run_id

    class CustomModel(BoringModel):  # type: ignore[misc,valid-type]
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            loss = self.step(batch)
            self.log("train_loss", loss)
            return {"loss": loss}

    trainer = ns.trainer(
        max_steps=4,
        log_every_n_steps=1,
        logger=logger,
        default_root_dir=tmp_path,
        enable_checkpointing=False,
    )
    trainer.fit(CustomModel())
    assert _run_ids(env, fresh_experiment) == [run_id]
    history = _history(env, run_id, "train_loss")
    assert [step for step, _ in history] == [0, 1, 2, 3]
    assert history[:2] == [(0, 100.0), (1, 101.0)]
    assert _info(env, run_id)["status"] == "FINISHED"


def test_mlflow_log_dir(tmp_path: Path, env: str, fresh_experiment: str) -> None:
    """Test that the trainer saves checkpoints under the logger's name and version."""
    logger = AIDPLogger()
    assert logger.save_dir is None  # MLFlowLogger: the file store (see the module docstring)
    assert logger.version == logger.run.run_id
    assert _info(env, logger.version)["run_id"] == logger.version
    assert logger.name == logger.experiment_id  # as MLFlowLogger: the experiment id
    assert logger.experiment_name == fresh_experiment

    trainer = ns.trainer(
        default_root_dir=tmp_path,
        logger=logger,
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=3,
    )
    assert trainer.log_dir == logger.save_dir
    trainer.fit(BoringModel())
    dirpath = tmp_path / str(logger.experiment_id) / logger.version / "checkpoints"
    assert trainer.checkpoint_callback.dirpath == str(dirpath)
    assert set(os.listdir(dirpath)) == {"epoch=0-step=1.ckpt"}
    assert trainer.log_dir == logger.save_dir
    tags = _tags(env, logger.version)
    assert tags["checkpoint.best_model_path"] == str(dirpath / "epoch=0-step=1.ckpt")


def test_mlflow_logger_dirs_creation(
    tmp_path: Path, env: str, fresh_experiment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Test that the logger creates its run (and nothing locally) in the right place."""
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    logger = AIDPLogger()
    run_id = logger.run_id
    experiment_id = logger.experiment_id

    # multiple experiment calls should not lead to new experiments or runs
    for _ in range(2):
        _ = logger.experiment
        assert _run_ids(env, fresh_experiment) == [run_id]
        assert _info(env, run_id)["experiment_id"] == experiment_id
    assert os.listdir(workdir) == []

    class CustomModel(BoringModel):  # type: ignore[misc,valid-type]
        def on_train_epoch_end(self, *args: Any, **kwargs: Any) -> None:
            self.log("epoch", self.current_epoch)

    model = CustomModel()
    limit_batches = 5
    trainer = ns.trainer(
        default_root_dir=tmp_path,
        logger=logger,
        max_epochs=1,
        limit_train_batches=limit_batches,
        limit_val_batches=limit_batches,
    )
    trainer.fit(model)
    assert _run_ids(env, fresh_experiment) == [run_id]
    # the epoch-end point is at the epoch's last optimizer step
    assert _history(env, run_id, "epoch") == [(limit_batches - 1, 0.0)]
    assert set(_params(env, run_id)) == set(model.hparams.keys())
    dirpath = tmp_path / str(logger.experiment_id) / run_id / "checkpoints"
    assert trainer.checkpoint_callback.dirpath == str(dirpath)
    assert os.listdir(dirpath) == [f"epoch=0-step={limit_batches}.ckpt"]
    assert os.listdir(workdir) == []


def test_mlflow_experiment_id_retrieved_once(
    env: str, proxy: ChaosProxy, fresh_experiment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Test that the logger experiment_id retrieved only once."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", proxy.url)
    logger = AIDPLogger()
    _ = logger.experiment
    _ = logger.experiment
    _ = logger.experiment
    logger.finalize("success")
    assert len(proxy.forwarded("experiments/get-by-name")) == 1
    assert len(proxy.forwarded("experiments/create")) == 1  # a new experiment name
    assert len(proxy.forwarded("runs/create")) == 1
    assert _run_ids(env, fresh_experiment) == [logger.version]


def test_mlflow_logger_with_unexpected_characters(env: str) -> None:
    """Test that the logger warns about characters the server does not accept in metric
    names, and logs the metric under a valid key."""
    logger = AIDPLogger()
    metrics = {"[some_metric]": 10}
    with pytest.warns(AIDPMetricsWarning, match=r"\[some_metric\]"):
        logger.log_metrics(metrics)
    logger.finalize("success")
    assert _history(env, logger.version, "_some_metric_") == [(0, 10.0)]
    assert _info(env, logger.version)["status"] == "FINISHED"


def test_mlflow_logger_experiment_calls(env: str, fresh_experiment: str) -> None:
    """Test that the logger sends params and metrics into a run of the named experiment."""
    logger = AIDPLogger(experiment_name=fresh_experiment)

    params = {"test": "test_param"}
    logger.log_hyperparams(params)
    metrics = {"some_metric": 10}
    logger.log_metrics(metrics)
    logger.finalize("success")

    assert _run_ids(env, fresh_experiment) == [logger.run_id]
    assert _params(env, logger.run_id) == {"test": "test_param"}
    assert _history(env, logger.run_id, "some_metric") == [(0, 10.0)]


def test_mlflow_logger_with_long_param_value(env: str) -> None:
    """Test that long parameter values are logged, cut to the server's limit (6000)."""
    logger = AIDPLogger()
    params = {"test": "test_param" * 50, "too_long": "x" * 7000}
    logger.log_hyperparams(params)
    logger.finalize("success")
    logged = _params(env, logger.version)
    assert logged["test"] == "test_param" * 50
    assert len(logged["too_long"]) == 6000
    assert logged["too_long"].startswith("x" * 5900)


def test_mlflow_logger_with_many_params(env: str, proxy: ChaosProxy) -> None:
    """Test that when logging more than 100 parameters, they are split into batches of at
    most 100 parameters (the server's limit for one log-batch) and all arrive."""
    logger = AIDPLogger(endpoint=Endpoint.mlflow(proxy.url))
    params = {f"test_{idx}": f"test_param_{idx}" for idx in range(150)}
    logger.log_hyperparams(params)
    logger.finalize("success")
    assert _params(env, logger.version) == params
    batches = [json.loads(e.body) for e in proxy.forwarded("runs/log-batch")]
    sizes = [len(b.get("params", [])) for b in batches if b.get("params")]
    assert sum(sizes) == 150
    assert max(sizes) <= 100


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("success", "FINISHED"),
        ("failed", "FAILED"),
        ("finished", "FINISHED"),
    ],
)
def test_mlflow_logger_finalize(env: str, status: str, expected: str) -> None:
    logger = AIDPLogger()
    # Pretend we are in a worker process and finalizing
    _ = logger.experiment
    assert logger._handle.run is not None

    logger.finalize(status)
    assert _info(env, logger.run_id)["status"] == expected


def test_mlflow_logger_finalize_when_exception(env: str, fresh_experiment: str) -> None:
    logger = AIDPLogger()

    # Pretend we are on the main process and failing: no run was created, none is
    logger.finalize("failed")
    assert logger._handle.run is None
    assert runs_in_experiment(env, fresh_experiment) == []

    # Pretend we are in a worker process and failing
    _ = logger.experiment
    logger.finalize("failed")
    assert _run_ids(env, fresh_experiment) == [logger.run_id]
    assert _info(env, logger.run_id)["status"] == "FAILED"


def test_mlflow_log_model(tmp_path: Path, env: str) -> None:
    """Checkpoints are not uploaded: the best checkpoint's path is a run tag."""
    logger = AIDPLogger()
    trainer = ns.trainer(
        default_root_dir=tmp_path,
        logger=logger,
        max_epochs=2,
        limit_train_batches=3,
        limit_val_batches=3,
    )
    trainer.fit(BoringModel())
    best = trainer.checkpoint_callback.best_model_path
    assert Path(best).name == "epoch=1-step=6.ckpt"
    assert Path(best).is_file()
    assert _tags(env, logger.version)["checkpoint.best_model_path"] == best
    listed = httpx.get(
        f"{env}/api/2.0/mlflow/artifacts/list", params={"run_id": logger.version}, timeout=30
    )
    listed.raise_for_status()
    assert listed.json().get("files", []) == []


def test_set_tracking_uri(env: str, proxy: ChaosProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    """Test that the logger logs to the tracking URI it was given, and contacts it only when
    the experiment is needed."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    logger = AIDPLogger(endpoint=Endpoint.mlflow(proxy.url))
    assert proxy.exchanges == []
    _ = logger.experiment
    assert proxy.forwarded("runs/create")
    logger.finalize("success")
    assert _info(env, logger.run_id)["status"] == "FINISHED"
