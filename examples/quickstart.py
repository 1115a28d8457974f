"""Quickstart: log a training curve and read it back.

With no endpoint configured (no AIDP_* variables, no MLFLOW_TRACKING_URI) it starts a local
MLflow server first, so it runs on a fresh machine without an OCI account.
"""

from __future__ import annotations

import math
import os
import tempfile

from aidp_metrics import Endpoint, Metric, MetricsClient
from aidp_metrics.local_server import LocalMLflowServer

STEPS = 50


def configured() -> bool:
    return bool(os.environ.get("AIDP_INSTANCE_ID") or os.environ.get("MLFLOW_TRACKING_URI"))


def main() -> None:
    server = None
    if not configured():
        server = LocalMLflowServer(tempfile.mkdtemp(prefix="aidp-metrics-quickstart-"))
        print(f"No endpoint configured: starting a local MLflow server at {server.url} ...")
        server.start()
        os.environ["MLFLOW_TRACKING_URI"] = server.url
    try:
        with MetricsClient(Endpoint.from_env()) as client:
            print(f"Logging to {client.endpoint.describe()}")
            run = client.create_run(experiment_name="aidp-metrics-quickstart", run_name="curve")
            client.log_metric(run.run_id, "loss", 2.5, step=0)  # the seed call: runs/log-metric
            points = [
                Metric("loss", 2.5 * math.exp(-step / 15), Metric.now(), step)
                for step in range(1, STEPS)
            ]
            client.log_batch(run.run_id, points)
            client.update_run(run.run_id, "FINISHED")
            history = client.get_metric_history(run.run_id, "loss")
            print(f"run {run.run_id}: {len(history)} points of 'loss' read back")
            for point in history[:: STEPS // 5]:
                print(f"  step {point.step:3d}  loss {point.value:.4f}")
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
