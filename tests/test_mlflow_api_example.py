"""examples/mlflow_api_example.py end to end, in its own process, as the README runs it:
`MLFLOW_TRACKING_URI` = an AIDP workspace URL (the signing gateway in front of the real
MLflow server) and `MLFLOW_TRACKING_AUTH=aidp`; checked by reading the server back."""

from __future__ import annotations

import math
import re
import uuid
from pathlib import Path

import pytest

from tests.support.aidp_env import assert_every_request_signed, child_env
from tests.support.gateway import AIDPGateway
from tests.support.mlflow_server import MLflowServer, get_metric_history, get_run
from tests.support.oci_keys import OCICredentials
from tests.test_examples import EXAMPLES, run_script

pytestmark = pytest.mark.slow
pytest.importorskip("oci")
pytest.importorskip("mlflow")


def test_mlflow_api_example_against_aidp(
    aidp_gateway: AIDPGateway,
    oci_api_key: OCICredentials,
    mlflow_server: MLflowServer,
    tmp_path: Path,
) -> None:
    experiment = f"mlflow-api-example-{uuid.uuid4().hex[:12]}"
    env = child_env(aidp_gateway, oci_api_key, "api_key")
    env.update(MLFLOW_EXPERIMENT_NAME=experiment, STEPS="20", AIDP_METRICS_DIR=str(tmp_path))
    result = run_script([str(EXAMPLES / "mlflow_api_example.py")], env, cwd=tmp_path)

    found = re.search(r"^run (\w+) in experiment (\w+): 20 steps$", result.stdout, re.M)
    assert found is not None, result.stdout
    run_id = found.group(1)
    assert_every_request_signed(aidp_gateway, oci_api_key)
    run = get_run(mlflow_server.url, run_id)
    assert run["info"]["status"] == "FINISHED"
    assert run["info"]["experiment_id"] == found.group(2)
    assert {p["key"]: p["value"] for p in run["data"]["params"]} == {"lr": "0.01", "steps": "20"}
    history = get_metric_history(mlflow_server.url, run_id, "loss")
    assert [(m["step"], m["value"]) for m in history] == [
        (step, math.exp(-step / 10)) for step in range(20)
    ]
