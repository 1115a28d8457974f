"""The one way aidp-metrics tells the user something.

Every message -- bad input, a misconfiguration, delivery trouble, the end-of-run report -- is a
Python warning of category `AIDPMetricsWarning`, so it shows in notebooks, scripts and test
runs alike and can be filtered with `warnings.filterwarnings("ignore",
category=AIDPMetricsWarning)`. It never raises into training: where a filter turns warnings
into errors (`-W error`), the message goes to the `aidp_metrics` logger instead.

An owner that may say the same thing often (a run, an integration, the delivery thread) keeps
a `Notices`: each topic once, or at most once per interval with a count of what was held back,
so a 1 000-steps/s loop cannot flood its log.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings

from aidp_metrics._errors import AIDPMetricsWarning

logger = logging.getLogger("aidp_metrics")


def notice(message: str, *, stacklevel: int = 2) -> None:
    """Say `message` now (as an `AIDPMetricsWarning`); never raises."""
    try:
        warnings.warn(message, AIDPMetricsWarning, stacklevel=stacklevel + 1)
    except Exception:  # a filter made it an error: training must not see it
        logger.warning(message)


class Notices:
    """What one owner has said: `once` per topic, or `throttled` to once per `interval`."""

    def __init__(self, interval: float = 30.0) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._said: set[str] = set()
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def once(self, topic: str, message: str) -> bool:
        """Say `message` unless `topic` was said already; True when it was said now."""
        with self._lock:
            if topic in self._said:
                return False
            self._said.add(topic)
        notice(message, stacklevel=3)
        return True

    def throttled(self, topic: str, message: str) -> None:
        """Say `message` at most once per `interval` for `topic`, counting the rest."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(topic)
            if last is not None and now - last < self.interval:
                self._held[topic] = self._held.get(topic, 0) + 1
                return
            self._last[topic] = now
            held = self._held.pop(topic, 0)
        suffix = f" ({held} similar messages suppressed)" if held else ""
        notice(message + suffix, stacklevel=3)
