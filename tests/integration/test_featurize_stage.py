"""The featurize stage end to end: simulated validated data in a temporary checkout -> features + summary."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from fraudguard.config import parse_settings
from fraudguard.data.simulator import simulate_transactions
from fraudguard.errors import DataError
from fraudguard.paths import ProjectPaths
from fraudguard.stages import featurize as stage
from conftest import PROJECT_ROOT, small_params


def make_checkout(root: Path, extra: dict | None = None) -> ProjectPaths:
    """A checkout with small params.yaml and simulated transactions as the validated input."""
    raw = small_params(extra)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    paths = ProjectPaths.at(root)
    paths.validated.parent.mkdir(parents=True)
    transactions = simulate_transactions(parse_settings(raw).simulate)
    transactions.to_parquet(paths.validated, index=False)
    return paths


def run_stage(paths: ProjectPaths) -> dict:
    """The stage's run on the checkout's params; summary.json's content."""
    settings = parse_settings(yaml.safe_load(paths.params.read_text()))
    return stage.run(stage.FeaturizePaths.of(paths), stage.section_of(settings)).report


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def stage_run(tmp_path_factory):
    paths = make_checkout(tmp_path_factory.mktemp("checkout"))
    summary = run_stage(paths)
    return paths, summary


def test_stage_writes_train_test_recent_and_summary(stage_run):
    paths, summary = stage_run
    train, test = pd.read_parquet(paths.train_features), pd.read_parquet(paths.test_features)
    recent = pd.read_parquet(paths.recent_features)
    written = json.loads(paths.features_summary.read_text())
    assert written == summary
    assert summary["train"]["rows"] == len(train) > 0
    assert summary["test"]["rows"] == len(test) > 0
    assert summary["recent"]["rows"] == len(recent) > len(test)
    assert summary["train"]["fraud_rate"] == pytest.approx(train["TX_FRAUD"].mean())
    assert summary["test"]["fraud_rate"] == pytest.approx(test["TX_FRAUD"].mean())


def test_stage_outputs_hold_every_model_feature_without_nan(stage_run):
    paths, _ = stage_run
    features = parse_settings(small_params()).model.features
    for path in (paths.train_features, paths.test_features, paths.recent_features):
        frame = pd.read_parquet(path)
        assert not frame[features].isna().any().any(), path


def test_stage_split_is_time_ordered_with_gap(stage_run):
    paths, summary = stage_run
    train, test = pd.read_parquet(paths.train_features), pd.read_parquet(paths.test_features)
    gap = pd.Timestamp(summary["test"]["period_start"]) - pd.Timestamp(summary["train"]["period_end_exclusive"])
    assert gap == pd.Timedelta(days=7)
    assert train["TX_DATETIME"].max() < pd.Timestamp(summary["train"]["period_end_exclusive"])
    assert test["TX_DATETIME"].min() >= pd.Timestamp(summary["test"]["period_start"])


def test_stage_trains_after_the_warm_up_up_to_the_newest_day(stage_run):
    # Small world: 2024-04-01..2024-06-19 (80 days) = 37 warm-up + 22 train + 7 gap + 14 test.
    paths, summary = stage_run
    train = pd.read_parquet(paths.train_features)
    assert (summary["warmup"]["first_day"], summary["warmup"]["last_day"]) == ("2024-04-01", "2024-05-07")
    assert (summary["train"]["first_day"], summary["train"]["last_day"]) == ("2024-05-08", "2024-05-29")
    assert (summary["test"]["first_day"], summary["test"]["last_day"]) == ("2024-06-06", "2024-06-19")
    assert train["TX_DATETIME"].min() >= pd.Timestamp("2024-05-08")
    assert summary["test_filter"] == "handbook"


def test_recent_traffic_is_every_row_after_training_unfiltered(stage_run):
    paths, summary = stage_run
    recent, test = pd.read_parquet(paths.recent_features), pd.read_parquet(paths.test_features)
    assert recent["TX_DATETIME"].min() >= pd.Timestamp(summary["train"]["period_end_exclusive"])
    assert set(test["TRANSACTION_ID"]) < set(recent["TRANSACTION_ID"])
    assert summary["recent"]["rows"] == summary["gap"]["rows_dropped"] + summary["test"]["rows_in_period"]


def test_stage_splits_by_explicit_dates(tmp_path):
    dates = {"train_days": None, "delay_gap_days": None, "test_days": None, "train_start": "2024-05-10",
             "train_end": "2024-05-31", "test_start": "2024-06-08", "test_end": "2024-06-14"}
    paths = make_checkout(tmp_path, {"featurize": {"split": dates}})
    summary = run_stage(paths)
    assert (summary["train"]["first_day"], summary["train"]["last_day"]) == ("2024-05-10", "2024-05-31")
    assert (summary["test"]["first_day"], summary["test"]["last_day"]) == ("2024-06-08", "2024-06-14")
    assert summary["split_by"] == "dates"
    test = pd.read_parquet(paths.test_features)
    assert test["TX_DATETIME"].max() < pd.Timestamp("2024-06-15")


def test_stage_test_split_has_no_card_defrauded_in_train(stage_run):
    paths, summary = stage_run
    train, test = pd.read_parquet(paths.train_features), pd.read_parquet(paths.test_features)
    defrauded = set(train.loc[train["TX_FRAUD"] == 1, "CUSTOMER_ID"])
    assert defrauded, "the small simulated world should hold frauds in train"
    assert not defrauded & set(test["CUSTOMER_ID"])
    assert summary["test"]["rows_dropped_known_compromised"] > 0


def test_stage_is_deterministic(stage_run, tmp_path):
    paths, _ = stage_run
    again = make_checkout(tmp_path)
    stage.main(again.root)
    for first, second in zip(stage.FeaturizePaths.of(paths).outputs, stage.FeaturizePaths.of(again).outputs):
        assert md5(second) == md5(first), first.name


def test_stage_on_too_short_data_raises_data_error_and_writes_nothing(tmp_path):
    paths = make_checkout(tmp_path, {"featurize": {"split": {"train_days": 100}}})
    with pytest.raises(DataError, match=r"too short for the split.*At most 22 training day"):
        run_stage(paths)
    assert not paths.features_dir.exists()


def test_stage_command_on_too_short_data_exits_1_with_one_line_naming_the_problem(tmp_path):
    paths = make_checkout(tmp_path, {"featurize": {"split": {"train_days": 100}}})
    done = subprocess.run([sys.executable, "-m", "fraudguard.stages.featurize"], cwd=paths.root,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "too short for the split" in errors[0]
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_dvc_repro_runs_featurize_block_and_then_skips_it(tmp_path):
    make_checkout(tmp_path)
    shutil.copy(PROJECT_ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    for dep in yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]["featurize"]["deps"]:
        if dep.startswith("src/"):
            (tmp_path / dep).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(PROJECT_ROOT / dep, tmp_path / dep)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1"}
    dvc = [str(Path(sys.executable).parent / "dvc")]

    def run(*args: str) -> str:
        done = subprocess.run(dvc + list(args), cwd=tmp_path, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    run("init", "--no-scm")
    run("repro", "--single-item", "featurize")
    lock = yaml.safe_load((tmp_path / "dvc.lock").read_text())["stages"]["featurize"]
    assert [out["path"] for out in lock["outs"]] == ["data/features"]
    assert (tmp_path / "data" / "features" / "train.parquet").exists()
    assert "didn't change" in run("repro", "--single-item", "featurize")
