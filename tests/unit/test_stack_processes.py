"""The stack's process and package helpers: what a process does with its stop signal is said, not guessed; Debian
installs happen one at a time."""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fraudguard import stack
from fraudguard.stack import signal_disposition, stop_pid

# CI runs as root with apt-get, so these run there; elsewhere the install path refuses before any lock.
installs_as_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("apt-get"),
                                      reason="the install path runs only as root with apt-get (CI's case)")


def _started(argv: list[str], ignore_sigint: bool = False) -> subprocess.Popen:
    # preexec_fn runs in the child before exec: an ignored signal survives exec, as it does for any child of a
    # process that ignores it.
    prepare = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None
    proc = subprocess.Popen(argv, start_new_session=True, preexec_fn=prepare)  # noqa: PLW1509 - test-only
    time.sleep(0.3)
    return proc


def test_signal_disposition_tells_default_ignored_and_handled_sigint_apart():
    plain = _started(["sleep", "30"])
    deaf = _started(["sleep", "30"], ignore_sigint=True)
    python = _started([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert signal_disposition(plain.pid, signal.SIGINT) == "default"
        assert signal_disposition(deaf.pid, signal.SIGINT) == "ignored"
        assert signal_disposition(python.pid, signal.SIGINT) == "handled"  # Python's KeyboardInterrupt handler
        assert signal_disposition(2**22 + 12345, signal.SIGINT) == "unknown"  # no such process
    finally:
        for proc in (plain, deaf, python):
            proc.kill()
            proc.wait()


def test_stop_pid_kills_a_process_that_ignores_its_stop_signal_and_names_why(caplog):
    deaf = _started(["sleep", "30"], ignore_sigint=True)
    start = time.monotonic()
    stop_pid(deaf.pid, signal.SIGINT, timeout_s=1)
    deaf.wait(timeout=5)  # stop_pid reaped it already (its exit status with it): gone is what counts
    assert not Path(f"/proc/{deaf.pid}").exists()
    assert time.monotonic() - start < 10
    assert f"process {deaf.pid} did not stop within 1 s of signal 2 (ignored); killing it" in caplog.text


@installs_as_root
def test_a_debian_install_waits_for_another_process_install_and_skips_what_it_installed():
    # Two test workers on a fresh CI machine both needing PostgreSQL: the second waits for the first's install
    # (the lock), then finds the package there and runs no apt-get of its own.
    installed = threading.Event()
    outcome: list[object] = []

    def second_worker() -> None:
        try:
            # A package that does not exist: had apt-get run, this would raise StackError.
            stack.install_debian_package("fraudguard-no-such-package", "nothing", present=installed.is_set)
            outcome.append("skipped")
        except stack.StackError as exc:
            outcome.append(exc)

    with open(stack._APT_INSTALL_LOCK, "a", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the first worker, mid-install
        waiter = threading.Thread(target=second_worker)
        waiter.start()
        time.sleep(0.5)
        assert waiter.is_alive() and not outcome  # waiting for the lock, not racing apt-get
        installed.set()
    waiter.join(timeout=10)
    assert outcome == ["skipped"]


@installs_as_root
def test_the_install_lock_never_follows_a_link_left_under_its_name(tmp_path, monkeypatch):
    target = tmp_path / "a-file-root-owns"
    target.write_text("untouched\n")
    planted = tmp_path / "fraudguard-apt-install.lock"
    planted.symlink_to(target)
    monkeypatch.setattr(stack, "_APT_INSTALL_LOCK", planted)
    with pytest.raises(stack.StackError, match="cannot open the install lock .*symbolic link") as refused:
        stack.install_debian_package("fraudguard-no-such-package", "nothing", present=lambda: True)
    assert refused.value.__cause__.errno == errno.ELOOP
    assert target.read_text() == "untouched\n"


def test_stack_down_leaves_alone_a_process_that_took_a_recorded_pid_and_up_does_not_take_it_for_a_stack(tmp_path):
    # After a crash or a reboot the PID in state.json may be another session's: stop signalled its process group.
    ours = _started(["sleep", "30"])
    victim = _started(["sleep", "30"])
    try:
        state = stack.StackState(base=str(tmp_path), pg_port=1, mlflow_port=2, prefect_port=3, pg_data="")
        state.record("mlflow", ours.pid)
        state.record("postgres", victim.pid)
        state.started["postgres"] -= 1  # what a reused PID looks like: the process there started at another time
        state.save()
        assert state.is_ours("mlflow") and not state.is_ours("postgres")
        assert stack.stack_down(tmp_path) == ["mlflow"]
        assert ours.wait(timeout=10) is not None
        assert victim.poll() is None  # still running
        assert stack.StackState.load(tmp_path).pids == {}
    finally:
        for proc in (ours, victim):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_predictable_data_folder_someone_else_made_first_is_refused(tmp_path):
    import pwd

    me = pwd.getpwuid(os.getuid())
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    with pytest.raises(stack.StackError, match="is not a private folder"):
        stack._claim_data_dir(loose, me)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    with pytest.raises(stack.StackError, match="is not a private folder"):
        stack._claim_data_dir(link, me)
    fresh = tmp_path / "fresh"
    stack._claim_data_dir(fresh, me)
    assert fresh.stat().st_mode & 0o777 == 0o700
    stack._claim_data_dir(fresh, me)  # ours already: accepted
