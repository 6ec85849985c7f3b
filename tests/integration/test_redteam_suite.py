"""The red-team suite on a tiny trained project (real import with DVC, real stages, training, gates and ART
attacks). Every attack must be caught; an attack today's defences miss must be recorded as not caught, and
its test is an explicit xfail(strict=True) naming the missing defence, so that it flips when that lands."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from typer.testing import CliRunner

from conftest import small_params
from fraudguard.redteam.base import (
    CAUGHT_GATE,
    CAUGHT_HARMLESS,
    CAUGHT_IMPORT_REFUSED,
    CAUGHT_QUARANTINED,
    CAUGHT_ROBUST,
    CAUGHT_VALIDATION_FLAG,
)
from fraudguard.redteam.catalogue import ATTACKS

# The small world of conftest, sized so that one suite run stays well under a minute on 2 cores.
REDTEAM_OVERRIDES = {
    # More compromised terminals, so that the dilution attack has test frauds at them to aim at.
    "simulate": {"terminal_compromise_share_per_day": 0.005},
    "evaluate": {"card_precision_k": 2},  # k scaled to 100 cards as params.yaml scales it (20 per 1000)
    "train": {"epochs": 10},
    # Non-inferiority tolerances scaled to this world: with ~23 test frauds one fraud is 0.043 of recall and
    # with ~6 detected frauds one is 0.17 of robust recall, so the default 0.02 / 0.05 would block on one
    # fraud of retraining noise (measured: a label-flipped candidate one fraud away from a block).
    "gates": {"quality": {"non_inferiority_tolerance": 0.1},
              "robustness": {"non_inferiority_tolerance": 0.2, "hopskipjump_samples": 3, "hopskipjump_max_iter": 3}},
    "redteam": {
        # Drift (Evidently, ~10 s a report here) is left out to keep the test short; the CLI runs it.
        "skip_gates": ["static_analysis", "privacy", "drift"],
        # Attacks strong enough that their effect on ~20 targeted frauds is not within one fraud of the tolerance.
        "label_flip": {"share": 0.5},
        "backdoor": {"share": 1.0},
        "terminal_dilution": {"share_of_rows": 0.05},
        "boundary": {"samples": 3, "max_iter": 10},
    },
}

# Attacks today's pipeline does not catch, and the defence (issue #11 section 3) that should. Label flip and
# backdoor are stopped at intake (changed_history, conflicting_label_duplicate).
MISSING_DEFENCE = {
    # In this world the target flags too few of the frauds at the diluted terminals for harm to be measured;
    # volume bursts are reported per terminal-day (not naming the added rows) and the known-fraud counts recover
    # only part of the recall (bench/poisoning_bench.py).
    "terminal_dilution": "volume-burst flags that name the added rows, or training that resists dilution",
    "split_payments": "split payments in the threat model and customer spend/count features over the "
                      "last hour and day",
}


@pytest.fixture(scope="module")
def trained_project(tmp_path_factory):
    """A tiny project trained in-process: params, simulated data/raw, validated, featurized, models/."""
    from fraudguard.config import load_settings
    from fraudguard.data.versioning import simulate_raw_data
    from fraudguard.paths import ProjectPaths
    from fraudguard.stages import featurize, train, validate

    root = tmp_path_factory.mktemp("redteam") / "project"
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(small_params(REDTEAM_OVERRIDES), sort_keys=False))
    paths = ProjectPaths.at(root)
    settings = load_settings(paths.params)
    simulate_raw_data(paths, settings.simulate)
    validate.run(validate.ValidatePaths.of(paths), validate.section_of(settings))
    featurize.run(featurize.FeaturizePaths.of(paths), featurize.section_of(settings))
    train.run(train.TrainPaths.of(paths), train.section_of(settings), progress=False)
    return root


@pytest.fixture(scope="module")
def scorecard(trained_project, tmp_path_factory):
    from fraudguard.redteam.suite import run_redteam

    return run_redteam(trained_project, tmp_path_factory.mktemp("redteam-work"), target="candidate")


def _expected(name: str):
    if name in MISSING_DEFENCE:
        return pytest.param(name, marks=pytest.mark.xfail(
            strict=True, reason=f"not caught today; missing defence: {MISSING_DEFENCE[name]}"))
    return name


@pytest.mark.parametrize("attack", [_expected(name) for name in ATTACKS])
def test_redteam_catches_attack(scorecard, attack):
    result = scorecard.result(attack)
    assert result.caught, f"{attack} not caught: {result.summary}"


# Where each poisoning attack should be stopped: at intake, on the rows the attacker wrote (issue #11 section 3).
INTAKE_DEFENCE = {
    "label_flip": "changed_history quarantine of a relabelled existing TRANSACTION_ID",
    "backdoor": "conflicting_label_duplicate quarantine of legitimate copies of known frauds",
    "terminal_dilution": "volume-burst flags naming the added rows",
}


# Intake defences still missing (the others have landed and must hold).
INTAKE_DEFENCE_MISSING = ("terminal_dilution",)


@pytest.mark.parametrize("attack", [
    pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=f"no intake defence yet: {defence}"))
    if name in INTAKE_DEFENCE_MISSING else name
    for name, defence in INTAKE_DEFENCE.items()])
def test_poisoning_is_stopped_at_intake(scorecard, attack):
    """Not by a gate's margin on a worse model: the import refuses, quarantines or flags the poisoned rows."""
    result = scorecard.result(attack)
    intake = [v for v in result.caught_by if v.startswith((CAUGHT_IMPORT_REFUSED, CAUGHT_QUARANTINED,
                                                           CAUGHT_VALIDATION_FLAG))]
    assert intake, f"{attack}: caught by {list(result.caught_by) or 'nothing'}; {result.summary}"


