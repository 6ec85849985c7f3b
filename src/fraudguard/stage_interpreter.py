"""A second interpreter, started ahead, that runs the heavy DVC stages (train, evaluate) for `fraudguard run`.

Why (issue 14 §5, bench/end_to_end_bench.py): in one interpreter the flow's process loads torch, ART,
scikit-learn and torch's compiler package (torch.optim imports torch._dynamo on the first optimizer: ~3 s)
on its critical path, and cannot load MLflow and the gates' libraries while the training runs: a thread
importing modules beside the training's Python loop slowed it more than the imports cost (both need the
interpreter lock). Started when the command starts, this interpreter loads the training's libraries on the
second core while Prefect's server boots and the first stages run; during the training the flow's
interpreter is idle and loads what registration and the gates need, without sharing a lock.

Process-wide, like the drift gate's Evidently interpreter: an entry point starts it (`start`), the pipeline
uses it for the stages it took (`takes`, `run_stage`) and releases it when the repro is over. When none is
started (a Prefect worker running a deployment, tests, CI) the stages run in the caller's interpreter as
before. Same code, same inputs, same seeds: the same outputs either way (tests/integration/test_pipeline_in_process.py).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

    from fraudguard.priority import BackgroundWork

logger = logging.getLogger(__name__)

# The stages worth a second interpreter: the ones that load torch (and ART, scikit-learn, matplotlib).
HEAVY_STAGES = ("train", "evaluate")
# What those stages load, in the order they need it; torch._dynamo is what torch.optim loads on first use.
WARM_IMPORTS = ("numpy", "pandas", "pyarrow.parquet", "torch", "torch._dynamo", "art.attacks.evasion",
                "art.estimators.classification", "sklearn.metrics", "fraudguard.stages.train",
                "fraudguard.stages.evaluate", "matplotlib.figure")

# The warm-up's niceness: below Prefect's server and the flow's interpreter, which are on the critical path then.
WARM_UP_NICE = 10  # fraudguard.priority.BACKGROUND_NICE


@dataclass
class _Interpreter:
    pool: "ProcessPoolExecutor"
    stages: frozenset[str]


_started: _Interpreter | None = None


def _set_up(log_level: int, log_format: str | None) -> None:
    """The child's logging as its parent's: same level, same line format, to the same stderr."""
    from fraudguard.logs import configure_logging

    configure_logging(logging.getLevelName(log_level))
    if log_format:
        for handler in logging.getLogger().handlers:
            handler.setFormatter(logging.Formatter(log_format))


# In the child: the warm-up's thread and the flag that stops it (process-wide: one warm-up per interpreter).
_warm_up: "tuple[BackgroundWork[None], threading.Event] | None" = None


def _warm(modules: tuple[str, ...], nice: int) -> None:
    """Start loading the modules in a thread at lower priority (fraudguard.priority) and return: this loading
    competes with Prefect's server booting and the flow's own start, and the worker stays free, so a stage
    asked for before the warm-up is over starts at once (_stop_warm_up) instead of queuing behind it."""
    global _warm_up
    import importlib
    import time

    from fraudguard.priority import BackgroundWork

    stop = threading.Event()

    def load() -> None:
        started = time.perf_counter()
        for name in modules:
            if stop.is_set():
                logger.debug("stage interpreter: warm-up stopped before %s (a stage started)", name)
                return
            try:
                importlib.import_module(name)
            except Exception as exc:  # the stage that needs it meets the same error and reports it
                logger.debug("stage interpreter: could not load %s: %s", name, exc)
        logger.debug("stage interpreter: warm-up done in %.2f s", time.perf_counter() - started)

    _warm_up = (BackgroundWork(load, nice, name="stage-warm-up").start(), stop)


def _stop_warm_up() -> None:
    """A stage starts: the warm-up loads nothing after the module it is loading now, which finishes at the
    stage's priority where the system allows it; the stage waits for that one, then imports what else it needs
    in its own thread. Two threads importing at once can deadlock on Python's module locks (and would share
    the interpreter lock with the stage)."""
    if _warm_up is not None:
        work, stop = _warm_up
        stop.set()
        work.hurry()
        work.result()  # load() catches what an import raises


def _run_in_child(module_name: str, wdir: str) -> str | None:
    """`python -m module_name` in wdir, as a call in this (child) interpreter: None, or why it failed."""
    import importlib

    _stop_warm_up()
    cwd = os.getcwd()
    try:
        os.chdir(wdir)
        importlib.import_module(module_name).main(wdir)
    except SystemExit as exc:
        if exc.code not in (None, 0):
            return str(exc.__cause__) if exc.__cause__ is not None else f"exit status {exc.code}"
    except Exception as exc:
        logger.error("stage %s raised:", module_name, exc_info=True)
        return f"{type(exc).__name__}: {exc}"
    finally:
        os.chdir(cwd)
    return None


def start(stages: Iterable[str] = HEAVY_STAGES, warm_imports: tuple[str, ...] = WARM_IMPORTS,
          warm_up_nice: int = WARM_UP_NICE) -> bool:
    """Start the interpreter (spawned: this process may have threads) and have it load `warm_imports`;
    `stages` are the pipeline stages it will run. False when one is started already or this process may not
    start children (a daemonic one)."""
    global _started
    import atexit
    import multiprocessing

    from fraudguard.child_interpreter import spawn_interpreter

    if _started is not None or multiprocessing.current_process().daemon:
        return False
    root = logging.getLogger()
    formats = [h.formatter._fmt for h in root.handlers if h.formatter is not None]  # noqa: SLF001 - stdlib's field
    pool = spawn_interpreter(_set_up, (root.getEffectiveLevel(), formats[0] if formats else None))
    pool.submit(_warm, tuple(warm_imports), warm_up_nice)
    atexit.register(pool.shutdown, wait=False, cancel_futures=True)
    _started = _Interpreter(pool, frozenset(stages))
    return True


def takes(stage: str) -> bool:
    """Whether a started interpreter runs this stage."""
    return _started is not None and stage in _started.stages


def run_stage(stage: str, module_name: str, wdir: Path) -> str | None:
    """Run the stage's module there and wait: None when it succeeded, otherwise the reason it failed."""
    from concurrent.futures.process import BrokenProcessPool

    if _started is None:
        raise RuntimeError("no stage interpreter started")
    try:
        return _started.pool.submit(_run_in_child, module_name, str(wdir)).result()
    except BrokenProcessPool as exc:  # killed (out of memory, a signal): the stage did not finish
        release()
        return f"the interpreter running it died ({exc})"


def release() -> None:
    """Stop the interpreter (it holds the training's data): called when the repro is over."""
    global _started
    if _started is not None:
        started, _started = _started, None
        started.pool.shutdown(wait=False, cancel_futures=True)

