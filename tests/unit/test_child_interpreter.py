"""fraudguard.child_interpreter: a helper interpreter dies with the process that started it (kill -9 included),
so it never keeps that process's output open after it is gone (what hid a crashed flow run from Prefect); so does
Prefect's temporary server that `fraudguard run` starts."""

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


SERVER_PARENT = """
import os, sys, time
from pathlib import Path
from fraudguard.prefect_database import TemporaryServer, temporary_server_env
home = Path(sys.argv[1])
env = temporary_server_env(home, {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
server = TemporaryServer(home, 180, env, log_path=home / "server.log")
server.start()
print(server.process.pid, server.port, server.wait(), flush=True)
time.sleep(600)
"""


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _alive(pid)


def test_prefects_temporary_server_stops_when_the_command_that_started_it_is_killed(tmp_path):
    """`fraudguard run` killed with -9 (no atexit, no stop()): its Prefect server must not keep serving."""
    import urllib.request

    parent = subprocess.Popen([sys.executable, "-c", SERVER_PARENT, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        server_pid, port, problem = parent.stdout.readline().split(maxsplit=2)
        assert problem.strip() == "None", problem
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=10) as answer:
            assert answer.status == 200
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        assert _wait_gone(int(server_pid), 30), f"Prefect's server {server_pid} outlived the killed command"
    finally:
        try:
            os.killpg(parent.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


ORPHAN_BEFORE_THE_CALL = """
import os, time
from fraudguard.child_interpreter import exit_with_parent
in_child = exit_with_parent()
if os.fork() == 0:
    time.sleep(1.0)  # its parent has exited by now
    in_child()  # what Popen runs in a new child before it executes the command
    print("still running", flush=True)
os._exit(0)
"""


def test_exit_with_parent_ends_a_child_whose_parent_died_before_it_was_set():
    """The race PR_SET_PDEATHSIG leaves: a parent gone before the child's call would never send the signal."""
    proc = subprocess.run([sys.executable, "-c", ORPHAN_BEFORE_THE_CALL], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "", "the child kept running though its parent died before it asked for the signal"
