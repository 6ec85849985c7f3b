"""params.yaml validation: every mistake is refused with a message naming the key at fault."""

from __future__ import annotations

import pytest

from conftest import PROJECT_ROOT, small_params
from fraudguard.config import load_settings, merge_overrides, parse_settings
from fraudguard.errors import ConfigError


def _refused(overrides: dict, source: str = "params.yaml") -> str:
    with pytest.raises(ConfigError) as info:
        parse_settings(small_params(overrides), source=source)
    return str(info.value)


def test_the_committed_params_are_valid():
    settings = load_settings(PROJECT_ROOT / "params.yaml")
    assert settings.registry.model_name == "fraudguard"
    assert settings.as_params_dict()["validate"]["max_amount"] == settings.validate_.max_amount


def test_an_unknown_key_is_named_with_its_section():
    message = _refused({"train": {"epochz": 3}})
    assert message.startswith("params.yaml: invalid params:")
    assert "unknown key 'train.epochz'" in message


def test_an_unknown_section_is_named():
    assert "unknown key 'trian'" in _refused({"trian": {"epochs": 3}})


def test_a_missing_key_is_named():
    raw = small_params()
    del raw["gates"]["privacy"]["seed"]
    with pytest.raises(ConfigError, match=r"missing key 'gates\.privacy\.seed'"):
        parse_settings(raw)


def test_an_ill_typed_value_names_the_key_and_shows_the_value():
    message = _refused({"train": {"epochs": "three"}})
    assert "key 'train.epochs'" in message and "'three'" in message


@pytest.mark.parametrize(("overrides", "key"), [
    ({"train": {"epochs": 0}}, "train.epochs"),
    ({"train": {"validation_share": 0.5}}, "train.validation_share"),
    ({"model": {"dropout": 1.0}}, "model.dropout"),
    ({"gates": {"privacy": {"max_attack_auc": 0.4}}}, "gates.privacy.max_attack_auc"),
    ({"gates": {"quality": {"min_average_precision": 1.5}}}, "gates.quality.min_average_precision"),
    ({"validate": {"min_customer_history": 1}}, "validate.min_customer_history"),
    ({"serve": {"port": 70000}}, "serve.port"),
    ({"monitor": {"retrain_deployment": "no-slash"}}, "monitor.retrain_deployment"),
    ({"train": {"adversarial": {"trades_beta": -1.0}}}, "train.adversarial.trades_beta"),
    ({"train": {"adversarial": {"pgd_iterations": 0}}}, "train.adversarial.pgd_iterations"),
    ({"train": {"gradient_penalty": -0.5}}, "train.gradient_penalty"),
])
def test_an_out_of_range_value_names_the_key_and_the_value(overrides, key):
    message = _refused(overrides)
    assert f"key '{key}'" in message
    value = overrides
    while isinstance(value, dict):
        value = next(iter(value.values()))
    assert f"(got {value!r})" in message


def test_a_choice_outside_its_list_is_refused():
    assert "key 'train.adversarial.attack'" in _refused({"train": {"adversarial": {"attack": "cw"}}})


@pytest.mark.parametrize(("overrides", "key"), [
    ({"train": {"adversarial": {"objective": "mart"}}}, "train.adversarial.objective"),
    ({"train": {"adversarial": {"trades_cross_entropy": "both"}}}, "train.adversarial.trades_cross_entropy"),
    ({"train": {"early_stopping_metric": "roc_auc"}}, "train.early_stopping_metric"),
    ({"train": {"gradient_penalty_classes": "legit"}}, "train.gradient_penalty_classes"),
])
def test_a_robust_training_choice_outside_its_list_is_named(overrides, key):
    assert f"key '{key}'" in _refused(overrides)


def test_robust_training_keys_default_to_replacing_rows_and_stopping_on_clean_ap():
    raw = small_params()
    for key in ("objective", "trades_beta", "trades_cross_entropy", "pgd_iterations"):
        raw["train"]["adversarial"].pop(key, None)
    raw["train"].pop("early_stopping_metric", None)
    train = parse_settings(raw).train
    assert train.adversarial.objective == "replace"
    assert train.adversarial.pgd_iterations is None
    assert train.early_stopping_metric == "average_precision"


def test_linear_term_and_gradient_penalty_default_to_off():
    raw = small_params()
    raw["model"].pop("linear_term", None)
    raw["train"].pop("gradient_penalty", None)
    settings = parse_settings(raw)
    assert settings.model.linear_term is False
    assert settings.train.gradient_penalty == 0.0


def test_history_contrasts_without_history_inputs_are_refused():
    message = _refused({"model": {"history_inputs": False, "history_contrasts": True}})
    assert "history_contrasts: true needs history_inputs: true" in message


