"""Lineage of a trained model: code commit, data version, pipeline lock, params, run and library versions.

Every value is a string so the dict can go straight into MLflow run and model-version tags.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import shutil
# Only the local `git` binary, with fixed arguments and no shell.
import subprocess  # nosec B404 - runs git/dvc executables with fixed argument lists, no shell
import sys
from pathlib import Path
from typing import Any

import yaml

from fraudguard.config import Settings
from fraudguard.errors import DataVersionError, ModelError
from fraudguard.files import read_json_object, sha256_file
from fraudguard.names import (
    DATA_MD5_TAG,
    DVC_LOCK_SHA_TAG,
    FLOW_RUN_TAG,
    GIT_COMMIT_TAG,
    GIT_DIRTY_TAG,
    LINEAGE_TAG_PREFIX,
    PARAMS_SHA_TAG,
    VALIDATION_TAG_PREFIX,
    WEIGHTS_SHA_TAG,
)
from fraudguard.paths import ProjectPaths

logger = logging.getLogger(__name__)

UNKNOWN = "unknown"
ABSENT = "absent"
NONE = "none"

# Distribution names whose versions are recorded; "python" is the interpreter.
TRACKED_PACKAGES = (
    "torch",
    "mlflow",
    "dvc",
    "adversarial-robustness-toolbox",
    "evidently",
    "prefect",
)

LINEAGE_KEYS = (
    GIT_COMMIT_TAG,
    GIT_DIRTY_TAG,
    DATA_MD5_TAG,
    DVC_LOCK_SHA_TAG,
    PARAMS_SHA_TAG,
    FLOW_RUN_TAG,
    *(f"{LINEAGE_TAG_PREFIX}versions.{pkg}" for pkg in (*TRACKED_PACKAGES, "python")),
    WEIGHTS_SHA_TAG,
)


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of a byte string."""
    return hashlib.sha256(data).hexdigest()


def canonical_json(data: Any) -> str:
    """JSON with sorted keys and no whitespace: equal data gives equal text, hence equal hashes."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def params_sha256(settings: Settings) -> str:
    """sha256 of the settings' canonical JSON (independent of key order and YAML formatting)."""
    return sha256_bytes(canonical_json(settings.as_params_dict()).encode("utf-8"))


