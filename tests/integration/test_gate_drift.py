"""Drift gate with the real Evidently on synthetic feature frames."""

from __future__ import annotations

import json
import os
from pathlib import Path

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
    # Through finish_gate, like every gate: its JSON report first, with the verdict it returned.
    report = json.loads(result.report_paths[0].read_text())
    assert result.report_paths[0].name == "drift.json" and report["passed"] and report["metrics"] == result.metrics


def test_drift_against_the_champion_reference_blocks(tmp_path, settings):
    window = feature_frame(settings, 1000, seed=2)
    champion_ref = feature_frame(settings, 3000, seed=3, amount_scale=3.0)
    result = run_drift_gate(ModelUnderTest(bundle=None), _context(settings, tmp_path, window, champion_ref),
                            settings.gates.drift)
    assert not result.passed and result.reason.startswith("champion:")
    assert result.metrics["drift_share_newest_window"] == 0.0
    assert (tmp_path / "reports" / "drift_vs_champion.html").exists()


def test_a_simulated_world_without_drift_passes_with_a_drift_share_near_zero(tmp_path):
    """Like with like: training rows after the feature warm-up against the newest window of all traffic
    (unfiltered), as featurize and the promotion build them, on a stationary simulated world."""
    from fraudguard.data.simulator import simulate_transactions
    from fraudguard.features import compute_features, plan_split, recent_traffic, split_train_test
    from fraudguard.features import newest_window

    # A stationary world at the handbook's fraud rates (the small world's raised rates make 100 cards' amounts
    # noisy), 80 days: 37 warm-up, 22 training, 7 gap, 14 test; the default drift threshold.
    settings = parse_settings(small_params({
        "simulate": {"n_customers": 300, "n_terminals": 600, "n_days": 80,
                     "terminal_compromise_share_per_day": 0.0002, "customer_compromise_share_per_day": 0.0006},
        "featurize": {"split": {"train_days": None}},
    }))
    features = compute_features(simulate_transactions(settings.simulate), settings.featurize)
    plan = plan_split(features, settings.featurize)
    train, test = split_train_test(features, settings.featurize, plan)
    window = newest_window(recent_traffic(features, plan), settings.gates.drift.window_days)
    context = GateContext(settings=settings, train_features=train, test_features=test, newest_window=window,
                          source_root=tmp_path, report_dir=tmp_path / "reports")
    result = run_drift_gate(ModelUnderTest(bundle=None), context, settings.gates.drift)
    assert result.passed, result.reason
    # Measured 0.0 before the terminal fraud counts existed; now 0.11 here (2 of 18 features): the 1- and 7-day
    # known-fraud counts of 600 terminals are a rare-event series (~0.1 terminal compromised a day), so which
    # fortnight holds an active compromise is chance, and Evidently's test flags it. Still far below the gate.
    assert result.metrics["drift_share_newest_window"] <= 0.15
    assert result.metrics["drifted_controlled_newest_window"] == 0.0


def test_reports_run_in_a_separate_interpreter_give_the_same_figures_as_here(tmp_path, settings):
    from fraudguard.gates.drift import _job, run_comparisons

    features = list(settings.model.features)
    reference = feature_frame(settings, 3000, seed=1)
    current = feature_frame(settings, 1000, seed=2, amount_scale=3.0)
    jobs = [_job(reference, current, features, 0.2, tmp_path / where / "drift.html", "newest_window")
            for where in ("here", "separate")]

    [here] = run_comparisons(jobs[:1], here=True)
    [separate] = run_comparisons(jobs[1:], here=False)

    assert (separate.drift_share, separate.drifted_columns) == (here.drift_share, here.drifted_columns)
    assert "TX_AMOUNT" in separate.drifted_columns
    assert "<html" in (tmp_path / "separate" / "drift.html").read_text()[:2000].lower()


def test_a_bad_input_fails_with_its_name_before_any_interpreter_starts(tmp_path, settings):
    from fraudguard.errors import DataError
    from fraudguard.gates.drift import compare_features

    reference = feature_frame(settings, 100, seed=1).drop(columns=["TX_AMOUNT"])
    with pytest.raises(DataError, match="TX_AMOUNT"):
        compare_features(reference, feature_frame(settings, 100, seed=2), list(settings.model.features), 0.2,
                         tmp_path / "drift.html", "newest_window")


def test_an_interpreter_started_ahead_runs_the_reports_and_this_one_never_loads_evidently(tmp_path):
    import subprocess
    import sys

    script = (
        "import sys\nfrom pathlib import Path\n"
        "from fraudguard.config import parse_settings\n"
        "from fraudguard.gates import drift\n"
        "from conftest import small_params\n"
        "from registry_helpers import feature_frame\n"
        "settings = parse_settings(small_params({}))\n"
        "drift.start_evidently_interpreter()\n"
        "started = drift._ready_interpreter\n"
        "features = list(settings.model.features)\n"
        f"out = {str(tmp_path)!r}\n"
        "[c] = drift.run_comparisons([drift._job(feature_frame(settings, 3000, seed=1),\n"
        "    feature_frame(settings, 1000, seed=2, amount_scale=3.0), features, 0.2, Path(out) / 'd.html', 'w')])\n"
        "assert started is not None and drift._ready_interpreter is None  # used once, then let go\n"
        "assert 'evidently' not in sys.modules, 'Evidently was loaded here'\n"
        "print('DRIFTED', ','.join(c.drifted_columns))\n")
    here = Path(__file__).resolve().parent
    proc = subprocess.run([sys.executable, "-c", script], cwd=here, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(here), str(here.parent), os.environ.get("PYTHONPATH", "")])})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "TX_AMOUNT" in proc.stdout.split("DRIFTED", 1)[1]
    assert "<html" in (tmp_path / "d.html").read_text()[:2000].lower()


def test_a_window_too_small_to_judge_fails_naming_the_counts_instead_of_reading_as_total_drift(tmp_path, settings):
    # 1 to 5 rows of undrifted traffic read as 100 % drift (Evidently's tests on a handful of values): a quiet tail
    # of the data blocked every promotion as "drifted", and the monitor retrained on every run.
    window = feature_frame(settings, 5, seed=2)
    result = run_drift_gate(ModelUnderTest(bundle=None), _context(settings, tmp_path, window), settings.gates.drift)
    assert not result.passed
    assert result.reason == (f"too few rows to judge drift (newest_window: 3000 reference and 5 current row(s); "
                             f"min_rows {settings.gates.drift.min_rows})")
    assert "drift_share_newest_window" not in result.metrics
    assert not (tmp_path / "reports" / "drift_vs_newest_window.html").exists()  # Evidently never ran
