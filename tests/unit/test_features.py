"""Feature engineering and the time-ordered split, on hand-made frames with hand-computed answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from fraudguard.config import FeaturizeSettings
from fraudguard.errors import DataError
from fraudguard.features import (
    compute_features,
    feature_names,
    known_compromised,
    newest_window,
    plan_split,
    recent_traffic,
    split_train_test,
    summarize_split,
)

SETTINGS = FeaturizeSettings(
    windows_days=[1, 7, 30], windows_hours=[1], label_delay_days=7, night_end_hour=6,
    split={"train_days": 10, "delay_gap_days": 7, "test_days": 5}, test_filter="handbook",
)

# 2024-04-01 is a Monday. Hand-computed expectations are in the tests below.
ROWS = [
    # id, datetime,            customer, terminal, amount, fraud
    (0, "2024-04-01 10:00", "C1", "T1", 10.0, 1),
    (1, "2024-04-01 20:00", "C1", "T2", 30.0, 0),
    (2, "2024-04-02 05:00", "C1", "T1", 20.0, 0),
    (3, "2024-04-06 12:00", "C2", "T1", 100.0, 0),
    (4, "2024-04-08 09:00", "C1", "T1", 40.0, 0),
    (5, "2024-04-08 11:00", "C2", "T1", 50.0, 0),
    (6, "2024-04-09 06:00", "C2", "T1", 70.0, 1),
    (7, "2024-04-10 12:00", "C1", "T2", 60.0, 0),
    (8, "2024-04-16 07:00", "C2", "T1", 80.0, 0),
    (9, "2024-04-20 23:00", "C1", "T2", 90.0, 0),
]


def hand_frame(rows=ROWS) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID",
                                        "TX_AMOUNT", "TX_FRAUD"])
    frame["TX_DATETIME"] = pd.to_datetime(frame["TX_DATETIME"])
    # Shuffled on purpose: compute_features must sort by time itself.
    return frame.sample(frac=1.0, random_state=3).reset_index(drop=True)


def by_id(features: pd.DataFrame, tx_id: int) -> pd.Series:
    return features.set_index("TRANSACTION_ID").loc[tx_id]


@pytest.fixture(scope="module")
def hand_features() -> pd.DataFrame:
    return compute_features(hand_frame(), SETTINGS)


def test_output_keeps_raw_columns_adds_all_features_sorted_by_time(hand_features):
    raw = ["TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", "TX_AMOUNT", "TX_FRAUD"]
    assert list(hand_features.columns) == raw + feature_names(SETTINGS)
    assert hand_features["TRANSACTION_ID"].tolist() == list(range(10))
    assert hand_features["TX_DATETIME"].is_monotonic_increasing


def test_feature_names_match_model_features_in_params(small_settings):
    derived = set(feature_names(small_settings.featurize))
    assert set(small_settings.model.features) - {"TX_AMOUNT"} <= derived


def test_no_nan_and_float32_exact(hand_features):
    values = hand_features[feature_names(SETTINGS)]
    assert not values.isna().any().any()
    assert np.array_equal(values.to_numpy(np.float64), values.to_numpy(np.float32).astype(np.float64))


def test_weekend_and_night_flags(hand_features):
    assert hand_features.set_index("TRANSACTION_ID")["TX_DURING_WEEKEND"].to_dict() == {
        i: int(i in (3, 9)) for i in range(10)  # Sat 6th and Sat 20th April
    }
    # hour <= night_end_hour (6): 05:00 and 06:00 are night, 07:00 is not.
    night = hand_features.set_index("TRANSACTION_ID")["TX_DURING_NIGHT"]
    assert night[2] == 1 and night[6] == 1 and night[8] == 0 and night[0] == 0


def test_customer_windows_include_current_transaction(hand_features):
    row2 = by_id(hand_features, 2)  # C1 at 04-02 05:00: 1 day back reaches rows 0, 1 and itself
    assert row2["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 3
    assert row2["CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"] == pytest.approx(20.0)
    row4 = by_id(hand_features, 4)  # C1 at 04-08 09:00: 7 days back (from 04-01 09:00) holds 0, 1, 2, 4
    assert row4["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 1
    assert row4["CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"] == pytest.approx(40.0)
    assert row4["CUSTOMER_ID_NB_TX_7DAY_WINDOW"] == 4
    assert row4["CUSTOMER_ID_AVG_AMOUNT_7DAY_WINDOW"] == pytest.approx(25.0)
    row9 = by_id(hand_features, 9)  # C1 at 04-20 23:00: 7 days back holds only itself; 30 days all 6 of C1
    assert row9["CUSTOMER_ID_NB_TX_7DAY_WINDOW"] == 1
    assert row9["CUSTOMER_ID_NB_TX_30DAY_WINDOW"] == 6
    assert row9["CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW"] == pytest.approx(250.0 / 6)


def test_customer_window_excludes_transaction_exactly_window_old():
    rows = [(0, "2024-04-01 10:00", "C1", "T1", 10.0, 0), (1, "2024-04-02 10:00", "C1", "T1", 30.0, 0)]
    row1 = by_id(compute_features(hand_frame(rows), SETTINGS), 1)
    assert row1["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 1  # window (t - 1 day, t]
    assert row1["CUSTOMER_ID_NB_TX_7DAY_WINDOW"] == 2


def test_terminal_window_is_shifted_by_label_delay(hand_features):
    # T1 at 04-16 07:00: the known window ends at 04-09 07:00.
    row8 = by_id(hand_features, 8)
    assert row8["TERMINAL_ID_NB_TX_1DAY_WINDOW"] == 3  # rows 4, 5, 6 in (04-08 07:00, 04-09 07:00]
    assert row8["TERMINAL_ID_RISK_1DAY_WINDOW"] == pytest.approx(1 / 3)
    assert row8["TERMINAL_ID_NB_TX_7DAY_WINDOW"] == 4  # rows 3, 4, 5, 6
    assert row8["TERMINAL_ID_RISK_7DAY_WINDOW"] == pytest.approx(0.25)
    assert row8["TERMINAL_ID_NB_TX_30DAY_WINDOW"] == 6  # every earlier T1 row: 0, 2, 3, 4, 5, 6
    assert row8["TERMINAL_ID_RISK_30DAY_WINDOW"] == pytest.approx(2 / 6)


def test_terminal_risk_is_zero_when_known_window_is_empty(hand_features):
    row0 = by_id(hand_features, 0)
    assert row0["TERMINAL_ID_NB_TX_30DAY_WINDOW"] == 0
    assert row0["TERMINAL_ID_RISK_30DAY_WINDOW"] == 0.0


def test_fraud_label_inside_label_delay_does_not_affect_risk(hand_features):
    # Row 6 (T1, 04-09 06:00): rows 3, 4, 5 lie in its delay period (04-02 06:00, 04-09 06:00].
    terminal = [c for c in feature_names(SETTINGS) if c.startswith("TERMINAL_ID")]
    flipped = hand_frame()
    flipped.loc[flipped["TRANSACTION_ID"].isin([3, 4, 5]), "TX_FRAUD"] = 1
    after = by_id(compute_features(flipped, SETTINGS), 6)[terminal]
    pd.testing.assert_series_equal(after, by_id(hand_features, 6)[terminal])


def test_fraud_label_outside_label_delay_affects_risk(hand_features):
    # Row 6's known 1-day window (04-01 06:00, 04-02 06:00] holds rows 0 (fraud) and 2.
    assert by_id(hand_features, 6)["TERMINAL_ID_NB_TX_1DAY_WINDOW"] == 2
    assert by_id(hand_features, 6)["TERMINAL_ID_RISK_1DAY_WINDOW"] == pytest.approx(0.5)
    flipped = hand_frame()
    flipped.loc[flipped["TRANSACTION_ID"] == 0, "TX_FRAUD"] = 0
    assert by_id(compute_features(flipped, SETTINGS), 6)["TERMINAL_ID_RISK_1DAY_WINDOW"] == 0.0


def test_label_becomes_known_exactly_label_delay_days_later(hand_features):
    # Row 0's fraud (T1, 04-01 10:00) is unknown to row 4 (04-08 09:00) and known to row 5 (04-08 11:00).
    assert by_id(hand_features, 4)["TERMINAL_ID_NB_TX_30DAY_WINDOW"] == 0
    assert by_id(hand_features, 4)["TERMINAL_ID_RISK_30DAY_WINDOW"] == 0.0
    assert by_id(hand_features, 5)["TERMINAL_ID_NB_TX_1DAY_WINDOW"] == 1
    assert by_id(hand_features, 5)["TERMINAL_ID_RISK_1DAY_WINDOW"] == pytest.approx(1.0)


def test_own_label_never_used_even_without_label_delay():
    rows = [(0, "2024-04-01 10:00", "C1", "T1", 10.0, 1), (1, "2024-04-01 10:00", "C2", "T1", 10.0, 1)]
    no_delay = SETTINGS.model_copy(update={"label_delay_days": 0})
    features = compute_features(hand_frame(rows), no_delay)
    assert by_id(features, 0)["TERMINAL_ID_NB_TX_1DAY_WINDOW"] == 0
    assert by_id(features, 1)["TERMINAL_ID_NB_TX_1DAY_WINDOW"] == 1  # the earlier row only, not itself


def random_transactions(n: int, days: int, customers: int, seed: int) -> pd.DataFrame:
    """n raw transactions spread uniformly over `days` days, 80 terminals, ~10 % fraud."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "TRANSACTION_ID": np.arange(n),
        "TX_DATETIME": np.datetime64("2024-04-01") + rng.integers(0, days * 86400, n).astype("timedelta64[s]"),
        "CUSTOMER_ID": rng.integers(0, customers, n), "TERMINAL_ID": rng.integers(0, 80, n),
        "TX_AMOUNT": rng.gamma(2.0, 30.0, n).round(2), "TX_FRAUD": (rng.random(n) < 0.1).astype(int),
    })


