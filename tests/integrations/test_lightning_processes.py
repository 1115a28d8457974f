"""AIDPLogger across processes and packages: ddp_spawn, pytorch_lightning, one namespace only."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lightning_utilities")


from tests.support.mlflow_server import (  # noqa: E402
    get_metric_history,
    get_run,
    runs_in_experiment,
)
from tests.test_system_metrics import MLFLOW_HOST_KEYS, system_series  # noqa: E402

pytestmark = pytest.mark.lightning
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[2]

MODEL = """
import importlib
import os

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

torch.set_num_threads(1)
L = importlib.import_module(os.environ.get("TINY_NAMESPACE", "lightning.pytorch"))


def loader(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=8)


class Tiny(L.LightningModule):
    def __init__(self, lr=0.05):
        super().__init__()
        self.save_hyperparameters()
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.mse_loss(self.layer(x), y)
        self.log("train_loss", loss)
        self.log("rank", float(self.global_rank))
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.layer(x), y))

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

    def train_dataloader(self):
        return loader(64, 0)

    def val_dataloader(self):
        return loader(16, 1)

    def test_dataloader(self):
        return loader(16, 2)


def trainer_options(**extra):
    options = dict(
        accelerator="cpu", devices=1, max_epochs=1, log_every_n_steps=1,
        num_sanity_val_steps=0, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False,
    )
    options.update(extra)
    return options
