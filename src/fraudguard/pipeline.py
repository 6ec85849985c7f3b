"""Running the DVC stages from code: the one place that shells out to `dvc repro`.

Prefect tasks, `fraudguard run` and CI call these, so that DVC (not our code) decides what is stale
and caches stage outputs.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess  # nosec B404 -- runs the project's own dvc/git executables with argument lists
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from fraudguard.config import Settings, load_settings, merge_overrides, parse_settings
from fraudguard.errors import ConfigError, DataVersionError

log = logging.getLogger(__name__)

PIPELINE_STAGES = ("validate", "featurize", "train", "evaluate")
_SKIPPED = re.compile(r"Stage '([\w-]+)' didn't change, skipping")
_RAN = re.compile(r"Running stage '([\w-]+)'")


@dataclass(frozen=True)
class ReproOutcome:
    """Which stages `dvc repro` ran and which it found up to date."""

    ran: tuple[str, ...]
    skipped: tuple[str, ...]
    seconds: float


def tool_path(name: str) -> str:
    """The executable `name` from this interpreter's environment (the venv), else from PATH."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise DataVersionError(f"executable '{name}' not found next to {sys.executable} or on PATH")
    return found


def reproduce_stages(root: Path, stages: tuple[str, ...] = PIPELINE_STAGES) -> ReproOutcome:
    """`dvc repro` the given stages (and what they depend on) in the project at `root`."""
    import time

    started = time.perf_counter()
    env = dict(os.environ)
    # Stage commands are `python -m fraudguard.stages.x`: make sure that python is this environment's.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = [tool_path("dvc"), "repro", *stages]
    log.info("running %s in %s", " ".join(cmd[1:]), root)
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)  # nosec B603 - fixed argv from our own code, no shell
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise DataVersionError(
            f"dvc repro {' '.join(stages)} failed in {root} (exit {proc.returncode}):\n{output[-4000:]}"
        )
    ran = tuple(dict.fromkeys(_RAN.findall(output)))
    skipped = tuple(dict.fromkeys(_SKIPPED.findall(output)))
    outcome = ReproOutcome(ran=ran, skipped=skipped, seconds=time.perf_counter() - started)
    log.info("dvc repro: ran %s, up to date %s (%.1f s)", list(ran) or "none", list(skipped) or "none",
             outcome.seconds)
    return outcome


def validate_overrides(params_path: Path, overrides: dict[str, Any] | None) -> Settings:
    """Settings from params.yaml with overrides applied; unknown or ill-typed keys raise ConfigError."""
    return load_settings(params_path, overrides=overrides or None)


@contextmanager
def params_overridden(params_path: Path, overrides: dict[str, Any] | None) -> Iterator[Settings]:
    """Within the block, params.yaml holds the validated overrides (so `dvc repro` and dvc.lock see
    them); the original file is restored afterwards, whatever happens."""
    if not overrides:
        yield load_settings(params_path)
        return
    original = params_path.read_text(encoding="utf-8")
    merged = merge_overrides(yaml.safe_load(original), overrides)
    settings = parse_settings(merged, source=f"{params_path} with overrides {sorted(overrides)}")
    try:
        params_path.write_text(yaml.safe_dump(merged, sort_keys=False), encoding="utf-8")
        yield settings
    finally:
        params_path.write_text(original, encoding="utf-8")


def checkout_data_revision(root: Path, revision: str | None) -> str:
    """Put data.dvc as of git `revision` in the work tree (None: leave it); returns the md5 it names."""
    git = shutil.which("git")
    if git is None:
        raise DataVersionError("git is not installed; cannot read data.dvc at a revision")
    if revision:
        proc = subprocess.run([git, "show", f"{revision}:data.dvc"], cwd=root,  # nosec B603 - fixed argv from our own code, no shell
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise DataVersionError(f"data revision '{revision}': cannot read data.dvc: {proc.stderr.strip()}")
        (root / "data.dvc").write_text(proc.stdout, encoding="utf-8")
    try:
        meta = yaml.safe_load((root / "data.dvc").read_text(encoding="utf-8"))
        return str(meta["outs"][0]["md5"])
    except (OSError, KeyError, IndexError, TypeError, yaml.YAMLError) as exc:
        raise DataVersionError(f"{root / 'data.dvc'}: cannot read the data md5: {exc}") from exc


__all__ = [
    "PIPELINE_STAGES",
    "ReproOutcome",
    "ConfigError",
    "checkout_data_revision",
    "params_overridden",
    "reproduce_stages",
    "tool_path",
    "validate_overrides",
]


def stale_stages(root: Path, stages: tuple[str, ...] = PIPELINE_STAGES) -> dict[str, list[str]]:
    """stage -> what changed since its outputs were made (`dvc status`): changed params, deps or outs.

    Empty when every stage's outputs match dvc.lock: the models/ files are what the code, data and
    params.yaml of this checkout produce.
    """
    import json

    cmd = [tool_path("dvc"), "status", "--json", *stages]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)  # nosec B603 - fixed argv from our own code, no shell
    if proc.returncode != 0:
        raise DataVersionError(f"dvc status failed in {root} (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
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
