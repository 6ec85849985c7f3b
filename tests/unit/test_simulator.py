"""The seeded handbook simulator: determinism, schema, fraud scenarios."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import PROJECT_ROOT, small_params
from fraudguard.config import load_settings, parse_settings
from fraudguard.data import schema
from fraudguard.data.io import file_md5, write_transactions
from fraudguard.data.simulator import simulate_transactions, simulate_world


@pytest.fixture(scope="module")
def default_frame() -> pd.DataFrame:
    """params.yaml's own world (~230k rows; simulates in well under a second)."""
    return simulate_transactions(load_settings(PROJECT_ROOT / "params.yaml").simulate)


def test_same_seed_and_params_give_byte_identical_parquet(small_settings, tmp_path):
    write_transactions(simulate_transactions(small_settings.simulate), tmp_path / "a.parquet")
    write_transactions(simulate_transactions(small_settings.simulate), tmp_path / "b.parquet")
    assert file_md5(tmp_path / "a.parquet") == file_md5(tmp_path / "b.parquet")


def test_different_seed_gives_different_data(small_settings, tmp_path):
    other = parse_settings(small_params({"simulate": {"seed": small_settings.simulate.seed + 1}}))
    write_transactions(simulate_transactions(small_settings.simulate), tmp_path / "a.parquet")
    write_transactions(simulate_transactions(other.simulate), tmp_path / "b.parquet")
    assert file_md5(tmp_path / "a.parquet") != file_md5(tmp_path / "b.parquet")


def test_transactions_have_raw_schema_sorted_by_time_with_row_number_ids(small_settings):
    frame = simulate_transactions(small_settings.simulate)
    assert list(frame.columns) == list(schema.RAW_COLUMNS)
    assert frame[schema.TX_DATETIME].is_monotonic_increasing
    assert (frame[schema.TRANSACTION_ID].to_numpy() == np.arange(len(frame))).all()
    assert frame[schema.TX_DATETIME].dtype == "datetime64[ns]"
    assert frame[schema.TX_AMOUNT].dtype == "float64"


def test_times_fall_within_the_simulated_days_and_amounts_are_non_negative(small_settings):
    frame = simulate_transactions(small_settings.simulate)
    start = pd.Timestamp(small_settings.simulate.start_date)
    end = start + pd.Timedelta(days=small_settings.simulate.n_days)
    assert frame[schema.TX_DATETIME].min() >= start
    assert frame[schema.TX_DATETIME].max() < end
    assert (frame[schema.TX_AMOUNT] >= 0).all()


def test_default_world_has_handbook_size_and_fraud_rate(default_frame):
    assert 150_000 <= len(default_frame) <= 300_000
    assert 0.003 <= default_frame[schema.TX_FRAUD].mean() <= 0.03


def test_default_world_has_all_three_fraud_scenarios(default_frame):
    counts = default_frame[schema.TX_FRAUD_SCENARIO].value_counts()
    assert {1, 2, 3} <= set(counts.index)
    assert all(counts[s] > 50 for s in (1, 2, 3))


def test_fraud_label_is_one_exactly_when_a_scenario_is_set(default_frame):
    is_fraud = default_frame[schema.TX_FRAUD] == 1
    has_scenario = default_frame[schema.TX_FRAUD_SCENARIO] > 0
    assert (is_fraud == has_scenario).all()


def test_scenario_one_frauds_are_the_large_amounts(default_frame, small_settings):
    s1 = default_frame[default_frame[schema.TX_FRAUD_SCENARIO] == 1]
    assert (s1[schema.TX_AMOUNT] > small_settings.simulate.fraud_amount_threshold).all()


def test_scenario_two_frauds_happen_at_few_terminals(default_frame):
    s2 = default_frame[default_frame[schema.TX_FRAUD_SCENARIO] == 2]
    # Every transaction of a compromised terminal is fraud: many frauds per terminal, few terminals.
    assert s2[schema.TERMINAL_ID].nunique() < len(s2) / 5


def test_scenario_three_amounts_are_inflated_about_fivefold(default_frame):
    genuine = default_frame[default_frame[schema.TX_FRAUD] == 0]
    s3 = default_frame[default_frame[schema.TX_FRAUD_SCENARIO] == 3]
    typical = genuine.groupby(schema.CUSTOMER_ID)[schema.TX_AMOUNT].mean()
    ratio = (s3[schema.TX_AMOUNT] / s3[schema.CUSTOMER_ID].map(typical)).median()
    assert 3.5 < ratio < 6.5


def test_customers_only_use_terminals_within_the_radius(small_settings):
    world = simulate_world(small_settings.simulate)
    tx = world.transactions
    c = world.customers.set_index(schema.CUSTOMER_ID).loc[tx[schema.CUSTOMER_ID]]
    t = world.terminals.set_index(schema.TERMINAL_ID).loc[tx[schema.TERMINAL_ID]]
    dist = np.hypot(c["x_customer_id"].to_numpy() - t["x_terminal_id"].to_numpy(),
                    c["y_customer_id"].to_numpy() - t["y_terminal_id"].to_numpy())
    assert (dist < small_settings.simulate.terminal_radius).all()
