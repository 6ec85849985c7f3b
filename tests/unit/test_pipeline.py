"""fraudguard.pipeline: params overrides around `dvc repro`, and data.dvc at a git revision."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import PROJECT_ROOT
from fraudguard.errors import ConfigError, DataVersionError
from fraudguard.pipeline import checkout_data_revision, params_overridden, validate_overrides


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


def test_params_overridden_writes_the_overrides_then_restores_the_original_file(params_file):
    original = params_file.read_text()
    with params_overridden(params_file, {"train": {"epochs": 3}}) as settings:
        assert settings.train.epochs == 3
        assert yaml.safe_load(params_file.read_text())["train"]["epochs"] == 3
    assert params_file.read_text() == original


def test_params_overridden_restores_the_file_when_the_block_fails(params_file):
    original = params_file.read_text()
    with pytest.raises(RuntimeError):
        with params_overridden(params_file, {"train.epochs": 2}):
            raise RuntimeError("dvc repro failed")
    assert params_file.read_text() == original


def test_unknown_override_key_is_refused_by_name_and_the_file_is_untouched(params_file):
    original = params_file.read_text()
    with pytest.raises(ConfigError, match=r"train\.epochz"):
        validate_overrides(params_file, {"train": {"epochz": 3}})
    with pytest.raises(ConfigError, match=r"train\.epochz"):
        with params_overridden(params_file, {"train": {"epochz": 3}}):
            pass
    assert params_file.read_text() == original


def test_checkout_data_revision_puts_the_older_data_dvc_in_the_work_tree(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "data.dvc").write_text(_data_dvc("aaa.dir"))
    _git(tmp_path, "add", "data.dvc")
    _git(tmp_path, "commit", "-qm", "v1")
    (tmp_path / "data.dvc").write_text(_data_dvc("bbb.dir"))
    _git(tmp_path, "commit", "-qam", "v2")

    assert checkout_data_revision(tmp_path, None) == "bbb.dir"
    assert checkout_data_revision(tmp_path, "HEAD~1") == "aaa.dir"
    assert yaml.safe_load((tmp_path / "data.dvc").read_text())["outs"][0]["md5"] == "aaa.dir"


def test_checkout_of_an_unknown_data_revision_names_it(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "data.dvc").write_text(_data_dvc("aaa.dir"))
    with pytest.raises(DataVersionError, match="no-such-rev"):
        checkout_data_revision(tmp_path, "no-such-rev")