def test_matches_handbook_pandas_rolling_on_random_data():
    frame = random_transactions(3000, days=60, customers=50, seed=0)
    ours = compute_features(frame, SETTINGS).set_index("TRANSACTION_ID")
    delay = SETTINGS.label_delay_days
    for _, group in frame.sort_values("TX_DATETIME", kind="mergesort").groupby("CUSTOMER_ID"):
        amounts = group.set_index("TX_DATETIME")["TX_AMOUNT"]
        for w in SETTINGS.windows_days:
            count, total = amounts.rolling(f"{w}D").count(), amounts.rolling(f"{w}D").sum()
            np.testing.assert_array_equal(ours.loc[group["TRANSACTION_ID"], f"CUSTOMER_ID_NB_TX_{w}DAY_WINDOW"],
                                          count.to_numpy())
            np.testing.assert_allclose(ours.loc[group["TRANSACTION_ID"], f"CUSTOMER_ID_AVG_AMOUNT_{w}DAY_WINDOW"],
                                       (total / count).to_numpy(), rtol=1e-6)
    for _, group in frame.sort_values("TX_DATETIME", kind="mergesort").groupby("TERMINAL_ID"):
        fraud = group.set_index("TX_DATETIME")["TX_FRAUD"]
        n_delay, f_delay = fraud.rolling(f"{delay}D").count(), fraud.rolling(f"{delay}D").sum()
        for w in SETTINGS.windows_days:
            n_all, f_all = fraud.rolling(f"{delay + w}D").count(), fraud.rolling(f"{delay + w}D").sum()
            count = (n_all - n_delay).to_numpy()
            risk = ((f_all - f_delay) / (n_all - n_delay)).fillna(0).to_numpy()
            np.testing.assert_array_equal(ours.loc[group["TRANSACTION_ID"], f"TERMINAL_ID_NB_TX_{w}DAY_WINDOW"], count)
            np.testing.assert_allclose(ours.loc[group["TRANSACTION_ID"], f"TERMINAL_ID_RISK_{w}DAY_WINDOW"],
                                       risk, rtol=1e-6, atol=1e-7)


