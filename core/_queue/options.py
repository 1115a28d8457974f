"""How a `Run` delivers: transport, queue bound, flush cadence, strictness."""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from aidp_metrics._connection.retry import RetryPolicy
from aidp_metrics._env import AIDP_METRICS_SPOOL, SYSTEM_METRICS_VARIABLES
from aidp_metrics._errors import ConfigurationError
from aidp_metrics._notice import notice

Transport = Literal["batch", "metric"]
SpoolMode = Literal["off", "on_failure", "always"]
QueuePolicy = Literal["drop_oldest", "block"]

# A batch that keeps failing with retryable errors is given up after this budget.
DELIVERY_RETRY = RetryPolicy(max_attempts=20, base_delay=0.5, max_delay=30.0, total_timeout=300.0)


@dataclass(frozen=True)
class DeliveryOptions:
    """Options accepted as keyword arguments by `Run.start`, `Run.attach` and the integrations.

    transport: "batch" coalesces into `runs/log-batch` requests; "metric" sends one
        `runs/log-metric` per point, `max_in_flight` at a time, per-key order kept.
    flush_interval: seconds a logged point may wait before it is sent (curves stay live).
    max_queue: metrics held in memory; when full, "drop_oldest" drops (and counts) the
        oldest and "block" makes the caller wait up to `block_timeout` seconds.
    strict: raise bad input and delivery failures to the caller instead of warning.
    end_timeout: how long `end()` waits for delivery before reporting what is left.
    atexit_timeout: the same for the flush at interpreter exit.
    retry: without a spool, how long one request is retried before its metrics count as
        failed; with one, requests are retried (at most `max_delay` apart) while the run is
        open and what is left at its end stays in the journal for `aidp-metrics sync`.
    spool: "on_failure" (default, or `AIDP_METRICS_SPOOL`) starts journaling the run's
        records on disk at the first failed request or when the queue is full, and replays
        them in order when the server answers; "always" journals every record (survives
        `kill -9`); "off" keeps everything in memory.
    spool_dir: where journals go (default `AIDP_METRICS_DIR`, else ./aidp-metrics).
    commit_interval: group commit period of the journal (fsync at most this often).
    system_metrics: sample CPU, memory, disk, network and GPU metrics into the run (see
        `system_metrics.py`); None (default) reads `AIDP_METRICS_SYSTEM_METRICS`, else
        MLflow's `MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING`, else off. Resolved to a bool here.
    system_metrics_interval: seconds between two samples (the first is taken at start).
    """

    transport: Transport = "batch"
    flush_interval: float = 1.0
    max_queue: int = 100_000
    policy: QueuePolicy = "drop_oldest"
    block_timeout: float = 30.0
    max_in_flight: int = 8
    strict: bool = False
    end_timeout: float = 60.0
    atexit_timeout: float = 10.0
    retry: RetryPolicy = DELIVERY_RETRY
    spool: SpoolMode = field(default_factory=lambda: _spool_from_env())
    spool_dir: str | None = None
    commit_interval: float = 0.1
    system_metrics: bool | None = None
    system_metrics_interval: float = 10.0

    def __post_init__(self) -> None:
        if self.system_metrics is None:  # frozen: set once, when the run is created
            object.__setattr__(self, "system_metrics", _system_metrics_from_env())
        if not self.system_metrics_interval > 0:
            raise ConfigurationError(
                f"system_metrics_interval must be > 0, got {self.system_metrics_interval!r}"
            )
        if self.transport not in ("batch", "metric"):
            raise ConfigurationError(
                f"transport={self.transport!r} is not one of 'batch', 'metric'"
            )
        if self.spool not in ("off", "on_failure", "always"):
            raise ConfigurationError(
                f"spool={self.spool!r} is not one of 'off', 'on_failure', 'always' "
                "(argument spool= or AIDP_METRICS_SPOOL)"
            )
        if self.policy not in ("drop_oldest", "block"):
            raise ConfigurationError(f"policy={self.policy!r} is not one of 'drop_oldest', 'block'")
        for name in (
            "flush_interval",
            "block_timeout",
            "end_timeout",
            "atexit_timeout",
            "commit_interval",
        ):
            if getattr(self, name) < 0:
                raise ConfigurationError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("max_queue", "max_in_flight"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"{name} must be >= 1, got {getattr(self, name)!r}")

    @classmethod
    def from_kwargs(cls, options: dict[str, Any]) -> DeliveryOptions:
        check_option_names(options, cls.names())
        return cls(**options)

    @classmethod
    def names(cls) -> frozenset[str]:
        return frozenset(f.name for f in dataclasses.fields(cls))


def check_option_names(given: Iterable[str], valid: Iterable[str], where: str = "") -> None:
    """A TypeError naming each unknown keyword (and the closest valid one), as Python does
    for a misspelt argument -- at construction, not at the first log call."""
    known = sorted(valid)
    unknown = sorted(set(given) - set(known))
    if not unknown:
        return
    parts = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1)
        parts.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    prefix = f"{where}: " if where else ""
    raise TypeError(
        f"{prefix}unknown option{'s' if len(unknown) > 1 else ''} {', '.join(parts)}; "
        f"valid options: {', '.join(known)}"
    )


_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def _system_metrics_from_env() -> bool:
    """The first of the variables that is set decides; a value that is not a boolean warns."""
    for name in SYSTEM_METRICS_VARIABLES:
        value = os.environ.get(name, "").strip().lower()
        if not value:
            continue
        if value in _TRUE:
            return True
        if value not in _FALSE:
            notice(
                f"aidp-metrics: {name}={os.environ[name]!r} is not true or false; "
                "system metrics stay off"
            )
        return False
    return False


def _spool_from_env() -> SpoolMode:
    value = os.environ.get(AIDP_METRICS_SPOOL, "").strip().lower() or "on_failure"
    return value  # type: ignore[return-value]  # checked in __post_init__
