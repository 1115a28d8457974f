"""Process-level hooks: exit, uncaught exceptions and fork, for every open run and every
thread we start (the delivery loop, the spool writer, the uploader, the system-metrics
sampler) -- the one place that installs them.

- Open runs are held here until they end (a run nobody references still delivers and is
  ended at exit); `end()` lets go, so an ended run can be garbage-collected.
- At interpreter exit, every run not yet ended is flushed (bounded wait) and ended with
  its `status_on_exit`, or FAILED/KILLED when an uncaught exception is ending the process.
- In a child created by `os.fork()` (DataLoader workers), none of our threads exists: the
  workers and the sampler start from nothing (their locks may have been held), and
  inherited runs turn into no-ops:
  their queue belongs to the parent, which delivers its own points. A child that is the
  logging process calls `Run.take_over()`.
"""

from __future__ import annotations

import atexit
import mmap
import os
import sys
import threading
from types import TracebackType
from typing import Protocol

from aidp_metrics._bridges import system_metrics
from aidp_metrics._delivery.sender import loop
from aidp_metrics._durability.spool import writer
from aidp_metrics._notice import notice
from aidp_metrics._uploads.stage import uploader


class _Lifecycle(Protocol):
    def _on_exit(self, uncaught: type[BaseException] | None) -> None: ...

    def _before_fork(self) -> None: ...

    def _on_fork_child(self) -> None: ...


_open: dict[int, _Lifecycle] = {}
_lock = threading.Lock()
_installed = False
_uncaught: type[BaseException] | None = None


class ProcessRole:
    """Which process logs a run, across `os.fork()`: in a child an inherited run is quiet
    (`inherited`) until the child takes it over; the parent then no longer ends it."""

    def __init__(self) -> None:
        self.inherited = False
        self._handoff: mmap.mmap | None = None  # shared with forked children
        self._logged_at_fork = -1

    def before_fork(self, logged: int) -> None:
        if self._handoff is None:
            self._handoff = mmap.mmap(-1, 1)  # a child that takes over sets its byte
        self._logged_at_fork = logged

    def forked(self) -> None:
        self.inherited = True

    def take_over(self) -> bool:
        """In a child: this process logs the run from now on; False if it did already."""
        if not self.inherited:
            return False
        if self._handoff is not None:
            self._handoff[0] = 1
        self._handoff = None
        self.inherited = False
        return True

    def handed_off(self, logged: int) -> bool:
        """A forked child took the run over and this process logged nothing since."""
        handoff = self._handoff
        return handoff is not None and handoff[0] == 1 and logged == self._logged_at_fork


def register(run: _Lifecycle) -> None:
    global _installed
    with _lock:
        _open[id(run)] = run
        if _installed:
            return
        _installed = True
    atexit.register(_at_exit)
    _wrap_excepthook()


def unregister(run: _Lifecycle) -> None:
    with _lock:
        _open.pop(id(run), None)


def open_runs() -> list[_Lifecycle]:
    with _lock:
        return list(_open.values())


def _wrap_excepthook() -> None:
    previous = sys.excepthook

    def excepthook(
        kind: type[BaseException], value: BaseException, tb: TracebackType | None
    ) -> None:
        global _uncaught
        _uncaught = kind
        previous(kind, value, tb)

    sys.excepthook = excepthook


def _at_exit() -> None:
    for run in open_runs():
        try:
            run._on_exit(_uncaught)
        except Exception as exc:  # exit must go on whatever one run does
            notice(f"aidp-metrics: could not finish a run at exit: {exc}")


def _before_fork() -> None:
    for run in open_runs():
        run._before_fork()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # the parent's may have been held by another thread
    loop.reset_after_fork()
    writer.reset_after_fork()
    uploader.reset_after_fork()
    system_metrics.forget_in_child()
    for run in list(_open.values()):
        run._on_fork_child()


# Installed at import (before any of our threads can exist), once per process.
os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
