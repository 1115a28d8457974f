"""`AIDPLogger` for `pytorch_lightning` Trainers (when `lightning` is installed too).

`aidp_metrics.integrations.lightning.AIDPLogger` subclasses `lightning.pytorch`'s `Logger`,
and `pytorch_lightning`'s only when that package was imported first. The class here always
subclasses both, whatever the import order.
"""

from __future__ import annotations

from typing import Any

from pytorch_lightning.loggers.logger import Logger as _PytorchLightningLogger

from aidp_metrics.integrations import lightning as _lightning

__all__ = ["AIDPLogger"]


def _with_pytorch_lightning_base() -> Any:
    base = _lightning.AIDPLogger
    if issubclass(base, _PytorchLightningLogger):
        return base
    cls = type("AIDPLogger", (base, _PytorchLightningLogger), {"__module__": __name__})
    cls.__doc__ = base.__doc__
    return cls


AIDPLogger = _with_pytorch_lightning_base()
