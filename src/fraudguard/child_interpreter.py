"""Helper processes that never outlive the process that started them: spawned interpreters (a concurrent.futures
worker) and servers started for one command (Prefect's temporary API server of `fraudguard run`).

The flow starts two kinds: the drift gate's (Evidently) and the stage interpreter of `fraudguard run`. A spawned
worker waits on its call queue, and it holds that queue's write end itself, so its parent's death never reaches
it as an end of file: after a `kill -9` or a crash of the flow process it waited forever, still holding the
stdout and stderr it inherited. Prefect's process worker reads a flow run's output to its end before it looks at
the exit code, so a flow process that died with SIGSEGV stayed RUNNING in Prefect for as long as its orphan lived
(a deployment run watched for 600 s, in CI and here). Each worker started here watches its parent and exits
when it is gone. A server started with exit_with_parent() gets SIGTERM from the kernel when its parent dies
(Linux); before, a `fraudguard run` killed with -9 left its Prefect server running on its port for good.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

# How often an orphan looks: the delay between its parent's death and its own exit.
PARENT_POLL_S = 0.5
# The exit status of a worker that found its parent gone (EX_SOFTWARE: nobody reads it, but it is not 0).
ORPHANED_EXIT = 70


def spawn_interpreter(initializer: Callable[..., object] | None = None,
                      initargs: tuple[Any, ...] = ()) -> "ProcessPoolExecutor":
    """A one-worker ProcessPoolExecutor on `spawn` (the caller may have threads, which fork does not copy
    safely) whose worker exits once this process is gone; `initializer(*initargs)` runs in it first."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_bound_to_parent, initargs=(os.getpid(), initializer, initargs))


def _bound_to_parent(parent_pid: int, initializer: Callable[..., object] | None, initargs: tuple[Any, ...]) -> None:
    """In the worker: start the watch, then the caller's initializer."""
    threading.Thread(target=exit_when_orphaned, args=(parent_pid,), name="parent-watch", daemon=True).start()
    if initializer is not None:
        initializer(*initargs)


def exit_when_orphaned(parent_pid: int, poll_s: float = PARENT_POLL_S) -> None:
    """Return never: exit this process (no clean-up: its work is for a parent that is gone) once its parent is
    no longer `parent_pid` (re-parented to init or a subreaper)."""
    while os.getppid() == parent_pid:
        time.sleep(poll_s)
    os._exit(ORPHANED_EXIT)


def exit_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A preexec_fn for subprocess.Popen: the child gets `sig` when the thread that started it ends (its process
    dying included; call Popen from a thread that lives as long as the process, the main one), by Linux's
    PR_SET_PDEATHSIG. None elsewhere (no such call): the caller's stop() remains the only way it ends."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child only calls it
    parent_pid = os.getpid()

    def in_child() -> None:
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before the call: no signal will come
            os._exit(ORPHANED_EXIT)

    return in_child


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