def test_non_positive_robustness_epsilons_are_refused():
    assert "every epsilon must be > 0" in _refused({"gates": {"robustness": {"epsilons": [0.5, 0.0]}}})


def test_repeated_feature_windows_are_refused():
    message = _refused({"featurize": {"windows_days": [1, 7, 7]}})
    assert "key 'featurize.windows_days'" in message and "distinct positive" in message


def test_a_split_by_dates_and_periods_at_once_is_refused():
    message = _refused({"featurize": {"split": {"train_start": "2024-04-01", "train_end": "2024-05-01",
                                                "test_start": "2024-05-08", "test_end": "2024-05-20"}}})
    assert "key 'featurize.split'" in message and "either dates or periods" in message


def test_split_dates_out_of_order_are_refused():
    message = _refused({"featurize": {"split": {
        "train_days": None, "delay_gap_days": None, "test_days": None,
        "train_start": "2024-05-01", "train_end": "2024-04-01", "test_start": "2024-05-08", "test_end": "2024-05-20"}}})
    assert "train_start <= train_end < test_start <= test_end" in message


def test_bounds_with_min_above_max_are_refused():
    message = _refused({"threat_model": {"controlled_features": {"TX_AMOUNT": {"min": 10.0, "max": 1.0}}}})
    assert "key 'threat_model.controlled_features.TX_AMOUNT'" in message and "min 10.0 > max 1.0" in message


def test_a_controlled_feature_the_model_does_not_use_is_refused():
    message = _refused({"threat_model": {"controlled_features": {"NOT_A_FEATURE": {"min": 0.0, "max": 1.0}}}})
    assert "controlled_features names features the model does not use: ['NOT_A_FEATURE']" in message


def test_a_derived_feature_whose_source_is_not_controlled_is_refused():
    message = _refused({"threat_model": {"derived_features": {
        "CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW": {"source": "TX_TIME_SECONDS", "count": "CUSTOMER_ID_NB_TX_1DAY_WINDOW"}}}})
    assert "source TX_TIME_SECONDS is not a controlled feature" in message


def test_a_time_zone_on_min_timestamp_is_refused():
    message = _refused({"validate": {"min_timestamp": "2020-01-01T00:00:00+02:00"}})
    assert "key 'validate.min_timestamp'" in message and "no time zone" in message


def test_every_problem_is_reported_at_once():
    message = _refused({"train": {"epochs": 0, "batch_size": -1, "epochz": 1}})
    assert all(part in message for part in ("'train.epochs'", "'train.batch_size'", "'train.epochz'"))


def test_params_that_are_not_a_mapping_are_refused():
    with pytest.raises(ConfigError, match=r"params\.yaml: top level must be a mapping, got list"):
        parse_settings([1, 2], source="params.yaml")