"""


def _run_script(
    tmp_path: Path, body: str, url: str, *args: str, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "tinymodel.py").write_text(MODEL)
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(body))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIDP_", "MLFLOW_"))}
    env["MLFLOW_TRACKING_URI"] = url
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT)])
    result = subprocess.run(
        [sys.executable, str(script), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def _history(url: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((int(m["step"]), float(m["value"])) for m in get_metric_history(url, run_id, key))


@pytest.fixture
def url(mlflow_server: Any) -> str:
    mlflow_server.start()
    u: str = mlflow_server.url
    return u


@pytest.mark.slow
def test_ddp_spawn_two_cpu_processes_one_run_nothing_from_rank_one(
    tmp_path: Path, url: str, fresh_experiment: str
) -> None:
    """One ddp_spawn job of 2 processes, with system metrics on: rank 0 of the workers creates
    the one run, logs every step once and is the only process that samples; rank 1 holds no
    run and starts no sampler (nor does the main process, whose logger never starts a run)."""
    pytest.importorskip("lightning.pytorch")
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is needed")
    result = _run_script(
        tmp_path,
        """
        import sys
        import threading
        import time
        import lightning.pytorch as L
        from lightning.fabric.loggers.logger import _DummyExperiment
        from aidp_metrics._bridges import system_metrics
        from aidp_metrics.integrations.lightning import AIDPLogger
        from tinymodel import Tiny, trainer_options


        def samplers():
            return [t for t in threading.enumerate() if t.name == system_metrics.THREAD_NAME]


        class RankZeroLoggerCheck(L.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                dummy = isinstance(trainer.logger.experiment, _DummyExperiment)
                assert dummy == (trainer.global_rank > 0), (trainer.global_rank, dummy)
                if trainer.global_rank > 0:
                    assert trainer.logger._handle.run is None


        class SamplerPerRank(L.Callback):
            def on_train_end(self, trainer, pl_module):
                # The sampler thread starts with the run (Run.start -> watch), so a rank that
                # had one would show it now. The logging rank waits (no deadline: the test's
                # timeout bounds it) until its first samples were handed to the run, so the
                # server has system metrics to read back.
                if trainer.global_rank == 0:
                    while not (samplers() and samplers()[0].samples >= 3):
                        time.sleep(0.05)
                print(f"rank {trainer.global_rank} samplers {len(samplers())}", flush=True)


        if __name__ == "__main__":
            logger = AIDPLogger(
                experiment_name=sys.argv[1], system_metrics=True, system_metrics_interval=0.1
            )
            trainer = L.Trainer(
                **trainer_options(
                    strategy="ddp_spawn", devices=2, max_epochs=2,
                    callbacks=[RankZeroLoggerCheck(), SamplerPerRank()],
                ),
                logger=logger,
            )
            trainer.fit(Tiny())
            # the main process's copy never created a run: rank 0 of the workers did
            print("main process run", logger._handle.run_id)
            print(f"main samplers {len(samplers())}")
        """,
        url,
        fresh_experiment,
    )
    assert "main process run None" in result.stdout
    assert "rank 0 samplers 1" in result.stdout  # the logging rank samples ...
    assert "rank 1 samplers 0" in result.stdout  # ... the other one does not
    assert "main samplers 0" in result.stdout
    runs = runs_in_experiment(url, fresh_experiment)
    assert len(runs) == 1, runs
    run_id = runs[0]["info"]["run_id"]
    assert get_run(url, run_id)["info"]["status"] == "FINISHED"
    # 64 samples over 2 ranks, batch 8: 4 optimizer steps per epoch, 2 epochs
    loss = _history(url, run_id, "train_loss")
    assert [s for s, _ in loss] == list(range(8))  # each optimizer step once, no duplicate
    assert _history(url, run_id, "rank") == [(s, 0.0) for s in range(8)]  # rank 0 only
    assert [s for s, _ in _history(url, run_id, "val_loss")] == [3, 7]
    params = {p["key"]: p["value"] for p in get_run(url, run_id)["data"]["params"]}
    assert params == {"lr": "0.05"}
    series = system_series(url, run_id)
    assert set(series) >= MLFLOW_HOST_KEYS
    assert all(0 <= int(m["step"]) < 8 for points in series.values() for m in points)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp_fork", "ddp_notebook"])
def test_forked_rank_zero_takes_over_a_run_created_in_the_parent(
    strategy: str, tmp_path: Path, url: str, fresh_experiment: str
) -> None:
    """0.1: the forked rank-0 child inherited an inactive run and every metric was lost."""
    pytest.importorskip("lightning.pytorch")
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is needed")
    result = _run_script(
        tmp_path,
        """
        import sys
        import threading
        import lightning.pytorch as L
        from aidp_metrics.integrations.lightning import AIDPLogger
        from tinymodel import Tiny, trainer_options

        if __name__ == "__main__":
            logger = AIDPLogger(experiment_name=sys.argv[1])
            print("parent run", logger.version, flush=True)  # as a notebook cell would
            trainer = L.Trainer(
                **trainer_options(strategy=sys.argv[2], devices=2, max_epochs=2), logger=logger
            )
            trainer.fit(Tiny())
            print("parent threads", sorted(t.name for t in threading.enumerate()), flush=True)
        """,
        url,
        fresh_experiment,
        strategy,
    )
    parent_run = result.stdout.split("parent run ", 1)[1].split()[0]
    runs = runs_in_experiment(url, fresh_experiment)
    assert [r["info"]["run_id"] for r in runs] == [parent_run]
    assert get_run(url, parent_run)["info"]["status"] == "FINISHED"
    # 64 samples over 2 ranks, batch 8: 4 optimizer steps per epoch, 2 epochs
    assert [s for s, _ in _history(url, parent_run, "train_loss")] == list(range(8))
    assert _history(url, parent_run, "rank") == [(s, 0.0) for s in range(8)]  # rank 0 only
    assert [s for s, _ in _history(url, parent_run, "val_loss")] == [3, 7]
    params = {p["key"]: p["value"] for p in get_run(url, parent_run)["data"]["params"]}
    assert params == {"lr": "0.05"}


def test_pytorch_lightning_trainer_accepts_the_logger(
    tmp_path: Path, url: str, fresh_experiment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pl = pytest.importorskip("pytorch_lightning")
    monkeypatch.setenv("TINY_NAMESPACE", "pytorch_lightning")
    sys.path.insert(0, str(tmp_path))
    try:
        (tmp_path / "tinymodel.py").write_text(MODEL)
        import tinymodel  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("tinymodel", None)

    from aidp_metrics import Endpoint
    from aidp_metrics.integrations.pytorch_lightning import AIDPLogger

    logger = AIDPLogger(experiment_name=fresh_experiment, endpoint=Endpoint.mlflow(url))
    assert isinstance(logger, pl.loggers.Logger)
    trainer = pl.Trainer(**tinymodel.trainer_options(default_root_dir=str(tmp_path)), logger=logger)
    model = tinymodel.Tiny()
    trainer.fit(model)
    trainer.test(model)
    run_id = logger.version
    assert [r["info"]["run_id"] for r in runs_in_experiment(url, fresh_experiment)] == [run_id]
    assert get_run(url, run_id)["info"]["status"] == "FINISHED"
    assert [s for s, _ in _history(url, run_id, "train_loss")] == list(range(8))
    assert [s for s, _ in _history(url, run_id, "test_loss")] == [8]
    assert len(_history(url, run_id, "epoch")) >= 8


_ONE_NAMESPACE = """
import os
import sys
sys.modules[sys.argv[2]] = None  # as if that package were not installed
os.environ["TINY_NAMESPACE"] = "{namespace}"
{import_line}
from aidp_metrics.integrations.lightning import AIDPLogger
from tinymodel import Tiny, trainer_options

bases = sorted(c.__module__ for c in type.mro(AIDPLogger) if c.__name__ == "Logger")
print("bases", bases)
assert sys.modules.get(sys.argv[2]) is None
logger = AIDPLogger(experiment_name=sys.argv[1])
trainer = L.Trainer(**trainer_options(limit_val_batches=0), logger=logger)
trainer.fit(Tiny())
print("run", logger.version)
"""


@pytest.mark.parametrize(
    ("blocked", "import_line", "expected_bases"),
    [
        (
            "lightning",
            "import pytorch_lightning as L",
            ["lightning_fabric.loggers.logger", "pytorch_lightning.loggers.logger"],
        ),
        (
            "pytorch_lightning",
            "import lightning.pytorch as L",
            ["lightning.fabric.loggers.logger", "lightning.pytorch.loggers.logger"],
        ),
    ],
)
def test_only_one_namespace_installed(
    tmp_path: Path,
    url: str,
    fresh_experiment: str,
    blocked: str,
    import_line: str,
    expected_bases: list[str],
) -> None:
    pytest.importorskip(import_line.split()[1])
    result = _run_script(
        tmp_path,
        _ONE_NAMESPACE.format(import_line=import_line, namespace=import_line.split()[1]),
        url,
        fresh_experiment,
        blocked,
    )
    assert f"bases {expected_bases}" in result.stdout
    run_id = result.stdout.split("run ")[-1].strip()
    assert get_run(url, run_id)["info"]["status"] == "FINISHED"
    assert [s for s, _ in _history(url, run_id, "train_loss")] == list(range(8))


def test_importing_the_package_does_not_import_lightning(tmp_path: Path, url: str) -> None:
    result = _run_script(
        tmp_path,
        """
        import sys
        import aidp_metrics
        import aidp_metrics.integrations
        from aidp_metrics import Run  # noqa: F401
        heavy = [m for m in ("torch", "lightning", "pytorch_lightning") if m in sys.modules]
        print("heavy", heavy)
        """,
        url,
    )
    assert "heavy []" in result.stdout
