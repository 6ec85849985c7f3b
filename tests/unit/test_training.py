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
    frauds are attacked with masked PGD. Default world, budget 1.0, where the attack bites. 10 epochs, not 25:
    robust AP 0.422 -> 0.443 (seed 7) and 0.429 -> 0.447 (seed 1) there, in 22 s instead of 57 s."""
    from fraudguard.config import load_settings
    from fraudguard.evaluation import robust_average_precision
    from fraudguard.threat import build_threat_model

    from conftest import PROJECT_ROOT

    settings = load_settings(
        PROJECT_ROOT / "params.yaml",
        overrides={"train": {"torch_threads": 1, "epochs": 10}, "threat_model": {"epsilon": 1.0}},
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


def test_dilution_copies_are_frauds_at_risky_terminals_with_lower_risk_and_the_same_fraud_counts(split):
    from fraudguard.training import dilution_copies

    settings = _settings()
    train = split[0].reset_index(drop=True)
    copies = dilution_copies(train, settings)
    risks = list(settings.threat_model.dilution.risk_features)
    risky_frauds = train[(train[TX_FRAUD] == 1) & (train[risks] > 0).any(axis=1)]
    assert len(copies) == len(risky_frauds) > 0 and (copies[TX_FRAUD] == 1).all()
    original = risky_frauds.reset_index(drop=True)
    for risk, count in settings.threat_model.dilution.risk_features.items():
        assert (copies[risk] <= original[risk]).all() and (copies[count] >= original[count]).all()
        assert (copies[risk] < original[risk]).any()
    frauds = [c for c in train.columns if "_NB_FRAUD_" in c]
    pd.testing.assert_frame_equal(copies[frauds], original[frauds])


def test_no_dilution_copies_when_training_on_them_is_off(split):
    from fraudguard.training import dilution_copies

    settings = _settings({"train": {"dilution": {"enabled": False}}})
    assert dilution_copies(split[0], settings).empty
    result = train_model(split[0], settings, adversarial=False, progress=False)
    assert result.metrics()["dilution_copies"] == 0


def test_cosine_schedule_anneals_the_learning_rate_towards_zero_and_still_learns(split):
    from sklearn.metrics import average_precision_score

    epochs = 6
    cosine = train_model(split[0], _settings({"train": {"epochs": epochs, "lr_schedule": "cosine"}}), progress=False)
    rates = [h["learning_rate"] for h in cosine.history]
    start = _settings().train.learning_rate
    assert rates[0] == pytest.approx(start)
    assert all(later < earlier for earlier, later in zip(rates, rates[1:]))
    assert rates[-1] < start / 10  # the last epoch takes small steps
    test = split[1]
    y = test[TX_FRAUD].to_numpy()
    assert average_precision_score(y, cosine.bundle.predict_proba(test)) > 4 * y.mean()

    constant = train_model(split[0], _settings({"train": {"epochs": 2, "lr_schedule": "constant"}}), progress=False)
    assert [h["learning_rate"] for h in constant.history] == [start, start]


def test_an_unknown_learning_rate_schedule_is_refused_by_name():
    from fraudguard.errors import ConfigError

    with pytest.raises(ConfigError, match="lr_schedule"):
        _settings({"train": {"lr_schedule": "linear"}})


def _trainee(n_features: int = 3):
    from fraudguard.model import FraudMLP
    from fraudguard.training import Trainee

    torch.manual_seed(0)
    module = FraudMLP(n_features, [8], 0.0)
    return Trainee(module, torch.optim.Adam(module.parameters()), torch.nn.CrossEntropyLoss())


def _adversarial_cfg(**values):
    return _settings({"train": {"adversarial": {"objective": "trades", **values}}}).train.adversarial


def test_trades_loss_is_the_cross_entropy_when_adversarial_rows_score_like_their_clean_rows():
    from fraudguard.training import trades_loss

    trainee = _trainee()
    x = torch.randn(6, 3)
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    picked = y == 1
    loss = trades_loss(trainee, x, x.clone(), picked, y, _adversarial_cfg(trades_beta=5.0))
    with torch.no_grad():
        expected = float(trainee.loss_fn(trainee.module(x), y))
    assert float(loss.detach()) == pytest.approx(expected, abs=1e-6)


def test_trades_loss_adds_beta_times_the_kl_of_the_picked_rows_over_the_batch():
    from fraudguard.training import trades_loss

    trainee = _trainee()
    x = torch.randn(6, 3)
    x_adv = x.clone()
    picked = torch.tensor([False, True, False, True, False, False])
    x_adv[picked] += 2.0
    x_adv[~picked] -= 3.0  # unpicked rows: ignored by the KL term, and by the clean cross-entropy
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    with torch.no_grad():
        p_clean = torch.softmax(trainee.module(x[picked]), dim=1)
        p_adv = torch.softmax(trainee.module(x_adv[picked]), dim=1)
        kl = float((p_clean * (p_clean.log() - p_adv.log())).sum())
        ce_clean = float(trainee.loss_fn(trainee.module(x), y))
        ce_adv = float(trainee.loss_fn(trainee.module(x_adv), y))
    assert kl > 0
    clean = trades_loss(trainee, x, x_adv, picked, y, _adversarial_cfg(trades_beta=2.0))
    assert float(clean.detach()) == pytest.approx(ce_clean + 2.0 * kl / 6, rel=1e-5)
    on_adv = trades_loss(trainee, x, x_adv, picked, y,
                         _adversarial_cfg(trades_beta=2.0, trades_cross_entropy="adversarial"))
    assert float(on_adv.detach()) == pytest.approx(ce_adv + 2.0 * kl / 6, rel=1e-5)
    no_kl = trades_loss(trainee, x, x_adv, picked, y, _adversarial_cfg(trades_beta=0.0))
    assert float(no_kl.detach()) == pytest.approx(ce_clean, rel=1e-6)


def test_crafter_returns_a_copy_with_only_the_picked_rows_attacked_and_leaves_the_block_as_it_was(split):
    from fraudguard.threat import build_threat_model
    from fraudguard.training import build_crafter, build_model, prepare_data

    params = TrainingParams.of(_settings({"train": {"adversarial": {"classes": "fraud", "ratio": 1.0}}}))
    data = prepare_data(split[0], params)
    trainee = build_model(data, params)
    crafter = build_crafter(trainee, build_threat_model(params.threat_model, data.standardizer), params.train)
    x_block, y_block = data.x_fit[:2048].clone(), data.y_fit[:2048]
    before = x_block.clone()
    x_adv, picked = crafter.craft(x_block, y_block)
    assert torch.equal(x_block, before)
    assert torch.equal(picked, y_block == 1)  # classes fraud, ratio 1
    assert torch.equal(x_adv[~picked], x_block[~picked])
    assert (x_adv[picked] != x_block[picked]).any(dim=1).all()


def test_pgd_iterations_of_the_train_section_set_the_crafting_attacks_iterations(split):
    from fraudguard.attacks import masked_pgd
    from fraudguard.threat import build_threat_model
    from fraudguard.training import build_crafter, build_model, prepare_data

    params = TrainingParams.of(_settings({"train": {"adversarial": {"attack": "pgd", "pgd_iterations": 2,
                                                                   "classes": "fraud"}}}))
    data = prepare_data(split[0], params)
    trainee = build_model(data, params)
    threat = build_threat_model(params.threat_model, data.standardizer)
    crafter = build_crafter(trainee, threat, params.train)
    x_block, y_block = data.x_fit[:512], data.y_fit[:512]
    x_adv, picked = crafter.craft(x_block, y_block)
    frauds = x_block[picked].numpy()
    for iterations, same in ((2, True), (params.threat_model.pgd_iterations, False)):
        expected = masked_pgd(crafter.classifier, frauds, np.ones(len(frauds)), threat, threat.epsilon,
                              threat.eps_step, iterations, batch_size=len(frauds))
        assert np.allclose(x_adv[picked].numpy(), expected, atol=1e-6) is same


def test_trades_training_learns_and_differs_from_replacing_the_rows(split, trained):
    from sklearn.metrics import average_precision_score

    settings = _settings({"train": {"adversarial": {"objective": "trades", "trades_beta": 2.0,
                                                    "trades_cross_entropy": "adversarial"}}})
    result = train_model(split[0], settings, progress=False)
    test = split[1]
    y = test[TX_FRAUD].to_numpy()
    assert average_precision_score(y, result.bundle.predict_proba(test)) > 4 * y.mean()
    assert not torch.equal(result.bundle.module.state_dict()["net.0.weight"],
                           trained.bundle.module.state_dict()["net.0.weight"])


def test_early_stopping_on_robust_ap_keeps_the_epoch_with_the_best_attacked_validation_ap(split):
    from fraudguard.evaluation import robust_average_precision
    from fraudguard.threat import build_threat_model

    settings = _settings({"train": {"epochs": 6, "early_stopping_patience": 2, "learning_rate": 0.01,
                                    "early_stopping_metric": "robust_average_precision"}})
    result = train_model(split[0], settings, progress=False)
    robust = [h["val_robust_average_precision"] for h in result.history]
    best_epoch = result.extra["best_epoch"]
    assert robust[best_epoch - 1] == max(robust) == result.extra["best_val_robust_average_precision"]
    # The figure is the evaluation's robust AP of the kept weights on the validation slice.
    _, validation = split_validation(split[0], settings.train.validation_share)
    threat = build_threat_model(settings.threat_model, result.bundle.standardizer)
    assert robust_average_precision(result.bundle, validation, threat) == pytest.approx(max(robust), abs=1e-6)


def test_craft_epsilon_scale_crafts_training_rows_beyond_the_budget_within_its_margin(split):
    from fraudguard.threat import build_threat_model
    from fraudguard.training import build_crafter, build_model, prepare_data

    params = TrainingParams.of(_settings({"train": {"adversarial": {"attack": "fgsm", "craft_epsilon_scale": 1.5}}}))
    data = prepare_data(split[0], params)
    threat = build_threat_model(params.threat_model, data.standardizer)
    crafter = build_crafter(build_model(data, params), threat, params.train)
    x_block, y_block = data.x_fit[:2048], data.y_fit[:2048]
    x_adv, picked = crafter.craft(x_block, y_block)
    moved = (x_adv[picked] - x_block[picked]).abs().numpy()[:, threat.mask > 0]
    assert moved.max() > threat.epsilon * 1.01
    assert moved.max() <= threat.epsilon * 1.5 + 1e-5


def _penalty_threat():
    from fraudguard.threat import DerivedFeature, ThreatModel

    # amount (controlled), its customer average (derived, count in column 2), a count, a flag (controlled)
    derived = DerivedFeature(index=1, source=0, count_index=2, source_std=40.0, std=20.0, count_mean=3.0,
                             count_std=2.0)
    return ThreatModel(features=("A", "AVG", "N", "F"), controlled=("A", "F"),
                       mask=np.array([1, 0, 0, 1], dtype=np.float32), lower=np.full(4, -np.inf, dtype=np.float32),
                       upper=np.full(4, np.inf, dtype=np.float32), epsilon=0.5, eps_step=0.1, pgd_iterations=5,
                       derived=(derived,))


def test_gradient_penalty_drop_is_the_margins_slope_along_the_amount_with_its_average_plus_the_flags():
    from fraudguard.model import FraudMLP
    from fraudguard.training import MarginGradientPenalty

    torch.manual_seed(3)
    module = FraudMLP(4, [16], 0.0).eval()
    x = torch.randn(6, 4, dtype=torch.float32)
    x[:, 2] = torch.tensor([-1.0, 0.0, 0.5, 1.0, 2.0, 3.0])  # counts 1, 3, 4, 5, 7, 9
    penalty = MarginGradientPenalty(_penalty_threat(), weight=2.0, classes="fraud")

    def margin(z):
        with torch.no_grad():
            out = module(z.double().float())
        return (out[:, 1] - out[:, 0]).double()

    count = torch.clamp(torch.round(x[:, 2] * 2.0 + 3.0), min=1.0)
    along_amount = torch.zeros_like(x)
    along_amount[:, 0] = 1.0
    along_amount[:, 1] = (40.0 / 20.0) / count  # the average moves by d / count, in its own std units
    along_flag = torch.zeros_like(x)
    along_flag[:, 3] = 1.0
    h = 1e-3
    expected = sum(((margin(x + h * v) - margin(x - h * v)) / (2 * h)).abs() for v in (along_amount, along_flag))
    drop = penalty.first_order_drop(module, x).detach().double()
    assert torch.allclose(drop, expected, rtol=1e-2, atol=1e-3)

    y = torch.tensor([1, 0, 1, 0, 0, 0])
    loss = penalty.loss(module, x, y)
    assert float(loss.detach()) == pytest.approx(2.0 * float(((0.5 * drop[[0, 2]]) ** 2).sum()) / 6, rel=1e-5)
    assert float(MarginGradientPenalty(_penalty_threat(), 2.0, "fraud").loss(module, x, torch.zeros(6, dtype=torch.long))) == 0.0


def test_gradient_penalty_training_flattens_the_fraud_margin_along_what_the_attacker_controls(split, trained):
    from fraudguard.threat import build_threat_model
    from fraudguard.training import MarginGradientPenalty

    penalized = train_model(split[0], _settings({"train": {"gradient_penalty": 5.0}}), progress=False)
    test = split[1]
    frauds = test[test[TX_FRAUD] == 1]

    def mean_drop(bundle):
        threat = build_threat_model(_settings().threat_model, bundle.standardizer)
        x = torch.from_numpy(bundle.standardizer.transform(frauds))
        return float(MarginGradientPenalty(threat, 1.0, "fraud").first_order_drop(bundle.module, x).mean().detach())

    assert mean_drop(penalized.bundle) < 0.7 * mean_drop(trained.bundle)
