"""Evaluation metrics on hand-computed examples; robust AP with a hand-built model and real ART attacks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from fraudguard.errors import DataError
from fraudguard.evaluation import (
    average_precision,
    card_precision_at_k,
    evaluate_bundle,
    pr_curve_points,
    recall_at_fpr,
    robust_average_precision,
    roc_auc,
)
from fraudguard.model import FraudMLP, ModelBundle, Standardizer
from fraudguard.threat import build_threat_model


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_average_precision_matches_hand_computation():
    # Ranked: fraud, legit, fraud, legit -> precision 1 at recall .5, 2/3 at recall 1.
    assert average_precision([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_roc_auc_counts_correctly_ordered_pairs():
    # Pairs (fraud, legit): (.9,.8) (.9,.1) (.7,.1) ordered right, (.7,.8) wrong -> 3/4.
    assert roc_auc([1, 0, 1, 0], [0.9, 0.8, 0.7, 0.1]) == pytest.approx(0.75)


@pytest.mark.parametrize("fpr, expected", [(0.0, 0.25), (0.05, 0.25), (0.1, 0.75), (0.2, 1.0)])
def test_recall_at_fpr_is_best_recall_within_the_fpr_budget(fpr, expected):
    # 10 legit rows: one false positive costs FPR 0.1. Above .92 only .95 is caught; above .4, three frauds.
    y = [1, 1, 1, 1] + [0] * 10
    scores = [0.95, 0.9, 0.5, 0.2] + [0.92, 0.4] + [0.1] * 8
    assert recall_at_fpr(y, scores, fpr) == pytest.approx(expected)


def test_metrics_refuse_single_class_labels():
    with pytest.raises(DataError, match="needs both classes"):
        average_precision([0, 0, 0], [0.1, 0.2, 0.3])


def _cp_frame() -> tuple[pd.DataFrame, np.ndarray]:
    rows = [
        # day 1: A is compromised and ranked first, B legit second, C legit last.
        ("2024-04-01 10:00", "A", 1, 0.9),
        ("2024-04-01 11:00", "B", 0, 0.8),
        ("2024-04-01 12:00", "C", 0, 0.1),
        # day 2: A (detected on day 1) must be gone; C's card score is its max (.7), its label its max (1).
        ("2024-04-02 09:00", "A", 1, 0.95),
        ("2024-04-02 10:00", "B", 0, 0.2),
        ("2024-04-02 11:00", "C", 0, 0.7),
        ("2024-04-02 12:00", "C", 1, 0.05),
    ]
    frame = pd.DataFrame(
        {
            "TX_DATETIME": pd.to_datetime([r[0] for r in rows]),
            "CUSTOMER_ID": [r[1] for r in rows],
            "TX_FRAUD": [r[2] for r in rows],
        }
    )
    return frame, np.array([r[3] for r in rows])


def test_card_precision_at_k_removes_cards_detected_on_earlier_days():
    frame, scores = _cp_frame()
    # Day 1: top 2 = A (fraud), B -> 1/2. Day 2 without A: top 2 = C (fraud), B -> 1/2.
    # Keeping A on day 2 would give top 2 = A, C -> 2/2 and a mean of 0.75.
    assert card_precision_at_k(frame, scores, k=2) == pytest.approx(0.5)


def test_card_precision_at_k_divides_by_k_on_days_with_fewer_cards():
    frame, scores = _cp_frame()
    # Day 1: 1 fraud card among 3 -> 1/5; day 2: C is the only compromised card left -> 1/5.
    assert card_precision_at_k(frame, scores, k=5) == pytest.approx(0.2)


def test_pr_curve_points_are_thinned_and_ordered_by_recall():
    rng = np.random.default_rng(0)
    y = rng.random(5000) < 0.1
    scores = rng.random(5000) + y * 0.5
    points = pr_curve_points(y.astype(int), scores, max_points=200)
    recalls = [p["recall"] for p in points]
    assert 2 <= len(points) <= 200
    assert recalls == sorted(recalls)
    assert recalls[0] == 0.0 and recalls[-1] == 1.0
    assert all(0.0 <= p["precision"] <= 1.0 for p in points)


# --- robust AP: a hand-built model whose fraud score depends on one feature only -----------------

def _frame_and_bundle(small_settings, driving_feature: str) -> tuple[pd.DataFrame, ModelBundle]:
    """A model with logit(fraud) = 4 * standardized(driving_feature); frauds are its top 5% rows."""
    features = list(small_settings.model.features)
    rng = np.random.default_rng(3)
    n = 600
    frame = pd.DataFrame(rng.normal(size=(n, len(features))), columns=features)
    frame["TX_AMOUNT"] = rng.uniform(10, 200, n)
    frame["TX_DURING_WEEKEND"] = rng.integers(0, 2, n).astype(float)
    frame["TX_DURING_NIGHT"] = rng.integers(0, 2, n).astype(float)
    driver = frame[driving_feature].to_numpy()
    frame["TX_FRAUD"] = (driver >= np.quantile(driver, 0.95)).astype(int)
    frame["TX_DATETIME"] = pd.Timestamp("2024-05-01") + pd.to_timedelta(np.arange(n) * 3600, unit="s")
    frame["CUSTOMER_ID"] = np.arange(n) % 50

    standardizer = Standardizer.fit(frame, features)
    module = FraudMLP(len(features), [2], 0.0)
    j = features.index(driving_feature)
    with torch.no_grad():
        hidden, out = module.net[0], module.net[3]
        hidden.weight.zero_(), hidden.bias.zero_(), out.weight.zero_(), out.bias.zero_()
        hidden.weight[0, j], hidden.weight[1, j] = 1.0, -1.0   # h0 - h1 = x_j
        out.weight[1, 0], out.weight[1, 1] = 4.0, -4.0
        out.bias[1] = -6.0
    module.eval()
    bundle = ModelBundle(module, standardizer, (2,), 0.0, threshold=0.5)
    return frame, bundle


def test_robust_average_precision_drops_when_the_model_relies_on_an_attacker_controlled_feature(small_settings):
    frame, bundle = _frame_and_bundle(small_settings, "TX_AMOUNT")
    threat = build_threat_model(small_settings.threat_model, bundle.standardizer)
    clean = average_precision(frame["TX_FRAUD"], bundle.predict_proba(frame))
    robust = robust_average_precision(bundle, frame, threat, eps=1.0, eps_step=0.25, max_iter=8)
    assert clean == pytest.approx(1.0)
    assert robust < clean - 0.2


def test_robust_average_precision_equals_clean_ap_when_the_model_ignores_controlled_features(small_settings):
    frame, bundle = _frame_and_bundle(small_settings, "TERMINAL_ID_RISK_7DAY_WINDOW")
    threat = build_threat_model(small_settings.threat_model, bundle.standardizer)
    clean = average_precision(frame["TX_FRAUD"], bundle.predict_proba(frame))
    assert robust_average_precision(bundle, frame, threat, eps=1.0) == pytest.approx(clean, abs=1e-12)


def test_evaluate_bundle_reports_every_metric(small_settings):
    frame, bundle = _frame_and_bundle(small_settings, "TX_AMOUNT")
    metrics = evaluate_bundle(bundle, frame, small_settings.evaluate, small_settings.threat_model)
    assert set(metrics) == {
        "roc_auc", "average_precision", "card_precision_at_k", "recall_at_fpr",
        "robust_average_precision", "fraud_rate", "n_rows",
    }
    assert metrics["n_rows"] == len(frame)
    assert metrics["fraud_rate"] == pytest.approx(frame["TX_FRAUD"].mean())
    assert metrics["robust_average_precision"] <= metrics["average_precision"]


def test_evaluate_stage_writes_metrics_and_a_thinned_pr_curve(small_settings, tmp_path):
    import json

    import yaml

    from fraudguard.model import save_bundle
    from fraudguard.paths import ProjectPaths
    from fraudguard.stages import evaluate as stage

    frame, bundle = _frame_and_bundle(small_settings, "TX_AMOUNT")
    paths = ProjectPaths.at(tmp_path)
    paths.params.write_text(yaml.safe_dump(small_settings.as_params_dict()))
    save_bundle(bundle, paths.model_weights, paths.preprocess)
    paths.features_dir.mkdir(parents=True)
    frame.to_parquet(paths.test_features)

    summary = stage.run(stage.EvaluatePaths.of(paths), stage.section_of(small_settings))

    assert json.loads(paths.evaluation.read_text()) == pytest.approx(summary.metrics)
    points = json.loads(paths.pr_curve_json.read_text())
    assert points == summary.pr_curve
    assert 2 <= len(points) <= 200 and set(points[0]) == {"recall", "precision"}
    assert paths.pr_curve_png.stat().st_size > 0
