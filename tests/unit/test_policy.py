"""The policy of record: what a promotion is judged by comes from the committed params.yaml."""

from __future__ import annotations

import subprocess

import pytest

from conftest import PROJECT_ROOT
from fraudguard.config import load_settings
from fraudguard.errors import ConfigError, PolicyError
from fraudguard.policy import committed_policy


def _committed_project(tmp_path, params_text: str):
    (tmp_path / "params.yaml").write_text(params_text, encoding="utf-8")
    for args in (["init", "-q"], ["add", "params.yaml"],
                 ["-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "params"]):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)
    return tmp_path


def test_an_override_of_the_data_changes_factor_is_refused_by_the_policy_of_record(tmp_path):
    root = _committed_project(tmp_path, (PROJECT_ROOT / "params.yaml").read_text(encoding="utf-8"))
    loosened = load_settings(root / "params.yaml", overrides={"validate.max_fraud_rate_change_factor": 1000})
    with pytest.raises(PolicyError, match=r"validate\.max_fraud_rate_change_factor \(1\.25 committed, 1000\.0 here\)"):
        committed_policy(root, loosened)
    assert committed_policy(root, load_settings(root / "params.yaml")).sections["validate"] == {
        "max_fraud_rate_change_factor": 1.25}


def test_an_override_of_the_signed_drift_references_size_is_refused_by_the_policy_of_record(tmp_path):
    # `-S registry.reference_sample_rows=1` passed: the promotion signed a one-row drift reference, against which
    # the next drift gate and the monitor saw no drift in traffic scaled x3.
    root = _committed_project(tmp_path, (PROJECT_ROOT / "params.yaml").read_text(encoding="utf-8"))
    for key, value in (("registry.reference_sample_rows", 5000), ("registry.reference_sample_seed", 3)):
        with pytest.raises(PolicyError, match=rf"{key.replace('.', r'[.]')} \("):
            committed_policy(root, load_settings(root / "params.yaml", overrides={key: value}))
    with pytest.raises(ConfigError, match="reference_sample_rows"):
        load_settings(root / "params.yaml", overrides={"registry.reference_sample_rows": 1})


def test_a_committed_params_file_repeating_a_section_is_refused_naming_the_key(tmp_path):
    text = (PROJECT_ROOT / "params.yaml").read_text(encoding="utf-8")
    root = _committed_project(tmp_path, text + "\ngates:\n  quality:\n    min_average_precision: 0.0\n")
    with pytest.raises(PolicyError, match="duplicate key 'gates'"):
        committed_policy(root, load_settings(PROJECT_ROOT / "params.yaml"))
