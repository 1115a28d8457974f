"""The real MLflow server for tests (the product's own), and read-back helpers that do not
go through the code under test."""

from __future__ import annotations

from typing import Any

import httpx

from aidp_metrics.cli._local_server import LocalMLflowServer as MLflowServer
from aidp_metrics.cli._local_server import free_port

__all__ = [
    "MLflowServer",
    "artifact_bytes",
    "artifact_files",
    "artifact_sha256",
    "free_port",
    "get_metric_history",
    "get_run",
    "runs_in_experiment",
]


def get_run(url: str, run_id: str) -> dict[str, Any]:
    """``runs/get`` straight from the MLflow server: the ``run`` object."""
    response = httpx.get(f"{url}/api/2.0/mlflow/runs/get", params={"run_id": run_id}, timeout=30)
    response.raise_for_status()
    run: dict[str, Any] = response.json()["run"]
    return run


def get_metric_history(
    url: str, run_id: str, key: str, *, page_size: int = 25000
) -> list[dict[str, Any]]:
    """All points of one metric straight from the MLflow server, following page tokens."""
    metrics: list[dict[str, Any]] = []
    params: dict[str, str | int] = {"run_id": run_id, "metric_key": key, "max_results": page_size}
    with httpx.Client(timeout=30) as client:
        while True:
            response = client.get(f"{url}/api/2.0/mlflow/metrics/get-history", params=params)
            response.raise_for_status()
            page = response.json()
            metrics.extend(page.get("metrics", []))
            token = page.get("next_page_token")
            if not token:
                return metrics
            params["page_token"] = token


def runs_in_experiment(url: str, experiment_name: str) -> list[dict[str, Any]]:
    """Every run of an experiment, straight from the MLflow server ([] if it doesn't exist)."""
    response = httpx.get(
        f"{url}/api/2.0/mlflow/experiments/get-by-name",
        params={"experiment_name": experiment_name},
        timeout=30,
    )
    if response.status_code == 404:
        return []
    response.raise_for_status()
    experiment_id = response.json()["experiment"]["experiment_id"]
    found = httpx.post(
        f"{url}/api/2.0/mlflow/runs/search",
        json={"experiment_ids": [experiment_id], "max_results": 1000},
        timeout=30,
    )
    found.raise_for_status()
    runs: list[dict[str, Any]] = found.json().get("runs", [])
    return runs


def artifact_files(url: str, run_id: str, path: str = "") -> dict[str, int]:
    """Every file of a run's artifacts and its size, straight from the MLflow server
    (`artifacts/list`, recursively)."""
    found: dict[str, int] = {}
    params = {"run_id": run_id, "path": path}
    response = httpx.get(f"{url}/api/2.0/mlflow/artifacts/list", params=params, timeout=30)
    response.raise_for_status()
    for entry in response.json().get("files", []):
        if entry["is_dir"]:
            found.update(artifact_files(url, run_id, entry["path"]))
        else:
            found[entry["path"]] = int(entry["file_size"])
    return found


def artifact_url(url: str, run_id: str, path: str) -> str:
    """Where the MLflow server serves one of a run's proxied artifacts."""
    uri = get_run(url, run_id)["info"]["artifact_uri"]
    assert uri.startswith("mlflow-artifacts:"), uri
    root = uri.removeprefix("mlflow-artifacts:").lstrip("/")
    return f"{url}/api/2.0/mlflow-artifacts/artifacts/{root}/{path}"


def artifact_bytes(url: str, run_id: str, path: str) -> bytes:
    """One artifact's content, straight from the MLflow server."""
    response = httpx.get(artifact_url(url, run_id, path), timeout=120)
    response.raise_for_status()
    return response.content


def artifact_sha256(url: str, run_id: str, path: str) -> str:
    """The SHA-256 of one (large) artifact, streamed from the MLflow server."""
    import hashlib

    digest = hashlib.sha256()
    with httpx.stream("GET", artifact_url(url, run_id, path), timeout=120) as response:
        response.raise_for_status()
        for chunk in response.iter_bytes(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
