"""Running the DVC stages from code: the one place that asks for `dvc repro` (DVC's Python API, in process).

Prefect tasks, `fraudguard run` and CI call these, so that DVC (not our code) decides what is stale
and caches stage outputs.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess  # nosec B404 - runs git with fixed argument lists (dvc goes through fraudguard.tools), no shell
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fraudguard import stage_interpreter
from fraudguard.config import Settings, load_params_yaml, load_settings, merge_overrides, parse_settings
from fraudguard.errors import ConfigError, DataVersionError
from fraudguard.tools import dvc_console_quiet, run_dvc

log = logging.getLogger(__name__)

PIPELINE_STAGES = ("validate", "featurize", "train", "evaluate")
_SKIPPED = re.compile(r"Stage '([\w-]+)' didn't change, skipping")


@dataclass(frozen=True)
class ReproOutcome:
    """Which stages `dvc repro` ran and which it found up to date."""

    ran: tuple[str, ...]
    skipped: tuple[str, ...]
    seconds: float


def reproduce_stages(root: Path, stages: tuple[str, ...] = PIPELINE_STAGES, *,
                     meanwhile: Callable[[threading.Event], None] | None = None,
                     meanwhile_from: str | None = None) -> ReproOutcome:
    """`dvc repro` the given stages (and what they depend on) in the project at `root`, in this process.

    DVC's Python API decides what is stale, runs the stale stages, writes dvc.lock, caches the outputs and
    uses its run-cache exactly as the `dvc repro` command does; a stage whose command is
    `python -m fraudguard.stages.<name>` runs as that module's main() in this process (its libraries are
    loaded once, not in a new interpreter per stage), any other command in DVC's own runner.

    meanwhile: other work for this process while the stages run (in a second thread; the training leaves a
    core free: it runs one torch thread), called with an event set when the stages are over (from then on that
    work is on the caller's critical path). Best effort: an error in it is logged, never raised; it does not
    change what DVC runs. A failed stage raises DataVersionError naming it; its outputs are not committed.
    meanwhile_from: the stage whose start begins that work (or the end of the repro, when DVC does not run
    it). Both threads need the interpreter lock: loading modules during the short pandas-heavy stages made
    validate take 2.6 s instead of 0.5 s, while the training's torch kernels leave the lock free.
    """
    import time
    from concurrent.futures import ThreadPoolExecutor

    started = time.perf_counter()
    begin, over = threading.Event(), threading.Event()
    if meanwhile_from is None:
        begin.set()

    def stage_starts(stage: str) -> None:
        if stage == meanwhile_from:
            begin.set()

    log.info("running dvc repro %s in %s (stages in this process)", " ".join(stages), root)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dvc-repro") as waiter:
        running = waiter.submit(_repro_in_process, Path(root), stages, stage_starts)
        def repro_ended(_: object) -> None:
            over.set()
            begin.set()

        running.add_done_callback(repro_ended)
        begin.wait()
        if meanwhile is not None and not (running.done() and running.exception() is not None):
            try:
                meanwhile(over)
            except Exception as exc:  # only a head start: whoever needs that work meets the error again
                log.warning("work done while dvc repro ran failed: %s", exc)
        try:
            ran, skipped = running.result()
        finally:
            stage_interpreter.release()  # started for this repro; it holds the training's data
    outcome = ReproOutcome(ran=ran, skipped=skipped, seconds=time.perf_counter() - started)
    log.info("dvc repro: ran %s, up to date %s (%.1f s)", list(ran) or "none", list(skipped) or "none",
             outcome.seconds)
    return outcome


# The stage commands run in this process: exactly `python -m fraudguard.stages.<name>` (dvc.yaml's shape).
_IN_PROCESS_CMD = re.compile(r"^\s*python3?\s+-m\s+(fraudguard\.stages\.\w+)\s*$")
# One in-process repro at a time: it swaps DVC's module-level command runner and the process's cwd.
_REPRO_LOCK = threading.Lock()


class _StageFailed(Exception):
    """A stage's main() failed in this process; carries the stage and the reason for the caller's message."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"stage '{stage}' failed: {reason}")
        self.stage = stage
        self.reason = reason


class _SkipLog(logging.Handler):
    """Collects the stages DVC reports as up to date ("Stage 'x' didn't change, skipping")."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.skipped: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            match = _SKIPPED.search(record.getMessage())
        except Exception:  # a malformed record from DVC is not ours to fail on
            return
        if match:
            self.skipped.append(match.group(1))


def _repro_in_process(root: Path, stages: tuple[str, ...],
                      stage_starts: Callable[[str], None] = lambda stage: None,
                      ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(stages run, stages up to date) of `dvc repro <stages>` through DVC's API in this thread;
    stage_starts(name) is called as each stage begins (an in-process stage: once its module is loaded)."""
    import dvc.stage.run as dvc_stage_run
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    ran: list[str] = []
    failures: list[_StageFailed] = []
    original = dvc_stage_run.cmd_run
    this_thread = threading.get_ident()

    def run_stage_cmd(stage: Any, dry: bool = False, run_env: dict[str, str] | None = None) -> None:
        match = _IN_PROCESS_CMD.match(stage.cmd) if isinstance(stage.cmd, str) else None
        if match is None or dry or threading.get_ident() != this_thread:
            if not dry:
                ran.append(stage.addressing)
                stage_starts(stage.addressing)
            return original(stage, dry=dry, run_env=run_env)
        ran.append(stage.addressing)
        try:
            if stage_interpreter.takes(stage.addressing):
                log.info("Running stage '%s': %s (in the stage interpreter started ahead)", stage.addressing,
                         stage.cmd)
                stage_starts(stage.addressing)
                reason = stage_interpreter.run_stage(stage.addressing, match.group(1), Path(stage.wdir))
                if reason is not None:
                    raise _StageFailed(stage.addressing, reason)
            else:
                log.info("Running stage '%s': %s (in this process)", stage.addressing, stage.cmd)
                _call_stage_main(match.group(1), Path(stage.wdir), lambda: stage_starts(stage.addressing))
        except _StageFailed as exc:
            failed = _StageFailed(stage.addressing, exc.reason)
            failures.append(failed)
            raise StageCmdFailedError(stage.cmd, 1) from failed

    from dvc.stage.exceptions import StageCmdFailedError

    # Stage commands that fall back to DVC's runner find this environment's python first.
    run_env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    skips = _SkipLog()
    dvc_logger = logging.getLogger("dvc")
    with _REPRO_LOCK, dvc_console_quiet():  # DVC's lines stay out of the caller's output, as before
        dvc_stage_run.cmd_run = run_stage_cmd
        dvc_logger.addHandler(skips)
        cwd = os.getcwd()
        try:
            # DVC reads targets and names stages relative to the working directory, as `dvc repro` run in root.
            os.chdir(root)
            with Repo(str(root)) as repo:
                repo.reproduce(list(stages), run_env=run_env)
        except DvcException as exc:
            if failures:
                raise DataVersionError(
                    f"dvc repro {' '.join(stages)} failed in {root}: {failures[-1]}; its outputs are not "
                    f"committed (dvc.lock unchanged for it)") from failures[-1]
            cause = f": {exc.__cause__}" if exc.__cause__ is not None else ""
            raise DataVersionError(f"dvc repro {' '.join(stages)} failed in {root}: {exc}{cause}") from exc
        finally:
            os.chdir(cwd)
            dvc_logger.removeHandler(skips)
            dvc_stage_run.cmd_run = original
    return tuple(dict.fromkeys(ran)), tuple(dict.fromkeys(s for s in skips.skipped if s not in ran))


def _call_stage_main(module_name: str, wdir: Path, starting: Callable[[], None] = lambda: None) -> None:
    """`python -m <module_name>` with cwd wdir, as a call: the module's main(wdir) in this process.

    What the stage changes in the process is put back afterwards: the working directory, the root logger's
    handlers and level (stage_main configures logging), torch's intra-op thread count (train and evaluate
    set it). A FraudGuardError (stage_main's exit status 1) or any other exception becomes _StageFailed.
    """
    import importlib

    root_logger = logging.getLogger()
    handlers, level = list(root_logger.handlers), root_logger.level
    torch = sys.modules.get("torch")
    torch_threads = torch.get_num_threads() if torch is not None else None
    cwd = os.getcwd()
    try:
        os.chdir(wdir)
        module = importlib.import_module(module_name)
        starting()
        module.main(str(wdir))
    except SystemExit as exc:
        if exc.code not in (None, 0):
            cause = exc.__cause__
            raise _StageFailed(module_name, str(cause) if cause is not None else f"exit status {exc.code}") from exc
    except Exception as exc:
        log.error("stage %s raised:", module_name, exc_info=True)
        raise _StageFailed(module_name, f"{type(exc).__name__}: {exc}") from exc
    finally:
        os.chdir(cwd)
        for handler in list(root_logger.handlers):
            if handler not in handlers:
                root_logger.removeHandler(handler)
        root_logger.setLevel(level)
        if torch is not None and torch_threads is not None:
            torch.set_num_threads(torch_threads)


def validate_overrides(params_path: Path, overrides: dict[str, Any] | None) -> Settings:
    """Settings from params.yaml with overrides applied; unknown or ill-typed keys raise ConfigError."""
    return load_settings(params_path, overrides=overrides or None)


# Never copied into a scratch workspace (root outside git): the environment, stores and caches.
_NOT_COPIED = {".git", ".venv", ".dvc", "mlflow.db", "mlruns", "mlartifacts", ".prefect", "state",
               ".stack", "__pycache__", ".pytest_cache"}


def _project_files(root: Path) -> list[Path]:
    """The project's own files relative to root: what git lists (tracked and untracked, not ignored), or
    every file outside the environment and stores when root is not a git checkout."""
    git = shutil.which("git")
    if git is not None:
        proc = subprocess.run([git, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],  # nosec B603 - fixed argv, no shell
                              cwd=root, capture_output=True, check=False)
        if proc.returncode == 0:
            return [Path(raw.decode()) for raw in proc.stdout.split(b"\0") if raw]
    return [path.relative_to(root) for path in root.rglob("*")
            if path.is_file() and not _NOT_COPIED.intersection(path.relative_to(root).parts)]


def _dvc_cache_dir(root: Path) -> Path:
    """The DVC cache directory the project at root uses (`dvc cache dir`)."""
    proc = run_dvc(["cache", "dir"], root)
    if not proc.stdout.strip():
        raise DataVersionError(f"`dvc cache dir` failed in {root}: {(proc.stderr or proc.stdout).strip()[-500:]}")
    return Path(proc.stdout.strip().splitlines()[-1]).resolve()


def _copy_into(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst, dirs_exist_ok=True)
    elif src.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)


