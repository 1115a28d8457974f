"""`Run.follow_tensorboard`: tail TensorBoard event files into an open run.

A `TensorBoardFollower` thread polls `logdir` every `interval` seconds: every event file
under it, new files and subdirectories included, is read on from where it stopped, and its
scalars are logged into the run at their event's step, stamped with its wall time. The key
is the tag for files directly in `logdir`, `<relative dir>/<tag>` below it (`eval/acc`).
The training thread does none of this work. `stop()` (the run's `end()` calls it first)
reads what is left and joins the thread, so every scalar in the files before `end()` is
logged and no thread outlives the run.

This module is light; TensorBoard's reader (`tensorboard_events`) loads with the first
follower.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from aidp_metrics._errors import ConfigurationError
from aidp_metrics._metric import sanitize_key
from aidp_metrics._notice import Notices, notice

if TYPE_CHECKING:
    from .tensorboard_events import EventFile

DEFAULT_INTERVAL = 1.0  # seconds between polls, as W&B's TensorBoard watcher
INSTALL_HINT = 'pip install "aidp-metrics[tensorboard]"'

__all__ = ["DEFAULT_INTERVAL", "TensorBoardFollower", "follow"]


class _Options(Protocol):
    @property
    def strict(self) -> bool: ...


class ScalarSink(Protocol):
    """What the follower needs from a run (`Run`, which sits above this stage)."""

    @property
    def options(self) -> _Options: ...

    def log_metrics(
        self, metrics: Mapping[str, float], step: int | None = None, timestamp: int | None = None
    ) -> None: ...


def follow(
    run: ScalarSink, logdir: str | os.PathLike[str], *, interval: float = DEFAULT_INTERVAL
) -> Callable[[], None] | None:
    """Start following `logdir` into `run`; returns the follower's `stop`, or None when
    it cannot start (said once; raised with `strict=True`)."""
    try:
        if not interval > 0:
            raise ConfigurationError(f"interval must be a positive number of seconds: {interval}")
        follower = TensorBoardFollower(run, Path(logdir).absolute(), interval)
    except (ImportError, ConfigurationError) as exc:
        if run.options.strict:
            raise
        why = f"tensorboard is not installed ({INSTALL_HINT})"
        if not isinstance(exc, ImportError):
            why = str(exc)
        notice(f"aidp-metrics: not following TensorBoard files in {logdir}: {why}", stacklevel=3)
        return None
    follower.start()
    return follower.stop


class TensorBoardFollower:
    """Logs the scalars of every event file under `logdir` into `run`, from its thread."""

    def __init__(self, run: ScalarSink, logdir: Path, interval: float) -> None:
        # TensorBoard's reader; ImportError when missing
        from . import tensorboard_events

        self._events = tensorboard_events
        self._run = run
        self._logdir = logdir
        self._interval = interval
        self._files: dict[Path, EventFile] = {}
        self._keys: dict[tuple[str, str], str] = {}  # (relative dir, tag) -> metric key
        self._notices = Notices()
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # one stop() at a time
        self._pid = os.getpid()
        self._thread = threading.Thread(
            target=self._main, name="aidp-metrics-tensorboard", daemon=True
        )

    @property
    def logdir(self) -> Path:
        return self._logdir

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Read what is left, log it, and end the thread (joined before this returns)."""
        if os.getpid() != self._pid:
            return  # a forked child: the thread is the parent's
        with self._lock:
            self._stopping.set()
            if self._thread.is_alive():
                self._thread.join()

    def poll(self) -> int:
        """Read every event file under `logdir` on from where it stopped; log its scalars.
        Returns how many events with scalars were logged."""
        logged = 0
        present = set(self._events.event_files(self._logdir))
        for path in list(self._files):
            if path not in present:  # deleted or moved away
                del self._files[path]
        for path in sorted(present):
            try:
                logged += self._read(path)
            except Exception as exc:  # one unreadable file must not stop the others
                self._notices.throttled(
                    f"tensorboard-read:{path}",
                    f"aidp-metrics: could not read TensorBoard file {path}: "
                    f"{type(exc).__name__}: {exc}",
                )
        return logged

    def _main(self) -> None:
        while not self._stopping.is_set():
            self._poll_safely()
            self._stopping.wait(self._interval)
        self._poll_safely()  # started after stop(): everything written before it

    def _poll_safely(self) -> None:
        try:
            self.poll()
        except Exception as exc:  # never into training; try again at the next poll
            self._notices.throttled(
                "tensorboard-poll",
                f"aidp-metrics: reading TensorBoard files in {self._logdir} failed: "
                f"{type(exc).__name__}: {exc}",
            )

    def _read(self, path: Path) -> int:
        events = self._files.get(path)
        relative = path.parent.relative_to(self._logdir).as_posix()
        relative = "" if relative == "." else relative
        if events is None:
            where = f"{self._logdir}/{relative}" if relative else str(self._logdir)
            events = self._files[path] = self._events.EventFile(path, self._notices, where)
        logged = 0
        for point in events.points():
            metrics = {self._key(relative, tag): value for tag, value in point.values.items()}
            self._run.log_metrics(metrics, step=point.step, timestamp=point.timestamp)
            logged += 1
        return logged

    def _key(self, relative: str, tag: str) -> str:
        key = self._keys.get((relative, tag))
        if key is None:
            wanted = f"{relative}/{tag}" if relative else tag
            key = self._keys[(relative, tag)] = sanitize_key(wanted)
            if key != wanted:
                self._notices.once(
                    f"tensorboard-key:{wanted}",
                    f"aidp-metrics: TensorBoard tag {wanted!r} is logged as {key!r} "
                    "(characters the server rejects replaced)",
                )
        return key
