"""Validation and quarantine: every bad-input case with its reason, invariants, the batch refusal,
and the validate stage's files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import small_params
from fraudguard.config import parse_settings
from fraudguard.data import schema
from fraudguard.data.io import read_transactions, write_transactions
from fraudguard.data.simulator import simulate_transactions, simulate_world
from fraudguard.data.validation import (
    QuarantineShareExceeded,
    validate_transactions,
)
from fraudguard.errors import DataError
from fraudguard.paths import ProjectPaths
from fraudguard.stages.validate import run_validation

N_CLEAN = 10


def clean_rows(n: int = N_CLEAN) -> pd.DataFrame:
    """n valid transactions, as strings (the way a CSV is read): one per customer, an hour apart."""
    start = pd.Timestamp("2024-04-01 08:00:00")
    return pd.DataFrame({
        schema.TRANSACTION_ID: [str(i) for i in range(n)],
        schema.TX_DATETIME: [str(start + pd.Timedelta(hours=i)) for i in range(n)],
        schema.CUSTOMER_ID: [str(i) for i in range(n)],
        schema.TERMINAL_ID: [str(100 + i) for i in range(n)],
        schema.TX_AMOUNT: [f"{10 + i}.50" for i in range(n)],
        schema.TX_FRAUD: ["0"] * n,
        schema.TX_FRAUD_SCENARIO: ["0"] * n,
    })


def with_row(frame: pd.DataFrame, **values) -> pd.DataFrame:
    """frame plus one row: a copy of its first row, new id, the given fields replaced."""
    row = frame.iloc[[0]].copy()
    row[schema.TRANSACTION_ID] = str(10_000 + len(frame))
    row[schema.CUSTOMER_ID] = "999"
    for key, value in values.items():
        row[key] = value
    return pd.concat([frame, row], ignore_index=True)


@pytest.fixture
def settings(small_settings):
    return small_settings.validate_.model_copy(update={"max_quarantine_share": 1.0})


@pytest.mark.parametrize(("field", "value", "reason"), [
    (schema.TX_DATETIME, "not a date", "unparseable_timestamp"),
    (schema.TX_DATETIME, None, "missing_value"),
    (schema.TX_AMOUNT, "12,50 EUR", "unparseable_amount"),
    (schema.TX_AMOUNT, "nan", "missing_value"),
    (schema.TX_AMOUNT, None, "missing_value"),
    (schema.TX_AMOUNT, "inf", "non_finite_amount"),
    (schema.TX_AMOUNT, "-5.00", "negative_amount"),
    (schema.TX_AMOUNT, "1e9", "amount_above_max"),
    (schema.CUSTOMER_ID, "abc", "unparseable_id"),
    (schema.CUSTOMER_ID, "12.5", "non_integer_id"),
    (schema.TERMINAL_ID, "-3", "negative_id"),
    (schema.TX_FRAUD, "2", "invalid_label"),
    (schema.TX_FRAUD, "yes", "unparseable_label"),
    (schema.TX_FRAUD_SCENARIO, "7", "invalid_scenario"),
])
def test_bad_value_is_quarantined_with_its_reason(settings, field, value, reason):
    frame = with_row(clean_rows(), **{field: value})
    result = validate_transactions(frame, settings)
    assert len(result.quarantined) == 1
    assert result.quarantined.loc[0, schema.QUARANTINE_REASON] == reason
    assert result.report["reasons"] == {reason: 1}
    assert len(result.accepted) == N_CLEAN


def test_quarantined_row_keeps_its_original_values(settings):
    frame = with_row(clean_rows(), **{schema.TX_AMOUNT: "12,50 EUR"})
    quarantined = validate_transactions(frame, settings).quarantined
    assert quarantined.loc[0, schema.TX_AMOUNT] == "12,50 EUR"


def test_duplicate_transaction_ids_are_all_quarantined(settings):
    frame = with_row(clean_rows(), **{schema.TRANSACTION_ID: "3", schema.TX_AMOUNT: "77.00"})
    result = validate_transactions(frame, settings)
    assert sorted(result.quarantined[schema.TRANSACTION_ID]) == ["3", "3"]
    assert set(result.quarantined[schema.QUARANTINE_REASON]) == {"duplicate_transaction_id"}


def test_same_transaction_with_conflicting_labels_is_quarantined(settings):
    frame = with_row(clean_rows(), **{schema.TX_FRAUD: "1",
                                      schema.CUSTOMER_ID: clean_rows().loc[0, schema.CUSTOMER_ID]})
    result = validate_transactions(frame, settings)
    assert len(result.quarantined) == 2
    assert set(result.quarantined[schema.QUARANTINE_REASON]) == {"conflicting_label"}


def test_same_transaction_with_same_label_under_two_ids_is_accepted(settings):
    frame = with_row(clean_rows(), **{schema.CUSTOMER_ID: clean_rows().loc[0, schema.CUSTOMER_ID]})
    assert validate_transactions(frame, settings).quarantined.empty


def test_row_failing_several_checks_gets_every_reason_joined(settings):
    frame = with_row(clean_rows(), **{schema.TX_AMOUNT: "1e9", schema.TX_FRAUD: "5"})
    reason = validate_transactions(frame, settings).quarantined.loc[0, schema.QUARANTINE_REASON]
    assert reason == "amount_above_max;invalid_label"


def test_card_at_two_terminals_seconds_apart_is_impossible_velocity(settings):
    frame = clean_rows()
    frame = with_row(frame, **{schema.CUSTOMER_ID: "0", schema.TERMINAL_ID: "555",
                               schema.TX_DATETIME: "2024-04-01 08:00:05"})
    result = validate_transactions(frame, settings)
    # Only the later transaction is impossible; the first one is where the card really was.
    assert list(result.quarantined[schema.TERMINAL_ID]) == ["555"]
    assert result.quarantined.loc[0, schema.QUARANTINE_REASON] == "impossible_velocity"


def test_same_terminal_seconds_apart_is_not_a_velocity_violation(settings):
    frame = with_row(clean_rows(), **{schema.CUSTOMER_ID: "0", schema.TX_DATETIME: "2024-04-01 08:00:05"})
    assert validate_transactions(frame, settings).quarantined.empty


def test_velocity_uses_terminal_locations_when_given(settings):
    frame = with_row(clean_rows(), **{schema.CUSTOMER_ID: "0", schema.TERMINAL_ID: "555",
                                      schema.TX_DATETIME: "2024-04-01 08:30:00"})
    # 90 grid units apart (900 km at 10 km/unit) in 30 minutes: 1800 km/h, above the 900 km/h bound.
    locations = pd.DataFrame({schema.TERMINAL_ID: [100, 555], "x_terminal_id": [0.0, 90.0],
                              "y_terminal_id": [0.0, 0.0]})
    without = validate_transactions(frame, settings)
    with_table = validate_transactions(frame, settings, terminal_locations=locations)
    assert without.quarantined.empty
    assert list(with_table.quarantined[schema.QUARANTINE_REASON]) == ["impossible_velocity"]


def test_nearby_terminals_with_locations_are_not_flagged(settings):
    frame = with_row(clean_rows(), **{schema.CUSTOMER_ID: "0", schema.TERMINAL_ID: "555",
                                      schema.TX_DATETIME: "2024-04-01 08:00:05"})
    locations = pd.DataFrame({schema.TERMINAL_ID: [100, 555], "x_terminal_id": [0.0, 0.0],
                              "y_terminal_id": [0.0, 0.001]})
    assert validate_transactions(frame, settings, terminal_locations=locations).quarantined.empty


def history(n: int, amount_of=lambda i: 20.0 + i % 7) -> pd.DataFrame:
    """n transactions of customer 0 at one terminal, a day apart."""
    start = pd.Timestamp("2024-04-01 12:00:00")
    return pd.DataFrame({
        schema.TRANSACTION_ID: np.arange(n),
        schema.TX_DATETIME: [start + pd.Timedelta(days=i) for i in range(n)],
        schema.CUSTOMER_ID: 0,
        schema.TERMINAL_ID: 1,
        schema.TX_AMOUNT: [float(amount_of(i)) for i in range(n)],
        schema.TX_FRAUD: 0,
        schema.TX_FRAUD_SCENARIO: 0,
    })


def test_extreme_amount_for_the_customer_is_an_outlier(settings):
    frame = history(30, lambda i: 5000.0 if i == 29 else 20.0 + i % 7)
    result = validate_transactions(frame, settings)
    assert list(result.quarantined[schema.TRANSACTION_ID]) == [29]
    assert result.quarantined.loc[0, schema.QUARANTINE_REASON] == "amount_outlier"


def test_customer_with_short_history_gets_no_outlier_check(settings):
    n = settings.min_customer_history - 1
    frame = history(n, lambda i: 5000.0 if i == n - 1 else 20.0 + i % 7)
    assert validate_transactions(frame, settings).quarantined.empty


def test_rows_in_equals_accepted_plus_quarantined(settings):
    frame = with_row(with_row(clean_rows(), **{schema.TX_AMOUNT: "-1"}), **{schema.TX_DATETIME: "x"})
    report = validate_transactions(frame, settings).report
    assert report["rows_in"] == len(frame) == report["rows_accepted"] + report["rows_quarantined"]


def test_accepted_rows_have_the_raw_schema_dtypes(settings):
    accepted = validate_transactions(clean_rows(), settings).accepted
    assert dict(accepted.dtypes.astype(str)) == {
        schema.TRANSACTION_ID: "int64", schema.TX_DATETIME: "datetime64[ns]",
        schema.CUSTOMER_ID: "int64", schema.TERMINAL_ID: "int64", schema.TX_AMOUNT: "float64",
        schema.TX_FRAUD: "int64", schema.TX_FRAUD_SCENARIO: "int64",
    }


def test_extra_handbook_columns_are_dropped_from_accepted_rows(settings):
    frame = clean_rows().assign(TX_TIME_SECONDS="0", TX_TIME_DAYS="0")
    accepted = validate_transactions(frame, settings).accepted
    assert list(accepted.columns) == list(schema.RAW_COLUMNS)


def test_missing_required_column_raises_naming_source_and_column(settings):
    with pytest.raises(DataError, match=r"upload.csv: missing required column\(s\) TX_AMOUNT"):
        validate_transactions(clean_rows().drop(columns=[schema.TX_AMOUNT]), settings, source="upload.csv")


def test_batch_without_rows_raises_naming_source(settings):
    with pytest.raises(DataError, match="upload.csv: no rows"):
        validate_transactions(clean_rows().iloc[:0], settings, source="upload.csv")


def test_quarantine_share_above_limit_raises_with_share_and_top_reason(small_settings):
    frame = clean_rows()
    frame.loc[:2, schema.TX_AMOUNT] = "-1"
    with pytest.raises(QuarantineShareExceeded, match=r"batch.csv: 30.0% of rows quarantined.*negative_amount \(3\)"
                       ) as info:
        validate_transactions(frame, small_settings.validate_, source="batch.csv")
    assert len(info.value.result.quarantined) == 3


def test_simulated_data_is_almost_all_accepted_and_keeps_its_frauds():
    settings = parse_settings(small_params({"simulate": {"n_customers": 300, "n_terminals": 600,
                                                         "customer_compromise_share_per_day": 0.006}}))
    frame = simulate_transactions(settings.simulate)
    report = validate_transactions(frame, settings.validate_).report
    assert report["quarantine_share"] < 0.01
    assert report["frauds_in"] > 100
    assert report["frauds_quarantined_share"] < 0.02


def test_simulated_data_with_true_terminal_locations_is_almost_all_accepted(small_settings):
    world = simulate_world(small_settings.simulate)
    result = validate_transactions(world.transactions, small_settings.validate_,
                                   terminal_locations=world.terminals)
    assert result.quarantine_share < 0.01


def project(tmp_path, frame: pd.DataFrame) -> ProjectPaths:
    paths = ProjectPaths.at(tmp_path)
    write_transactions(frame, paths.raw_dir / "transactions.parquet")
    return paths


def test_stage_writes_validated_quarantine_and_report(small_settings, tmp_path):
    frame = simulate_transactions(small_settings.simulate)
    frame.loc[5, schema.TX_AMOUNT] = -3.0
    paths = project(tmp_path, frame)
    run_validation(paths, small_settings)
    report = json.loads(paths.validation_report.read_text())
    assert report["rows_in"] == len(frame)
    assert report["reasons"]["negative_amount"] == 1
    assert set(report["inputs"]) == {"data/raw/transactions.parquet"}
    assert len(read_transactions(paths.validated)) == report["rows_accepted"]
    assert len(read_transactions(paths.quarantine)) == report["rows_quarantined"]


def test_refused_batch_still_writes_quarantine_and_report(small_settings, tmp_path):
    frame = simulate_transactions(small_settings.simulate)
    frame[schema.TX_AMOUNT] = -frame[schema.TX_AMOUNT] - 1
    paths = project(tmp_path, frame)
    with pytest.raises(DataError, match="data/raw/transactions.parquet: 100.0% of rows quarantined"):
        run_validation(paths, small_settings)
    assert json.loads(paths.validation_report.read_text())["passed"] is False
    assert len(read_transactions(paths.quarantine)) == len(frame)
    assert not paths.validated.exists()
