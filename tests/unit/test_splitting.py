"""Split payments (fraudguard.splitting): the pieces' features derived from the whole payment's row equal
compute_features on the table where the payment is replaced by its pieces, and the training copies."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from conftest import small_params
from fraudguard.config import FeaturizeSettings, parse_settings
from fraudguard.errors import ConfigError
from fraudguard.features import compute_features, feature_names
from fraudguard.splitting import (
    SPLIT_OF,
    SPLIT_PIECE,
    piece_cents,
    piece_features,
    split_into_payments,
    split_payment_training_rows,
)

SETTINGS = FeaturizeSettings(
    windows_days=[1, 7], windows_hours=[1], label_delay_days=3, night_end_hour=6,
    split={"train_days": 5, "delay_gap_days": 3, "test_days": 3}, test_filter="handbook",
)


def _history(seed: int = 0, n: int = 400) -> pd.DataFrame:
    """Cards paying every few hours (never twice within 20 minutes), so splits 60 s apart meet no neighbour."""
    rng = np.random.default_rng(seed)
    frames = []
    for customer in range(8):
        gaps = rng.integers(20 * 60, 8 * 3600, n // 8)
        frames.append(pd.DataFrame({
            "CUSTOMER_ID": customer,
            "TX_DATETIME": np.datetime64("2024-04-01") + np.cumsum(gaps).astype("timedelta64[s]"),
            "TERMINAL_ID": rng.integers(0, 30, n // 8),
            "TX_AMOUNT": rng.gamma(2.0, 30.0, n // 8).round(2),
            "TX_FRAUD": (rng.random(n // 8) < 0.2).astype(int),
        }))
    frame = pd.concat(frames, ignore_index=True)
    frame.insert(0, "TRANSACTION_ID", np.arange(len(frame), dtype=np.int64))
    return frame


def test_piece_cents_sum_to_the_amount_and_differ_by_at_most_a_cent():
    cents = piece_cents(np.array([100.01, 0.05, 7.0]), 3)
    assert cents.sum(axis=1).tolist() == [10001, 5, 700]
    assert (cents.max(axis=1) - cents.min(axis=1) <= 1).all()


@pytest.mark.parametrize("k", [2, 3, 10])
def test_piece_features_equal_compute_features_on_the_split_table(k):
    history = _history()
    whole = compute_features(history, SETTINGS)
    chosen = whole[(whole["TX_FRAUD"] == 1) & (whole["TX_DATETIME"] > whole["TX_DATETIME"].min() + pd.Timedelta(days=8))]
    ids = chosen["TRANSACTION_ID"].to_numpy()[::7]
    derived = piece_features(whole[whole["TRANSACTION_ID"].isin(ids)], k, 60.0, SETTINGS)
    # One split at a time, as piece_features assumes (every other payment whole).
    for original in ids:
        table, pieces = split_into_payments(history, np.array([original]), k, 60.0, 10**6)
        exact = compute_features(table, SETTINGS)
        exact = exact[exact["TRANSACTION_ID"].isin(pieces["TRANSACTION_ID"])].sort_values("TX_DATETIME")
        ours = derived[derived[SPLIT_OF] == original].sort_values(SPLIT_PIECE)
        assert len(ours) == k
        np.testing.assert_allclose(ours["TX_AMOUNT"], exact["TX_AMOUNT"])
        assert (ours["TX_DATETIME"].to_numpy() == exact["TX_DATETIME"].to_numpy()).all()
        for name in feature_names(SETTINGS):
            np.testing.assert_allclose(ours[name].to_numpy(dtype=float), exact[name].to_numpy(dtype=float),
                                       rtol=1e-5, atol=1e-4, err_msg=f"{name} of fraud {original}")


def test_the_last_piece_of_a_split_holds_the_whole_amount_in_its_hour_spend():
    whole = compute_features(_history(), SETTINGS)
    row = whole[whole["TX_FRAUD"] == 1].iloc[[10]]
    last = piece_features(row, 3, 60.0, SETTINGS, pieces=[2]).iloc[0]
    assert last["CUSTOMER_ID_NB_TX_1HOUR_WINDOW"] == row["CUSTOMER_ID_NB_TX_1HOUR_WINDOW"].iloc[0] + 2
    assert last["CUSTOMER_ID_SPEND_1HOUR_WINDOW"] == pytest.approx(row["CUSTOMER_ID_SPEND_1HOUR_WINDOW"].iloc[0], abs=1e-3)
    assert last["TX_AMOUNT"] == pytest.approx(row["TX_AMOUNT"].iloc[0] / 3, abs=0.01)


def test_piece_features_refuse_a_piece_outside_the_split():
    whole = compute_features(_history(), SETTINGS)
    with pytest.raises(ValueError, match="must be positions in 0..2"):
        piece_features(whole.iloc[:2], 3, 60.0, SETTINGS, pieces=[3])


def test_training_copies_are_last_pieces_of_every_fraud_per_k_and_one_per_legitimate_row():
    settings = parse_settings(small_params({"featurize": {"windows_days": [1, 7], "windows_hours": [1]},
                                            "train": {"split_payments": {"enabled": True, "splits": [2, 3],
                                                                         "copies": 2, "legit_splits": [2, 10]}}}))
    fit = compute_features(_history(), settings.featurize)
    copies = split_payment_training_rows(fit, settings.train.split_payments, settings.threat_model.split_payments,
                                         settings.featurize, settings.train.seed)
    n_frauds = int(fit["TX_FRAUD"].sum())
    frauds, legit = copies[copies["TX_FRAUD"] == 1], copies[copies["TX_FRAUD"] == 0]
    assert len(frauds) == n_frauds * 2 * 2 and len(legit) == len(fit) - n_frauds
    assert list(copies.columns) == list(fit.columns)
    # Last pieces: the hour count grew by k - 1 over the whole payment's (no other payment within 20 minutes).
    grown = lambda rows: set(rows["CUSTOMER_ID_NB_TX_1HOUR_WINDOW"].to_numpy()  # noqa: E731
                             - fit.set_index("TRANSACTION_ID").loc[rows["TRANSACTION_ID"],
                                                                   "CUSTOMER_ID_NB_TX_1HOUR_WINDOW"].to_numpy())
    assert grown(frauds) == {1, 2} and grown(legit) == {1, 9}
    off = parse_settings(small_params({"train": {"split_payments": {"enabled": False}}}))
    assert split_payment_training_rows(fit, off.train.split_payments, off.threat_model.split_payments,
                                       off.featurize, off.train.seed).empty


def test_split_counts_beyond_the_threat_model_are_refused():
    with pytest.raises(ConfigError, match="exceed.*max_splits 10"):
        parse_settings(small_params({"gates": {"robustness": {"split_payments": {"splits": 12}}}}))
    with pytest.raises(ConfigError, match="need.*threat_model.split_payments"):
        parse_settings(small_params({"threat_model": {"split_payments": None}}))
