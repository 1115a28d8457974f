"""`AIDPLogger` under the `pytorch_lightning` name.

`aidp_metrics.integrations.lightning.AIDPLogger` already subclasses the `Logger` base class of
every installed Lightning package (`lightning.pytorch` and `pytorch_lightning`), so this module
only re-exports it: both import paths give the same class, and a Trainer from either package
accepts it.
"""

from __future__ import annotations

from aidp_metrics.integrations.lightning import AIDPLogger

__all__ = ["AIDPLogger"]
