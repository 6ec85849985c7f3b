"""Builds a small, real FraudGuard project for flow and deployment tests: a git repo with DVC,
small params, the flows and stage code, and simulated data tracked by data.dvc."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import PROJECT_ROOT, small_params

BIN = Path(sys.executable).parent

# Gate thresholds relaxed: orchestration tests check the wiring; each gate's verdicts are tested on its own.
LENIENT_GATES = {
    "gates": {
        "quality": {"min_average_precision": 0.0, "min_card_precision_at_k": 0.0, "min_recall_at_fpr": 0.0,
                    "non_inferiority_tolerance": 1.0, "max_false_positive_rate": 1.0},
        "robustness": {"min_robust_recall": 0.0, "min_dilution_recall": 0.0, "non_inferiority_tolerance": 1.0,
                       "hopskipjump_samples": 5, "hopskipjump_max_iter": 2,
                       "split_payments": {"splits": 3, "min_flagged_share": 0.0}},
        "drift": {"drift_share_threshold": 1.0},
        "privacy": {"max_attack_auc": 1.0, "sample_size": 300, "min_sample_size": 4},
    },
    "train": {"epochs": 2},
}


def run_checked(cmd: list[str], cwd: Path, env: dict[str, str] | None = None,
                timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a command; on a non-zero exit fail with its output."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def make_project(root: Path, env: dict[str, str] | None, extra_params: dict | None = None) -> Path:
    """A small project at `root`, committed, with data/raw simulated and tracked in data.dvc."""
    root.mkdir(parents=True)
    for name in ("dvc.yaml", "prefect.yaml", ".dvcignore"):
        if (PROJECT_ROOT / name).exists():
            shutil.copy2(PROJECT_ROOT / name, root / name)
    shutil.copytree(PROJECT_ROOT / "flows", root / "flows", ignore=shutil.ignore_patterns("__pycache__"))
    # dvc.yaml's stage deps name the library's source files.
    shutil.copytree(PROJECT_ROOT / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (root / "params.yaml").write_text(yaml.safe_dump(small_params(extra_params), sort_keys=False))
    (root / ".gitignore").write_text("mlflow.db\nmlartifacts/\n.prefect/\nreports/gates/\n")
    run_checked(["git", "init", "-q", "-b", "main"], root, env)
    run_checked([str(BIN / "dvc"), "init", "-q"], root, env)
    run_checked([str(BIN / "fraudguard"), "data", "simulate", "--root", str(root)], root, env)
    from fraudguard.data.versioning import track_raw_data
    from fraudguard.paths import ProjectPaths

    track_raw_data(ProjectPaths.at(root))  # data.dvc at the root, as in the real project
    run_checked(["git", "add", "-A"], root, env)
    run_checked(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "small project"], root, env)
    return root
