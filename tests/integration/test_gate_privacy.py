"""Privacy gate: ART's black-box membership inference attack against real models."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import small_params
from fraudguard.config import parse_settings
from fraudguard.data.simulator import simulate_transactions
from fraudguard.features import compute_features, newest_window, plan_split, recent_traffic, split_train_test
from fraudguard.gates.base import GateContext, ModelUnderTest
from fraudguard.gates.privacy import run_privacy_gate
from fraudguard.training import train_model

pytestmark = pytest.mark.slow

# 80 days: the 37-day feature warm-up (30-day windows + 7-day label delay), then 22 training days
# (every day after the warm-up), a 7-day gap and 14 test days.
WORLD = {
    "simulate": {"n_customers": 300, "n_terminals": 600, "n_days": 80},
    "featurize": {"split": {"train_days": None, "delay_gap_days": 7, "test_days": 14}},
    "gates": {"privacy": {"sample_size": 500}},
}
# Built to memorise: wide, no dropout or weight decay, many epochs on a few hundred rows.
OVERFIT = {
    "model": {"hidden_sizes": [128, 128], "dropout": 0.0},
    "train": {"epochs": 200, "batch_size": 64, "weight_decay": 0.0, "learning_rate": 0.003},
}


@pytest.fixture(scope="module")
def world():
    torch.set_num_threads(1)
    settings = parse_settings(small_params(WORLD), source="privacy gate test params")
    features = compute_features(simulate_transactions(settings.simulate), settings.featurize)
    plan = plan_split(features, settings.featurize)
    train, test = split_train_test(features, settings.featurize, plan)
    newest = newest_window(recent_traffic(features, plan), settings.gates.drift.window_days)
    return settings, train, test, newest, plan


def _context(settings, train, test, tmp_path, newest=None):
    return GateContext(settings=settings, train_features=train, test_features=test,
                       newest_window=test if newest is None else newest,
                       source_root=tmp_path, report_dir=tmp_path / "reports")


def test_privacy_gate_passes_an_ordinarily_trained_model_with_an_auc_in_0_1(world, tmp_path):
    settings, train, test, newest, _ = world
    bundle = train_model(train, settings, adversarial=False, progress=False).bundle
    result = run_privacy_gate(ModelUnderTest(bundle), _context(settings, train, test, tmp_path, newest),
                              settings.gates.privacy)
    assert 0.0 <= result.metrics["attack_auc"] <= 1.0
    assert result.passed, result.reason
    assert json.loads(result.report_paths[0].read_text())["metrics"]["attack_auc"] == result.metrics["attack_auc"]


def test_privacy_gate_blocks_a_model_that_memorised_its_training_rows(world, tmp_path):
    _, train, *_ = world
    # Members and non-members come from one pool (training rows: same period, same distribution); 30% of
    # the pool's labels are flipped, which a model can only fit by memorising those rows.
    rng = np.random.default_rng(0)
    pool = train.iloc[rng.choice(len(train), 800, replace=False)].copy()
    noisy = rng.random(len(pool)) < 0.3
    pool.loc[pool.index[noisy], "TX_FRAUD"] = 1 - pool.loc[pool.index[noisy], "TX_FRAUD"]
    members, non_members = pool.iloc[:400].sort_values("TX_DATETIME"), pool.iloc[400:]
    overfit = parse_settings(small_params({**WORLD, **OVERFIT, "gates": {"privacy": {"max_attack_auc": 0.5}}}))
    bundle = train_model(members, overfit, adversarial=False, progress=False).bundle

    result = run_privacy_gate(ModelUnderTest(bundle), _context(overfit, members, non_members, tmp_path),
                              overfit.gates.privacy)
    assert not result.passed
    assert result.metrics["attack_auc"] > 0.6
    assert "> max_attack_auc 0.5000" in result.reason


def test_members_are_training_rows_after_the_warm_up_and_non_members_the_newest_window(world, tmp_path):
    settings, train, test, newest, plan = world
    assert pd.to_datetime(train["TX_DATETIME"]).min() >= plan.data_start + pd.Timedelta(days=37)
    assert pd.to_datetime(newest["TX_DATETIME"]).min() >= plan.train_end
    bundle = train_model(train, settings, adversarial=False, progress=False).bundle
    result = run_privacy_gate(ModelUnderTest(bundle), _context(settings, train, test, tmp_path, newest),
                              settings.gates.privacy)
    assert result.metrics["n_members_available"] == len(train)
    assert result.metrics["n_non_members_available"] == len(newest) != len(test)


def test_too_few_non_members_fail_the_gate_naming_the_counts_instead_of_a_coin_flip_verdict(world, tmp_path):
    # With 4 non-members the attack AUC was measured on 4 rows and the gate passed (0.375); 8 rows failed (0.69).
    settings, train, test, newest, _ = world
    bundle = train_model(train, settings, adversarial=False, progress=False).bundle
    few = newest.iloc[:5]
    result = run_privacy_gate(ModelUnderTest(bundle), _context(settings, train, test, tmp_path, few),
                              settings.gates.privacy)
    assert not result.passed and "attack_auc" not in result.metrics
    assert f"{len(train)} member(s) and 5 non-member(s)" in result.reason
    assert f"fewer than min_sample_size {settings.gates.privacy.min_sample_size}" in result.reason
