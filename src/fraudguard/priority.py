"""Work that may wait: run it in a thread of lower CPU priority.

Linux gives each thread its own nice value, and a thread inherits its creator's: a short-lived thread that
raises its own niceness, does the work and ends leaves the rest of the process as it was. Unprivileged
processes may raise niceness but never lower it back, hence a thread, not the process. Used for loading
ahead what later work needs (fraudguard.preload, fraudguard.stage_interpreter, the drift gate's interpreter)
while something on the critical path (the server's boot, the training) should keep its core. When the critical
path comes to need what is still loading, BackgroundWork.hurry() puts the loader back at normal priority where
the system allows it (a priority inversion otherwise: the waiting work waits for a thread that yields to others).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

# How much lower: nice 10 gets about a tenth of the CPU of a nice-0 thread competing for the same core.
BACKGROUND_NICE = 10


class BackgroundWork(Generic[T]):
    """work() in a new thread whose niceness is raised by `nice` (on Linux; elsewhere, or when not allowed, at
    normal priority). start() returns at once; result() waits for it and returns its result or raises its
    exception; hurry() puts it back at its creator's priority when something now waits for it."""

    def __init__(self, work: Callable[[], T], nice: int = BACKGROUND_NICE, name: str = "background-priority") -> None:
        self._work = work
        self._nice = nice
        self._outcome: dict[str, object] = {}
        self._creator_nice = _niceness(threading.get_native_id())
        self._native_id: int | None = None
        self._started = threading.Event()
        # A daemon: an interpreter may exit (a released stage interpreter) while it still loads ahead.
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> "BackgroundWork[T]":
        self._thread.start()
        self._started.wait()  # its native id is known, its niceness set
        return self

    def _run(self) -> None:
        self._native_id = threading.get_native_id()
        try:
            os.setpriority(os.PRIO_PROCESS, self._native_id, self._creator_nice + self._nice)
        except (OSError, AttributeError) as exc:  # not Linux, or not allowed
            logger.debug("background work at normal priority: %s", exc)
        self._started.set()
        try:
            self._outcome["result"] = self._work()
        except BaseException as exc:  # handed to the caller of result()
            self._outcome["error"] = exc

    def hurry(self) -> bool:
        """Put the work, if still running, back at its creator's niceness: something on the critical path now
        waits for it (a module it is loading). False when the system does not allow it: an unprivileged thread
        may raise its niceness but not lower it (Linux: without CAP_SYS_NICE or RLIMIT_NICE); the work then
        goes on at the lower priority."""
        if not self._thread.is_alive() or self._native_id is None:
            return True
        try:
            os.setpriority(os.PRIO_PROCESS, self._native_id, self._creator_nice)
        except (OSError, AttributeError) as exc:
            logger.debug("background work stays at lower priority: %s", exc)
            return False
        return True

    def result(self) -> T:
        self._thread.join()
        if "error" in self._outcome:
            raise self._outcome["error"]  # type: ignore[misc]
        return self._outcome["result"]  # type: ignore[return-value]


def _niceness(native_id: int) -> int:
    try:
        return os.getpriority(os.PRIO_PROCESS, native_id)
    except (OSError, AttributeError):  # not a Unix
        return 0