def test_hour_windows_match_pandas_rolling_count_and_sum_on_dense_random_data():
    frame = random_transactions(2000, days=2, customers=20, seed=1)
    settings = SETTINGS.model_copy(update={"windows_hours": [1, 3]})
    ours = compute_features(frame, settings).set_index("TRANSACTION_ID")
    for _, group in frame.sort_values(["TX_DATETIME", "TRANSACTION_ID"], kind="mergesort").groupby("CUSTOMER_ID"):
        amounts = group.set_index("TX_DATETIME")["TX_AMOUNT"]
        for h in settings.windows_hours:
            count, total = amounts.rolling(f"{h}h").count(), amounts.rolling(f"{h}h").sum()
            assert (count > 1).any()  # the data is dense enough for the windows to hold several payments
            np.testing.assert_array_equal(ours.loc[group["TRANSACTION_ID"], f"CUSTOMER_ID_NB_TX_{h}HOUR_WINDOW"],
                                          count.to_numpy())
            np.testing.assert_allclose(ours.loc[group["TRANSACTION_ID"], f"CUSTOMER_ID_SPEND_{h}HOUR_WINDOW"],
                                       total.to_numpy(), rtol=1e-6)


def test_missing_column_raises_data_error_naming_it():
    with pytest.raises(DataError, match="TERMINAL_ID"):
        compute_features(hand_frame().drop(columns=["TERMINAL_ID"]), SETTINGS)


