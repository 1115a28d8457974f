"""Log to Oracle AI Data Platform with MLflow's own API, OCI-signed by aidp-metrics.

    HOST=https://aidp.us-ashburn-1.oci.oraclecloud.com
    export MLFLOW_TRACKING_URI=$HOST/20260430/aiDataPlatforms/$AIDP_OCID/workspaces/$WORKSPACE/mlops
    export MLFLOW_TRACKING_AUTH=aidp   # the aidp-metrics plugin: signs with your OCI config
    python examples/mlflow_api_example.py

($AIDP_OCID: the AI Data Platform's OCID, $WORKSPACE: the workspace key.) The OCI
configuration is the one aidp-metrics reads everywhere: OCI_CLI_AUTH (api_key,
security_token, instance_principal, resource_principal, oke_workload_identity),
OCI_CLI_PROFILE, OCI_CLI_CONFIG_FILE. Any MLflow tracking server works too (then without
MLFLOW_TRACKING_AUTH). MLFLOW_EXPERIMENT_NAME picks the experiment (created if missing),
STEPS the number of steps (default 50).

Params go through `mlflow.log_params`; the per-step metrics through `mlflow.log_metrics`
(one blocking request per call) for the first half, then through an aidp-metrics `Run`
attached to the same run (non-blocking, batched) for the second half.
"""

from __future__ import annotations

import math
import os

import mlflow

from aidp_metrics import Run


def main() -> None:
    steps = int(os.environ.get("STEPS", "50"))
    mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "mlflow-api-demo"))
    with mlflow.start_run(run_name="mlflow-api") as active:
        mlflow.log_params({"lr": 0.01, "steps": steps})
        half = steps // 2
        for step in range(half):
            mlflow.log_metrics({"loss": math.exp(-step / 10)}, step=step)
        with Run.attach(active.info.run_id) as run:  # same endpoint and credentials
            for step in range(half, steps):
                run.log_metrics({"loss": math.exp(-step / 10)}, step=step)
    print(f"run {active.info.run_id} in experiment {active.info.experiment_id}: {steps} steps")


if __name__ == "__main__":
    main()
