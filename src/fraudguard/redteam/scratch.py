"""The scratch project the suite attacks: a copy of the user's project (params.yaml and data/raw) with its
own git repository and DVC cache, so that imports, stages and reports never touch the real checkout."""

from __future__ import annotations

import logging
import shutil
import subprocess  # nosec B404 - runs git with fixed argument lists in the scratch directory
from pathlib import Path

from fraudguard.errors import DataError, DataVersionError
from fraudguard.paths import ProjectPaths

logger = logging.getLogger(__name__)

_GIT_IDENTITY = ("-c", "user.name=fraudguard-redteam", "-c", "user.email=redteam@localhost")


def _git(args: list[str], cwd: Path) -> None:
    git = shutil.which("git")
    if git is None:
        raise DataVersionError("git is not installed; the red-team scratch project needs it")
    proc = subprocess.run([git, *_GIT_IDENTITY, *args], cwd=cwd, capture_output=True, text=True,  # nosec B603 - fixed argv, no shell
                          check=False)
    if proc.returncode != 0:
        raise DataVersionError(f"`git {' '.join(args)}` failed in {cwd}: {proc.stderr.strip()[-500:]}")


def make_scratch_project(source: ProjectPaths, dest: Path, versioned: bool = True) -> ProjectPaths:
    """Copy params.yaml and data/raw (and a configured terminal-location table) of `source` to `dest`,
    version the data there with git + DVC as `fraudguard data import` expects (unless not `versioned`:
    attacks that import nothing skip the few seconds that costs), and return its paths."""
    from fraudguard.config import load_settings
    from fraudguard.data.versioning import track_raw_data
    from fraudguard.tools import run_dvc

    if not source.raw_dir.is_dir():
        raise DataError(f"{source.raw_dir}: no raw data to attack (run `fraudguard data pull` first)")
    dest.mkdir(parents=True, exist_ok=False)
    scratch = ProjectPaths.at(dest)
    shutil.copy2(source.params, scratch.params)
    shutil.copytree(source.raw_dir, scratch.raw_dir, ignore=shutil.ignore_patterns(".*"))
    locations = load_settings(source.params).validate_.terminal_locations
    if locations is not None and not locations.is_absolute() and (source.root / locations).is_file():
        (dest / locations).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source.root / locations, dest / locations)
    (dest / ".gitignore").write_text("/data/raw\n/data/validated\n/data/quarantine\n/data/features\n"
                                     "/models\n/reports\n/incoming\n", encoding="utf-8")
    if not versioned:
        return scratch
    _git(["init", "-q", "-b", "main"], dest)
    run_dvc(["init", "-q"], dest)
    track_raw_data(scratch)
    _git(["add", "-A"], dest)
    _git(["commit", "-qm", "red-team scratch project: clean data"], dest)
    logger.info("red-team scratch project at %s", dest)
    return scratch
