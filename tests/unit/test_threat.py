"""The threat model: mask, standardized bounds, projection, and derived features following the amount."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fraudguard.config import parse_settings
from fraudguard.errors import ConfigError
from fraudguard.model import Standardizer
from fraudguard.threat import build_threat_model

from conftest import small_params

AMOUNT, NIGHT = "TX_AMOUNT", "TX_DURING_NIGHT"
AVG_1, COUNT_1 = "CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW", "CUSTOMER_ID_NB_TX_1DAY_WINDOW"


def _frame(features: list[str], n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(40.0, 15.0, size=(n, len(features))), columns=features)
    for name in features:
        if "NB_TX" in name:
            frame[name] = rng.integers(1, 9, n)
        elif name.startswith("TX_DURING"):
            frame[name] = rng.integers(0, 2, n)
    return frame


@pytest.fixture
def setup(small_settings):
    features = small_settings.model.features
    standardizer = Standardizer.fit(_frame(features), features)
    threat = build_threat_model(small_settings.threat_model, standardizer)
    return features, standardizer, threat


def test_mask_marks_exactly_the_controlled_features(setup, small_settings):
    features, _, threat = setup
    controlled = set(small_settings.threat_model.controlled_features)
    assert threat.mask.dtype == np.float32
    assert {f for f, m in zip(features, threat.mask) if m == 1.0} == controlled
    assert set(threat.controlled) == controlled


def test_bounds_are_the_real_unit_bounds_standardized(setup, small_settings):
    features, standardizer, threat = setup
    i = features.index(AMOUNT)
    bounds = small_settings.threat_model.controlled_features[AMOUNT]
    assert threat.lower[i] == pytest.approx((bounds.min - standardizer.mean[i]) / standardizer.std[i], rel=1e-5)
    assert threat.upper[i] == pytest.approx((bounds.max - standardizer.mean[i]) / standardizer.std[i], rel=1e-5)


def test_project_keeps_out_of_reach_features_exactly(setup):
    features, standardizer, threat = setup
    x = standardizer.transform(_frame(features, n=50, seed=1))
    candidate = x + np.random.default_rng(2).normal(0, 3, size=x.shape).astype(np.float32)
    projected = threat.project(candidate, x, eps=0.5)
    untouched = threat.moved_mask == 0
    np.testing.assert_array_equal(projected[:, untouched], x[:, untouched])


def test_project_clips_controlled_features_to_the_eps_ball_and_bounds(setup):
    features, standardizer, threat = setup
    x = standardizer.transform(_frame(features, n=200, seed=3))
    candidate = x + np.random.default_rng(4).normal(0, 3, size=x.shape).astype(np.float32)
    projected = threat.project(candidate, x, eps=0.5)
    c = threat.mask == 1
    assert np.all(np.abs(projected[:, c] - x[:, c]) <= 0.5 + 1e-6)
    assert np.all(projected[:, c] >= np.minimum(threat.lower, x)[:, c] - 1e-6)
    assert np.all(projected[:, c] <= np.maximum(threat.upper, x)[:, c] + 1e-6)
    # The night flag's valid range [0, 1] binds for rows at 1 pushed upwards.
    night = features.index(NIGHT)
    assert projected[:, night].max() == pytest.approx(threat.upper[night])


def test_project_never_drags_an_original_outside_the_bounds_further_than_eps(setup):
    features, standardizer, threat = setup
    i = features.index(AMOUNT)
    x = standardizer.transform(_frame(features, n=4, seed=5))
    x[:, i] = threat.upper[i] + 3.0  # an amount above the configured maximum really happened
    candidate = x.copy()
    candidate[:, i] -= 10.0
    projected = threat.project(candidate, x, eps=0.5)
    np.testing.assert_allclose(projected[:, i], x[:, i] - 0.5, rtol=0, atol=1e-5)


def test_derived_average_follows_the_amount_divided_by_the_window_count(setup):
    features, standardizer, threat = setup
    frame = _frame(features, n=100, seed=6)
    x = standardizer.transform(frame)
    candidate = x.copy()
    candidate[:, features.index(AMOUNT)] += 0.4
    projected = threat.project(candidate, x, eps=0.5)
    real_before, real_after = standardizer.inverse_transform(x), standardizer.inverse_transform(projected)
    amount_change = real_after[:, features.index(AMOUNT)] - real_before[:, features.index(AMOUNT)]
    avg_change = real_after[:, features.index(AVG_1)] - real_before[:, features.index(AVG_1)]
    np.testing.assert_allclose(avg_change, amount_change / frame[COUNT_1].to_numpy(), rtol=1e-4, atol=1e-4)


def test_project_with_zero_eps_returns_the_original(setup):
    features, standardizer, threat = setup
    x = standardizer.transform(_frame(features, n=10, seed=7))
    np.testing.assert_array_equal(threat.project(x + 1.0, x, eps=0.0), x)


def test_a_controlled_feature_the_model_lacks_is_a_config_error(small_settings):
    features = [f for f in small_settings.model.features if f != NIGHT]
    standardizer = Standardizer.fit(_frame(features), features)
    with pytest.raises(ConfigError, match=NIGHT):
        build_threat_model(small_settings.threat_model, standardizer)


def test_a_derived_feature_must_follow_a_controlled_one():
    raw = small_params({"threat_model": {"derived_features": {AVG_1: {"source": "TERMINAL_ID_RISK_1DAY_WINDOW",
                                                                       "count": COUNT_1}}}})
    with pytest.raises(ConfigError, match="not a controlled feature"):
        parse_settings(raw)


# ------------------------------------------------------------------------------ terminal-risk dilution

RISK_7, COUNT_7, FRAUDS_7 = "TERMINAL_ID_RISK_7DAY_WINDOW", "TERMINAL_ID_NB_TX_7DAY_WINDOW", \
    "TERMINAL_ID_NB_FRAUD_7DAY_WINDOW"


def _terminal_rows() -> pd.DataFrame:
    return pd.DataFrame({COUNT_7: np.array([10, 4, 0], dtype=np.int32), FRAUDS_7: np.array([5, 0, 0], dtype=np.int32),
                         RISK_7: np.array([0.5, 0.0, 0.0], dtype=np.float32),
                         "TERMINAL_ID_RISK_1DAY_WINDOW": np.float32(0), "TERMINAL_ID_NB_TX_1DAY_WINDOW": np.int32(0),
                         "TERMINAL_ID_RISK_30DAY_WINDOW": np.float32(0), "TERMINAL_ID_NB_TX_30DAY_WINDOW": np.int32(0)})


def test_dilution_lowers_the_risk_to_the_known_frauds_over_more_payments_and_keeps_the_counts(small_settings):
    from fraudguard.threat import dilute_terminal_risk

    rows = _terminal_rows()
    diluted = dilute_terminal_risk(rows, small_settings.threat_model.dilution, np.array([1.5, 2.0, 3.0]))
    assert diluted[COUNT_7].tolist() == [25, 12, 0]
    np.testing.assert_allclose(diluted[RISK_7], [5 / 25, 0.0, 0.0], rtol=1e-6)
    assert diluted[FRAUDS_7].tolist() == rows[FRAUDS_7].tolist()   # the known frauds cannot be diluted
    assert diluted.dtypes.equals(rows.dtypes)
    pd.testing.assert_frame_equal(dilute_terminal_risk(rows, small_settings.threat_model.dilution, 0.0), rows)


def test_only_rows_at_terminals_with_known_frauds_are_at_risk_of_dilution(small_settings):
    from fraudguard.threat import at_risky_terminal

    assert at_risky_terminal(_terminal_rows(), small_settings.threat_model.dilution).tolist() == [True, False, False]


def test_dilution_of_a_frame_without_the_risk_features_is_a_config_error(small_settings):
    from fraudguard.threat import dilute_terminal_risk

    with pytest.raises(ConfigError, match="threat_model.dilution.risk_features"):
        dilute_terminal_risk(_terminal_rows().drop(columns=[COUNT_7]), small_settings.threat_model.dilution, 1.0)


def test_dilution_naming_a_feature_the_model_lacks_is_refused():
    params = small_params({"threat_model": {"dilution": {"risk_features": {RISK_7: "NO_SUCH_COUNT"}}}})
    with pytest.raises(ConfigError, match="threat_model.dilution.risk_features names features"):
        parse_settings(params)


def test_training_on_diluted_copies_needs_dilution_in_the_threat_model():
    params = small_params({"threat_model": {"dilution": None}})
    with pytest.raises(ConfigError, match="train.dilution.enabled needs threat_model.dilution"):
        parse_settings(params)
