"""Crash points for the registry's kill -9 tests.

With $FRAUDGUARD_CRASH_AFTER naming a point (e.g. `alias`), the process kills itself with SIGKILL right
after that registry write, exactly as an operator's `kill -9` or a lost host would. Unset, it costs one
dictionary lookup. The names are listed where they are called, in fraudguard.registry.
"""

from __future__ import annotations

import os
import signal

CRASH_ENV = "FRAUDGUARD_CRASH_AFTER"


def crash_point(name: str) -> None:
    """SIGKILL this process when $FRAUDGUARD_CRASH_AFTER equals `name`."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
