"""`fraudguard register` on a real DVC pipeline: it refuses outputs that are stale against params.yaml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from conftest import PROJECT_ROOT

BIN = Path(sys.executable).parent


def _write_stage(name: str, out: str) -> dict:
    # Each stage writes one file; what it computes does not matter here, only DVC's record of its inputs.
    return {"cmd": f"mkdir -p {Path(out).parent} && echo {name} > {out}", "params": [name], "outs": [out]}


def _pipeline_run(tmp_path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    (root / "params.yaml").write_text((PROJECT_ROOT / "params.yaml").read_text())
    stages = {"validate": _write_stage("validate", "data/validated/x"),
              "featurize": _write_stage("featurize", "data/features/x"),
              "train": _write_stage("train", "models/model.pt"),
              "evaluate": _write_stage("evaluate", "models/evaluation.json")}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    env_git = ["-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=root, check=True)
    subprocess.run([str(BIN / "dvc"), "repro", "-q"], cwd=root, check=True, capture_output=True)
    subprocess.run(["git", *env_git, "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", *env_git, "commit", "-qm", "pipeline run"], cwd=root, check=True)
    return root


def _register(root: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "fraudguard"), "register", "--root", str(root), *args], cwd=root,
                          capture_output=True, text=True,
                          env={"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(tmp_path),
                               "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"})


def test_register_with_a_params_file_the_outputs_were_not_built_from_is_refused_naming_the_keys(tmp_path):
    root = _pipeline_run(tmp_path)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["seed"] += 2
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = _register(root, tmp_path, "--params", str(tmp_path / "other.yaml"))
    assert proc.returncode != 0, proc.stdout  # before: registered, its lineage and params saying seed + 2
    assert "other.yaml is not the params.yaml the outputs in models/ were built from" in proc.stderr
    assert "train.seed differ" in proc.stderr and not (tmp_path / "mlflow.db").exists()


def test_register_after_a_params_edit_exits_non_zero_naming_the_stale_stage(tmp_path):
    root = _pipeline_run(tmp_path)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["seed"] += 2
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = _register(root, tmp_path)
    assert proc.returncode != 0, proc.stdout
    assert "stale" in proc.stderr and "train:" in proc.stderr and "params.yaml" in proc.stderr
    assert "validate:" not in proc.stderr and "featurize:" not in proc.stderr
    assert not (tmp_path / "mlflow.db").exists()  # refused before anything was logged