def test_unreadable_and_malformed_params_files_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"absent\.yaml: cannot read params file"):
        load_settings(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML"):
        load_settings(broken)


def test_dotted_overrides_merge_into_their_section_and_keep_its_other_keys():
    merged = merge_overrides({"train": {"epochs": 3, "seed": 7}}, {"train.epochs": 5})
    assert merged == {"train": {"epochs": 5, "seed": 7}}


def test_data_remote_url_with_a_password_is_refused_without_echoing_it():
    raw = small_params({"data_remote": {"url": "ssh://fraud:s3cret@storage.example/dvc"}})
    with pytest.raises(ConfigError, match=r"data_remote\.url.*carries a password") as refused:
        parse_settings(raw)
    assert "s3cret" not in str(refused.value)


def test_data_remote_url_without_credentials_is_kept_as_written():
    for url in ("s3://bucket/fraudguard", "ssh://fraud@storage.example/dvc", "/mnt/shared/dvc", "../shared"):
        assert parse_settings(small_params({"data_remote": {"url": url}})).data_remote.url == url
    assert parse_settings(small_params()).data_remote.url is None


def test_a_params_file_repeating_a_key_is_refused_naming_it(tmp_path):
    # yaml.safe_load keeps the last: a second `gates:` block appended below would replace every threshold above.
    text = (PROJECT_ROOT / "params.yaml").read_text(encoding="utf-8")
    (tmp_path / "params.yaml").write_text(text + "\ngates:\n  quality:\n    min_average_precision: 0.0\n")
    with pytest.raises(ConfigError, match=r"params.yaml: not valid YAML: .*duplicate key 'gates'"):
        load_settings(tmp_path / "params.yaml")
    (tmp_path / "nested.yaml").write_text(text.replace("train:\n", "train:\n  epochs: 1\n  epochs: 2\n", 1))
    with pytest.raises(ConfigError, match="duplicate key 'epochs'"):
        load_settings(tmp_path / "nested.yaml")


@pytest.mark.parametrize("key, value", [
    ("gates.robustness.epsilons", [float("nan")]),
    ("gates.robustness.epsilons", [1.0, float("inf")]),
    ("threat_model.controlled_features.TX_AMOUNT.max", float("nan")),
    ("threat_model.epsilon", float("nan")),
    ("gates.quality.min_average_precision", float("inf")),
])
def test_a_threshold_or_budget_that_is_not_a_finite_number_is_refused_naming_the_key(key, value):
    # NaN fails no comparison a bound or a gate makes (NaN <= 0 is false): a NaN epsilon or bound used to load.
    with pytest.raises(ConfigError, match="finite number") as raised:
        load_settings(PROJECT_ROOT / "params.yaml", {key: value})
    assert key.split(".")[-1] in str(raised.value)


@pytest.mark.parametrize("key, value", [
    ("gates.robustness.min_robust_recall", True),    # read as 1.0: no candidate passes
    ("gates.robustness.epsilons", [1.0, True]),
    ("train.seed", False),                           # read as 0
    ("gates.privacy.max_attack_auc", True),
    ("train.adversarial.enabled", 1),                # a number where a switch is expected
    ("promotion.approval.required", "yes"),
])
def test_true_or_false_where_a_number_is_expected_and_a_number_for_a_switch_are_refused(key, value):
    with pytest.raises(ConfigError, match="true/false where a value is expected|must be true or false") as raised:
        load_settings(PROJECT_ROOT / "params.yaml", {key: value})
    assert key in str(raised.value)


def test_a_dask_scheduler_is_accepted_only_over_mutual_tls(tmp_path):
    # The scheduler runs the pickled tasks its clients send, on workers holding the signing key: a plain tcp://
    # address let anyone who could reach it run code there.
    with pytest.raises(ConfigError, match="compute.dask_address"):
        load_settings(PROJECT_ROOT / "params.yaml", {"compute.dask_address": "tcp://scheduler:8786"})
    with pytest.raises(ConfigError, match="dask_address needs dask_tls_ca_file, dask_tls_cert_file, dask_tls_key_file"):
        load_settings(PROJECT_ROOT / "params.yaml", {"compute.dask_address": "tls://scheduler:8786"})
    files = {f"compute.dask_tls_{name}": str(tmp_path / name) for name in ("ca_file", "cert_file", "key_file")}
    settings = load_settings(PROJECT_ROOT / "params.yaml", {"compute.dask_address": "tls://scheduler:8786", **files})
    from fraudguard.compute import dask_client_security, local_cluster_security

    security = dask_client_security(settings.compute)
    assert security.require_encryption and security.tls_client_cert == str(tmp_path / "cert_file")
    assert local_cluster_security().require_encryption


@pytest.mark.parametrize("url", ["redis://:s3cret@cache:6379/0", "redis://cache:6379/0?password=s3cret",
                                 "rediss://user:s3cret@cache:6380/1"])
def test_a_redis_url_with_a_password_is_refused_without_echoing_it(url):
    with pytest.raises(ConfigError, match="FRAUDGUARD_REDIS_URL") as raised:
        load_settings(PROJECT_ROOT / "params.yaml", {"serve.state.redis_url": url})
    assert "s3cret" not in str(raised.value)


def test_the_redis_url_in_logs_hides_a_password_in_the_user_part_and_in_the_query():
    from fraudguard.serving.redis_state import _redacted

    assert _redacted("redis://:s3cret@cache:6379/0") == "redis://:***@cache:6379/0"
    assert _redacted("redis://cache:6379/0?db=1&password=s3cret") == "redis://cache:6379/0?db=1&password=***"
    assert _redacted("redis://cache:6379/0") == "redis://cache:6379/0"


def test_a_gap_shorter_than_the_label_delay_is_refused_for_periods_and_for_dates():
    # A gap of 0 with a 7-day label delay trained on 1,404 rows whose labels nobody had on the first test day.
    message = _refused({"featurize": {"split": {"delay_gap_days": 0}}})
    assert "at least label_delay_days (7): delay_gap_days is 0" in message
    message = _refused({"featurize": {"split": {
        "train_days": None, "delay_gap_days": None, "test_days": None,
        "train_start": "2024-03-01", "train_end": "2024-03-31", "test_start": "2024-04-01", "test_end": "2024-04-20"}}})
    assert "at least label_delay_days (7): 2024-03-31 to 2024-04-01 leaves 0 day(s)" in message
