"""Quality gate with real small models trained on a small simulated world."""

from __future__ import annotations

import json

import pytest
import torch

from fraudguard.config import parse_settings
from fraudguard.data.simulator import simulate_transactions
from fraudguard.features import compute_features, split_train_test
from fraudguard.gates.base import GateContext, ModelUnderTest
from fraudguard.gates.quality import run_quality_gate
from fraudguard.training import train_model
from conftest import small_params

# 300 cards (~157 test frauds) rather than conftest's 100: the good model clears the floors by ~0.1
# (CP@10 0.19 vs 0.03 for the flipped-label model, measured).
WORLD = {
    "simulate": {"n_customers": 300, "n_terminals": 600},
    "evaluate": {"card_precision_k": 10},
    "gates": {"quality": {"min_average_precision": 0.2, "min_card_precision_at_k": 0.05,
                          "min_recall_at_fpr": 0.2, "non_inferiority_tolerance": 0.02}},
}


@pytest.fixture(scope="module")
def world():
    torch.set_num_threads(1)
    settings = parse_settings(small_params(WORLD), source="quality gate test params")
    raw = simulate_transactions(settings.simulate)
    train, test = split_train_test(compute_features(raw, settings.featurize), settings.featurize)
    good = train_model(train, settings, adversarial=False, progress=False).bundle
    flipped_train = train.assign(TX_FRAUD=1 - train["TX_FRAUD"])
    flipped = train_model(flipped_train, settings, adversarial=False, progress=False).bundle
    return settings, train, test, good, flipped


def _context(world, tmp_path, champion=None, **gate_overrides):
    settings, train, test, _, _ = world
    if gate_overrides:
        settings = parse_settings(small_params({**WORLD, "gates": {"quality": gate_overrides}}))
    context = GateContext(settings=settings, train_features=train, test_features=test, newest_window=test,
                          source_root=tmp_path, report_dir=tmp_path / "reports", champion=champion)
    return context, settings.gates.quality


def test_quality_gate_passes_a_model_trained_on_true_labels(world, tmp_path):
    context, gate_settings = _context(world, tmp_path)
    result = run_quality_gate(ModelUnderTest(world[3]), context, gate_settings)
    assert result.passed, result.reason
    assert result.name == "quality"
    assert result.metrics["average_precision"] >= gate_settings.min_average_precision


def test_quality_gate_blocks_a_model_trained_on_flipped_labels_naming_each_failing_metric(world, tmp_path):
    context, gate_settings = _context(world, tmp_path)
    result = run_quality_gate(ModelUnderTest(world[4]), context, gate_settings)
    assert not result.passed
    for metric in ("average_precision", "card_precision_at_k", "recall_at_fpr"):
        assert f"{metric} {result.metrics[metric]:.4f} < floor" in result.reason


def test_quality_gate_blocks_a_candidate_inferior_to_the_champion_even_above_the_floors(world, tmp_path):
    context, gate_settings = _context(
        world, tmp_path, champion=ModelUnderTest(world[3], version=1),
        min_average_precision=0.0, min_card_precision_at_k=0.0, min_recall_at_fpr=0.0,
    )
    result = run_quality_gate(ModelUnderTest(world[4]), context, gate_settings)
    assert not result.passed
    assert "< floor" not in result.reason
    assert "average_precision" in result.reason and "champion" in result.reason
    assert result.thresholds["average_precision.non_inferiority"] == pytest.approx(
        result.metrics["champion.average_precision"] - gate_settings.non_inferiority_tolerance
    )


def test_quality_gate_passes_a_candidate_as_good_as_the_champion(world, tmp_path):
    context, gate_settings = _context(world, tmp_path, champion=ModelUnderTest(world[3], version=1))
    result = run_quality_gate(ModelUnderTest(world[3]), context, gate_settings)
    assert result.passed, result.reason
    assert result.metrics["champion.average_precision"] == pytest.approx(result.metrics["average_precision"])


def test_quality_gate_writes_a_json_report_listed_in_report_paths(world, tmp_path):
    context, gate_settings = _context(world, tmp_path)
    result = run_quality_gate(ModelUnderTest(world[4]), context, gate_settings)
    (report,) = result.report_paths
    content = json.loads(report.read_text())
    assert report.parent == context.report_dir
    assert content["passed"] is False and content["reason"] == result.reason
    assert content["candidate"]["average_precision"] == pytest.approx(result.metrics["average_precision"])


def test_an_operating_threshold_that_flags_every_payment_is_blocked_naming_the_rate(world, tmp_path):
    # The ranking metrics ignore the threshold and the robustness gate measures recall at it: a threshold of 0
    # (every payment flagged, FPR 1.0) passed both.
    import dataclasses

    context, gate_settings = _context(world, tmp_path)
    good = world[3]
    honest = run_quality_gate(ModelUnderTest(good), context, gate_settings)
    assert honest.passed and honest.metrics["false_positive_rate"] <= gate_settings.max_false_positive_rate
    assert honest.thresholds["false_positive_rate.ceiling"] == gate_settings.max_false_positive_rate
    everything = dataclasses.replace(good, threshold=0.0)
    result = run_quality_gate(ModelUnderTest(everything), context, gate_settings)
    assert not result.passed and result.metrics["false_positive_rate"] == 1.0
    assert "false_positive_rate 1.0000 at the model's threshold 0 > ceiling" in result.reason
    assert result.metrics["average_precision"] == honest.metrics["average_precision"]  # the ranking did not move
