"""FraudMLP, Standardizer and the saved model bundle (weights + preprocess.json)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from fraudguard.errors import ModelError
from fraudguard.files import sha256_file
from fraudguard.model import FraudMLP, ModelBundle, Standardizer, load_bundle, save_bundle

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
