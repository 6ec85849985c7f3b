"""The red-team suite's pure parts on tiny in-memory data: how frauds are split, how the backdoor trigger is
applied, the BoundaryAttack wrapper's decision and feature embedding, and the settings it refuses."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import small_params
from fraudguard.config import parse_settings
from fraudguard.errors import ConfigError
from fraudguard.redteam.backdoor import with_trigger
from fraudguard.redteam.boundary import _ControlledOnly
from fraudguard.redteam.split_payments import split_into_payments


def _transactions() -> pd.DataFrame:
    return pd.DataFrame({
        "TRANSACTION_ID": np.array([1, 2, 3], dtype=np.int64),
        "TX_DATETIME": pd.to_datetime(["2024-05-01 10:15:30", "2024-05-01 11:00:00", "2024-05-02 23:59:00"]),
        "CUSTOMER_ID": np.array([7, 7, 8], dtype=np.int64),
        "TERMINAL_ID": np.array([3, 4, 3], dtype=np.int64),
        "TX_AMOUNT": [100.01, 20.0, 0.05],
        "TX_FRAUD": np.array([1, 0, 1], dtype=np.int64),
    })


def test_split_payments_pieces_sum_to_the_fraud_in_cents_at_its_terminal():
    out, pieces = split_into_payments(_transactions(), np.array([1, 3]), k=3, interval_s=60, first_new_id=100)
    assert len(out) == 3 - 2 + 6
    for original, total in ((1, 10001), (3, 5)):
        ids = pieces.loc[pieces["original"] == original, "TRANSACTION_ID"]
        rows = out[out["TRANSACTION_ID"].isin(ids)].sort_values("TX_DATETIME")
        assert len(rows) == 3
        assert round(rows["TX_AMOUNT"].sum() * 100) == total
        assert rows["TX_AMOUNT"].max() - rows["TX_AMOUNT"].min() <= 0.01 + 1e-9
        assert (rows["TX_DATETIME"].diff().dropna() == pd.Timedelta(seconds=60)).all()
        assert rows["TRANSACTION_ID"].iloc[0] == original  # the first piece keeps the fraud's id and time
        assert (rows["TERMINAL_ID"] == rows["TERMINAL_ID"].iloc[0]).all() and (rows["TX_FRAUD"] == 1).all()
    assert out["TRANSACTION_ID"].is_unique


def test_backdoor_trigger_sets_cents_and_hour_keeping_the_day_and_minute():
    rows = with_trigger(_transactions(), 0.37, (1, 3), np.array([0, 1, 1]))
    assert np.allclose(rows["TX_AMOUNT"], [100.37, 20.37, 0.37])
    assert list(rows["TX_DATETIME"].dt.hour) == [1, 2, 2]
    assert list(rows["TX_DATETIME"].dt.minute) == [15, 0, 59]
    assert (rows["TX_DATETIME"].dt.normalize() == _transactions()["TX_DATETIME"].dt.normalize()).all()


def test_boundary_wrapper_decides_at_the_threshold_and_moves_only_controlled_and_derived_features():
    from fraudguard.model import FraudMLP, Standardizer
    from fraudguard.threat import build_threat_model

    settings = parse_settings(small_params())
    features = settings.model.features
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(5.0, 2.0, size=(200, len(features))), columns=features)
    standardizer = Standardizer.fit(frame, features)
    threat = build_threat_model(settings.threat_model, standardizer)
    torch.manual_seed(0)
    module = FraudMLP(len(features), (8,), 0.0).eval()
    x0 = standardizer.transform(frame.iloc[:1])[0]
    controlled = np.flatnonzero(threat.mask > 0)
    with torch.no_grad():
        p0 = float(torch.softmax(module(torch.from_numpy(x0[None, :])), 1)[0, 1])
        for threshold, flagged in ((p0 - 1e-3, 1), (p0 + 1e-3, 0)):
            wrapper = _ControlledOnly(module, x0, threat, threshold)
            assert int(wrapper(torch.from_numpy(x0[controlled][None, :])).argmax(1)) == flagged
        # Moving the amount moves exactly what threat.project moves with it.
        z = x0[controlled].copy()
        amount = list(threat.features).index("TX_AMOUNT")
        z[list(controlled).index(amount)] += 0.5
        x_moved = x0.copy()
        x_moved[amount] += 0.5
        expected = threat.project(x_moved[None, :], x0[None, :], 1.0)
        wrapper = _ControlledOnly(module, x0, threat, 0.5)
        assert torch.allclose(wrapper(torch.from_numpy(z[None, :]))[:, 1] + wrapper.offset,
                              module(torch.from_numpy(expected))[:, 1], atol=1e-5)


def test_redteam_settings_refuse_a_gated_split_count_that_is_not_measured():
    raw = small_params({"redteam": {"split_payments": {"splits": [2, 10], "gated_splits": 3}}})
    with pytest.raises(ConfigError, match="gated_splits 3 is not one of splits"):
        parse_settings(raw)
