"""The pull-request summary, built with real git and dvc: params diff, metrics diff, one row per gate.

The last test runs the pipeline job's own make targets on a copy of this working tree (CI profile,
`dvc repro`, register, dry-run promotion, report), as GitHub Actions does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fraudguard.ci_report import (
    GateRow,
    apply_ci_profile,
    build_ci_summary,
    collect_gate_rows,
    render_summary,
    run_bandit,
    sarif_formatter_available,
    write_summary,
)
from fraudguard.config import StaticAnalysisGateSettings
from fraudguard.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
GIT_ID = ["-c", "user.email=ci@fraudguard.test", "-c", "user.name=fraudguard-test"]


def _git(root: Path, *args: str) -> str:
    proc = subprocess.run(["git", *GIT_ID, *args], cwd=root, capture_output=True, text=True, check=True)
    return proc.stdout.strip()


def _gate_json(path: Path, name: str, passed: bool, reason: str, **metrics: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"name": name, "passed": passed, "reason": reason, "metrics": metrics,
                                "thresholds": {}, "report_paths": []}), encoding="utf-8")


@pytest.fixture
def dvc_repo(tmp_path: Path) -> Path:
    """A git + dvc repo with one stage reading params.yaml and writing a metrics file; committed once."""
    root = tmp_path / "repo"
    root.mkdir()
    _git(root, "init", "-q")
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=root, check=True)
    (root / "params.yaml").write_text(yaml.safe_dump({"train": {"epochs": 8, "learning_rate": 0.001}}))
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": {
        "cmd": "echo train", "params": ["train"],
        "metrics": [{"metrics.json": {"cache": False}}]}}}))
    (root / "metrics.json").write_text(json.dumps({"average_precision": 0.61}))
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "base")
    return root


def test_profile_changes_exactly_the_profile_keys_and_records_them(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(PROJECT_ROOT / "params.yaml", params)
    record = tmp_path / "ci-profile.json"
    applied = apply_ci_profile(params, PROJECT_ROOT / "params.ci.yaml", record)
    profile = yaml.safe_load((PROJECT_ROOT / "params.ci.yaml").read_text())
    original = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    merged = yaml.safe_load(params.read_text())
    assert merged["train"]["epochs"] == profile["train"]["epochs"]
    assert merged["gates"]["quality"] == original["gates"]["quality"]
    assert applied.changes["simulate.n_customers"] == (original["simulate"]["n_customers"],
                                                       profile["simulate"]["n_customers"])
    assert set(json.loads(record.read_text())["changes"]) == set(applied.changes)


def test_profile_with_an_unknown_key_is_refused_by_name_and_params_left_alone(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(PROJECT_ROOT / "params.yaml", params)
    before = params.read_text()
    profile = tmp_path / "bad.ci.yaml"
    profile.write_text("train:\n  epohcs: 2\n")
    with pytest.raises(ConfigError, match="train.epohcs"):
        apply_ci_profile(params, profile)
    assert params.read_text() == before


def test_summary_shows_params_changed_since_the_base_rev(dvc_repo):
    base = _git(dvc_repo, "rev-parse", "HEAD")
    (dvc_repo / "params.yaml").write_text(yaml.safe_dump({"train": {"epochs": 3, "learning_rate": 0.001}}))
    summary = build_ci_summary(dvc_repo, base_rev=base)
    row = next(line for line in summary.params_diff_md.splitlines() if "train.epochs" in line)
    assert "8" in row and "3" in row
    assert "learning_rate" not in summary.params_diff_md


def test_params_diff_against_head_rev_ignores_workspace_edits(dvc_repo):
    # CI compares base..HEAD because its workspace carries the CI profile, not a change of the PR.
    base = _git(dvc_repo, "rev-parse", "HEAD")
    (dvc_repo / "params.yaml").write_text(yaml.safe_dump({"train": {"epochs": 2, "learning_rate": 0.001}}))
    summary = build_ci_summary(dvc_repo, base_rev=base, head_rev="HEAD")
    assert summary.params_diff_md == ""
    assert "_No params changed._" in render_summary(summary)


def test_summary_shows_metrics_changed_since_the_base_rev(dvc_repo):
    base = _git(dvc_repo, "rev-parse", "HEAD")
    (dvc_repo / "metrics.json").write_text(json.dumps({"average_precision": 0.74}))
    summary = build_ci_summary(dvc_repo, base_rev=base)
    row = next(line for line in summary.metrics_diff_md.splitlines() if "average_precision" in line)
    assert "0.61" in row and "0.74" in row


def test_gate_table_has_one_row_per_gate_and_marks_the_failed_one(tmp_path):
    gate_dir = tmp_path / "gates"
    _gate_json(gate_dir / "quality.json", "quality", True, "all floors met", average_precision=0.7)
    _gate_json(gate_dir / "robustness" / "robustness.json", "robustness", False,
               "PGD robust recall 0.31 < 0.5", robust_recall_pgd=0.31)
    rows = collect_gate_rows(gate_dir)
    assert [row.name for row in rows] == ["quality", "robustness"]
    assert [row.passed for row in rows] == [True, False]


def test_latest_promotion_summary_is_read_and_older_versions_ignored(tmp_path):
    gate_dir = tmp_path / "gates"
    older = gate_dir / "v1" / "gate_summary.json"
    newer = gate_dir / "v2" / "gate_summary.json"
    for path, drift_passed in ((older, False), (newer, True)):
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps({"version": int(path.parent.name[1:]), "passed": drift_passed, "gates": [
            {"name": "drift", "passed": drift_passed, "reason": f"from {path.parent.name}"},
            {"name": "privacy", "passed": True, "reason": "attack AUC 0.52 <= 0.6"}]}))
    os.utime(older, (1_000_000, 1_000_000))
    _gate_json(gate_dir / "v1" / "quality.json", "quality", False, "a per-gate report of v1")
    rows = {row.name: row for row in collect_gate_rows(gate_dir)}
    assert set(rows) == {"drift", "privacy"}
    assert rows["drift"].passed and rows["drift"].reason == "from v2"


def test_rendered_summary_names_failed_gates_and_escapes_table_cells(dvc_repo):
    gate_dir = dvc_repo / "reports" / "gates"
    _gate_json(gate_dir / "privacy.json", "privacy", False, "AUC 0.71 > 0.6 | overfit")
    markdown = render_summary(build_ci_summary(dvc_repo, base_rev="HEAD", gate_dir=gate_dir))
    assert "**Gates: FAILED: privacy.**" in markdown
    assert "| privacy | ❌ failed | AUC 0.71 > 0.6 \\| overfit |" in markdown


def test_summary_is_written_and_appended_to_the_github_step_summary(tmp_path):
    step_summary = tmp_path / "step_summary.md"
    step_summary.write_text("earlier step\n")
    out = tmp_path / "reports" / "ci-summary.md"
    write_summary("## report\n", out, step_summary)
    assert out.read_text() == "## report\n"
    assert step_summary.read_text() == "earlier step\n## report\n"


def test_gates_passed_is_false_without_any_verdict():
    from fraudguard.ci_report import CiSummary

    empty = CiSummary("HEAD", None, "", "", (), Path("reports/gates"))
    passing = CiSummary("HEAD", None, "", "", (GateRow("quality", True, "ok"),), Path("reports/gates"))
    assert not empty.gates_passed and passing.gates_passed


def test_bandit_blocks_shell_injection_and_writes_json_and_sarif(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "run.py").write_text(
        "import subprocess  # nosec B404 - this module exists to run commands\n"
        "def run(cmd):\n    return subprocess.run(cmd, shell=True)\n")
    settings = StaticAnalysisGateSettings(paths=["src", "flows"], min_severity="medium",
                                          min_confidence="medium")
    result = run_bandit(tmp_path, settings, tmp_path / "reports")
    assert result.findings == 1 and not result.passed
    assert result.scanned_paths == ("src",)
    report = json.loads(result.json_path.read_text())
    assert report["results"][0]["test_id"] == "B602"
    if sarif_formatter_available():
        assert json.loads(result.sarif_path.read_text())["runs"][0]["results"]


def test_bandit_run_fails_on_a_nosec_without_a_reason(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "quiet.py").write_text("import subprocess  # nosec\n")
    settings = StaticAnalysisGateSettings(paths=["src"], min_severity="medium", min_confidence="medium")
    result = run_bandit(tmp_path, settings, tmp_path / "reports")
    assert result.findings == 0
    assert result.bare_nosec == ("src/quiet.py:1",) and not result.passed


# ----------------------------------------------------------------------------- the pipeline job


def _copy_working_tree(dst: Path) -> None:
    """The working tree as git sees it (tracked + untracked, not ignored), uncommitted files included."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=PROJECT_ROOT, capture_output=True, check=True).stdout.split(b"\0")
    for raw in listed:
        if not raw:
            continue
        rel = Path(raw.decode())
        src = PROJECT_ROOT / rel
        if not src.is_file() or rel.parts[0] in {"data", "models", "reports", "mlartifacts"}:
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst / rel)


