"""Helpers for tests that start real servers on 127.0.0.1 (MLflow, Prefect) and stop them by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import warnings
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
