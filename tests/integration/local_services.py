"""Helpers for tests that start real servers on 127.0.0.1 (MLflow, Prefect) and stop them by PID."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
import urllib.request
from pathlib import Path


def free_port() -> int:
    """A port for a server a test starts next: outside the ephemeral range (fraudguard.stack.free_port), and in
    this pytest-xdist worker's own share of it, so the two workers never pick the same one."""
    from fraudguard.stack import PORT_FLOOR, ephemeral_port_range, free_port as pick

    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(worker) if worker.isdigit() else 0
    top = ephemeral_port_range()[0] - 1
    share = (top - PORT_FLOOR + 1) // max(workers, 1)
    low = PORT_FLOOR + index * share
    return pick(within=(low, low + share - 1))


def wait_for_health(url: str, proc: subprocess.Popen, log: Path, what: str, timeout_s: float = 120) -> None:
    """Poll `url` until it answers 200; fail with the server's log tail if it exits or times out."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:  # not listening yet
            time.sleep(0.5)
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{what} did not start:\n{log.read_text()[-3000:]}")


def stop_process_group(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout_s: float = 30) -> None:
    """Send `sig` to the process's own group (its workers too); SIGKILL if it outlives timeout_s."""
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        from fraudguard.stack import signal_disposition

        # Said out loud: a teardown that waits out the timeout costs the suite its length each time.
        warnings.warn(f"{' '.join(map(str, proc.args[:4]))} did not stop within {timeout_s:.0f} s of signal {sig} "
                      f"({signal_disposition(proc.pid, sig)}); killed", stacklevel=2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name (state first, then the parent's PID); None when it is gone."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def running(pid: int) -> bool:
    """Running or sleeping: not gone and not a zombie nobody reaped yet."""
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def parent_of(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[1]) if fields is not None else None


def cmdline(pid: int) -> str:
    """The process's command line, arguments joined by spaces ("" when it is gone)."""
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def environment(pid: int) -> dict[str, str]:
    """The process's environment as it started ({} when it is gone or not readable)."""
    try:
        raw = (Path("/proc") / str(pid) / "environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def descendants(pid: int) -> list[int]:
    """PIDs of every process under `pid` (children first, from /proc), `pid` itself excluded."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        parent = parent_of(int(entry.name)) if entry.name.isdigit() else None
        if parent is not None:
            children.setdefault(parent, []).append(int(entry.name))
    found, queue = [], list(children.get(pid, []))
    while queue:
        child = queue.pop(0)
        found.append(child)
        queue.extend(children.get(child, []))
    return found


def python_stacks(pid: int, timeout_s: float = 30) -> str:
    """Every thread's Python stack in each process under `pid` (py-spy dump), for the message of a test whose
    run hangs: on a CI machine that is the only evidence of where it waits. Never raises."""
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        return "(no py-spy on PATH: no stacks)"
    parts = []
    for child in descendants(pid):
        args = cmdline(child)[:200]
        if "python" not in args:
            continue
        try:
            dump = subprocess.run([spy, "dump", "--pid", str(child)], capture_output=True, text=True,
                                  timeout=timeout_s)
            text = dump.stdout or dump.stderr
        except (OSError, subprocess.TimeoutExpired) as exc:
            text = f"py-spy failed: {exc}"
        parts.append(f"--- pid {child}: {args}\n{text.strip()}")
    return "\n".join(parts) or f"(no Python process under pid {pid})"


class RedisServer:
    """Debian's redis-server on 127.0.0.1 (installed by fraudguard.stack as root when missing, else a loud
    failure), persisting to an append-only file in `data_dir`; stopped and restarted by PID."""

    def __init__(self, data_dir: Path):
        self.data_dir, self.port, self.proc = data_dir, free_port(), None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        from fraudguard.stack import start_redis

        self.proc = start_redis(self.data_dir, self.port)
        return self

    def stop(self) -> None:
        from fraudguard.stack import stop_pid

        if self.proc is not None:
            stop_pid(self.proc.pid)
            self.proc = None