@pytest.mark.slow
def test_pipeline_job_commands_write_params_metrics_and_gate_summary(tmp_path):
    repo = tmp_path / "clone"
    repo.mkdir()
    _copy_working_tree(repo)
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "base")
    base = _git(repo, "rev-parse", "HEAD")
    # The pull request: one param changed and committed.
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["learning_rate"] = 0.002
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _git(repo, "commit", "-qam", "pr: learning rate")

    venv = BIN.parent
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("MLFLOW_", "GITHUB_", "PREFECT_"))}
    env.update(HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "cache"),
               PYTHONPATH=str(repo / "src"), GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t",
               GITHUB_STEP_SUMMARY=str(tmp_path / "step_summary.md"))
    # The venv is shared: -o keeps make from reinstalling the package from this copy.
    make = ["make", f"VENV={venv}", "-o", f"{venv}/.installed"]
    for target in (["ci-profile"], ["ci-pipeline"]):
        proc = subprocess.run(make + target, cwd=repo, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, f"make {target[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    gates = subprocess.run(make + ["ci-gates"], cwd=repo, env=env, capture_output=True, text=True)
    report = subprocess.run(make + ["ci-report", f"BASE_REF={base}", "HEAD_REV=HEAD"], cwd=repo, env=env,
                            capture_output=True, text=True)
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]

    summary = (repo / "reports" / "ci-summary.md").read_text()
    params_section = summary.split("### Params diff")[1].split("###")[0]
    metrics_section = summary.split("### Metrics diff")[1].split("###")[0]
    gate_section = summary.split("### Gate verdicts")[1].split("###")[0]
    assert "train.learning_rate" in params_section and "0.002" in params_section
    assert "train.epochs" not in params_section  # the CI profile is not part of the PR's diff
    assert "models/evaluation.json" in metrics_section and "average_precision" in metrics_section
    gate_names = set(yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())["gates"])
    for name in gate_names:
        assert f"| {name} |" in gate_section, f"no row for gate {name}:\n{gate_section}"
    # The job fails exactly when a gate fails.
    failed = "❌ failed" in gate_section
    assert (gates.returncode != 0) == failed, gates.stdout[-2000:] + gates.stderr[-2000:]
    assert (tmp_path / "step_summary.md").read_text() == summary
