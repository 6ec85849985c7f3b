"""train_model on a small simulated world: quality, reproducibility, leakage, threshold, history, robustness."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from fraudguard.config import Settings, parse_settings
from fraudguard.data.schema import TX_DATETIME, TX_FRAUD
from fraudguard.errors import DataError
from fraudguard.model import save_bundle
from fraudguard.training import EarlyStopping, TrainingParams, split_validation, threshold_at_fpr, train_model

from conftest import small_params

@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _settings(extra: dict | None = None) -> Settings:
    return parse_settings(small_params(extra), source="test_training params")


def _split(settings: Settings) -> tuple[pd.DataFrame, pd.DataFrame]:
    from fraudguard.data.simulator import simulate_transactions
    from fraudguard.features import compute_features, split_train_test

    features = compute_features(simulate_transactions(settings.simulate), settings.featurize)
    return split_train_test(features, settings.featurize)


@pytest.fixture(scope="module")
def split() -> tuple[pd.DataFrame, pd.DataFrame]:
    return _split(_settings())


@pytest.fixture(scope="module")
def trained(split):
    torch.set_num_threads(1)
    return train_model(split[0], _settings(), progress=False)


def test_trained_model_ranks_frauds_far_above_the_fraud_rate(split, trained):
    from sklearn.metrics import average_precision_score

    test = split[1]
    y = test[TX_FRAUD].to_numpy()
    assert y.sum() >= 10
    ap = average_precision_score(y, trained.bundle.predict_proba(test))
    assert ap > 4 * y.mean()  # a random ranking scores about the fraud rate


def test_same_data_params_and_seed_give_bit_identical_weights_files(split, trained, tmp_path):
    # What the train stage writes (save_bundle): same data, code, params and seed -> the same model.pt bytes.
    again = train_model(split[0], _settings(), progress=False)
    first = save_bundle(trained.bundle, tmp_path / "a" / "model.pt", tmp_path / "a" / "preprocess.json")
    second = save_bundle(again.bundle, tmp_path / "b" / "model.pt", tmp_path / "b" / "preprocess.json")
    assert first == second
    assert (tmp_path / "a" / "preprocess.json").read_bytes() == (tmp_path / "b" / "preprocess.json").read_bytes()
    assert again.bundle.threshold == trained.bundle.threshold


def test_standardizer_sees_only_the_fit_rows_not_the_validation_slice(split, trained):
    settings = _settings()
    fit, validation = split_validation(split[0], settings.train.validation_share)
    assert len(validation) == trained.n_validation_rows > 0
    expected = fit[list(settings.model.features)].to_numpy(dtype=np.float64).mean(axis=0)
    np.testing.assert_allclose(trained.bundle.standardizer.mean, expected, rtol=1e-9)


def test_validation_slice_is_the_latest_part_of_the_train_split(split):
    fit, validation = split_validation(split[0], 0.2)
    assert fit[TX_DATETIME].max() <= validation[TX_DATETIME].min()
    assert len(validation) == round(0.2 * len(split[0]))


def test_history_has_one_timed_entry_per_epoch(trained):
    settings = _settings()
    assert [h["epoch"] for h in trained.history] == list(range(1, settings.train.epochs + 1))
    for entry in trained.history:
        assert entry["seconds"] > 0 and entry["loss"] > 0
        assert 0 < entry["adversarial_seconds"] < entry["seconds"]
        assert 0 <= entry["val_average_precision"] <= 1


def test_clean_training_spends_no_time_crafting_adversarial_rows(split):
    result = train_model(split[0], _settings(), adversarial=False, progress=False)
    assert not result.adversarial and result.attack is None
    assert all(h["adversarial_seconds"] == 0.0 for h in result.history)


def test_threshold_flags_the_configured_share_of_legitimate_training_rows(split, trained):
    train = split[0]
    legit = train[TX_FRAUD].to_numpy() == 0
    fpr = _settings().evaluate.fpr_for_recall
    flagged = trained.bundle.predict_proba(train)[legit] >= trained.bundle.threshold
    assert flagged.mean() <= fpr
    assert flagged.mean() > fpr / 2


def test_threshold_at_fpr_respects_ties():
    scores = np.array([0.1] * 50 + [0.9] * 50 + [0.95])
    labels = np.array([0] * 100 + [1])
    threshold = threshold_at_fpr(scores, labels, fpr=0.2)
    # Half the legitimate rows tie at 0.9: flagging any of them would flag all 50 (FPR 0.5).
    assert threshold > 0.9
    assert ((scores[labels == 0] >= threshold).mean()) == 0.0


def test_metrics_report_rows_fraud_rate_and_epoch_costs(split, trained):
    metrics = trained.metrics()
    assert metrics["n_rows"] == len(split[0])
    assert metrics["fraud_rate"] == pytest.approx(split[0][TX_FRAUD].mean())
    assert metrics["seconds_per_epoch"] >= metrics["adversarial_seconds_per_epoch"] > 0
    assert metrics["threshold"] == trained.bundle.threshold


def test_training_refuses_a_frame_without_fraud(split):
    legit_only = split[0][split[0][TX_FRAUD] == 0]
    with pytest.raises(DataError, match="both classes"):
        train_model(legit_only, _settings(), progress=False)


def test_training_names_a_missing_label_column(split):
    with pytest.raises(DataError, match=TX_FRAUD):
        train_model(split[0].drop(columns=[TX_FRAUD]), _settings(), progress=False)


@pytest.mark.slow
def test_adversarial_training_raises_robust_average_precision():
    """Same data, same seed: the augmented MLP keeps a higher AP than the undefended one once the test
    frauds are attacked with masked PGD. Default world, budget 1.0, where the attack bites."""
    from fraudguard.config import load_settings
    from fraudguard.evaluation import robust_average_precision
    from fraudguard.threat import build_threat_model

    from conftest import PROJECT_ROOT

    settings = load_settings(
        PROJECT_ROOT / "params.yaml",
        overrides={"train": {"torch_threads": 1}, "threat_model": {"epsilon": 1.0}},
    )
    train, test = _split(settings)
    robust = {}
    for adversarial in (False, True):
        bundle = train_model(train, settings, adversarial=adversarial, progress=False).bundle
        threat = build_threat_model(settings.threat_model, bundle.standardizer)
        robust[adversarial] = robust_average_precision(bundle, test, threat)
    assert robust[True] > robust[False]


def test_adversarial_rows_are_the_first_ratio_share_of_each_batchs_frauds():
    from fraudguard.training import _adversarial_rows

    labels = torch.tensor([0, 1, 1, 0, 1, 1,   1, 0, 0, 0, 1, 1,   1, 1])  # batches of 6, 6, 2
    rows = _adversarial_rows(labels, batch_size=6, ratio=0.5, classes="fraud")
    # Batch 1 has frauds at 1, 2, 4, 5 -> first 2; batch 2 at 6, 10, 11 -> round(1.5) = 2; batch 3 at 12, 13 -> 1.
    assert rows.tolist() == [1, 2, 6, 10, 12]
    every = _adversarial_rows(labels, batch_size=6, ratio=0.5, classes="both")
    assert every.tolist() == [0, 1, 2, 6, 7, 8, 12]


def test_crafting_several_batches_per_attack_call_still_learns(split):
    settings = _settings({"train": {"adversarial": {"craft_batches": 8}}})
    result = train_model(split[0], settings, progress=False)
    test = split[1]
    y = test[TX_FRAUD].to_numpy()
    from sklearn.metrics import average_precision_score

    assert average_precision_score(y, result.bundle.predict_proba(test)) > 4 * y.mean()
    assert all(0 < h["adversarial_seconds"] < h["seconds"] for h in result.history)


def test_early_stopping_keeps_the_weights_of_the_best_validation_epoch(split):
    from sklearn.metrics import average_precision_score

    settings = _settings({"train": {"epochs": 12, "early_stopping_patience": 2, "learning_rate": 0.01}})
    result = train_model(split[0], settings, progress=False)
    val_aps = [h["val_average_precision"] for h in result.history]
    best_epoch = result.extra["best_epoch"]
    assert val_aps[best_epoch - 1] == max(val_aps) == result.extra["best_val_average_precision"]
    # Stopped once `patience` epochs passed without a better val AP (or ran out of epochs).
    assert len(result.history) == min(settings.train.epochs, best_epoch + 2)
    _, validation = split_validation(split[0], settings.train.validation_share)
    kept = average_precision_score(validation[TX_FRAUD].to_numpy(), result.bundle.predict_proba(validation))
    assert kept == pytest.approx(max(val_aps), abs=1e-6)


def test_early_stopping_without_a_validation_slice_is_refused():
    from fraudguard.errors import ConfigError

    with pytest.raises(ConfigError, match="early_stopping_patience"):
        _settings({"train": {"early_stopping_patience": 3, "validation_share": 0.0}})


def test_training_on_the_train_stage_section_gives_the_same_weights_as_on_the_whole_settings(split, trained):
    # The train stage passes TrainingParams (what dvc.yaml declares); other callers pass Settings.
    again = train_model(split[0], TrainingParams.of(_settings()), progress=False)
    for name, tensor in trained.bundle.module.state_dict().items():
        assert torch.equal(tensor, again.bundle.module.state_dict()[name]), name
    assert again.bundle.threshold == trained.bundle.threshold


def test_early_stopping_stops_after_patience_epochs_without_a_better_ap_and_restores_the_best_weights():
    module = torch.nn.Linear(2, 2)
    best_weight = module.weight.detach().clone()
    stopping = EarlyStopping(patience=2)
    assert not stopping.should_stop(1, 0.5, module)
    with torch.no_grad():
        module.weight.add_(1.0)
    assert not stopping.should_stop(2, 0.4, module)
    assert stopping.should_stop(3, 0.45, module)
    assert stopping.restore_best(module) == {"best_epoch": 1, "best_val_average_precision": 0.5}
    assert torch.equal(module.weight, best_weight)


def test_early_stopping_without_patience_never_stops_and_keeps_the_last_weights():
    module = torch.nn.Linear(2, 2)
    last_weight = module.weight.detach().clone()
    stopping = EarlyStopping(patience=None)
    assert not any(stopping.should_stop(epoch, 1.0 / epoch, module) for epoch in range(1, 6))
    assert stopping.restore_best(module) == {}
    assert torch.equal(module.weight, last_weight)
