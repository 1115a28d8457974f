"""`AIDPLogger` for `pytorch_lightning` Trainers (when `lightning` is installed too).

`aidp_metrics.integrations.lightning.AIDPLogger` subclasses `lightning.pytorch`'s `Logger`,
and `pytorch_lightning`'s only when that package was imported first. The class here always
subclasses both, whatever the import order, and on ranks above zero its `experiment` is
`pytorch_lightning`'s `DummyExperiment` (what that namespace's code and tests expect).
"""

from __future__ import annotations

from typing import Any

from lightning_fabric.loggers.logger import rank_zero_experiment as _rank_zero_experiment
from pytorch_lightning.loggers.logger import Logger as _PytorchLightningLogger

from aidp_metrics.integrations import lightning as _lightning

__all__ = ["AIDPLogger"]


def _with_pytorch_lightning_base() -> Any:
    base = _lightning.AIDPLogger
    bases = (
        (base,) if issubclass(base, _PytorchLightningLogger) else (base, _PytorchLightningLogger)
    )
    experiment = property(
        _rank_zero_experiment(base._experiment_on_rank_zero), doc=base.experiment.__doc__
    )
    namespace = {"__module__": __name__, "__doc__": base.__doc__, "experiment": experiment}
    return type("AIDPLogger", bases, namespace)


AIDPLogger = _with_pytorch_lightning_base()