def test_missing_amount_raises_data_error_naming_transaction():
    frame = hand_frame()
    frame.loc[frame["TRANSACTION_ID"] == 7, "TX_AMOUNT"] = np.nan
    with pytest.raises(DataError, match=r"TX_AMOUNT.*TRANSACTION_ID=7"):
        compute_features(frame, SETTINGS)


# --- split -------------------------------------------------------------------------------------------
# SPLIT: 1-day window + 3-day label delay = 4-day warm-up. On daily_frame's 20 days (2024-04-01..20, day
# indices 0..19), counted back from the newest day: test days 15..19, gap 12..14, train 4..11, warm-up 0..3.

CUSTOMERS = ("good", "warm", "train", "gap", "late")
FRAUD_DAYS = {"warm": [2], "train": [6], "gap": [13], "late": [17]}
START = pd.Timestamp("2024-04-01")


def daily_frame(n_days: int = 20, fraud_days: dict[str, list[int]] | None = None) -> pd.DataFrame:
    """One noon transaction a day per customer; each but `good` has a fraud on the day its name says."""
    fraud_days = fraud_days if fraud_days is not None else FRAUD_DAYS
    rows = []
    for day in range(n_days):
        for customer in CUSTOMERS:
            rows.append({
                "TRANSACTION_ID": len(rows),
                "TX_DATETIME": START + pd.Timedelta(hours=12) + pd.Timedelta(days=day),
                "CUSTOMER_ID": customer, "TERMINAL_ID": "T1", "TX_AMOUNT": 10.0,
                "TX_FRAUD": int(day in fraud_days.get(customer, [])),
            })
    return pd.DataFrame(rows)


def split_settings(test_filter: str = "handbook", **split) -> FeaturizeSettings:
    split = split or {"train_days": 8, "delay_gap_days": 3, "test_days": 5}
    return FeaturizeSettings(windows_days=[1], label_delay_days=3, night_end_hour=6, split=split,
                             test_filter=test_filter)


SPLIT = split_settings()
DATES = {"train_start": "2024-04-06", "train_end": "2024-04-10", "test_start": "2024-04-14",
         "test_end": "2024-04-15"}


def days_of(frame: pd.DataFrame, customer: str | None = None) -> list[int]:
    if customer is not None:
        frame = frame[frame["CUSTOMER_ID"] == customer]
    return sorted(set((frame["TX_DATETIME"].dt.normalize() - START).dt.days))


def test_split_counts_periods_back_from_the_newest_day():
    train, test = split_train_test(daily_frame(), SPLIT)
    assert days_of(train) == list(range(4, 12))
    assert days_of(test) == list(range(15, 20))
    assert len(train) == 8 * len(CUSTOMERS)


def test_split_without_train_days_trains_on_every_day_after_the_warm_up():
    train, _ = split_train_test(daily_frame(), split_settings(train_days=None, delay_gap_days=3, test_days=5))
    assert days_of(train) == list(range(4, 12))
    train, _ = split_train_test(daily_frame(n_days=30), split_settings(train_days=None, delay_gap_days=3,
                                                                        test_days=5))
    assert days_of(train) == list(range(4, 22))


def test_split_reaching_into_the_feature_warm_up_is_refused_naming_the_dates():
    with pytest.raises(DataError, match=r"4-day feature warm-up.*2024-04-01\.\.2024-04-04.*At most 8 training day"):
        split_train_test(daily_frame(), split_settings(train_days=9, delay_gap_days=3, test_days=5))


def test_split_on_too_short_data_says_how_many_days_it_needs():
    with pytest.raises(DataError, match=r"No training day fits: it needs 13 days"):
        split_train_test(daily_frame(n_days=12), SPLIT)


def test_split_by_explicit_dates_includes_first_and_last_days():
    train, test = split_train_test(daily_frame(), split_settings(**DATES))
    assert days_of(train) == [5, 6, 7, 8, 9]
    assert days_of(test) == [13, 14]


def test_split_dates_inside_the_warm_up_are_refused_naming_the_first_allowed_day():
    with pytest.raises(DataError, match=r"train_start 2024-04-03 is inside the feature warm-up.*2024-04-05 or later"):
        split_train_test(daily_frame(), split_settings(**{**DATES, "train_start": "2024-04-03"}))


