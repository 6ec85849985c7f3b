"""Drift gate with the real Evidently on synthetic feature frames."""

from __future__ import annotations

import pytest

from fraudguard.config import parse_settings
from fraudguard.gates.base import GateContext, ModelUnderTest
from fraudguard.gates.drift import run_drift_gate

from conftest import small_params
from registry_helpers import feature_frame


@pytest.fixture
def settings():
    # 4 of the 15 model features are amounts: a 0.2 share threshold makes an amount shift block.
    return parse_settings(small_params({"gates": {"drift": {"drift_share_threshold": 0.2}}}))


def _context(settings, tmp_path, window, champion_features=None):
    champion = ModelUnderTest(bundle=None, version=1, train_features=champion_features) \
        if champion_features is not None else None
    return GateContext(settings=settings, train_features=feature_frame(settings, 3000, seed=1),
                       test_features=window, newest_window=window, source_root=tmp_path,
                       report_dir=tmp_path / "reports", champion=champion)


def test_amounts_times_three_block_and_name_the_controlled_feature(tmp_path, settings):
    window = feature_frame(settings, 1000, seed=2, amount_scale=3.0)
    result = run_drift_gate(ModelUnderTest(bundle=None), _context(settings, tmp_path, window), settings.gates.drift)
    assert not result.passed
    assert "TX_AMOUNT" in result.reason and "attacker-controlled" in result.reason
    assert result.metrics["drift_share_newest_window"] > 0.2


def test_undrifted_window_passes_and_saves_html(tmp_path, settings):
    window = feature_frame(settings, 1000, seed=2)
    result = run_drift_gate(ModelUnderTest(bundle=None), _context(settings, tmp_path, window), settings.gates.drift)
    assert result.passed, result.reason
    assert result.metrics["drift_share_newest_window"] == 0.0
    html = tmp_path / "reports" / "drift_vs_newest_window.html"
    assert html in result.report_paths and "<html" in html.read_text()[:2000].lower()


def test_drift_against_the_champion_reference_blocks(tmp_path, settings):
    window = feature_frame(settings, 1000, seed=2)
    champion_ref = feature_frame(settings, 3000, seed=3, amount_scale=3.0)
    result = run_drift_gate(ModelUnderTest(bundle=None), _context(settings, tmp_path, window, champion_ref),
                            settings.gates.drift)
    assert not result.passed and result.reason.startswith("champion:")
    assert result.metrics["drift_share_newest_window"] == 0.0
    assert (tmp_path / "reports" / "drift_vs_champion.html").exists()
