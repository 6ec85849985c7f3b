"""The one place that runs the project's external tools, `dvc` and `bandit`, from code.

Both run from this interpreter's environment (the venv), with a fixed argument list and no shell. One
runner each, so every caller gets the same executable, the same environment and the same failure
message (the tool's own last lines, naming the command and the directory). `dvc_repo` is DVC's Python
API on a project, for callers that would otherwise start a `dvc` interpreter (1-2 s each) to read its
config, pull or commit.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess  # nosec B404 - runs the venv's own dvc and bandit with fixed argument lists, no shell
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fraudguard.errors import DataVersionError, StaticAnalysisError
from fraudguard.files import read_json_object

if TYPE_CHECKING:
    from dvc.repo import Repo

logger = logging.getLogger(__name__)

# dvc prints this help footer under every error; it says nothing about the failure.
_DVC_FOOTER = "Having any troubles?"
# The loggers DVC gives console handlers when it is imported (dvc.logger.setup).
_DVC_LOGGERS = ("dvc", "dvc_data", "dvc_objects")
# Bandit exits 1 when it finds issues; any other non-zero exit is a failure to scan.
_BANDIT_OK_EXITS = (0, 1)


def tool_path(name: str) -> str:
    """The executable `name` from this interpreter's environment (the venv), else from PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise DataVersionError(f"executable '{name}' not found next to {sys.executable} or on PATH")
    return found


def run_dvc(args: Sequence[str], cwd: Path, check: bool = True,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `dvc <args>` in `cwd` (env: os.environ unless given; analytics off); with check, a non-zero exit
    raises DataVersionError with dvc's last lines."""
    cmd = [tool_path("dvc"), *args]
    run_env = {**(os.environ if env is None else env), "DVC_NO_ANALYTICS": "1"}
    logger.debug("running %s in %s", " ".join(cmd), cwd)
    proc = subprocess.run(cmd, cwd=cwd, env=run_env, capture_output=True, text=True, check=False)  # nosec B603 - fixed argv from our own code, no shell
    if check and proc.returncode != 0:
        message = [line for line in (proc.stderr.strip() or proc.stdout.strip()).splitlines()
                   if line.strip() and not line.startswith(_DVC_FOOTER)]
        raise DataVersionError(
            f"`dvc {' '.join(args)}` failed in {cwd} (exit {proc.returncode}): "
            + (" ".join(message[-5:]) if message else "no output")
        )
    return proc


@contextmanager
def dvc_repo(root: Path) -> Iterator["Repo"]:
    """DVC's Python API (`dvc.repo.Repo`) on the DVC project at root, closed when the block ends; DVC's own
    errors raised in the block (DvcException) become DataVersionError naming the directory and DVC's words.

    The same code the `dvc` command runs, in this process: no interpreter start, no second import of DVC.
    DVC reads relative targets against the process's working directory, not root: give absolute paths.
    """
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with dvc_console_quiet(), Repo(str(root)) as repo:
            yield repo
    except DvcException as exc:
        cause = f" ({exc.__cause__})" if exc.__cause__ is not None else ""
        raise DataVersionError(f"DVC in {root}: {exc}{cause}") from exc


@contextmanager
def dvc_console_quiet() -> Iterator[None]:
    """DVC's own console output off for the block: importing DVC gives its `dvc` logger stdout/stderr
    handlers (and it propagates to ours), so its progress lines ("Updating lock file", "To track the changes
    with git, run: ...") would land in the caller's output, which the `dvc` command's captured output never
    did. Handlers and propagation are restored afterwards; a handler added in the block still sees the records."""
    import dvc.logger  # noqa: F401 - installs DVC's handlers now, so the block starts from them

    saved = []
    for name in _DVC_LOGGERS:
        dvc_logger = logging.getLogger(name)
        saved.append((dvc_logger, list(dvc_logger.handlers), dvc_logger.propagate))
        for handler in list(dvc_logger.handlers):
            dvc_logger.removeHandler(handler)
        dvc_logger.propagate = False
    try:
        yield
    finally:
        for dvc_logger, handlers, propagate in saved:
            dvc_logger.propagate = propagate
            for handler in handlers:
                dvc_logger.addHandler(handler)


def run_bandit(targets: Sequence[Path | str], report_path: Path, *, cwd: Path | None = None,
               report_format: str = "json", extra_args: Sequence[str] = ()) -> Path:
    """Run `bandit -r <targets>` (relative to cwd when given), writing its report in `report_format` to
    report_path; StaticAnalysisError when bandit cannot run or scan (exit other than 0/1, or no report)."""
    report_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        exe = tool_path("bandit")
    except DataVersionError as exc:
        raise StaticAnalysisError(f"bandit is not installed in this environment: {exc}") from exc
    # Without --ini, Bandit obeys the first `.bandit` file it finds under the targets: one committed under src/
    # with `skips: B602` or `exclude:` passed the gate with the findings unseen. An ini of our own that sets
    # nothing leaves the policy of record (gates.static_analysis) the only configuration.
    neutral_ini = report_path.with_name(report_path.name + ".ini")
    neutral_ini.write_text("[bandit]\n", encoding="utf-8")
    cmd = [exe, "-r", *map(str, targets), "-q", "--ini", str(neutral_ini), *extra_args,
           "-f", report_format, "-o", str(report_path)]
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)  # nosec B603 - fixed argv, no shell
    except OSError as exc:
        raise StaticAnalysisError(f"cannot run bandit: {exc}") from exc
    if proc.returncode not in _BANDIT_OK_EXITS or not report_path.is_file():
        raise StaticAnalysisError(
            f"bandit exited {proc.returncode} scanning {', '.join(map(str, targets))} without a {report_format} "
            f"report at {report_path}: {proc.stderr.strip()[-500:]}"
        )
    return report_path


def read_bandit_report(report_path: Path) -> dict[str, Any]:
    """Bandit's JSON report as a dict; StaticAnalysisError when it is not one."""
    return read_json_object(report_path, "bandit report", StaticAnalysisError)
