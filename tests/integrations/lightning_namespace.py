"""The Lightning namespace the ported Lightning logger suites run in.

`lightning.pytorch` in the test process. `test_lightning_suites_in_pytorch_lightning.py`
runs the same modules again in a subprocess with `AIDP_TEST_LIGHTNING_NAMESPACE=
pytorch_lightning` (importing `pytorch_lightning` in the test process would change the
bases of `aidp_metrics.integrations.lightning.AIDPLogger` and where Lightning's log messages
go for every test after it). There the modules get `pytorch_lightning`'s Trainer, demos and
loggers, and `aidp_metrics.integrations.pytorch_lightning.AIDPLogger`, and they log into the
parent's MLflow server (`AIDP_TEST_MLFLOW_URL`) instead of starting their own.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import pytest

NAMESPACE_VARIABLE = "AIDP_TEST_LIGHTNING_NAMESPACE"
SERVER_VARIABLE = "AIDP_TEST_MLFLOW_URL"
NAMESPACE = os.environ.get(NAMESPACE_VARIABLE, "lightning.pytorch")
if NAMESPACE not in ("lightning.pytorch", "pytorch_lightning"):
    raise ValueError(f"{NAMESPACE_VARIABLE}={NAMESPACE!r}: lightning.pytorch or pytorch_lightning")

torch = pytest.importorskip("torch")
L: Any = pytest.importorskip(NAMESPACE)
torch.set_num_threads(1)


def _from(module: str, *names: str) -> tuple[Any, ...]:
    loaded = importlib.import_module(f"{NAMESPACE}.{module}")
    return tuple(getattr(loaded, name) for name in names)


BoringDataModule, BoringModel = _from("demos.boring_classes", "BoringDataModule", "BoringModel")
CSVLogger, MLFlowLogger = _from("loggers", "CSVLogger", "MLFlowLogger")
DummyExperiment, DummyLogger, Logger = _from(
    "loggers.logger", "DummyExperiment", "DummyLogger", "Logger"
)
(Tuner,) = _from("tuner.tuning", "Tuner")
(rank_zero_only,) = _from("utilities.rank_zero", "rank_zero_only")

if NAMESPACE == "pytorch_lightning":
    from aidp_metrics.integrations.pytorch_lightning import AIDPLogger
else:
    from aidp_metrics.integrations.lightning import AIDPLogger

__all__ = [
    "NAMESPACE",
    "AIDPLogger",
    "BoringDataModule",
    "BoringModel",
    "CSVLogger",
    "DummyExperiment",
    "DummyLogger",
    "L",
    "Logger",
    "MLFlowLogger",
    "Tuner",
    "rank_zero_only",
    "trainer",
]


def trainer(**options: Any) -> Any:
    """A quiet CPU Trainer of the namespace (no progress bar, no model summary)."""
    defaults: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return L.Trainer(**{**defaults, **options})


def tracking_url(request: pytest.FixtureRequest) -> str:
    """The parent's MLflow server in the `pytorch_lightning` subprocess, else the session's."""
    url = os.environ.get(SERVER_VARIABLE)
    if url:
        return url
    server = request.getfixturevalue("mlflow_server")
    server.start()
    started: str = server.url
    return started


@pytest.fixture
def env(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, fresh_experiment: str
) -> str:
    """Configuration only through the environment, as Lightning's tests build loggers: the
    tracking URI and a fresh experiment name. Returns the server's URL."""
    url = tracking_url(request)
    for name in ("AIDP_RUN_ID", "MLFLOW_RUN_ID", "AIDP_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", fresh_experiment)
    return url