def test_split_with_an_empty_test_period_is_an_error_naming_the_dates():
    dates = {**DATES, "test_start": "2024-05-01", "test_end": "2024-05-03"}
    with pytest.raises(DataError, match=r"test period holds no transaction.*test 2024-05-01\.\.2024-05-03"):
        split_train_test(daily_frame(), split_settings(**dates))


def test_split_has_no_overlap():
    train, test = split_train_test(daily_frame(), SPLIT)
    assert not set(train["TRANSACTION_ID"]) & set(test["TRANSACTION_ID"])
    assert train["TX_DATETIME"].max() < test["TX_DATETIME"].min()


@pytest.mark.parametrize("split, problem", [
    ({"train_days": 8, "delay_gap_days": 3, "test_days": 5, "train_start": "2024-04-06"}, "either dates or periods"),
    ({"train_start": "2024-04-06", "train_end": "2024-04-10"}, "needs all of"),
    ({**DATES, "test_start": "2024-04-09"}, "train_start <= train_end < test_start <= test_end"),
    ({"train_days": 8}, "needs delay_gap_days and test_days"),
    ({"train_days": 0, "delay_gap_days": 3, "test_days": 5}, "greater than 0"),
])
def test_split_settings_are_validated_with_clear_errors(split, problem):
    with pytest.raises(ValidationError, match=problem):
        split_settings(**split)


def test_test_filter_must_be_named():
    with pytest.raises(ValidationError, match="handbook"):
        split_settings(test_filter="lenient")


def test_handbook_filter_drops_training_frauds_and_matured_later_ones_only():
    _, test = split_train_test(daily_frame(), SPLIT)
    assert days_of(test, "good") == list(range(15, 20))
    assert days_of(test, "warm") == list(range(15, 20))   # its fraud predates the training period
    assert days_of(test, "train") == []                   # fraud of the training period: known at once
    assert days_of(test, "gap") == [15, 16]               # day-13 fraud, label known from day 17
    assert days_of(test, "late") == [15, 16, 17, 18, 19]  # day-17 fraud, label not matured by day 19


def test_strict_filter_also_drops_cards_defrauded_before_the_training_period():
    _, test = split_train_test(daily_frame(), split_settings(test_filter="strict"))
    assert days_of(test, "warm") == []
    assert days_of(test, "train") == []
    assert days_of(test, "gap") == [15, 16]
    assert days_of(test, "good") == list(range(15, 20))


def handbook_test_set(frame: pd.DataFrame, start_training: pd.Timestamp, delta_train: int, delta_delay: int,
                      delta_test: int) -> pd.DataFrame:
    """The Fraud-Detection-Handbook's get_train_test_set test part (ch. 5.2), transcribed."""
    frame = frame.assign(TX_TIME_DAYS=(frame["TX_DATETIME"].dt.normalize() - START).dt.days)
    train = frame[(frame.TX_DATETIME >= start_training)
                  & (frame.TX_DATETIME < start_training + pd.Timedelta(days=delta_train))]
    known = set(train[train.TX_FRAUD == 1].CUSTOMER_ID)
    first_day = train.TX_TIME_DAYS.min()
    parts = []
    for day in range(delta_test):
        test_day = frame[frame.TX_TIME_DAYS == first_day + delta_train + delta_delay + day]
        delay_day = frame[frame.TX_TIME_DAYS == first_day + delta_train + day - 1]
        known |= set(delay_day[delay_day.TX_FRAUD == 1].CUSTOMER_ID)
        parts.append(test_day[~test_day.CUSTOMER_ID.isin(known)])
    return pd.concat(parts)


def test_handbook_filter_matches_the_handbooks_own_loop_on_random_data():
    rng = np.random.default_rng(5)
    n = 3000
    frame = pd.DataFrame({
        "TRANSACTION_ID": np.arange(n),
        "TX_DATETIME": START + pd.to_timedelta(np.sort(rng.uniform(0, 40, n)), unit="D"),
        "CUSTOMER_ID": rng.integers(0, 60, n), "TERMINAL_ID": rng.integers(0, 10, n),
        "TX_AMOUNT": rng.uniform(1, 100, n), "TX_FRAUD": (rng.random(n) < 0.02).astype(int),
    })
    settings = FeaturizeSettings(windows_days=[1, 7], label_delay_days=7, night_end_hour=6, test_filter="handbook",
                                 split={"train_days": 8, "delay_gap_days": 7, "test_days": 11})
    _, test = split_train_test(frame, settings)
    expected = handbook_test_set(frame, START + pd.Timedelta(days=14), 8, 7, 11)
    assert len(expected) < len(frame[frame.TX_DATETIME >= START + pd.Timedelta(days=29)])  # it did drop rows
    assert sorted(test["TRANSACTION_ID"]) == sorted(expected["TRANSACTION_ID"])


