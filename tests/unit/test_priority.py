"""fraudguard.priority: background work runs in a thread of lower CPU priority; the caller's is unchanged."""

from __future__ import annotations

import os
import threading
import time

import pytest

from fraudguard import preload
from fraudguard.priority import BACKGROUND_NICE, BackgroundWork


def thread_niceness() -> int:
    """The calling thread's nice value (Linux keeps one per thread)."""
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_background_work_runs_in_another_thread_at_lower_priority_and_returns_its_result():
    before = thread_niceness()

    seen = BackgroundWork(lambda: (threading.get_native_id(), thread_niceness())).start().result()

    assert seen[0] != threading.get_native_id()
    assert seen[1] == min(before + BACKGROUND_NICE, 19)
    assert thread_niceness() == before  # this thread keeps its priority


def test_an_error_in_background_work_reaches_the_caller():
    def fail() -> None:
        raise ValueError("the loading failed")

    with pytest.raises(ValueError, match="the loading failed"):
        BackgroundWork(fail).start().result()


def test_during_training_steps_start_interpreters_at_the_callers_priority_and_load_at_lower_priority():
    before = thread_niceness()
    seen: dict[str, int] = {}
    steps = [(preload.EVIDENTLY_STEP, lambda: seen.setdefault("interpreter", thread_niceness())),
             ("mlflow", lambda: seen.setdefault("loading", thread_niceness()))]

    assert preload.run_during_training(steps) == []

    # A process started from a thread inherits its priority: the drift gate's interpreter must not be slowed.
    assert seen == {"interpreter": before, "loading": min(before + BACKGROUND_NICE, 19)}



def test_background_work_starts_without_waiting_and_hurry_puts_it_back_at_the_creators_priority_where_allowed():
    before = thread_niceness()
    running, release = threading.Event(), threading.Event()
    native_ids: list[int] = []

    def loading() -> str:
        native_ids.append(threading.get_native_id())
        running.set()
        release.wait(10)
        return "loaded"

    work = BackgroundWork(loading).start()
    assert running.wait(10) and not release.is_set()  # start() returned while the work runs
    lowered = os.getpriority(os.PRIO_PROCESS, native_ids[0])
    hurried = work.hurry()
    after_hurry = os.getpriority(os.PRIO_PROCESS, native_ids[0])
    release.set()

    assert work.result() == "loaded"
    assert lowered == min(before + BACKGROUND_NICE, 19)
    if os.geteuid() == 0:  # root may lower a niceness back (CI runs as root)
        assert hurried and after_hurry == before
    else:  # unprivileged: only where RLIMIT_NICE allows it, and hurry() says whether it could
        assert after_hurry == (before if hurried else lowered)
    assert work.hurry()  # finished work needs no hurry


def test_loading_still_going_when_the_stages_end_goes_on_at_the_callers_priority_where_allowed():
    before = thread_niceness()
    repro_over = threading.Event()
    seen: dict[str, int] = {}

    def loading() -> None:
        seen["while training"] = thread_niceness()
        repro_over.set()  # the stages end while this still loads
        deadline = time.monotonic() + 5
        while thread_niceness() != before and time.monotonic() < deadline:
            time.sleep(0.01)
        seen["after the stages"] = thread_niceness()

    assert preload.run_during_training([("mlflow", loading)], repro_over) == []

    assert seen["while training"] == min(before + BACKGROUND_NICE, 19)
    if os.geteuid() == 0:  # root may lower a niceness back (CI runs as root)
        assert seen["after the stages"] == before
