"""The `train` DVC stage command on a small world: writes the bundle, metrics and a plottable history."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from fraudguard.config import parse_settings
from fraudguard.model import load_bundle
from fraudguard.paths import ProjectPaths

from conftest import small_params

WORLD = {"train": {"epochs": 2}}


@pytest.fixture
def project(tmp_path):
    from fraudguard.data.io import write_transactions
    from fraudguard.data.simulator import simulate_transactions
    from fraudguard.features import compute_features, split_train_test

    raw = small_params(WORLD)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    settings = parse_settings(raw)
    features = compute_features(simulate_transactions(settings.simulate), settings.featurize)
    train, _ = split_train_test(features, settings.featurize)
    paths = ProjectPaths.at(tmp_path)
    write_transactions(train, paths.train_features)
    return paths, train


@pytest.mark.slow
def test_train_stage_command_writes_a_loadable_bundle_and_its_metrics(project):
    paths, train = project
    done = subprocess.run(
        [sys.executable, "-m", "fraudguard.stages.train"], cwd=paths.root, capture_output=True, text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads(paths.metrics.read_text())
    bundle = load_bundle(paths.model_weights, paths.preprocess, expected_sha256=metrics["weights_sha256"])
    assert metrics["n_rows"] == len(train)
    assert metrics["threshold"] == bundle.threshold
    assert {"final_loss", "seconds_per_epoch", "train_average_precision", "fraud_rate"} <= set(metrics)
    history = json.loads(paths.training_history.read_text())
    assert [entry["epoch"] for entry in history] == [1, 2]
    assert bundle.predict_proba(train).shape == (len(train),)


def test_train_stage_names_the_missing_features_file_in_one_line_and_exits_1(tmp_path, caplog):
    from fraudguard.stages.train import main

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(small_params(), sort_keys=False))
    with pytest.raises(SystemExit) as exited:
        main(tmp_path)
    assert exited.value.code == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "train.parquet: training features not found" in errors[0]
