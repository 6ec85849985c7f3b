"""DVC versioning of data/raw with the real `dvc` and `git` in temporary repositories: push/pull
through a local-directory remote, regeneration on a fresh clone, the md5-mismatch refusal, import."""

from __future__ import annotations

import subprocess  # nosec B404
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from conftest import small_params
from fraudguard.cli import app
from fraudguard.config import load_settings
from fraudguard.data import schema
from fraudguard.data.io import file_md5
from fraudguard.data.versioning import (
    DEFAULT_REMOTE_NAME,
    directory_md5,
    ensure_default_remote,
    import_data,
    pull_data,
    push_data,
    run_dvc,
    simulate_raw_data,
    track_raw_data,
    tracked_md5,
)
from fraudguard.errors import DataError, DataVersionError
from fraudguard.paths import ProjectPaths

pytestmark = pytest.mark.slow

TINY = {"simulate": {"n_customers": 40, "n_terminals": 80, "n_days": 10}}


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,  # nosec B603 B607
                          text=True).stdout


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """HOME and the cache dir (where the default remote lives) under tmp_path, never the user's."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    for var in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"):
        monkeypatch.setenv(var, "fraudguard-test")
    for var in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        monkeypatch.setenv(var, "test@fraudguard.local")


@pytest.fixture
def origin(tmp_path) -> ProjectPaths:
    """A committed project: params.yaml, simulated data/raw tracked by data.dvc."""
    root = tmp_path / "origin"
    root.mkdir()
    git(root, "init", "-q")
    run_dvc(["init", "-q"], root)
    paths = ProjectPaths.at(root)
    paths.params.write_text(yaml.safe_dump(small_params(TINY)))
    simulate_raw_data(paths, load_settings(paths.params))
    track_raw_data(paths)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "data")
    return paths


def clone(origin: ProjectPaths, tmp_path: Path, name: str = "clone") -> ProjectPaths:
    git(tmp_path, "clone", "-q", str(origin.root), name)
    return ProjectPaths.at(tmp_path / name)


def test_data_dvc_records_the_md5_dvc_computes(origin):
    assert tracked_md5(origin) == directory_md5(origin.raw_dir)
    assert "Data and pipelines are up to date" in run_dvc(["status", "data.dvc"], origin.root).stdout


def test_default_remote_is_a_local_dir_under_the_cache_home(origin, tmp_path):
    assert ensure_default_remote(origin) == DEFAULT_REMOTE_NAME
    url = run_dvc(["config", f"remote.{DEFAULT_REMOTE_NAME}.url"], origin.root).stdout.strip()
    assert url == str(tmp_path / "cache" / "fraudguard" / "dvc-remote")
    # Added to .dvc/config.local: the committed config stays remote-free for everyone else.
    assert "remote" not in (origin.root / ".dvc" / "config").read_text()


def test_a_configured_default_remote_is_kept(origin, tmp_path):
    run_dvc(["remote", "add", "-d", "team", str(tmp_path / "team-remote")], origin.root)
    assert ensure_default_remote(origin) == "team"


def test_push_then_pull_on_a_fresh_clone_gets_the_remote_copy(origin, tmp_path):
    push_data(origin)
    fresh = clone(origin, tmp_path)
    outcome = pull_data(fresh, load_settings(fresh.params))
    assert outcome.source == "remote"
    assert file_md5(fresh.raw_dir / "transactions.parquet") == file_md5(origin.raw_dir / "transactions.parquet")


def test_pull_without_remote_data_regenerates_the_tracked_version(origin, tmp_path):
    fresh = clone(origin, tmp_path)
    outcome = pull_data(fresh, load_settings(fresh.params))
    assert outcome.source == "regenerated"
    assert directory_md5(fresh.raw_dir) == tracked_md5(fresh)
    # Committed into the clone's DVC cache, so it can be pushed from there.
    assert "Data and pipelines are up to date" in run_dvc(["status", "data.dvc"], fresh.root).stdout


def test_pull_refuses_regenerated_data_that_differs_from_data_dvc(origin, tmp_path):
    fresh = clone(origin, tmp_path)
    fresh.params.write_text(yaml.safe_dump(small_params({**TINY, "simulate": {**TINY["simulate"], "seed": 1}})))
    with pytest.raises(DataVersionError, match=r"regenerated data does not match data.dvc: expected "
                                               rf"{tracked_md5(fresh)}, got \w+\.dir"):
        pull_data(fresh, load_settings(fresh.params))
    assert not fresh.raw_dir.exists()


def test_import_validates_then_versions_the_file(origin, tmp_path):
    before = tracked_md5(origin)
    upload = tmp_path / "upload.csv"
    frame = pd.read_parquet(origin.raw_dir / "transactions.parquet").head(100)
    frame.to_csv(upload, index=False)
    outcome = import_data(upload, origin, load_settings(origin.params))
    assert outcome.rows == 100
    assert len(pd.read_parquet(outcome.raw_file)) == 100
    assert outcome.md5 == tracked_md5(origin) != before
    assert "Data and pipelines are up to date" in run_dvc(["status", "data.dvc"], origin.root).stdout


def test_import_of_a_file_missing_a_column_leaves_data_untouched(origin, tmp_path):
    before = tracked_md5(origin)
    upload = tmp_path / "upload.csv"
    pd.read_parquet(origin.raw_dir / "transactions.parquet").drop(columns=[schema.TX_FRAUD]).to_csv(upload)
    with pytest.raises(DataError, match="upload.csv: missing required column"):
        import_data(upload, origin, load_settings(origin.params))
    assert tracked_md5(origin) == before == directory_md5(origin.raw_dir)


def test_cli_pull_error_exits_1_with_the_message_and_no_traceback(origin, tmp_path):
    fresh = clone(origin, tmp_path)
    fresh.params.write_text(yaml.safe_dump(small_params({**TINY, "simulate": {**TINY["simulate"], "seed": 1}})))
    result = CliRunner().invoke(app, ["data", "pull", "--root", str(fresh.root)])
    assert result.exit_code == 1
    assert "regenerated data does not match data.dvc" in result.stderr
    assert "Traceback" not in result.output
