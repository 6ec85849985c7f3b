"""The pull-request workflow is valid GitHub Actions, and every make target and `fraudguard` command
it relies on exists, so a green workflow file cannot hide a step that would fail at its first line."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = PROJECT_ROOT / ".github" / "workflows" / "pull-request.yml"
BIN = Path(sys.executable).parent
# Commands a step may run that are plumbing, not project work.
PLUMBING = ("git config",)


def _workflow() -> dict:
    return yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))


def _run_lines() -> list[str]:
    lines = []
    for job in _workflow()["jobs"].values():
        for step in job["steps"]:
            if "run" in step:
                lines += [line.strip() for line in step["run"].splitlines()
                          if line.strip() and not line.strip().startswith("#")]
    return lines


def _make_targets_called() -> list[str]:
    targets = []
    for line in _run_lines():
        words = shlex.split(line)
        if words and words[0] == "make":
            targets += [w for w in words[1:] if not w.startswith("-") and "=" not in w]
    return targets


def _makefile_targets() -> set[str]:
    # `make -qp` prints make's database: every rule, including ones from included files.
    proc = subprocess.run(["make", "-qp"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          check=False)
    return {m.group(1) for m in re.finditer(r"^([A-Za-z0-9_.-]+):(?!=)", proc.stdout, re.M)}


def _fraudguard_commands() -> list[list[str]]:
    """Every `fraudguard ...` command line the workflow runs, directly or through its make targets."""
    lines = list(_run_lines())
    targets = _make_targets_called()
    # -n prints the recipes without running them; -o keeps make from planning a venv install.
    proc = subprocess.run(
        ["make", "-n", "-o", ".venv/.installed", "BASE_REF=HEAD", "HEAD_REV=HEAD", *targets],
        cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
    lines += proc.stdout.replace("\\\n", " ").splitlines()  # a recipe's continued lines are one command
    commands = []
    for line in lines:
        words = shlex.split(line)
        for i, word in enumerate(words):
            if Path(word).name == "fraudguard":
                commands.append(words[i + 1:])
                break
    return commands


def test_workflow_validates_against_the_github_workflow_schema():
    proc = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
        capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_schema_check_rejects_a_workflow_with_a_misspelled_key(tmp_path):
    broken = _workflow()
    broken["jobs"]["fast"]["runs_on"] = broken["jobs"]["fast"].pop("runs-on")
    path = tmp_path / "broken.yml"
    path.write_text(yaml.safe_dump(broken), encoding="utf-8")
    proc = subprocess.run(
        [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(path)],
        capture_output=True, text=True, check=False)
    assert proc.returncode != 0
    assert "runs_on" in proc.stdout + proc.stderr


def test_workflow_runs_on_pull_requests_and_by_hand():
    # PyYAML reads the bare key `on` as True.
    triggers = _workflow().get("on", _workflow().get(True))
    assert set(triggers) == {"pull_request", "workflow_dispatch"}


def test_pipeline_job_waits_for_tests_and_fetches_full_history():
    job = _workflow()["jobs"]["pipeline"]
    assert job["needs"] == "fast"
    checkout = next(s for s in job["steps"] if s.get("uses", "").startswith("actions/checkout"))
    assert checkout["with"]["fetch-depth"] == 0


def test_every_step_that_does_work_calls_make_or_fraudguard():
    for line in _run_lines():
        if line.startswith("echo ") and line.endswith('>> "$GITHUB_OUTPUT"'):
            continue  # a step output for a later step (e.g. a cache key), no work
        assert line.startswith(("make ", "fraudguard ") + PLUMBING), (
            f"workflow step runs `{line}`: call a make target or a fraudguard command so it runs locally")


def test_every_make_target_the_workflow_calls_exists():
    called = set(_make_targets_called())
    assert {"test", "bandit", "ci-profile", "ci-pipeline", "ci-gates", "ci-report"} <= called
    missing = called - _makefile_targets()
    assert not missing, f"workflow calls make targets the Makefile lacks: {sorted(missing)}"


@pytest.mark.parametrize("command", _fraudguard_commands(), ids=lambda c: " ".join(c[:2]))
def test_every_fraudguard_command_the_workflow_runs_exists(command):
    # The exact command with --help appended: typer answers help before doing any work, and an
    # unknown command or option exits 2.
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([str(BIN / "fraudguard"), *command, "--help"], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, check=False, env=env, timeout=120)
    assert proc.returncode == 0, f"`fraudguard {' '.join(command)}` does not exist: {proc.stderr[-800:]}"
    assert "Usage" in proc.stdout
