"""fraudguard.child_interpreter: a helper interpreter dies with the process that started it (kill -9 included),
so it never keeps that process's output open after it is gone (what hid a crashed flow run from Prefect)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

PARENT = """
import os, sys, time
from fraudguard.child_interpreter import spawn_interpreter
pool = spawn_interpreter()
print(pool.submit(os.getpid).result(), flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    """Running or sleeping, not gone and not a zombie nobody reaped (this machine's init may not reap)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_a_helper_interpreter_exits_when_its_parent_is_killed_and_lets_go_of_the_parents_output():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True, start_new_session=True)
    try:
        worker_pid = int(parent.stdout.readline())
        assert worker_pid != parent.pid and _alive(worker_pid)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)

        # What Prefect's process worker does with a flow run's process: read its output to the end.
        rest: list[str] = []
        reader = threading.Thread(target=lambda: rest.append(parent.stdout.read()), daemon=True)
        reader.start()
        reader.join(timeout=20)
        assert not reader.is_alive(), "the killed parent's stdout never reached its end: a child still holds it"
        assert rest == [""]
        deadline = time.monotonic() + 10
        while _alive(worker_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(worker_pid), f"helper interpreter {worker_pid} outlived its killed parent"
    finally:
        try:
            os.killpg(parent.pid, signal.SIGKILL)  # the parent and whatever it left in its session
        except ProcessLookupError:
            pass


def test_a_helper_interpreter_runs_the_callers_initializer_and_its_work(tmp_path):
    from fraudguard.child_interpreter import spawn_interpreter

    with spawn_interpreter(os.chdir, (str(tmp_path),)) as pool:
        assert pool.submit(os.getcwd).result(timeout=60) == str(tmp_path)
        assert pool.submit(os.getppid).result(timeout=60) == os.getpid()
