"""FraudMLP, Standardizer and the saved model bundle (weights + preprocess.json)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from fraudguard.errors import ModelError
from fraudguard.files import sha256_file
from fraudguard.model import (
    FraudMLP,
    HistoryInputs,
    ModelBundle,
    Standardizer,
    build_module,
    load_bundle,
    save_bundle,
)

FEATURES = ("TX_AMOUNT", "TX_DURING_NIGHT", "CUSTOMER_ID_NB_TX_1DAY_WINDOW")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _frame(n: int, seed: int, amount_mean: float = 50.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "TX_AMOUNT": rng.normal(amount_mean, 20.0, n),
        "TX_DURING_NIGHT": rng.integers(0, 2, n),
        "CUSTOMER_ID_NB_TX_1DAY_WINDOW": rng.integers(1, 6, n),
    })


def _bundle(seed: int = 0) -> ModelBundle:
    torch.manual_seed(seed)
    module = FraudMLP(len(FEATURES), (8, 4), 0.1).eval()
    return ModelBundle(module=module, standardizer=Standardizer.fit(_frame(200, seed), FEATURES),
                       hidden_sizes=(8, 4), dropout=0.1, threshold=0.37)


def test_fraud_mlp_returns_two_logits_per_row():
    module = FraudMLP(n_features=5, hidden_sizes=[16, 8], dropout=0.2)
    assert module(torch.zeros(7, 5)).shape == (7, 2)


def test_standardizer_statistics_come_from_the_fitted_frame_only():
    train, test = _frame(500, 1), _frame(500, 2, amount_mean=500.0)
    standardizer = Standardizer.fit(train, FEATURES)
    assert standardizer.mean[0] == pytest.approx(train["TX_AMOUNT"].mean())
    assert standardizer.std[0] == pytest.approx(train["TX_AMOUNT"].std(ddof=0))
    # The later split is far away in standardized units: nothing of it leaked into the fit.
    assert standardizer.transform(test)[:, 0].mean() > 10


def test_standardizer_gives_a_constant_column_unit_std():
    frame = _frame(50, 3).assign(TX_DURING_NIGHT=1)
    standardizer = Standardizer.fit(frame, FEATURES)
    assert standardizer.std[1] == 1.0
    assert np.all(standardizer.transform(frame)[:, 1] == 0.0)


def test_standardizer_round_trips_through_a_dict():
    standardizer = Standardizer.fit(_frame(100, 4), FEATURES)
    restored = Standardizer.from_dict(json.loads(json.dumps(standardizer.to_dict())))
    frame = _frame(20, 5)
    assert restored.features == FEATURES
    np.testing.assert_array_equal(restored.transform(frame), standardizer.transform(frame))


def test_transform_names_the_missing_feature_columns():
    standardizer = Standardizer.fit(_frame(10, 6), FEATURES)
    with pytest.raises(ModelError, match="TX_DURING_NIGHT"):
        standardizer.transform(_frame(10, 6).drop(columns=["TX_DURING_NIGHT"]))


def test_transform_refuses_nan_features():
    frame = _frame(10, 7)
    frame.loc[3, "TX_AMOUNT"] = np.nan
    with pytest.raises(ModelError, match="TX_AMOUNT"):
        Standardizer.fit(frame, FEATURES)


def test_saved_bundle_loads_and_scores_identically(tmp_path):
    bundle = _bundle()
    sha = save_bundle(bundle, tmp_path / "model.pt", tmp_path / "preprocess.json")
    loaded = load_bundle(tmp_path / "model.pt", tmp_path / "preprocess.json", expected_sha256=sha)
    frame = _frame(64, 8)
    np.testing.assert_array_equal(loaded.predict_proba(frame), bundle.predict_proba(frame))
    assert (loaded.threshold, loaded.hidden_sizes, loaded.features) == (0.37, (8, 4), FEATURES)
    assert sha == sha256_file(tmp_path / "model.pt")


def test_load_bundle_refuses_weights_whose_sha256_differs(tmp_path):
    bundle = _bundle()
    save_bundle(bundle, tmp_path / "model.pt", tmp_path / "preprocess.json")
    with pytest.raises(ModelError, match="model.pt.*sha256"):
        load_bundle(tmp_path / "model.pt", tmp_path / "preprocess.json", expected_sha256="0" * 64)


def test_load_bundle_detects_weights_replaced_after_registration(tmp_path):
    sha = save_bundle(_bundle(seed=0), tmp_path / "model.pt", tmp_path / "preprocess.json")
    save_bundle(_bundle(seed=1), tmp_path / "model.pt", tmp_path / "other.json")
    with pytest.raises(ModelError, match="does not match"):
        load_bundle(tmp_path / "model.pt", tmp_path / "preprocess.json", expected_sha256=sha)


def test_load_bundle_refuses_weights_of_another_architecture(tmp_path):
    save_bundle(_bundle(), tmp_path / "model.pt", tmp_path / "preprocess.json")
    meta = json.loads((tmp_path / "preprocess.json").read_text())
    meta["hidden_sizes"] = [16, 4]
    (tmp_path / "preprocess.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="do not fit the architecture"):
        load_bundle(tmp_path / "model.pt", tmp_path / "preprocess.json")


def test_load_bundle_refuses_a_pickled_object_in_place_of_weights(tmp_path):
    save_bundle(_bundle(), tmp_path / "model.pt", tmp_path / "preprocess.json")
    # A whole pickled module (not a state_dict) is what weights_only loading exists to refuse.
    torch.save(FraudMLP(3, (8, 4), 0.1), tmp_path / "model.pt")
    with pytest.raises(ModelError, match="weights-only"):
        load_bundle(tmp_path / "model.pt", tmp_path / "preprocess.json")


def test_predict_flags_rows_at_or_above_the_threshold():
    bundle = _bundle()
    frame = _frame(200, 9)
    scores = bundle.predict_proba(frame)
    bundle.threshold = float(np.median(scores))
    np.testing.assert_array_equal(bundle.predict(frame), scores >= bundle.threshold)


def test_linear_term_mlp_adds_a_linear_term_on_every_input_to_the_mlps_logits():
    torch.manual_seed(0)
    module = FraudMLP(n_features=4, hidden_sizes=[8], dropout=0.0, linear_term=True).eval()
    x = torch.randn(5, 4)
    with torch.no_grad():
        assert torch.allclose(module(x), module.net(x) + module.linear(x))
        module.net[-1].weight.zero_()
        module.net[-1].bias.zero_()
        assert torch.allclose(module(x), x @ module.linear.weight.T + module.linear.bias)


def test_plain_mlp_has_no_linear_term_and_its_preprocess_json_no_linear_term_key(tmp_path):
    bundle = _bundle()
    assert bundle.module.linear is None
    save_bundle(bundle, tmp_path / "model.pt", tmp_path / "preprocess.json")
    assert "linear_term" not in json.loads((tmp_path / "preprocess.json").read_text())


def test_linear_term_bundle_round_trips_and_scores_the_same_after_loading(tmp_path):
    torch.manual_seed(1)
    module = FraudMLP(len(FEATURES), (8, 4), 0.1, linear_term=True).eval()
    bundle = ModelBundle(module=module, standardizer=Standardizer.fit(_frame(200, 1), FEATURES),
                         hidden_sizes=(8, 4), dropout=0.1, threshold=0.37, linear_term=True)
    save_bundle(bundle, tmp_path / "model.pt", tmp_path / "preprocess.json")
    loaded = load_bundle(tmp_path / "model.pt", tmp_path / "preprocess.json")
    assert loaded.linear_term and loaded.module.linear is not None
    frame = _frame(30, 5)
    assert np.array_equal(loaded.predict_proba(frame), bundle.predict_proba(frame))


def test_load_bundle_refuses_a_linear_term_flag_that_is_not_a_boolean(tmp_path):
    save_bundle(_bundle(), tmp_path / "model.pt", tmp_path / "preprocess.json")
    meta = json.loads((tmp_path / "preprocess.json").read_text())
    meta["linear_term"] = "yes"
    (tmp_path / "preprocess.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="linear_term must be true or false"):
        load_bundle(tmp_path / "model.pt", tmp_path / "preprocess.json")


HISTORY_FEATURES = ("TX_AMOUNT", "CUSTOMER_ID_NB_TX_1DAY_WINDOW", "CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW",
                    "CUSTOMER_ID_NB_TX_1HOUR_WINDOW", "CUSTOMER_ID_SPEND_1HOUR_WINDOW", "TX_DURING_NIGHT")


def _history_frame() -> pd.DataFrame:
    # Row 0: two earlier payments today of 30 and 50 (average with this one 60), one earlier this hour (30).
    # Row 1: the card's first payment of the day and of the hour: no history, past average and spend 0.
    return pd.DataFrame({
        "TX_AMOUNT": [100.0, 50.0, 20.0], "CUSTOMER_ID_NB_TX_1DAY_WINDOW": [3, 1, 2],
        "CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW": [60.0, 50.0, 30.0], "CUSTOMER_ID_NB_TX_1HOUR_WINDOW": [2, 1, 1],
        "CUSTOMER_ID_SPEND_1HOUR_WINDOW": [130.0, 50.0, 20.0], "TX_DURING_NIGHT": [0, 1, 0],
    })


def test_history_inputs_are_the_cards_average_and_spend_before_the_transaction():
    frame = _history_frame()
    standardizer = Standardizer.fit(frame, HISTORY_FEATURES)
    history = HistoryInputs(standardizer.features, standardizer.mean, standardizer.std)
    got = history(torch.from_numpy(standardizer.transform(frame))).numpy()
    amount_mean, amount_std = standardizer.mean[0], standardizer.std[0]
    spend_mean, spend_std = standardizer.mean[4], standardizer.std[4]
    expected = np.array([[(40.0 - amount_mean) / amount_std, (30.0 - spend_mean) / spend_std],
                         [(0.0 - amount_mean) / amount_std, (0.0 - spend_mean) / spend_std],
                         [(40.0 - amount_mean) / amount_std, (0.0 - spend_mean) / spend_std]])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_history_contrasts_are_log_ratios_of_recent_history_to_the_longest_window():
    frame = pd.DataFrame({
        "TX_AMOUNT": [100.0, 50.0, 20.0],
        "CUSTOMER_ID_NB_TX_1DAY_WINDOW": [3, 1, 2], "CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW": [60.0, 50.0, 30.0],
        "CUSTOMER_ID_NB_TX_30DAY_WINDOW": [11, 5, 2], "CUSTOMER_ID_AVG_AMOUNT_30DAY_WINDOW": [20.0, 30.0, 30.0],
        "CUSTOMER_ID_SPEND_1HOUR_WINDOW": [130.0, 50.0, 20.0],
    })
    standardizer = Standardizer.fit(frame, tuple(frame.columns))
    history = HistoryInputs(standardizer.features, standardizer.mean, standardizer.std, contrasts=True)
    assert history.n_outputs == 3 + 2  # past 1-day and 30-day averages, past hour spend; two contrasts
    got = history(torch.from_numpy(standardizer.transform(frame))).numpy()[:, 3:]
    # Row 0: past 1-day average (180 - 100) / 2 = 40, past 30-day average (220 - 100) / 10 = 12, past spend 30.
    # Row 1: no earlier payment today (contrasts 0). Row 2: past 1-day = past 30-day = 40; no earlier spend.
    expected = np.array([[np.log1p(40.0) - np.log1p(12.0), np.log1p(30.0) - np.log1p(12.0)],
                         [0.0, 0.0],
                         [0.0, 0.0]])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("contrasts", [False, True], ids=["past", "past-and-contrasts"])
def test_history_inputs_do_not_move_when_the_threat_model_moves_the_amount(small_settings, contrasts):
    from fraudguard.threat import build_threat_model

    features = small_settings.model.features
    rng = np.random.default_rng(3)
    n = 300
    counts = rng.integers(1, 9, size=(n, 3))
    frame = pd.DataFrame({name: rng.integers(0, 2, n).astype(float) for name in features})
    frame["TX_AMOUNT"] = rng.uniform(5.0, 300.0, n)
    for column, window in enumerate(("1DAY", "7DAY", "30DAY")):
        past = rng.uniform(0.0, 80.0, n) * (counts[:, column] - 1)
        frame[f"CUSTOMER_ID_NB_TX_{window}_WINDOW"] = counts[:, column]
        frame[f"CUSTOMER_ID_AVG_AMOUNT_{window}_WINDOW"] = (past + frame["TX_AMOUNT"]) / counts[:, column]
    frame["CUSTOMER_ID_SPEND_1HOUR_WINDOW"] = frame["TX_AMOUNT"] + rng.uniform(0.0, 100.0, n)
    standardizer = Standardizer.fit(frame, features)
    threat = build_threat_model(small_settings.threat_model, standardizer)
    history = HistoryInputs(standardizer.features, standardizer.mean, standardizer.std, contrasts=contrasts)
    x = standardizer.transform(frame)
    attacked = threat.project(x + rng.uniform(-1.0, 1.0, x.shape).astype(np.float32), x, eps=1.0)
    amount = features.index("TX_AMOUNT")
    assert np.abs(attacked[:, amount] - x[:, amount]).max() > 0.5  # the amount did move
    # Three day windows with their counts, one hour spend; with contrasts, two day windows and the spend against 30.
    assert history.n_outputs == (7 if contrasts else 4)
    np.testing.assert_allclose(history(torch.from_numpy(attacked)).numpy(), history(torch.from_numpy(x)).numpy(),
                               rtol=0, atol=1e-4)


def test_history_inputs_bundle_round_trips_and_scores_the_same_after_loading(tmp_path):
    frame = pd.concat([_history_frame()] * 10, ignore_index=True)
    frame["TX_AMOUNT"] += np.arange(len(frame), dtype=float)
    frame["CUSTOMER_ID_SPEND_1HOUR_WINDOW"] += np.arange(len(frame), dtype=float)
    standardizer = Standardizer.fit(frame, HISTORY_FEATURES)
    torch.manual_seed(2)
    module = build_module(standardizer, (8, 4), 0.1, history_inputs=True).eval()
    assert module.net[0].in_features == len(HISTORY_FEATURES) + 2
    bundle = ModelBundle(module=module, standardizer=standardizer, hidden_sizes=(8, 4), dropout=0.1,
                         threshold=0.37, history_inputs=True)
    save_bundle(bundle, tmp_path / "model.pt", tmp_path / "preprocess.json")
    assert json.loads((tmp_path / "preprocess.json").read_text())["history_inputs"] is True
    assert set(torch.load(tmp_path / "model.pt", weights_only=True)) == set(_bundle().module.state_dict())
    loaded = load_bundle(tmp_path / "model.pt", tmp_path / "preprocess.json")
    assert loaded.history_inputs and loaded.module.history is not None
    assert np.array_equal(loaded.predict_proba(frame), bundle.predict_proba(frame))


def test_history_inputs_need_the_amount_and_a_customer_window():
    standardizer = Standardizer.fit(_frame(20, 0), FEATURES)
    with pytest.raises(ModelError, match="customer average with its count"):
        build_module(standardizer, (4,), 0.0, history_inputs=True)
    no_amount = Standardizer.fit(_history_frame(), HISTORY_FEATURES[1:])
    with pytest.raises(ModelError, match="need the TX_AMOUNT feature"):
        build_module(no_amount, (4,), 0.0, history_inputs=True)


def test_load_bundle_refuses_a_history_inputs_flag_that_is_not_a_boolean(tmp_path):
    save_bundle(_bundle(), tmp_path / "model.pt", tmp_path / "preprocess.json")
    meta = json.loads((tmp_path / "preprocess.json").read_text())
    meta["history_inputs"] = 1
    (tmp_path / "preprocess.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="history_inputs must be true or false"):
        load_bundle(tmp_path / "model.pt", tmp_path / "preprocess.json")


def test_a_history_inputs_bundle_whose_flag_was_removed_is_refused_as_weights_that_do_not_fit(tmp_path):
    standardizer = Standardizer.fit(_history_frame(), HISTORY_FEATURES)
    module = build_module(standardizer, (8, 4), 0.1, history_inputs=True).eval()
    save_bundle(ModelBundle(module=module, standardizer=standardizer, hidden_sizes=(8, 4), dropout=0.1,
                            threshold=0.37, history_inputs=True), tmp_path / "model.pt", tmp_path / "preprocess.json")
    meta = json.loads((tmp_path / "preprocess.json").read_text())
    del meta["history_inputs"]
    (tmp_path / "preprocess.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="weights do not fit the architecture"):
        load_bundle(tmp_path / "model.pt", tmp_path / "preprocess.json")


def test_history_contrasts_bundle_round_trips_and_need_the_history_inputs(tmp_path):
    frame = pd.concat([_history_frame()] * 10, ignore_index=True)
    frame["TX_AMOUNT"] += np.arange(len(frame), dtype=float)
    standardizer = Standardizer.fit(frame, HISTORY_FEATURES)
    with pytest.raises(ModelError, match="history_contrasts needs history_inputs"):
        build_module(standardizer, (8, 4), 0.1, history_contrasts=True)
    torch.manual_seed(2)
    module = build_module(standardizer, (8, 4), 0.1, history_inputs=True, history_contrasts=True).eval()
    assert module.net[0].in_features == len(HISTORY_FEATURES) + 2 + 1  # past average and spend; spend contrast
    bundle = ModelBundle(module=module, standardizer=standardizer, hidden_sizes=(8, 4), dropout=0.1,
                         threshold=0.37, history_inputs=True, history_contrasts=True)
    save_bundle(bundle, tmp_path / "model.pt", tmp_path / "preprocess.json")
    meta = json.loads((tmp_path / "preprocess.json").read_text())
    assert meta["history_contrasts"] is True
    loaded = load_bundle(tmp_path / "model.pt", tmp_path / "preprocess.json")
    assert loaded.history_contrasts and loaded.module.history is not None and loaded.module.history.contrasts
    assert np.array_equal(loaded.predict_proba(frame), bundle.predict_proba(frame))
    meta["history_contrasts"] = "yes"
    (tmp_path / "preprocess.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="history_contrasts must be true or false"):
        load_bundle(tmp_path / "model.pt", tmp_path / "preprocess.json")


def _edited(tmp_path, **changes):
    save_bundle(_bundle(), tmp_path / "model.pt", tmp_path / "preprocess.json")
    meta = json.loads((tmp_path / "preprocess.json").read_text())
    meta.update(changes)
    (tmp_path / "preprocess.json").write_text(json.dumps(meta))
    return tmp_path / "model.pt", tmp_path / "preprocess.json"


@pytest.mark.parametrize("changes, named", [
    ({"hidden_sizes": [10**9]}, "hidden_sizes must be"),          # allocated ~96 GB before the shape check
    ({"hidden_sizes": [4000] * 40}, "hidden_sizes must be"),
    ({"hidden_sizes": [-1]}, "hidden_sizes must be"),              # a bare RuntimeError
    ({"threshold": -1}, "threshold must be a number in"),          # flagged every row
    ({"threshold": 2.0}, "threshold must be a number in"),         # flagged none
    ({"threshold": True}, "threshold must be a number in"),        # read as 1.0
    ({"threshold": "0.5"}, "threshold must be a number in"),
    ({"dropout": float("nan")}, "dropout must be a number in"),    # loaded, every predict raised
    ({"std": [float("inf")] * 3}, "finite float32"),               # passed `> 0`: every score NaN
    ({"std": [1e-300] * 3}, "finite float32"),
    ({"mean": [1e300] * 3}, "finite float32"),
    ({"std": [[1.0, 1.0, 1.0]] * 3}, "3 features but"),            # 2-D: history inputs read a row, not a number
    ({"features": ["TX_AMOUNT", "TX_AMOUNT", "TX_DURING_NIGHT"]}, "distinct names"),
])
def test_a_preprocessing_file_out_of_range_is_refused_naming_the_field_before_anything_is_allocated(
        tmp_path, changes, named):
    weights, preprocess = _edited(tmp_path, **changes)
    with pytest.raises(ModelError, match=named):
        load_bundle(weights, preprocess)


def test_deeply_nested_json_is_a_model_error_not_a_recursion_error(tmp_path):
    weights, preprocess = _edited(tmp_path)
    preprocess.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ModelError, match="not readable JSON"):
        load_bundle(weights, preprocess)


@pytest.mark.parametrize("poison", ["nan", "int", "compressed"])
def test_weights_that_are_not_finite_floats_or_a_compressed_archive_are_refused(tmp_path, poison):
    import zipfile

    weights, preprocess = _edited(tmp_path)
    state = torch.load(weights, weights_only=True)
    first = next(iter(state))
    if poison == "nan":
        state[first] = state[first].clone().fill_(float("nan"))   # loaded, scored NaN: never flagged
    elif poison == "int":
        state[first] = state[first].round().to(torch.int64)         # silently cast, other scores
    torch.save(state, weights)
    if poison == "compressed":  # torch.load inflates deflated entries: 600 KB held 600 MB
        packed = tmp_path / "packed.pt"
        with zipfile.ZipFile(weights) as src, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as dst:
            for info in src.infolist():
                dst.writestr(info.filename, src.read(info))
        weights = packed
    with pytest.raises(ModelError, match="not finite floating point|compressed entries"):
        load_bundle(weights, preprocess)


def test_a_value_that_overflows_once_standardized_is_refused_not_scored_nan(tmp_path):
    # 1e300 is finite in float64: it became inf in float32, the score NaN, and `NaN >= threshold` "not fraud".
    from fraudguard.pyfunc_model import score_frame

    bundle = _bundle()
    frame = _frame(5, 3)
    frame.loc[2, "TX_AMOUNT"] = 1e300
    with pytest.raises(ModelError, match="'TX_AMOUNT' = 1e\\+300 \\(row 2\\) is out of the model's range"):
        score_frame(bundle, frame)
