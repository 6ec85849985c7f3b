"""fraudguard.priority: background work runs in a thread of lower CPU priority; the caller's is unchanged."""

from __future__ import annotations

import os
import threading

import pytest

from fraudguard import preload
from fraudguard.priority import BACKGROUND_NICE, run_in_background_priority


def thread_niceness() -> int:
    """The calling thread's nice value (Linux keeps one per thread)."""
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_background_work_runs_in_another_thread_at_lower_priority_and_returns_its_result():
    before = thread_niceness()

    seen = run_in_background_priority(lambda: (threading.get_native_id(), thread_niceness()))

    assert seen[0] != threading.get_native_id()
    assert seen[1] == min(before + BACKGROUND_NICE, 19)
    assert thread_niceness() == before  # this thread keeps its priority


def test_an_error_in_background_work_reaches_the_caller():
    def fail() -> None:
        raise ValueError("the loading failed")

    with pytest.raises(ValueError, match="the loading failed"):
        run_in_background_priority(fail)


def test_during_training_steps_start_interpreters_at_the_callers_priority_and_load_at_lower_priority():
    before = thread_niceness()
    seen: dict[str, int] = {}
    steps = [(preload.EVIDENTLY_STEP, lambda: seen.setdefault("interpreter", thread_niceness())),
             ("mlflow", lambda: seen.setdefault("loading", thread_niceness()))]

    assert preload.run_during_training(steps) == []

    # A process started from a thread inherits its priority: the drift gate's interpreter must not be slowed.
    assert seen == {"interpreter": before, "loading": min(before + BACKGROUND_NICE, 19)}
