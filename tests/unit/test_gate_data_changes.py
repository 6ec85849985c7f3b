"""data_changes gate: a fraud-rate change beyond the factor blocks until acknowledged; no report fails."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from fraudguard.errors import DataError
from fraudguard.gates.base import GateContext, ModelUnderTest
from fraudguard.gates.data_changes import acknowledge_data_changes, run_data_changes_gate

EXCEEDED = {"inputs": {"data/raw/transactions.parquet": "abc"},
            "history": {"checked": True, "label_changes": 611, "changed_history": 0},
            "fraud_rate_change": {"checked": True, "previous": 0.0089, "current": 0.0062, "factor": 1.43,
                                  "max_factor": 1.25, "exceeded": True}}


def verdict(root, small_settings, report=None):
    if report is not None:
        (root / "reports").mkdir(exist_ok=True)
        (root / "reports" / "validation.json").write_text(json.dumps(report))
    empty = pd.DataFrame()
    context = GateContext(settings=small_settings, train_features=empty, test_features=empty,
                          newest_window=empty, source_root=root, report_dir=root / "gates")
    return run_data_changes_gate(ModelUnderTest(bundle=None), context, small_settings.gates.data_changes)


def test_no_validation_report_fails_the_gate(tmp_path, small_settings):
    result = verdict(tmp_path, small_settings)
    assert not result.passed and "no reports/validation.json" in result.reason


def test_data_not_imported_passes_and_says_the_change_is_unchecked(tmp_path, small_settings):
    result = verdict(tmp_path, small_settings, {"inputs": {}, "fraud_rate_change": {
        "checked": False, "reason": "no intake record"}})
    assert result.passed and "unchecked (no intake record)" in result.reason


def test_exceeded_change_blocks_until_acknowledged_for_that_exact_data(tmp_path, small_settings):
    blocked = verdict(tmp_path, small_settings, EXCEEDED)
    assert not blocked.passed and blocked.metrics["label_changes"] == 611
    ack_file = tmp_path / small_settings.gates.data_changes.acknowledgements
    acknowledge_data_changes(EXCEEDED, ack_file, "reviewer", "chargebacks reviewed")
    assert verdict(tmp_path, small_settings).passed
    other_data = {**EXCEEDED, "inputs": {"data/raw/transactions.parquet": "def"}}
    assert not verdict(tmp_path, small_settings, other_data).passed


def test_nothing_to_acknowledge_is_refused(tmp_path):
    within = {**EXCEEDED, "fraud_rate_change": {**EXCEEDED["fraud_rate_change"], "exceeded": False}}
    with pytest.raises(DataError, match="nothing to acknowledge"):
        acknowledge_data_changes(within, tmp_path / "ack.yaml", "reviewer", "why")


def test_deleted_transactions_block_until_acknowledged_and_show_as_a_metric(tmp_path, small_settings):
    within = {**EXCEEDED, "fraud_rate_change": {**EXCEEDED["fraud_rate_change"], "exceeded": False, "factor": 1.1},
              "history": {"checked": True, "label_changes": 0, "changed_history": 0,
                          "previous_transactions_missing": 7}}
    blocked = verdict(tmp_path, small_settings, within)
    assert not blocked.passed and "7 transaction(s) of the previous version deleted" in blocked.reason
    assert blocked.metrics["deleted_transactions"] == 7.0
    acknowledge_data_changes(within, tmp_path / small_settings.gates.data_changes.acknowledgements,
                             "reviewer", "card scheme purge")
    assert verdict(tmp_path, small_settings).passed


def test_a_factor_loosened_when_the_data_was_validated_does_not_pass_the_gate(tmp_path, small_settings):
    # The intake report judged the change with `-S validate.max_fraud_rate_change_factor=1000`; the gate judges it
    # with the policy of record's factor (the settings a promotion checked against the committed params).
    loosened = {**EXCEEDED, "fraud_rate_change": {**EXCEEDED["fraud_rate_change"], "max_factor": 1000.0,
                                                   "exceeded": False}}
    result = verdict(tmp_path, small_settings, loosened)
    assert not result.passed and "1.43 > 1.25" in result.reason
    assert result.thresholds["max_fraud_rate_change_factor"] == small_settings.validate_.max_fraud_rate_change_factor


def test_at_a_commit_only_the_committed_acknowledgements_count(tmp_path, small_settings):
    import subprocess

    from fraudguard.gates.base import GateContext, ModelUnderTest
    from fraudguard.policy import CommittedTree

    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "README").write_text("x")
    subprocess.run([*git, "add", "README"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "start"], cwd=tmp_path, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, check=True, capture_output=True,
                          text=True).stdout.strip()
    verdict(tmp_path, small_settings, EXCEEDED)  # writes the report
    acknowledge_data_changes(EXCEEDED, tmp_path / small_settings.gates.data_changes.acknowledgements, "r", "why")
    empty = pd.DataFrame()

    def at(commit):
        context = GateContext(settings=small_settings, train_features=empty, test_features=empty,
                              newest_window=empty, source_root=tmp_path, report_dir=tmp_path / "gates",
                              committed=CommittedTree(tmp_path, commit))
        return run_data_changes_gate(ModelUnderTest(bundle=None), context, small_settings.gates.data_changes)

    assert verdict(tmp_path, small_settings).passed  # the working tree (a dry run) counts it
    blocked = at(head)
    assert not blocked.passed and "but commit" in blocked.reason and "does not: commit it" in blocked.reason
    subprocess.run([*git, "add", "-f", str(small_settings.gates.data_changes.acknowledgements)], cwd=tmp_path,
                   check=True)
    subprocess.run([*git, "commit", "-qm", "ack"], cwd=tmp_path, check=True)
    acked = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, check=True, capture_output=True,
                           text=True).stdout.strip()
    assert at(acked).passed
    assert not at(head).passed  # the older commit still does not hold it
    (tmp_path / small_settings.gates.data_changes.acknowledgements).unlink()  # the working tree no longer matters
    assert at(acked).passed
