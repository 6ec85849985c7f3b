"""fraudguard.pipeline: params overrides in a scratch workspace, and data.dvc at a git revision."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import PROJECT_ROOT
from fraudguard.config import load_settings
from fraudguard.errors import ConfigError, DataVersionError
from fraudguard.pipeline import (
    data_dvc_at_revision,
    data_dvc_md5,
    override_workspace,
    reproduce_stages,
    validate_overrides,
)


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=root, check=True,
                   capture_output=True)


def _data_dvc(md5: str) -> str:
    return yaml.safe_dump({"outs": [{"md5": md5, "size": 1, "nfiles": 1, "hash": "md5", "path": "data/raw"}]})


@pytest.fixture
def params_file(tmp_path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text((PROJECT_ROOT / "params.yaml").read_text())
    return path


@pytest.fixture(scope="module")
def dvc_project(tmp_path_factory) -> Path:
    """A git + DVC project with the real params.yaml, one stage output and an uncommitted edit (read-only)."""
    root = tmp_path_factory.mktemp("pipeline") / "project"
    (root / "src").mkdir(parents=True)
    (root / "params.yaml").write_text((PROJECT_ROOT / "params.yaml").read_text())
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"train": {
        "cmd": "echo train", "params": ["train"], "outs": ["models/model.pt"]}}}))
    (root / "models").mkdir()
    (root / "models" / "model.pt").write_bytes(b"weights")
    (root / "src" / "code.py").write_text("x = 1\n")
    _git(root, "init", "-q")
    subprocess.run([str(Path(sys.executable).parent / "dvc"), "init", "-q"], cwd=root, check=True)
    _git(root, "add", "params.yaml", "dvc.yaml", "src", ".dvc")
    _git(root, "commit", "-qm", "project")
    (root / "src" / "code.py").write_text("x = 2  # not committed\n")
    return root


def test_overrides_run_in_a_scratch_copy_and_the_project_params_file_is_never_written(dvc_project):
    original = (dvc_project / "params.yaml").read_bytes()
    with override_workspace(dvc_project, {"train": {"epochs": 3}}) as (workspace, settings):
        assert workspace != dvc_project and settings.train.epochs == 3
        assert yaml.safe_load((workspace / "params.yaml").read_text())["train"]["epochs"] == 3
        assert (dvc_project / "params.yaml").read_bytes() == original
        # The copy carries the working tree as it is (uncommitted edits), the stage outputs and root's cache.
        assert (workspace / "src" / "code.py").read_text() == "x = 2  # not committed\n"
        assert (workspace / "models" / "model.pt").read_bytes() == b"weights"
        config = (workspace / ".dvc" / "config.local").read_text()
        assert str((dvc_project / ".dvc" / "cache").resolve()) in config and "no_scm = true" in config
    assert not workspace.exists()
    assert (dvc_project / "params.yaml").read_bytes() == original


def test_scratch_workspace_is_removed_and_params_untouched_when_the_run_fails(dvc_project):
    original = (dvc_project / "params.yaml").read_bytes()
    with pytest.raises(RuntimeError):
        with override_workspace(dvc_project, {"train.epochs": 2}) as (workspace, _):
            raise RuntimeError("dvc repro failed")
    assert not workspace.exists()
    assert (dvc_project / "params.yaml").read_bytes() == original


def test_another_data_version_runs_in_a_scratch_copy_and_the_projects_data_dvc_is_never_written(dvc_project):
    # train-and-promote(data_revision=...) wrote the revision's data.dvc into the project and left it there: the
    # next default run trained on that data, and a run beside it read it mid-way.
    (dvc_project / "data.dvc").write_text(_data_dvc("current.dir"))
    (dvc_project / "data" / "raw").mkdir(parents=True, exist_ok=True)
    (dvc_project / "data" / "raw" / "t.parquet").write_bytes(b"current rows")
    try:
        with override_workspace(dvc_project, None, _data_dvc("older.dir")) as (workspace, settings):
            assert workspace != dvc_project and settings.train.epochs == load_settings(
                dvc_project / "params.yaml").train.epochs
            assert data_dvc_md5((workspace / "data.dvc").read_text(), "copy") == "older.dir"
            assert not (workspace / "data" / "raw").exists()  # the pull fetches the older version there
            assert data_dvc_md5((dvc_project / "data.dvc").read_text(), "project") == "current.dir"
        assert not workspace.exists()
        # The version the project already holds needs no copy.
        with override_workspace(dvc_project, None, _data_dvc("current.dir")) as (same, _):
            assert same == dvc_project
    finally:
        (dvc_project / "data.dvc").unlink()
        (dvc_project / "data" / "raw" / "t.parquet").unlink()


def test_without_overrides_the_stages_run_in_the_project_itself(params_file):
    with override_workspace(params_file.parent, None) as (workspace, settings):
        assert workspace == params_file.parent.resolve()
        assert settings.train.epochs == yaml.safe_load(params_file.read_text())["train"]["epochs"]


def test_unknown_override_key_is_refused_by_name_and_the_file_is_untouched(params_file):
    original = params_file.read_text()
    with pytest.raises(ConfigError, match=r"train\.epochz"):
        validate_overrides(params_file, {"train": {"epochz": 3}})
    with pytest.raises(ConfigError, match=r"train\.epochz"):
        with override_workspace(params_file.parent, {"train": {"epochz": 3}}):
            pass
    assert params_file.read_text() == original


def test_a_data_revision_is_read_at_its_commit_and_the_work_tree_is_not_written(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "data.dvc").write_text(_data_dvc("aaa.dir"))
    _git(tmp_path, "add", "data.dvc")
    _git(tmp_path, "commit", "-qm", "v1")
    (tmp_path / "data.dvc").write_text(_data_dvc("bbb.dir"))
    _git(tmp_path, "commit", "-qam", "v2")

    assert data_dvc_md5(data_dvc_at_revision(tmp_path, "HEAD~1"), "HEAD~1") == "aaa.dir"
    assert data_dvc_md5(data_dvc_at_revision(tmp_path, "HEAD"), "HEAD") == "bbb.dir"
    # It used to write the older data.dvc into the work tree, where the next default run trained on it.
    assert yaml.safe_load((tmp_path / "data.dvc").read_text())["outs"][0]["md5"] == "bbb.dir"


@pytest.mark.parametrize("revision", ["no-such-rev", "--output=written_by_git", "-p", "HEAD:data.dvc", ""])
def test_a_data_revision_that_names_no_commit_is_refused_naming_it_and_runs_nothing(tmp_path, revision):
    # `--output=PATH` reached `git show` as an option: git wrote a file there, and an empty data.dvc here.
    _git(tmp_path, "init", "-q")
    (tmp_path / "data.dvc").write_text(_data_dvc("aaa.dir"))
    _git(tmp_path, "add", "data.dvc")
    _git(tmp_path, "commit", "-qm", "v1")
    with pytest.raises(DataVersionError, match=f"data revision {re.escape(repr(revision))} names no commit"):
        data_dvc_at_revision(tmp_path, revision)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".git", "data.dvc"]
    assert data_dvc_md5((tmp_path / "data.dvc").read_text(), "data.dvc") == "aaa.dir"


def _waiting_stage_project(root: Path) -> Path:
    """A DVC project whose one stage succeeds only if the file `started` appears while it runs (60 s at most)."""
    root.mkdir(parents=True)
    (root / "stage.py").write_text(
        "import pathlib, sys, time\n"
        "marker = pathlib.Path('started')\n"
        "for _ in range(600):\n"
        "    if marker.exists():\n"
        "        break\n"
        "    time.sleep(0.1)\n"
        "pathlib.Path('out.txt').write_text('done')\n"
        "sys.exit(0 if marker.exists() else 1)\n")
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"wait": {
        "cmd": "python stage.py", "deps": ["stage.py"], "outs": ["out.txt"]}}}))
    _git(root, "init", "-q")
    subprocess.run([str(Path(sys.executable).parent / "dvc"), "init", "-q"], cwd=root, check=True)
    return root


def test_reproduce_stages_does_the_meanwhile_work_while_dvc_runs_the_stages(tmp_path):
    root = _waiting_stage_project(tmp_path / "project")

    seen: list[bool] = []

    def meanwhile(over) -> None:
        seen.append(over.is_set())
        (root / "started").write_text("x")  # the stage waits for this file
        seen.append(over.wait(60))

    outcome = reproduce_stages(root, ("wait",), meanwhile=meanwhile)

    assert outcome.ran == ("wait",)
    assert (root / "out.txt").read_text() == "done"
    assert seen == [False, True]  # the event tells the work when the stages are over


def _two_stage_project(root: Path) -> Path:
    """`early` records whether the file `started` existed while it ran; `late` (after it) waits for that file."""
    root = _waiting_stage_project(root)
    (root / "early.py").write_text(
        "import pathlib, time\n"
        "time.sleep(1.0)\n"
        "pathlib.Path('early.txt').write_text('seen' if pathlib.Path('started').exists() else 'not seen')\n")
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {
        "early": {"cmd": "python early.py", "deps": ["early.py"], "outs": ["early.txt"]},
        "wait": {"cmd": "python stage.py", "deps": ["stage.py", "early.txt"], "outs": ["out.txt"]}}}))
    return root


def test_meanwhile_work_waits_for_the_named_stage_to_start(tmp_path):
    root = _two_stage_project(tmp_path / "project")

    outcome = reproduce_stages(root, ("wait",), meanwhile=lambda _over: (root / "started").write_text("x"),
                               meanwhile_from="wait")

    assert outcome.ran == ("early", "wait")
    assert (root / "early.txt").read_text() == "not seen"
    assert (root / "out.txt").read_text() == "done"


def test_meanwhile_work_still_runs_when_the_named_stage_is_up_to_date(tmp_path):
    root = _two_stage_project(tmp_path / "project")
    reproduce_stages(root, ("wait",), meanwhile=lambda _over: (root / "started").write_text("x"), meanwhile_from="wait")
    calls: list[str] = []

    outcome = reproduce_stages(root, ("wait",), meanwhile=lambda over: calls.append(over.is_set()),
                               meanwhile_from="wait")

    assert outcome.ran == ()
    assert set(outcome.skipped) == {"early", "wait"}
    assert calls == [True]  # it runs, and is told the stages are over: it is on the critical path now


def test_a_failing_meanwhile_work_is_logged_and_the_stages_still_run(tmp_path, caplog):
    root = _waiting_stage_project(tmp_path / "project")
    (root / "started").write_text("x")

    def broken(_over) -> None:
        raise RuntimeError("cannot import a gate library")

    outcome = reproduce_stages(root, ("wait",), meanwhile=broken)

    assert outcome.ran == ("wait",)
    assert "cannot import a gate library" in caplog.text
