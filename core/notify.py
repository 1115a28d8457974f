"""Telling the user about delivery trouble without flooding a 1 000-steps/s training log."""

from __future__ import annotations

import logging
import threading
import time

logger = logging.getLogger("aidp_metrics")


class Notifier:
    """Log each topic once, or at most once per `interval`, counting what was held back."""

    def __init__(self, interval: float = 30.0) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._said: set[str] = set()
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def once(self, topic: str, message: str, level: int = logging.WARNING) -> None:
        with self._lock:
            if topic in self._said:
                return
            self._said.add(topic)
        logger.log(level, message)

    def throttled(self, topic: str, message: str, level: int = logging.WARNING) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(topic)
            if last is not None and now - last < self.interval:
                self._held[topic] = self._held.get(topic, 0) + 1
                return
            self._last[topic] = now
            held = self._held.pop(topic, 0)
        suffix = f" ({held} similar messages suppressed)" if held else ""
        logger.log(level, message + suffix)
