"""Integrated-gradients attributions (Captum, for real) of a small FraudMLP whose weights are set by hand, so
which feature drives a flag is known: the amount (attacker-controlled) or the terminal risk (not)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from fraudguard.explanations import compare_controlled_attribution, controlled_share, explain_standardized
from fraudguard.model import FraudMLP, ModelBundle, Standardizer

FEATURES = ("TX_AMOUNT", "TX_DURING_NIGHT", "TERMINAL_ID_RISK_7DAY_WINDOW", "CUSTOMER_ID_NB_TX_1DAY_WINDOW")
CONTROLLED = ("TX_AMOUNT", "TX_DURING_NIGHT")


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    """P(fraud) = sigmoid(3 relu(amount) + 3 relu(risk) - 6) on standardized inputs (mean 0, std 1)."""
    module = FraudMLP(len(FEATURES), (2,), 0.0).eval()
    with torch.no_grad():
        first, last = module.net[0], module.net[-1]
        first.weight.zero_()
        first.bias.zero_()
        first.weight[0, FEATURES.index("TX_AMOUNT")] = 1.0
        first.weight[1, FEATURES.index("TERMINAL_ID_RISK_7DAY_WINDOW")] = 1.0
        last.weight.copy_(torch.tensor([[0.0, 0.0], [3.0, 3.0]]))
        last.bias.copy_(torch.tensor([0.0, -6.0]))
    standardizer = Standardizer(FEATURES, np.zeros(len(FEATURES)), np.ones(len(FEATURES)))
    return ModelBundle(module, standardizer, (2,), 0.0, threshold=0.5)


def _rows(n: int, seed: int, **fixed: float) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(0.0, 0.3, size=(n, len(FEATURES))), columns=list(FEATURES))
    for name, value in fixed.items():
        frame[name] = value + rng.normal(0.0, 0.1, n)
    return frame


def test_attributions_add_up_to_the_probability_above_the_baseline(bundle):
    x = bundle.standardizer.transform(_rows(5, 0, TX_AMOUNT=3.0))
    found = explain_standardized(bundle, x, steps=64)
    assert found.values.shape == (5, len(FEATURES))
    np.testing.assert_allclose(found.values.sum(axis=1), found.probability - found.baseline_probability, atol=1e-3)
    assert np.all(np.abs(found.delta) < 1e-3)
    assert found.probability.min() > 0.5  # flagged, and by the amount:
    assert np.all(np.argmax(np.abs(found.values), axis=1) == FEATURES.index("TX_AMOUNT"))


def test_controlled_share_is_the_attacker_controlled_part_of_the_magnitude(bundle):
    by_amount = explain_standardized(bundle, bundle.standardizer.transform(_rows(20, 1, TX_AMOUNT=4.0)), 32)
    by_risk = explain_standardized(bundle, bundle.standardizer.transform(
        _rows(20, 2, TERMINAL_ID_RISK_7DAY_WINDOW=4.0)), 32)
    assert controlled_share(by_amount, CONTROLLED).min() > 0.8
    assert controlled_share(by_risk, CONTROLLED).max() < 0.2


def test_flagged_traffic_driven_by_controlled_features_raises_the_alert(bundle):
    # Training: the flagged rows are flagged for their terminal's risk.
    reference = pd.concat([_rows(300, 3), _rows(30, 4, TERMINAL_ID_RISK_7DAY_WINDOW=4.0)], ignore_index=True)
    by_amount = _rows(40, 5, TX_AMOUNT=4.0)
    like_training = _rows(40, 6, TERMINAL_ID_RISK_7DAY_WINDOW=4.0)
    alert = compare_controlled_attribution(bundle, reference, by_amount, CONTROLLED, margin=0.15, max_rows=100,
                                           steps=32)
    quiet = compare_controlled_attribution(bundle, reference, like_training, CONTROLLED, margin=0.15, max_rows=100,
                                           steps=32)
    assert alert.n_reference == 30 and alert.reference_rows == "flagged at the operating threshold"
    assert alert.alert and alert.live_share > 0.9 and alert.reference_share < 0.1
    assert not quiet.alert and abs(quiet.live_share - quiet.reference_share) < 0.1


def test_a_reference_the_model_never_flags_is_stood_in_for_by_its_top_scores(bundle):
    reference = _rows(300, 7)
    found = compare_controlled_attribution(bundle, reference, pd.DataFrame(columns=list(FEATURES)), CONTROLLED,
                                           margin=0.15, max_rows=100, steps=16)
    assert found.n_reference == 10 and found.reference_rows.startswith("none flagged")
    assert found.n_live == 0 and not found.alert
