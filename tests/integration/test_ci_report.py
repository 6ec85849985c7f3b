"""The pull-request summary, built with real git and dvc: params diff, metrics diff, one row per gate.

The last test runs the pipeline job's own make targets on a clone of the committed tree (CI profile,
`dvc repro`, register, dry-run promotion, report), as GitHub Actions does on unchanged main.
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


def test_a_pull_request_loosening_the_ci_profile_shows_it_marked_as_gate_policy(dvc_repo):
    # The dry-run gates judge by params.ci.yaml's values, and `dvc params diff` covers params.yaml only: a PR could
    # lower the CI profile's floors and the summary showed nothing.
    (dvc_repo / "params.ci.yaml").write_text(yaml.safe_dump({"train": {"epochs": 10},
                                                             "gates": {"quality": {"min_average_precision": 0.3}}}))
    _git(dvc_repo, "add", "params.ci.yaml")
    _git(dvc_repo, "commit", "-qm", "ci profile")
    base = _git(dvc_repo, "rev-parse", "HEAD")
    (dvc_repo / "params.ci.yaml").write_text(yaml.safe_dump({"train": {"epochs": 12},
                                                             "gates": {"quality": {"min_average_precision": 0.0}}}))
    _git(dvc_repo, "commit", "-qam", "loosen")
    summary = build_ci_summary(dvc_repo, base_rev=base, head_rev="HEAD")
    assert summary.profile_changes == (("gates.quality.min_average_precision", 0.3, 0.0), ("train.epochs", 10, 12))
    markdown = render_summary(summary)
    assert "### CI profile changed" in markdown
    assert "| gates.quality.min_average_precision | 0.3 | 0.0 | ⚠️ gate policy |" in markdown
    assert "| train.epochs | 10 | 12 |  |" in markdown
    assert build_ci_summary(dvc_repo, base_rev="HEAD", head_rev="HEAD").profile_changes == ()


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


# ------------------------------------------------------------------------- base metrics, like with like


def _base_metrics_repo(tmp_path: Path) -> Path:
    """A real small project (the real params.yaml at small sizes, simulated data) whose one stage writes
    the epochs it ran with as its metric; committed once. Its profile sets train.epochs to 3."""
    from conftest import small_params

    root = tmp_path / "repo"
    root.mkdir()
    params = small_params()
    params["train"]["epochs"] = 8
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    write = ("import json, yaml; e = yaml.safe_load(open('params.yaml'))['train']['epochs']; "
             "json.dump({'epochs': e, 'average_precision': 0.5 + e / 100}, open('metrics.json', 'w'))")
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "train": {"cmd": f"python -c \"{write}\"", "deps": ["data/raw"], "params": ["train"],
                  "metrics": [{"metrics.json": {"cache": False}}]},
        "plain": {"cmd": "echo no metrics here", "params": ["model"]}}}))
    (root / "params.ci.yaml").write_text("train:\n  epochs: 3\n")
    (root / ".gitignore").write_text("/data/\n/reports/\n")
    _git(root, "init", "-q")
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=root, check=True)
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "base")
    return root


def test_base_metrics_come_from_the_base_revision_run_with_the_same_profile(tmp_path):
    from fraudguard.ci_report import compute_base_metrics, read_profile_record

    root = _base_metrics_repo(tmp_path)
    base = _git(root, "rev-parse", "HEAD")
    # The pull request: epochs 12 in params.yaml; CI runs it with the profile (epochs 3), then the base.
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["epochs"] = 12
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _git(root, "commit", "-qam", "pr: 12 epochs")
    apply_ci_profile(root / "params.yaml", root / "params.ci.yaml", root / "reports" / "ci-profile.json")
    (root / "metrics.json").write_text(json.dumps({"epochs": 3, "average_precision": 0.61}))

    out = root / "reports" / "ci-base"
    result = compute_base_metrics(root, base, Path("params.ci.yaml"), out)
    assert result.commit == base and not result.reused
    # The base's own params with the profile over them: 3 epochs (not the base's 8, not the PR's 12).
    assert json.loads((out / "metrics.json").read_text()) == {"epochs": 3, "average_precision": 0.53}
    assert read_profile_record(out / "base.json")["profile_sha256"] == \
        read_profile_record(root / "reports" / "ci-profile.json")["profile_sha256"]
    assert _git(root, "worktree", "list").count("\n") == 0  # the scratch worktree is gone

    summary = build_ci_summary(root, base_rev=base, head_rev="HEAD", base_metrics_dir=out)
    markdown = render_summary(summary)
    assert "Both sides ran with the CI profile `params.ci.yaml`" in markdown
    row = next(line for line in summary.metrics_diff_md.splitlines() if "average_precision" in line)
    assert "0.53" in row and "0.61" in row
    assert "| epochs |" not in summary.metrics_diff_md  # same profile, same epochs: no change shown
    # A second call for the same commit and profile (a CI cache hit) reruns nothing.
    assert compute_base_metrics(root, base, Path("params.ci.yaml"), out).reused


def test_summary_without_base_metrics_says_the_diff_is_not_like_with_like(dvc_repo):
    (dvc_repo / "reports").mkdir()
    (dvc_repo / "reports" / "ci-profile.json").write_text(json.dumps({"profile": "params.ci.yaml", "changes": {}}))
    markdown = render_summary(build_ci_summary(dvc_repo, base_rev="HEAD"))
    assert "Not like with like" in markdown and "make ci-base" in markdown


# ----------------------------------------------------------------------------- the pipeline job


@pytest.mark.slow
def test_pipeline_job_passes_on_a_clone_of_the_committed_tree(tmp_path):
    """The pipeline job's make targets, as GitHub Actions runs them on unchanged main: every one exits 0,
    every gate passes on the CI profile, and the summary is written. Committed code only (a clone)."""
    repo = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(PROJECT_ROOT), str(repo)], check=True, capture_output=True)
    base = _git(repo, "rev-parse", "HEAD")
    venv = BIN.parent
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("MLFLOW_", "GITHUB_", "PREFECT_"))}
    env.update(HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "cache"),
               PYTHONPATH=str(repo / "src"), GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t",
               GITHUB_STEP_SUMMARY=str(tmp_path / "step_summary.md"))
    # The test's venv stands in for `make install`'s: -o keeps make from reinstalling into it.
    make = ["make", f"VENV={venv}", "-o", f"{venv}/.installed"]
    for target in (["ci-profile"], ["ci-pipeline"], ["ci-gates"], ["ci-report", f"BASE_REF={base}", "HEAD_REV=HEAD"]):
        proc = subprocess.run(make + target, cwd=repo, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, f"make {target[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"

    summary = (repo / "reports" / "ci-summary.md").read_text()
    assert "**Gates: all passed.**" in summary
    gate_section = summary.split("### Gate verdicts")[1].split("###")[0]
    for name in yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())["gates"]:
        assert f"| {name} | ✅ passed |" in gate_section, f"gate {name}:\n{gate_section}"
    # Unchanged main: no params change, and the CI profile (a workspace edit) is not reported as one.
    assert "_No params changed._" in summary.split("### Params diff")[1].split("###")[0]
    assert "### CI profile `params.ci.yaml`" in summary
    assert (tmp_path / "step_summary.md").read_text() == summary


def test_bandit_run_fails_like_the_gate_on_a_file_bandit_could_not_scan(tmp_path, small_settings):
    from fraudguard.gates.base import GateContext, ModelUnderTest
    from fraudguard.gates.static_analysis import run_static_analysis_gate

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "broken.py").write_text("def f(:\n    pass\n")
    settings = StaticAnalysisGateSettings(paths=["src"], min_severity="medium", min_confidence="medium")
    ci = run_bandit(tmp_path, settings, tmp_path / "reports")
    context = GateContext(settings=small_settings, train_features=None, test_features=None, newest_window=None,
                          source_root=tmp_path, report_dir=tmp_path / "gate")
    gate = run_static_analysis_gate(ModelUnderTest(bundle=None), context, settings)
    assert ci.findings == 0 and ci.scan_errors == ("src/broken.py: syntax error while parsing AST from file",)
    assert not ci.passed and not gate.passed and gate.metrics["scan_errors"] == 1.0