def make_scratch_workspace(root: Path, params: dict[str, Any], dest: Path, data_dvc: str | None = None) -> Path:
    """A copy of the project at root in dest, with `params` as its params.yaml; root is left untouched.

    The copy holds the project's files (uncommitted edits included), data/raw and the current stage outputs
    (so `dvc repro` there reruns only what the params change), and shares root's DVC cache. It is a DVC
    project without git (core.no_scm): its lineage's code revision is read from root. With `data_dvc` (another
    data version's data.dvc) that is its data.dvc, and data/raw is left for the pull to fetch.
    """
    from fraudguard.lineage import pipeline_output_paths
    from fraudguard.paths import ProjectPaths

    root = Path(root).resolve()
    if not (root / ".dvc").is_dir():
        raise DataVersionError(f"{root}: not a DVC project (no .dvc/); cannot run the stages in a scratch copy")
    cache = _dvc_cache_dir(root)
    dest.mkdir(parents=True)
    raw = ProjectPaths.at(root).raw_dir.relative_to(root).as_posix()
    for rel in _project_files(root):
        if rel.parts[0] == ".dvc" or (data_dvc is not None and rel.as_posix().startswith(raw + "/")):
            continue
        _copy_into(root / rel, dest / rel)
    for output in [*([raw] if data_dvc is None else []), *sorted(pipeline_output_paths(root))]:
        _copy_into(root / output, dest / output)
    if data_dvc is not None:
        (dest / "data.dvc").write_text(data_dvc, encoding="utf-8")
    (dest / ".dvc").mkdir(exist_ok=True)
    _copy_into(root / ".dvc" / "config", dest / ".dvc" / "config")
    (dest / ".dvc" / "config.local").write_text(
        f"[core]\n    no_scm = true\n[cache]\n    dir = {cache.as_posix()}\n", encoding="utf-8")
    (dest / "params.yaml").write_text(
        "# params.yaml with a run's overrides merged over it (scratch workspace; the project's file is untouched)\n"
        + yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return dest


@contextmanager
def override_workspace(root: Path, overrides: dict[str, Any] | None,
                       data_dvc: str | None = None) -> Iterator[tuple[Path, Settings]]:
    """(workspace, settings) where the stages run with `overrides` applied, on the data version `data_dvc` (the
    text of a data.dvc; None: root's); the user's params.yaml and data.dvc are never written. Without either the
    workspace is root itself; with one, a scratch copy in the system's temporary directory, removed when the block
    ends (a crash leaves only that copy behind). Another data version used to be written into root's data.dvc and
    stayed there: later runs trained on it, and two runs at once read each other's."""
    import tempfile

    root = Path(root).resolve()
    params_path = root / "params.yaml"
    if data_dvc is not None and (root / "data.dvc").is_file() \
            and (root / "data.dvc").read_text(encoding="utf-8") == data_dvc:
        data_dvc = None  # the version root already holds
    if not overrides and data_dvc is None:
        yield root, load_settings(params_path)
        return
    merged = merge_overrides(load_params_yaml(params_path.read_text(encoding="utf-8"), str(params_path)),
                             overrides or {})
    settings = parse_settings(merged, source=f"{params_path} with overrides {sorted(overrides or {})}")
    holder = Path(tempfile.mkdtemp(prefix="fraudguard-override-"))
    try:
        workspace = make_scratch_workspace(root, merged, holder / "project", data_dvc)
        log.info("overrides %s%s: stages run in the scratch workspace %s", sorted(overrides or {}),
                 "" if data_dvc is None else f", data {data_dvc_md5(data_dvc, 'data revision')}", workspace)
        yield workspace, settings
    finally:
        shutil.rmtree(holder, ignore_errors=True)


def data_dvc_at_revision(root: Path, revision: str) -> str:
    """The text of data.dvc in the git commit `revision` names; DataVersionError naming the revision when it names
    no commit of root's repository or that commit has no data.dvc. Nothing is written.

    The revision is resolved to a commit first (policy.CommittedTree.resolve): passed on as it came,
    `--output=/some/path` was an option of `git show`, which wrote a file there and an empty data.dvc."""
    from fraudguard.errors import PolicyError
    from fraudguard.policy import CommittedTree

    try:
        tree = CommittedTree.resolve(root, revision)
        if tree is None:
            raise DataVersionError(f"data revision {revision!r} names no commit of {root}")
        text = tree.read_text(Path("data.dvc"))
    except PolicyError as exc:
        raise DataVersionError(f"data revision {revision!r}: {exc}") from exc
    if text is None:
        raise DataVersionError(f"data revision {revision!r} ({tree.commit[:12]}): holds no data.dvc")
    return text


def data_dvc_md5(text: str, source: str) -> str:
    """The md5 a data.dvc's text names; DataVersionError naming `source` when it names none."""
    try:
        return str(yaml.safe_load(text)["outs"][0]["md5"])
    except (KeyError, IndexError, TypeError, yaml.YAMLError) as exc:
        raise DataVersionError(f"{source}: cannot read the data md5: {exc}") from exc


__all__ = [
    "PIPELINE_STAGES",
    "ReproOutcome",
    "ConfigError",
    "data_dvc_at_revision",
    "data_dvc_md5",
    "make_scratch_workspace",
    "override_workspace",
    "reproduce_stages",
    "validate_overrides",
]


def stale_stages(root: Path, stages: tuple[str, ...] = PIPELINE_STAGES) -> dict[str, list[str]]:
    """stage -> what changed since its outputs were made (`dvc status`): changed params, deps or outs.

    Empty when every stage's outputs match dvc.lock: the models/ files are what the code, data and
    params.yaml of this checkout produce.
    """
    import json

    proc = run_dvc(["status", "--json", *stages], root)
    try:
        status = json.loads(proc.stdout or "{}")
    except ValueError as exc:
        raise DataVersionError(f"dvc status printed no JSON in {root}: {proc.stdout[-300:]}") from exc
    stale: dict[str, list[str]] = {}
    for key, changes in status.items():
        name = key.split(":")[-1]
        what: list[str] = []
        for change in changes if isinstance(changes, list) else [changes]:
            if isinstance(change, dict):
                for kind, detail in change.items():
                    what.append(f"{kind} {_describe_change(detail)}")
            else:
                what.append(str(change))
        stale[name] = what
    return stale


def _describe_change(detail: Any) -> str:
    """`{"params.yaml": {"train": "modified"}}` -> `params.yaml (train modified)`."""
    if isinstance(detail, dict):
        return ", ".join(f"{path} ({_describe_change(inner)})" if isinstance(inner, dict) else f"{path} {inner}"
                         for path, inner in detail.items())
    return str(detail)


def require_current_outputs(root: Path) -> None:
    """DataVersionError naming each stale stage when models/ does not match this checkout's inputs.

    A checkout without DVC (no .dvc/ or dvc.yaml) cannot say; that is logged, and lineage records no lock.
    """
    if not (Path(root) / ".dvc").is_dir() or not (Path(root) / "dvc.yaml").is_file():
        log.warning("%s is not a DVC pipeline checkout: cannot check that models/ is current", root)
        return
    stale = stale_stages(root)
    if stale:
        detail = "; ".join(f"{stage}: {', '.join(changes) or 'changed'}" for stage, changes in stale.items())
        raise DataVersionError(
            f"stage outputs are stale against the code, data or params.yaml ({detail}); run `dvc repro` "
            "first, so that the registered model is what these inputs produce"
        )