def test_known_compromised_is_a_mask_over_the_test_rows():
    frame = daily_frame()
    plan = plan_split(frame, SPLIT)
    test = frame[frame["TX_DATETIME"] >= plan.test_start]
    mask = known_compromised(frame, test, plan, SPLIT)
    assert mask.shape == (len(test),) and mask.sum() == 5 + 3


def test_recent_traffic_is_every_row_after_the_training_period_unfiltered():
    frame = daily_frame()
    recent = recent_traffic(frame, plan_split(frame, SPLIT))
    assert days_of(recent) == list(range(12, 20))
    assert len(recent) == 8 * len(CUSTOMERS)


def test_split_summary_names_the_dates_of_every_period():
    frame = daily_frame()
    train, test = split_train_test(frame, SPLIT)
    summary = summarize_split(train, test, frame, SPLIT)
    assert (summary["warmup"]["first_day"], summary["warmup"]["last_day"]) == ("2024-04-01", "2024-04-04")
    assert (summary["train"]["first_day"], summary["train"]["last_day"]) == ("2024-04-05", "2024-04-12")
    assert (summary["gap"]["first_day"], summary["gap"]["last_day"]) == ("2024-04-13", "2024-04-15")
    assert (summary["test"]["first_day"], summary["test"]["last_day"]) == ("2024-04-16", "2024-04-20")
    assert summary["test"]["rows_dropped_known_compromised"] == 8
    assert summary["test_filter"] == "handbook" and summary["warmup_days"] == 4


def test_plan_split_uses_midnights_of_the_data():
    plan = plan_split(daily_frame(), SPLIT)
    assert plan.data_start == START and plan.warmup_end == START + pd.Timedelta(days=4)
    assert plan.test_end == plan.data_end == pd.Timestamp("2024-04-21")


def test_newest_window_takes_last_calendar_days():
    window = newest_window(daily_frame(), days=4)
    assert sorted(window["TX_DATETIME"].dt.day.unique()) == [17, 18, 19, 20]
    assert len(window) == 4 * len(CUSTOMERS)


def test_newest_window_rejects_non_positive_days():
    with pytest.raises(ValueError, match="positive"):
        newest_window(daily_frame(), days=0)


def test_featurize_settings_reject_repeated_or_non_positive_windows():
    for windows in ([7, 7], [0, 7]):
        with pytest.raises(ValidationError, match="distinct positive"):
            FeaturizeSettings(**{**SETTINGS.model_dump(), "windows_days": windows})


def test_a_cards_window_sums_do_not_carry_the_rounding_of_the_rest_of_the_table():
    # One running total over the whole table: behind 200,000 payments of 1,000,000 a card's 0.01 payment averaged
    # 0.01 +- 3e-5 (the total's rounding); the gateway sums the card's own history and gets 0.01.
    from fraudguard.features import transaction_features

    n = 200_000
    big = pd.DataFrame({"TRANSACTION_ID": np.arange(n), "TX_DATETIME": pd.Timestamp("2024-04-01")
                        + pd.to_timedelta(np.arange(n), unit="s"), "CUSTOMER_ID": np.arange(n) % 100,
                        "TERMINAL_ID": 1, "TX_AMOUNT": 1_000_000.0, "TX_FRAUD": 0})
    small = pd.DataFrame({"TRANSACTION_ID": [n, n + 1], "CUSTOMER_ID": [10**6, 10**6], "TERMINAL_ID": [2, 2],
                          "TX_DATETIME": [pd.Timestamp("2024-04-03 12:00"), pd.Timestamp("2024-04-03 12:10")],
                          "TX_AMOUNT": [0.01, 0.03], "TX_FRAUD": [0, 0]})
    offline = compute_features(pd.concat([big, small], ignore_index=True), SETTINGS).set_index("TRANSACTION_ID")
    first = small.iloc[0]
    online = transaction_features(int(small["TX_DATETIME"].iloc[1].value), 2, 12, 0.03,
                                  np.array([first.TX_DATETIME.value]), np.array([0.01]), np.array([], dtype=np.int64),
                                  np.array([]), SETTINGS)
    for name in ("CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW", "CUSTOMER_ID_SPEND_1HOUR_WINDOW"):
        assert offline.loc[n + 1, name] == np.float32(online[name]), name
    assert offline.loc[n, "CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"] == np.float32(0.01)