def test_scorecard_verdicts_follow_their_evidence(scorecard):
    """Each 'caught by' is backed by the numbers in the row, and a row without one has no such evidence."""
    from fraudguard.config import parse_settings

    cfg = parse_settings(small_params(REDTEAM_OVERRIDES)).redteam
    tolerance, measurable = cfg.harmless_recall_drop, cfg.min_targeted_flagged
    assert [r.name for r in scorecard.results] == list(ATTACKS)
    for result in scorecard.results:
        d = result.details
        for verdict in result.caught_by:
            if verdict.startswith(CAUGHT_GATE + ":"):
                gate = verdict.split(":", 1)[1]
                assert d["gates"][gate]["passed"] is False and "not_counted" not in d["gates"][gate], result.name
            elif verdict.startswith(CAUGHT_QUARANTINED):
                assert d["quarantined_poisoned_rows"] >= cfg.min_quarantined_share * d["poisoned_rows"], result.name
            elif verdict.startswith(CAUGHT_HARMLESS):
                assert d["targeted_flagged_clean"] >= measurable, result.name
                drop = result.baseline - min(d["candidate_recall_targeted"], d["target_recall_targeted_poisoned"])
                assert drop <= tolerance + 1e-12, result.name
            elif verdict.startswith(CAUGHT_ROBUST):
                assert result.attacked >= (d.get("min_robust_recall") or d.get("min_flagged_share")), result.name
        if result.kind == "poisoning":
            assert d["targeted_frauds_found"] > 0, f"{result.name}: no targeted frauds to measure"
            if not result.caught:
                assert all(g["passed"] or "not_counted" in g for g in d["gates"].values()), result.name
                drop = result.baseline - min(d["candidate_recall_targeted"], d["target_recall_targeted_poisoned"])
                assert drop > tolerance or d["targeted_flagged_clean"] < measurable, \
                    f"{result.name}: measurable, within tolerance, but not reported harmless"
        elif not result.caught:
            assert result.attacked < (d.get("min_robust_recall") or d.get("min_flagged_share")), result.name
        assert math.isfinite(result.baseline), result.name


def test_redteam_cli_exits_1_on_an_uncaught_attack_and_logs_the_scorecard(trained_project, monkeypatch):
    """Split payments are not caught today: exit 1, scorecard JSON written, an MLflow run in `redteam`."""
    import mlflow
    from mlflow import MlflowClient

    from fraudguard.cli import app

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the project's own store, mlflow.db
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    try:
        result = CliRunner().invoke(app, ["redteam", "--root", str(trained_project), "--attack", "split_payments",
                                          "--out", "reports/rt.json"])
    finally:  # the command points MLflow at the project's store process-wide: undo it for later tests
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
    assert result.exit_code == 1, result.output
    assert "NOT caught: split_payments" in result.output
    card = json.loads((trained_project / "reports" / "rt.json").read_text())
    assert [a["name"] for a in card["attacks"]] == ["split_payments"] and card["all_caught"] is False
    client = MlflowClient(tracking_uri=f"sqlite:///{trained_project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("redteam")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    assert runs[0].data.metrics["split_payments.caught"] == 0.0
    assert runs[0].data.metrics["split_payments.attacked"] == pytest.approx(card["attacks"][0]["attacked"])
    assert [f.path for f in client.list_artifacts(runs[0].info.run_id, "redteam")] == ["redteam/rt.json"]
