"""Work that may wait: run it in a thread of lower CPU priority.

Linux gives each thread its own nice value, and a thread inherits its creator's: a short-lived thread that
raises its own niceness, does the work and ends leaves the rest of the process as it was. Unprivileged
processes may raise niceness but never lower it back, hence a thread, not the process. Used for loading
ahead what later work needs (fraudguard.preload, fraudguard.stage_interpreter, the drift gate's interpreter)
while something on the critical path (the server's boot, the training) should keep its core.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

# How much lower: nice 10 gets about a tenth of the CPU of a nice-0 thread competing for the same core.
BACKGROUND_NICE = 10


def run_in_background_priority(work: Callable[[], T], nice: int = BACKGROUND_NICE) -> T:
    """work() in a new thread whose niceness is raised by `nice` (on Linux; elsewhere, or when not allowed,
    at normal priority); waits for it and returns its result or raises its exception."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(),
                           os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) + nice)
        except (OSError, AttributeError) as exc:  # not Linux, or not allowed
            logger.debug("background work at normal priority: %s", exc)
        try:
            outcome["result"] = work()
        except BaseException as exc:  # handed to the caller below
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="background-priority")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["result"]  # type: ignore[return-value]