def _run_git(root: Path, *args: str) -> str | None:
    git = shutil.which("git")
    if git is None:
        return None
    try:
        done = subprocess.run(  # nosec B603 - fixed argv from our own code, no shell
            [git, "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        logger.warning("git %s failed in %s: %s", " ".join(args), root, exc)
        return None
    if done.returncode != 0:
        return None
    return done.stdout


def git_state(root: Path) -> tuple[str, str]:
    """(commit sha, "true"/"false" dirty flag) of the checkout at root; ("unknown", "unknown") outside git."""
    head = _run_git(root, "rev-parse", "HEAD")
    if head is None:
        return UNKNOWN, UNKNOWN
    status = _run_git(root, "status", "--porcelain")
    if status is None:
        return head.strip(), UNKNOWN
    outputs = pipeline_output_paths(root)
    changed = [line[3:].strip().strip('"') for line in status.splitlines() if line.strip()]
    # Files `dvc repro` itself writes (dvc.lock, stage outs, metrics, plots) do not make the code dirty.
    edits = [path for path in changed
             if not any(path == out or path.startswith(out.rstrip("/") + "/") for out in outputs)]
    return head.strip(), str(bool(edits)).lower()


def pipeline_output_paths(root: Path) -> set[str]:
    """dvc.lock and every out, metric and plot path dvc.yaml declares (relative to root)."""
    import yaml

    paths = {"dvc.lock"}
    try:
        stages = (yaml.safe_load((Path(root) / "dvc.yaml").read_text(encoding="utf-8")) or {}).get("stages", {})
    except (OSError, yaml.YAMLError):
        return paths
    for stage in stages.values():
        for kind in ("outs", "metrics", "plots"):
            for item in stage.get(kind, []) or []:
                paths.update([item] if isinstance(item, str) else list(item) if isinstance(item, dict) else [])
    return paths


def data_md5(dvc_file: Path) -> str:
    """md5 DVC recorded for the raw data (`outs[0].md5` of data.dvc); "absent" when there is no data.dvc."""
    if not dvc_file.exists():
        return ABSENT
    try:
        content = yaml.safe_load(dvc_file.read_text(encoding="utf-8"))
        md5 = content["outs"][0]["md5"]
    except (yaml.YAMLError, KeyError, IndexError, TypeError) as exc:
        raise DataVersionError(f"{dvc_file}: no outs[0].md5 in the DVC file ({exc!r})") from exc
    return str(md5)


# What the data validation found, tagged on the run and the version beside the data md5 (reviewers see a
# relabelled or poisoned training set in the registry without opening the report).
VALIDATION_LINEAGE_KEYS = tuple(f"{VALIDATION_TAG_PREFIX}{name}" for name in (
    "rows_quarantined", "fraud_rate", "history_checked", "label_changes", "changed_history",
    "fraud_rate_change_factor", "fraud_rate_change_exceeded", "volume_burst_days", "history_replaced",
    "deleted_transactions",
))


def validation_lineage(report_path: Path) -> dict[str, str]:
    """VALIDATION_LINEAGE_KEYS from the validate stage's report ("absent" when there is none, "unchecked"
    for the history and fraud-rate change of data that did not come through `fraudguard data import`)."""
    if not report_path.is_file():
        return {key: ABSENT for key in VALIDATION_LINEAGE_KEYS}
    report = read_json_object(report_path, "validation report", DataVersionError)
    history = report.get("history") or {}
    change = report.get("fraud_rate_change") or {}
    bursts = report.get("volume_bursts") or {}
    checked = bool(history.get("checked"))
    values = [
        report.get("rows_quarantined", UNKNOWN),
        report.get("fraud_rate", UNKNOWN),
        str(checked).lower(),
        history.get("label_changes", 0) if checked else "unchecked",
        history.get("changed_history", 0) if checked else "unchecked",
        change.get("factor", "unchecked") if change.get("checked") else "unchecked",
        str(bool(change.get("exceeded"))).lower() if change.get("checked") else "unchecked",
        int(bursts.get("customer_days", 0)) + int(bursts.get("terminal_days", 0)),
        str(bool(history.get("replaced"))).lower() if checked else "unchecked",
        history.get("previous_transactions_missing", 0) if checked else "unchecked",
    ]
    return {key: str(value) for key, value in zip(VALIDATION_LINEAGE_KEYS, values)}


def package_versions() -> dict[str, str]:
    """Installed versions of the tracked packages (UNKNOWN when not installed) and of Python."""
    versions: dict[str, str] = {}
    for pkg in TRACKED_PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = UNKNOWN
    versions["python"] = platform.python_version()
    return versions


def current_flow_run_id() -> str | None:
    """The Prefect flow run this process runs in, if any."""
    # Prefect is slow to import; a process that never imported it and has no flow-run env var
    # cannot be inside a flow run.
    if "prefect" not in sys.modules and not os.environ.get("PREFECT__FLOW_RUN_ID"):
        return None
    from prefect.runtime import flow_run

    run_id = flow_run.id
    return str(run_id) if run_id else None


def collect_lineage(
    root: Path | str,
    settings: Settings,
    weights_path: Path | str,
    flow_run_id: str | None = None,
    git_root: Path | str | None = None,
) -> dict[str, str]:
    """All lineage tags (see LINEAGE_KEYS) for the weights at weights_path, built in the checkout at root.

    git_root: the checkout whose code revision is recorded, when root is a scratch copy of it (an override
    run); default root.
    """
    paths = ProjectPaths.at(root)
    weights_path = Path(weights_path)
    if not weights_path.is_file():
        raise ModelError(f"{weights_path}: model weights not found; run the train stage first")
    commit, dirty = git_state(Path(git_root).resolve() if git_root is not None else paths.root)
    run_id = flow_run_id or current_flow_run_id()
    lineage = {
        GIT_COMMIT_TAG: commit,
        GIT_DIRTY_TAG: dirty,
        DATA_MD5_TAG: data_md5(paths.raw_dvc_file),
        DVC_LOCK_SHA_TAG: (
            sha256_file(paths.dvc_lock) if paths.dvc_lock.exists() else ABSENT
        ),
        PARAMS_SHA_TAG: params_sha256(settings),
        FLOW_RUN_TAG: run_id or NONE,
    }
    for pkg, version in package_versions().items():
        lineage[f"{LINEAGE_TAG_PREFIX}versions.{pkg}"] = version
    lineage[WEIGHTS_SHA_TAG] = sha256_file(weights_path)
    lineage.update(validation_lineage(paths.validation_report))
    return lineage
