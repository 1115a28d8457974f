"""Process-level hooks shared by every live run: exit, uncaught exceptions, fork.

- At interpreter exit, every run not yet ended is flushed (bounded wait) and ended with
  its `status_on_exit`, or FAILED/KILLED when an uncaught exception is ending the process.
- In a child created by `os.fork()` (DataLoader workers), inherited runs turn into no-ops:
  their queue and threads belong to the parent, and the parent delivers its own points.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import weakref
from types import TracebackType
from typing import Protocol


class _Exits(Protocol):
    def _on_exit(self, uncaught: type[BaseException] | None) -> None: ...

    def _on_fork_child(self) -> None: ...


_live: weakref.WeakSet[_Exits] = weakref.WeakSet()
_lock = threading.Lock()
_installed = False
_uncaught: type[BaseException] | None = None


def register(run: _Exits) -> None:
    global _installed
    with _lock:
        _live.add(run)
        if _installed:
            return
        _installed = True
    atexit.register(_at_exit)
    _wrap_excepthook()
    os.register_at_fork(after_in_child=_after_fork_in_child)


def unregister(run: _Exits) -> None:
    with _lock:
        _live.discard(run)


def uncaught_exception() -> type[BaseException] | None:
    """The type of the exception that reached `sys.excepthook`, if any."""
    return _uncaught


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
    for run in list(_live):
        try:
            run._on_exit(_uncaught)
        except Exception as exc:  # exit must go on whatever one run does
            print(f"aidp-metrics: could not finish a run at exit: {exc}", file=sys.stderr)


def _after_fork_in_child() -> None:
    for run in list(_live):
        run._on_fork_child()
