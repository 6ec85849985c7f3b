"""The scoring gateway, served for real by uvicorn on 127.0.0.1 against a real sqlite MLflow store whose
champion was promoted through the promotion API (stand-in gates, committed policy).

Order matters within the module (one gateway, one store, as in production): parity first and the monitor on
that undrifted replay, then explanations, hostile input, auth and rate limits, restart, the Redis state shared
by two gateway processes, the hot switch, a hand-moved alias, the tampered champion, and the monitor on a drifted
replay last.

The champions' training split (their drift reference and standardization) is the simulated world's own
featurized history before the replay, so the replayed test period is undrifted traffic.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from fraudguard.config import Settings, load_settings, merge_overrides, parse_settings
from fraudguard.features import compute_features, feature_names
from fraudguard.policy import committed_policy
from fraudguard.promotion import decide, prepare, rollback, run_gates
from fraudguard.registry import get_champion_version
from fraudguard.serving.predictions import read_prediction_log
from fraudguard.serving.runner import ThreadedServer, build_app
from fraudguard.serving.security import load_api_clients

from conftest import small_params
from local_services import RedisServer, free_port, stop_process_group, wait_for_health
from registry_helpers import all_passing_gates, candidate_for, commit_params, served_weights_file, simple_context, \
    write_pipeline_outputs

pytestmark = pytest.mark.slow

NAME = "fraudguard"
KEY = "bank-key-0123456789abcdef"
SLOW_KEY = "slow-key-0123456789abcdef"
METER_KEY = "meter-key-0123456789abcdef"
LABELLER_KEY = "labeller-key-0123456789abcdef"
REPLAY_DAYS = 7
_ids = itertools.count(10**12)


@dataclass
class Served:
    root: Path
    client: MlflowClient
    settings: Settings          # the project's (committed) settings: promotion and rollback
    serve_settings: Settings    # the gateway's
    uri: str
    versions: list[int]
    data: pd.DataFrame          # the simulated world
    offline: pd.DataFrame       # its features as the featurize stage computes them
    cutoff: pd.Timestamp        # history before it was bootstrapped; the replay starts there
    base: Path
    server: ThreadedServer | None = None

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def gateway(self):
        return self.server.app.gateway

    def start(self) -> None:
        self.server = self.start_gateway(self.serve_settings)

    def start_gateway(self, settings: Settings) -> ThreadedServer:
        clients = load_api_clients(settings.serve, env={"FRAUDGUARD_API_KEYS_FILE": str(self.base / "keys.yaml")})
        return ThreadedServer(build_app(self.root, settings, self.uri, clients)).start()

    def settings_with(self, serve: dict) -> Settings:
        """The gateway's settings with `serve` overrides (another state store, log, cache)."""
        return parse_settings(merge_overrides(json.loads(json.dumps(self.serve_settings.as_params_dict())),
                                              {"serve": serve}))

    def promote(self, version: int) -> None:
        report_dir = self.root / "reports" / "setup" / f"v{version}-{time.monotonic_ns()}"
        report_dir.mkdir(parents=True, exist_ok=True)
        run = prepare(self.client, self.root, self.settings, version,
                      policy=committed_policy(self.root, self.settings), gates=all_passing_gates(),
                      candidate=candidate_for(self.client, NAME, version),
                      context=simple_context(self.settings, self.root, report_dir))
        results, durations = run_gates(run)
        assert decide(self.client, run, results, durations, actor="test").promoted


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    import torch

    from fraudguard.data.simulator import simulate_transactions
    from fraudguard.tracking import configure_mlflow, log_training_run

    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("serve")
    root, store = base / "project", base / "store"
    store.mkdir(parents=True)
    uri = f"sqlite:///{store / 'mlflow.db'}"
    world = parse_settings(small_params())
    data = simulate_transactions(world.simulate)
    offline = compute_features(data, world.featurize)
    cutoff = data["TX_DATETIME"].max().normalize() - pd.Timedelta(days=REPLAY_DAYS - 1)
    warm_up = data["TX_DATETIME"].min().normalize() + pd.Timedelta(
        days=max(world.featurize.windows_days) + world.featurize.label_delay_days)
    train = offline[(offline["TX_DATETIME"] >= warm_up) & (offline["TX_DATETIME"] < cutoff)]
    # A sample of it keeps the monitor's Evidently comparisons short (it is a drift reference, not a model's data).
    train = train.sample(n=min(len(train), 2500), random_state=0).sort_values("TX_DATETIME").reset_index(drop=True)
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        versions = []
        for seed in (0, 1, 2):
            write_pipeline_outputs(root, seed, train)
            settings = load_settings(root / "params.yaml")
            configure_mlflow(root, settings.registry)
            versions.append(log_training_run(root, settings, flow_run_id=None).version)
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous
    commit_params(root)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    history = root / "data" / "validated" / "transactions.parquet"
    history.parent.mkdir(parents=True, exist_ok=True)
    data[data["TX_DATETIME"] < cutoff].to_parquet(history)  # bootstrapped on start (serve.bootstrap_from)
    (base / "keys.yaml").write_text(
        f"bank: {KEY}\nslow: {{key: {SLOW_KEY}, rate_limit_per_s: 0.5, rate_limit_burst: 3}}\n"
        f"meter: {{key: {METER_KEY}, rate_limit_per_s: 0.01, rate_limit_burst: 30}}\n"
        f"labeller: {{key: {LABELLER_KEY}, rate_limit_per_s: 0.01, rate_limit_burst: 5}}\n")
    serve_settings = parse_settings(merge_overrides(
        json.loads(json.dumps(settings.as_params_dict())),
        {"serve": {"reload_interval_s": 0.3, "state_path": str(base / "state" / "features.sqlite"),
                   "prediction_log": str(base / "state" / "predictions.jsonl"),
                   "model_cache_dir": str(base / "state" / "models"), "max_body_bytes": 65536,
                   "max_batch_size": 200, "max_explained_per_request": 5,
                   # The replays score and label a test period as fast as they can (labels cost tokens too).
                   "rate_limit_per_s": 5000, "rate_limit_burst": 10000}}))
    project = Served(root, client, settings, serve_settings, uri, versions, data, offline, cutoff, base)
    project.promote(versions[0])
    project.start()
    yield project
    if project.server is not None:
        project.server.stop()


def _headers(key: str = KEY) -> dict[str, str]:
    return {"X-API-Key": key}


def _tx(customer: int = 10**9, terminal: int = 10**9, amount: float = 42.5, when: str = "2024-06-01T12:00:00",
        **extra) -> dict:
    return {"TRANSACTION_ID": next(_ids), "TX_DATETIME": when, "CUSTOMER_ID": customer,
            "TERMINAL_ID": terminal, "TX_AMOUNT": amount, **extra}


def _records(rows: pd.DataFrame) -> list[dict]:
    return [{"TRANSACTION_ID": int(r.TRANSACTION_ID), "TX_DATETIME": r.TX_DATETIME.isoformat(),
             "CUSTOMER_ID": int(r.CUSTOMER_ID), "TERMINAL_ID": int(r.TERMINAL_ID), "TX_AMOUNT": float(r.TX_AMOUNT)}
            for r in rows.itertuples()]


# ------------------------------------------------------------------------------------------------- parity

def _replay(url: str, replay: pd.DataFrame, delay: pd.Timedelta, chunk_size: int = 200) -> None:
    """Score `replay` in order through /score/batch; each chunk's frauds get their chargeback, dated tx + delay."""
    with httpx.Client(base_url=url, headers=_headers(), timeout=30) as http:
        for start in range(0, len(replay), chunk_size):
            chunk = replay.iloc[start:start + chunk_size]
            response = http.post("/score/batch", json={"transactions": _records(chunk)})
            assert response.status_code == 200, response.text
            frauds = chunk[chunk["TX_FRAUD"] == 1]
            if len(frauds):  # chargebacks arrive with their dates; they count only after the label delay
                labels = [{"TRANSACTION_ID": int(r.TRANSACTION_ID), "TX_FRAUD": True,
                           "LABEL_DATETIME": (r.TX_DATETIME + delay).isoformat()} for r in frauds.itertuples()]
                fb = http.post("/feedback", json={"labels": labels})
                assert fb.status_code == 200 and fb.json()["recorded"] == len(labels), fb.text


def _assert_parity(gateway, replay: pd.DataFrame, settings: Settings) -> None:
    """Every logged feature within 1e-6 of the offline value, the same scores and decisions."""
    gateway.log.flush()
    logged = read_prediction_log(gateway._path(settings.serve.prediction_log)).set_index("TRANSACTION_ID")
    online = logged.loc[replay["TRANSACTION_ID"]]
    assert len(online) == len(replay)
    for name in feature_names(settings.featurize):
        expected = replay[name].to_numpy(dtype=np.float64)
        got = online[name].to_numpy(dtype=np.float64)
        worst = np.max(np.abs(got - expected) / np.maximum(1.0, np.abs(expected)))
        assert worst <= 1e-6, f"{name}: online differs from offline by {worst:.3g}"
    bundle = gateway.follower.current.bundle
    assert set(online["model_version"]) == {gateway.follower.current.version}
    offline_scores = bundle.predict_proba(replay)
    assert np.max(np.abs(online["score"].to_numpy() - offline_scores)) <= 1e-6
    assert (online["decision"].to_numpy() == (offline_scores >= bundle.threshold)).all()


def test_replayed_test_period_gets_the_offline_features_and_scores(served):
    settings = served.serve_settings
    replay = served.offline[served.offline["TX_DATETIME"] >= served.cutoff].reset_index(drop=True)
    assert len(replay) > 500
    _replay(served.url, replay, pd.Timedelta(days=settings.featurize.label_delay_days))
    _assert_parity(served.gateway, replay, settings)
    assert (replay["TERMINAL_ID_RISK_7DAY_WINDOW"] > 0).any()  # the delayed labels did enter terminal risk


def _check_live(served, tmp_path, monkeypatch):
    import mlflow

    from fraudguard.monitoring import check_live_traffic

    monkeypatch.setenv("MLFLOW_TRACKING_URI", served.uri)
    mlflow.set_tracking_uri(served.uri)
    served.gateway.log.flush()
    log = served.gateway._path(served.serve_settings.serve.prediction_log)
    return check_live_traffic(served.client, log, served.serve_settings, tmp_path)


def _assert_attribution_logged(served, check) -> None:
    """The attacker-controlled share of flagged decisions' attributions, against training's, is in MLflow."""
    metrics = served.client.get_run(check.run_id).data.metrics
    if check.attribution is None:  # nothing flagged in the window: nothing to explain
        assert check.flag_rate == 0 and "live_controlled_attribution_share" not in metrics
        return
    found = check.attribution
    assert 0 <= found.live_share <= 1 and 0 <= found.reference_share <= 1 and found.n_live > 0
    assert check.controlled_attribution_alert == (found.live_share > found.reference_share + found.margin)
    assert metrics["live_controlled_attribution_share"] == pytest.approx(found.live_share)
    assert metrics["reference_controlled_attribution_share"] == pytest.approx(found.reference_share)
    assert metrics["live_controlled_attribution_alert"] == float(check.controlled_attribution_alert)


def test_monitor_finds_no_drift_in_the_replayed_test_period(served, tmp_path, monkeypatch):
    check = _check_live(served, tmp_path, monkeypatch)
    replayed = int((served.data["TX_DATETIME"] >= served.cutoff).sum())
    assert check.n_decisions == replayed
    assert not check.drifted, (check.drift_share, check.drifted_columns)
    assert check.explained_version in (None, served.versions[0])
    _assert_attribution_logged(served, check)


# ----------------------------------------------------------------------------------------------- explain

def test_explain_returns_attributions_that_add_up_to_the_score(served):
    batch = [_tx(customer=10**9 + 20 + i, terminal=10**9 + 20, amount=amount)
             for i, amount in enumerate((3.5, 42.0, 120.0, 480.0))]
    response = httpx.post(f"{served.url}/score/batch", params={"explain": "true"}, json={"transactions": batch},
                          headers=_headers(), timeout=30)
    assert response.status_code == 200, response.text
    features = set(served.gateway.follower.current.bundle.features)
    amount_attributions = []
    for result in response.json()["results"]:
        explanation = result["explanation"]
        assert explanation["space"] == "standardized" and "training mean" in explanation["baseline"]
        attributions = explanation["attributions"]
        assert set(attributions) == features and all(np.isfinite(v) for v in attributions.values())
        # completeness: the attributions account for the score's distance from the baseline's
        assert sum(attributions.values()) == pytest.approx(
            result["fraud_probability"] - explanation["baseline_probability"], abs=0.01)
        amount_attributions.append(attributions["TX_AMOUNT"])
    assert len(set(amount_attributions)) == len(batch)  # each explanation is its own transaction's
    one = httpx.post(f"{served.url}/score?explain=true", json=_tx(customer=10**9 + 30), headers=_headers(),
                     timeout=30).json()
    assert set(one["explanation"]["attributions"]) == features
    plain = httpx.post(f"{served.url}/score", json=_tx(customer=10**9 + 31), headers=_headers(), timeout=30).json()
    assert "explanation" not in plain
    odd = httpx.post(f"{served.url}/score?explain=maybe", json=_tx(customer=10**9 + 32), headers=_headers(),
                     timeout=30)
    assert odd.status_code == 422 and odd.json()["fields"][0]["field"] == "query.explain"


# ------------------------------------------------------------------------------------------ hostile input

BIG = 2**63
HOSTILE = [  # (name, body transform or raw body, expected field)
    ("amount_negative", {"TX_AMOUNT": -500.0}, "TX_AMOUNT"),
    ("amount_zero", {"TX_AMOUNT": 0.0}, "TX_AMOUNT"),
    ("amount_1e308", {"TX_AMOUNT": 1e308}, "TX_AMOUNT"),
    ("amount_above_max", {"TX_AMOUNT": 20000.01}, "TX_AMOUNT"),
    ("amount_nan", "NaN", "TX_AMOUNT"),
    ("amount_infinity", "Infinity", "TX_AMOUNT"),
    ("amount_overflowing_literal", "1e999", "TX_AMOUNT"),
    ("amount_huge_integer", "1" + "0" * 400, "TX_AMOUNT"),
    ("amount_string", {"TX_AMOUNT": "12.5"}, "TX_AMOUNT"),
    ("amount_null", {"TX_AMOUNT": None}, "TX_AMOUNT"),
    ("amount_bool", {"TX_AMOUNT": True}, "TX_AMOUNT"),
    ("amount_object", {"TX_AMOUNT": {"$gt": 0}}, "TX_AMOUNT"),
    ("customer_fraction", {"CUSTOMER_ID": 2.9}, "CUSTOMER_ID"),
    ("customer_2_63", {"CUSTOMER_ID": BIG}, "CUSTOMER_ID"),
    ("customer_negative", {"CUSTOMER_ID": -1}, "CUSTOMER_ID"),
    ("customer_string", {"CUSTOMER_ID": "abc"}, "CUSTOMER_ID"),
    ("terminal_float_1e30", {"TERMINAL_ID": 1e30}, "TERMINAL_ID"),
    ("terminal_list", {"TERMINAL_ID": [1, 2]}, "TERMINAL_ID"),
    ("transaction_id_missing", {"TRANSACTION_ID": ...}, "TRANSACTION_ID"),
    ("transaction_id_bool", {"TRANSACTION_ID": False}, "TRANSACTION_ID"),
    ("extra_field", {"TX_FRAUD": 0}, "TX_FRAUD"),
    ("datetime_garbage", {"TX_DATETIME": "yesterday at noon"}, "TX_DATETIME"),
    ("datetime_1850", {"TX_DATETIME": "1850-01-01T00:00:00"}, "TX_DATETIME"),
    ("datetime_far_future", {"TX_DATETIME": "2999-01-01T00:00:00"}, "TX_DATETIME"),
    ("datetime_with_zone", {"TX_DATETIME": "2024-06-01T12:00:00+02:00"}, "TX_DATETIME"),
    ("datetime_nanoseconds", {"TX_DATETIME": "2024-06-01T12:00:00.123456789"}, "TX_DATETIME"),  # was cut to us
    ("datetime_epoch_number", {"TX_DATETIME": 1717243200}, "TX_DATETIME"),
    ("datetime_very_long", {"TX_DATETIME": "2024-06-01T12:00:00" + " " * 5000}, "TX_DATETIME"),
    ("body_not_json", b"{not json", "body"),
    ("body_a_list", b"[1, 2, 3]", "body"),
]


def _hostile_body(change) -> bytes:
    if isinstance(change, bytes):
        return change
    tx = _tx()
    if isinstance(change, str):  # a raw JSON literal for the amount
        return json.dumps({**tx, "TX_AMOUNT": 0}).replace('"TX_AMOUNT": 0', f'"TX_AMOUNT": {change}').encode()
    for key, value in change.items():
        if value is ...:
            tx.pop(key)
        else:
            tx[key] = value
    return json.dumps(tx).encode()


@pytest.mark.parametrize("name, change, field", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_transaction_is_a_422_naming_the_field(served, name, change, field):
    response = httpx.post(f"{served.url}/score", content=_hostile_body(change),
                          headers={**_headers(), "content-type": "application/json"}, timeout=10)
    assert response.status_code == 422, response.text
    body = response.json()
    assert field in [f["field"] for f in body["fields"]], body
    assert "Traceback" not in response.text and "NaN" not in response.text


@pytest.mark.parametrize("name, batch, field", [
    ("batch_empty", {"transactions": []}, "transactions"),
    ("batch_one_bad_amount", {"transactions": [_tx(), _tx(amount=-1.0)]}, "transactions[1].TX_AMOUNT"),
    ("batch_too_many", {"transactions": [_tx()] * 201}, "transactions"),
    ("batch_wrong_key", {"txs": [_tx()]}, "txs"),
])
def test_hostile_batch_is_a_422_naming_the_field(served, name, batch, field):
    response = httpx.post(f"{served.url}/score/batch", json=batch, headers=_headers(), timeout=10)
    assert response.status_code == 422, response.text
    assert field in [f["field"] for f in response.json()["fields"]]


def test_oversized_body_is_a_413_before_parsing(served):
    response = httpx.post(f"{served.url}/score", content=b'{"pad": "' + b"x" * 70_000 + b'"}',
                          headers={**_headers(), "content-type": "application/json"}, timeout=10)
    assert response.status_code == 413 and response.json()["field"] == "body"

    def chunks():  # no Content-Length: cut off while streaming
        for _ in range(20):
            yield b"x" * 8192

    streamed = httpx.post(f"{served.url}/score", content=chunks(), headers=_headers(), timeout=10)
    assert streamed.status_code == 413


def test_feedback_dated_before_its_transaction_is_a_422(served):
    tx = _tx(customer=10**9 + 7)
    assert httpx.post(f"{served.url}/score", json=tx, headers=_headers(), timeout=10).status_code == 200
    response = httpx.post(f"{served.url}/feedback", headers=_headers(), timeout=10, json={"labels": [
        {"TRANSACTION_ID": tx["TRANSACTION_ID"], "TX_FRAUD": True, "LABEL_DATETIME": "2024-05-01T00:00:00"}]})
    assert response.status_code == 422 and response.json()["fields"][0]["field"] == "labels[0].LABEL_DATETIME"


def test_a_chargeback_on_record_cannot_be_erased_through_feedback_and_repeats_change_nothing(served):
    tx = _tx(customer=10**9 + 9)
    assert httpx.post(f"{served.url}/score", json=tx, headers=_headers(), timeout=10).status_code == 200

    def feedback(*labels):
        return httpx.post(f"{served.url}/feedback", headers=_headers(), timeout=10, json={"labels": [
            {"TRANSACTION_ID": tx["TRANSACTION_ID"], "TX_FRAUD": fraud, "LABEL_DATETIME": tx["TX_DATETIME"]}
            for fraud in labels]})

    assert feedback(True).json()["recorded"] == 1
    erased = feedback(False)  # before: 200, and the terminal's risk forgot the fraud
    assert erased.status_code == 409 and erased.json()["fields"][0]["field"] == "labels[0].TX_FRAUD", erased.text
    again = feedback(True)
    assert again.status_code == 200 and again.json()["recorded"] == 0 and again.json()["already_recorded"] == 1
    twice = feedback(True, True)
    assert twice.status_code == 422 and twice.json()["fields"][0]["field"] == "labels[1].TRANSACTION_ID"


def test_a_repeated_transaction_id_is_a_409(served):
    tx = _tx(customer=10**9 + 8)
    assert httpx.post(f"{served.url}/score", json=tx, headers=_headers(), timeout=10).status_code == 200
    again = httpx.post(f"{served.url}/score", json=tx, headers=_headers(), timeout=10)
    assert again.status_code == 409 and again.json()["field"] == "TRANSACTION_ID"


def test_whole_and_sub_second_transactions_are_logged_in_one_format_and_read_back(served):
    whole, fraction = _tx(customer=10**9 + 12, when="2024-06-03T09:00:00"), \
        _tx(customer=10**9 + 12, when="2024-06-03T09:00:00.250")
    for tx in (whole, fraction):
        assert httpx.post(f"{served.url}/score", json=tx, headers=_headers(), timeout=10).status_code == 200
    served.gateway.log.flush()
    log = served.gateway._path(served.serve_settings.serve.prediction_log)
    written = {r["transaction"]["TRANSACTION_ID"]: r["transaction"]["TX_DATETIME"]
               for r in map(json.loads, log.read_text().splitlines())}
    assert written[whole["TRANSACTION_ID"]] == "2024-06-03T09:00:00.000000"
    assert written[fraction["TRANSACTION_ID"]] == "2024-06-03T09:00:00.250000"
    logged = read_prediction_log(log).set_index("TRANSACTION_ID")["TX_DATETIME"]
    assert logged[fraction["TRANSACTION_ID"]] - logged[whole["TRANSACTION_ID"]] == pd.Timedelta(milliseconds=250)


# ------------------------------------------------------------------------------------------ keys and rates

@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong-key-0123456789abcdef"}, {"X-API-Key": ""},
                                     {"X-API-Key": KEY[:-1]}])
def test_missing_or_wrong_api_key_is_a_401(served, headers):
    for path, body in (("/score", _tx()), ("/score/batch", {"transactions": [_tx()]}), ("/feedback", {})):
        response = httpx.post(f"{served.url}{path}", json=body, headers=headers, timeout=10)
        assert response.status_code == 401, (path, response.text)


def test_a_client_over_its_rate_is_a_429(served):
    codes = [httpx.post(f"{served.url}/score", json=_tx(customer=10**9 + 9), headers=_headers(SLOW_KEY),
                        timeout=10).status_code for _ in range(5)]
    assert codes[:3] == [200, 200, 200] and 429 in codes[3:], codes
    # another client is not slowed by it
    assert httpx.post(f"{served.url}/score", json=_tx(), headers=_headers(), timeout=10).status_code == 200


def _logged_ids(served) -> set[int]:
    served.gateway.log.flush()
    return set(read_prediction_log(served.gateway._path(served.serve_settings.serve.prediction_log))["TRANSACTION_ID"])


def test_a_batch_is_charged_per_transaction_and_an_explained_one_at_the_explain_cost(served):
    """meter: 30 tokens, refilled at 0.01/s; a transaction costs 1, an explained one serve.explain_cost (10)."""
    assert served.serve_settings.serve.explain_cost == 10

    def post(batch, explain=False):
        return httpx.post(f"{served.url}/score/batch", params={"explain": "true"} if explain else None,
                          json={"transactions": batch}, headers=_headers(METER_KEY), timeout=30)

    assert post([_tx(customer=10**9 + 40) for _ in range(12)]).status_code == 200  # 12 tokens: 18 left
    two_explained = [_tx(customer=10**9 + 41) for _ in range(2)]
    refused = post(two_explained, explain=True)  # 20 tokens
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1, refused.text
    assert refused.json()["field"] == "X-API-Key" and "costs 20" in refused.json()["error"]
    assert post([_tx(customer=10**9 + 42)], explain=True).status_code == 200  # 10 tokens: 8 left
    nine = [_tx(customer=10**9 + 43) for _ in range(9)]
    assert post(nine).status_code == 429
    too_big = post([_tx(customer=10**9 + 44) for _ in range(31)])  # more than the bucket ever holds
    assert too_big.status_code == 429 and "retry-after" not in too_big.headers
    assert "more than client 'meter' can hold (30)" in too_big.json()["error"]
    assert not {t["TRANSACTION_ID"] for t in two_explained + nine} & _logged_ids(served)  # nothing refused was scored


def test_feedback_is_charged_per_label_and_a_refused_request_records_none(served):
    """labeller: 5 tokens, refilled at 0.01/s; each label costs 1, as each scored transaction does."""
    scored = [_tx(customer=10**9 + 46) for _ in range(7)]
    assert httpx.post(f"{served.url}/score/batch", json={"transactions": scored}, headers=_headers(),
                      timeout=30).status_code == 200

    def labels(txs):
        return {"labels": [{"TRANSACTION_ID": t["TRANSACTION_ID"], "TX_FRAUD": True,
                            "LABEL_DATETIME": t["TX_DATETIME"]} for t in txs]}

    def post(txs):
        return httpx.post(f"{served.url}/feedback", json=labels(txs), headers=_headers(LABELLER_KEY), timeout=10)

    too_big = post(scored[:6])
    assert too_big.status_code == 429 and "more than client 'labeller' can hold (5)" in too_big.json()["error"]
    assert post(scored[:4]).json()["recorded"] == 4  # 4 tokens: 1 left
    refused = post(scored[4:7])
    assert refused.status_code == 429, refused.text
    import sqlite3

    with sqlite3.connect(served.serve_settings.serve.state_path) as db:  # the gateway's feature store, read as is
        labelled = {row[0] for row in db.execute("SELECT id FROM tx WHERE label_t IS NOT NULL")}
    ids = [t["TRANSACTION_ID"] for t in scored]
    assert set(ids[:4]) <= labelled and not set(ids[4:]) & labelled


def test_explaining_more_than_the_cap_is_a_422_naming_it_and_scores_nothing(served):
    batch = [_tx(customer=10**9 + 45) for _ in range(6)]
    response = httpx.post(f"{served.url}/score/batch", params={"explain": "true"}, json={"transactions": batch},
                          headers=_headers(), timeout=30)
    assert response.status_code == 422 and response.json()["field"] == "explain"
    assert "serve.max_explained_per_request = 5" in response.json()["error"]
    plain = httpx.post(f"{served.url}/score/batch", json={"transactions": batch}, headers=_headers(), timeout=30)
    assert plain.status_code == 200  # the refused request recorded none of its ids


def test_scoring_goes_on_while_an_explanation_runs(served):
    release = threading.Event()
    busy = served.gateway.explain_pool().submit(release.wait, 30)  # the explainer thread is taken
    answers: dict[str, httpx.Response] = {}
    explained = threading.Thread(target=lambda: answers.setdefault("explained", httpx.post(
        f"{served.url}/score?explain=true", json=_tx(customer=10**9 + 46), headers=_headers(), timeout=60)))
    explained.start()
    try:
        time.sleep(0.3)  # the explained request is now waiting for the explainer
        plain = httpx.post(f"{served.url}/score", json=_tx(customer=10**9 + 47), headers=_headers(), timeout=10)
        assert plain.status_code == 200 and "explained" not in answers  # the event loop was not blocked
    finally:
        release.set()
        explained.join(timeout=60)
        busy.result(timeout=10)
    assert answers["explained"].status_code == 200 and "explanation" in answers["explained"].json()


def test_health_and_metrics_report_the_served_champion(served):
    health = httpx.get(f"{served.url}/health", timeout=10).json()
    assert health["status"] == "ok" and health["verified"] and health["model_version"] == served.versions[0]
    metrics = httpx.get(f"{served.url}/metrics", timeout=10).text
    assert f"fraudguard_model_version {float(served.versions[0])}" in metrics
    assert 'fraudguard_requests_total{endpoint="/score",status="422"}' in metrics
    assert "fraudguard_request_latency_seconds_bucket" in metrics and "fraudguard_decisions_total" in metrics


# ------------------------------------------------------------------------------------------------ restart

def test_restart_keeps_the_state(served):
    customer = 10**9 + 11
    first = _tx(customer=customer, amount=10.0, when="2024-06-02T10:00:00")
    assert httpx.post(f"{served.url}/score", json=first, headers=_headers(), timeout=10).status_code == 200
    rows_before = httpx.get(f"{served.url}/health", timeout=10).json()["state_transactions"]
    served.server.stop()
    served.start()
    assert httpx.get(f"{served.url}/health", timeout=10).json()["state_transactions"] == rows_before
    second = _tx(customer=customer, amount=30.0, when="2024-06-02T11:00:00")
    assert httpx.post(f"{served.url}/score", json=second, headers=_headers(), timeout=10).status_code == 200
    served.gateway.log.flush()
    logged = read_prediction_log(served.gateway._path(served.serve_settings.serve.prediction_log))
    row = logged.set_index("TRANSACTION_ID").loc[second["TRANSACTION_ID"]]
    assert row["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 2 and row["CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"] == 20.0


# ----------------------------------------------------------------------------------------- redis state

@pytest.fixture(scope="module")
def redis(served):
    server = RedisServer(served.base / "redis").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def redis_gateway(served, redis):
    """A second gateway of the same champion on the Redis store (bootstrapped from the same history on start)."""
    holder = {"settings": served.settings_with({
        "state": {"backend": "redis", "redis_url": redis.url, "redis_key_prefix": "test:state"},
        "prediction_log": str(served.base / "redis-gw" / "predictions.jsonl"),
        "model_cache_dir": str(served.base / "redis-gw" / "models")})}
    holder["server"] = served.start_gateway(holder["settings"])
    yield holder
    holder["server"].stop()


def test_redis_state_replay_gets_the_offline_features_and_scores(served, redis_gateway):
    gateway = redis_gateway["server"].app.gateway
    assert gateway.store.count() == int((served.data["TX_DATETIME"] < served.cutoff).sum())  # bootstrapped
    offline = served.offline
    replay = offline[(offline["TX_DATETIME"] >= served.cutoff)
                     & (offline["TX_DATETIME"] < served.cutoff + pd.Timedelta(days=2))].reset_index(drop=True)
    assert len(replay) > 100
    settings = redis_gateway["settings"]
    _replay(redis_gateway["server"].url, replay, pd.Timedelta(days=settings.featurize.label_delay_days))
    _assert_parity(gateway, replay, settings)


def _replica_params(served, redis, where: Path) -> Path:
    """A project root for a `fraudguard serve` process on the same Redis state (no bootstrap, own log)."""
    params = merge_overrides(json.loads(json.dumps(served.serve_settings.as_params_dict())), {"serve": {
        "state": {"backend": "redis", "redis_url": redis.url, "redis_key_prefix": "test:state"},
        "prediction_log": str(where / "predictions.jsonl"), "model_cache_dir": str(where / "models"),
        "bootstrap_from": None}})
    where.mkdir(parents=True, exist_ok=True)
    (where / "params.yaml").write_text(json.dumps(params))  # JSON is YAML
    return where


def _logged_features(path: Path, transaction_id: int, timeout_s: float = 10) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.is_file():
            for line in path.read_text().splitlines():
                record = json.loads(line)
                if record["transaction"]["TRANSACTION_ID"] == transaction_id:
                    return record["features"]
        time.sleep(0.05)
    raise AssertionError(f"{transaction_id} not in {path}")


def test_two_gateway_processes_sharing_redis_see_each_others_history(served, redis, redis_gateway, tmp_path):
    import subprocess
    import sys

    root = _replica_params(served, redis, tmp_path / "replica")
    port = free_port()
    log = tmp_path / "replica.log"
    env = {**os.environ, "MLFLOW_TRACKING_URI": served.uri, "FRAUDGUARD_API_KEYS_FILE": str(served.base / "keys.yaml")}
    with log.open("wb") as out:
        replica = subprocess.Popen([str(Path(sys.executable).parent / "fraudguard"), "serve", "--root", str(root),
                                    "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        wait_for_health(f"http://127.0.0.1:{port}/health", replica, log, "the replica gateway")
        here, there = redis_gateway["server"].url, f"http://127.0.0.1:{port}"
        customer = 10**9 + 40
        first = _tx(customer=customer, amount=10.0, when="2024-06-03T09:00:00")
        second = _tx(customer=customer, amount=30.0, when="2024-06-03T10:00:00")
        third = _tx(customer=customer, amount=50.0, when="2024-06-03T11:00:00")
        for url, tx in ((there, first), (here, second), (there, third)):
            response = httpx.post(f"{url}/score", json=tx, headers=_headers(), timeout=30)
            assert response.status_code == 200, response.text
        # each replica featurized with the other's transactions in the card's history
        seen_here = _logged_features(redis_gateway["settings"].serve.prediction_log, second["TRANSACTION_ID"])
        assert seen_here["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 2 and seen_here["CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"] == 20.0
        seen_there = _logged_features(root / "predictions.jsonl", third["TRANSACTION_ID"])
        assert seen_there["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 3 and seen_there["CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"] == 30.0
        # an id scored by one replica is a duplicate for the other
        again = httpx.post(f"{there}/score", json=second, headers=_headers(), timeout=30)
        assert again.status_code == 409 and again.json()["field"] == "TRANSACTION_ID"
        assert httpx.get(f"{there}/health", timeout=10).json()["state_backend"] == "redis"
    finally:
        stop_process_group(replica)


def test_redis_state_survives_a_gateway_and_redis_restart(served, redis, redis_gateway):
    before = httpx.get(f"{redis_gateway['server'].url}/health", timeout=10).json()["state_transactions"]
    redis_gateway["server"].stop()
    redis.stop()
    redis.start()  # same data directory and port: the append-only file is read back
    redis_gateway["server"] = served.start_gateway(redis_gateway["settings"])
    url = redis_gateway["server"].url
    assert httpx.get(f"{url}/health", timeout=10).json()["state_transactions"] == before
    fourth = _tx(customer=10**9 + 40, amount=70.0, when="2024-06-03T12:00:00")
    assert httpx.post(f"{url}/score", json=fourth, headers=_headers(), timeout=30).status_code == 200
    seen = _logged_features(redis_gateway["settings"].serve.prediction_log, fourth["TRANSACTION_ID"])
    assert seen["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 4 and seen["CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"] == 40.0


# --------------------------------------------------------------------------------------------- hot switch

class Traffic:
    """Threads scoring continuously; records every status and model version."""

    def __init__(self, url: str, when: str, threads: int = 3):
        self.url, self.when, self.stop_event, self.results, self.lock = url, when, threading.Event(), [], threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, i: int) -> None:
        with httpx.Client(base_url=self.url, headers=_headers(), timeout=30) as http:
            while not self.stop_event.is_set():
                response = http.post("/score", json=_tx(customer=10**9 + 100 + i, terminal=10**9 + 100,
                                                      when=self.when))
                with self.lock:
                    self.results.append((response.status_code, response.json().get("model_version")))

    def __enter__(self) -> "Traffic":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def wait_for_version(self, version: int, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if self.results and self.results[-1][1] == version:
                    return
            time.sleep(0.05)
        raise AssertionError(f"still serving {self.results[-1:]} after {timeout_s} s, not version {version}")


def test_hot_switch_on_promote_and_rollback_drops_no_request(served):
    v1, v2, _ = served.versions
    with Traffic(served.url, (served.cutoff + pd.Timedelta(hours=36)).isoformat()) as traffic:
        traffic.wait_for_version(v1)
        served.promote(v2)
        traffic.wait_for_version(v2)
        rollback(served.client, served.settings, reason="test rollback", actor="test")
        traffic.wait_for_version(v1)
        time.sleep(0.3)
    codes = {code for code, _ in traffic.results}
    assert codes == {200}, codes
    versions = [v for _, v in traffic.results]
    assert versions[0] == v1 and v2 in versions and versions[-1] == v1 and len(versions) > 30
    health = httpx.get(f"{served.url}/health", timeout=10).json()
    assert health["model_version"] == v1 and health["switches"] >= 2 and health["last_switch_error"] is None


# ------------------------------------------------------------------------------------ hand-moved alias

def _wait_for_health(served, predicate, timeout_s: float = 20) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        health = httpx.get(f"{served.url}/health", timeout=10).json()
        if predicate(health) or time.monotonic() > deadline:
            return health
        time.sleep(0.1)


def test_a_hand_moved_champion_alias_is_refused_and_the_previous_keeps_serving(served):
    v1, v2, _ = served.versions
    assert get_champion_version(served.client, NAME) == v1
    # An insider moves the alias with the plain MLflow API: no journal entry, no signed attestation for the move.
    served.client.set_registered_model_alias(NAME, "champion", str(v2))
    try:
        health = _wait_for_health(served, lambda h: h["last_switch_error"])
        assert health["status"] == "degraded" and health["model_version"] == v1, health
        assert "moved outside fraudguard" in health["last_switch_error"]
        response = httpx.post(f"{served.url}/score", json=_tx(), headers=_headers(), timeout=10)
        assert response.status_code == 200 and response.json()["model_version"] == v1
    finally:
        served.client.set_registered_model_alias(NAME, "champion", str(v1))
    assert _wait_for_health(served, lambda h: h["last_switch_error"] is None)["status"] == "ok"



def test_the_monitor_refuses_a_hand_moved_champion_alias_as_the_gateway_does(served, tmp_path, monkeypatch):
    from fraudguard.errors import RegistryError

    v1, v2, _ = served.versions
    served.client.set_registered_model_alias(NAME, "champion", str(v2))  # no journal entry, no attestation
    try:
        with pytest.raises(RegistryError, match=f"champion v{v2} does not verify.*moved outside fraudguard"):
            _check_live(served, tmp_path, monkeypatch)
    finally:
        served.client.set_registered_model_alias(NAME, "champion", str(v1))

# ------------------------------------------------------------------------------------------------ tamper

def test_a_tampered_champion_is_refused_and_the_previous_keeps_serving(served):
    v1, _, v3 = served.versions
    follower = served.gateway.follower
    with follower.lock:  # no check runs until the champion is promoted *and* its served files altered
        served.promote(v3)
        weights = served_weights_file(served.client, NAME, v3)
        weights.write_bytes(weights.read_bytes() + b"\0")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        health = httpx.get(f"{served.url}/health", timeout=10).json()
        if health["last_switch_error"]:
            break
        time.sleep(0.1)
    assert get_champion_version(served.client, NAME) == v3
    assert health["status"] == "degraded" and health["model_version"] == v1 and health["refused_version"] == v3
    assert "differ from the signed attestation" in health["last_switch_error"]
    response = httpx.post(f"{served.url}/score", json=_tx(), headers=_headers(), timeout=10)
    assert response.status_code == 200 and response.json()["model_version"] == v1
    metrics = httpx.get(f"{served.url}/metrics", timeout=10).text
    assert "fraudguard_model_switch_failing 1.0" in metrics


# ------------------------------------------------------------------------------------------------ monitor

def _drifted_replay(served) -> pd.DataFrame:
    """The replay's last three days three weeks later (past the monitor's window, so it is all the window
    holds), at night, with amounts x4, on cards and terminals never seen; plus a burst of 40 payments within an
    hour at one terminal (card testing)."""
    replay = served.data[served.data["TX_DATETIME"] >= served.data["TX_DATETIME"].max().normalize()
                         - pd.Timedelta(days=2)].copy()
    when = replay["TX_DATETIME"] + pd.Timedelta(days=21)
    replay["TX_DATETIME"] = when.dt.normalize() + pd.to_timedelta(when.dt.hour % 6, unit="h") \
        + pd.to_timedelta(when.dt.minute, unit="min")
    replay["TX_AMOUNT"] = (replay["TX_AMOUNT"] * 4).round(2)
    replay["CUSTOMER_ID"] += 10**8
    replay["TERMINAL_ID"] += 10**8
    burst_at = replay["TX_DATETIME"].max().normalize() + pd.Timedelta(hours=3)
    # the first payment of the burst at a fraction of a second (logged with microseconds, the rest without)
    burst = pd.DataFrame({"TX_DATETIME": [burst_at + pd.Timedelta(minutes=i, milliseconds=250 * (i == 0))
                                          for i in range(40)],
                          "CUSTOMER_ID": [2 * 10**8 + i for i in range(40)], "TERMINAL_ID": 2 * 10**8,
                          "TX_AMOUNT": 1.0, "TX_FRAUD": 1})
    drifted = pd.concat([replay, burst], ignore_index=True).sort_values("TX_DATETIME", kind="mergesort")
    drifted["TRANSACTION_ID"] = [next(_ids) for _ in range(len(drifted))]
    return drifted.reset_index(drop=True)


def test_monitor_reports_drift_and_a_burst_on_a_drifted_replay(served, tmp_path, monkeypatch):
    drifted = _drifted_replay(served)
    with httpx.Client(base_url=served.url, headers=_headers(), timeout=30) as http:
        for start in range(0, len(drifted), 200):
            response = http.post("/score/batch", json={"transactions": _records(drifted.iloc[start:start + 200])})
            assert response.status_code == 200, response.text
    served.gateway.log.flush()
    log = served.gateway._path(served.serve_settings.serve.prediction_log)
    with log.open("a", encoding="utf-8") as handle:  # one line torn by a crash: skipped and counted, not fatal
        handle.write('{"time": 1.0, "transaction": {"TRANSACTION_ID": 5, "TX_DATETIME": "2024-0\n')
    check = _check_live(served, tmp_path, monkeypatch)
    assert check.n_decisions == len(drifted)  # the window holds the drifted replay only
    assert check.log_lines_skipped == 1
    assert check.drifted, (check.drift_share, check.drifted_columns)
    assert {"TX_AMOUNT", "TX_DURING_NIGHT"} <= set(check.drifted_controlled)
    assert check.report_path.is_file() and 0.0 <= check.flag_rate <= 1.0
    assert [(b["terminal_id"], b["count"]) for b in check.bursts] == [(2 * 10**8, 40)]
    # ...far beyond that terminal's own (empty) history: the relative rule sees it too
    assert any(b["entity"] == "TERMINAL_ID" and b["id"] == 2 * 10**8 for b in check.relative_bursts), \
        check.relative_bursts[:3]
    run = served.client.get_run(check.run_id)
    assert run.data.metrics["live_decisions"] == check.n_decisions and run.data.metrics["live_drift_share"] > 0.5
    assert run.data.metrics["live_log_lines_skipped"] == 1
    # the champion verified as the gateway verifies it, the drift reference against its signed digest
    assert run.data.tags["fraudguard.champion_verified"] == "true" and check.reference_verified
    assert run.data.tags["fraudguard.reference_verified"] == "true"
    _assert_attribution_logged(served, check)


def test_the_monitor_refuses_a_drift_reference_altered_in_the_store(served, tmp_path, monkeypatch):
    import mlflow.artifacts

    from fraudguard.errors import ModelError
    from fraudguard.monitoring import verified_champion
    from fraudguard.names import REFERENCE_ARTIFACT

    champion, _ = verified_champion(served.client, NAME)
    run_id = served.client.get_model_version(NAME, str(champion)).run_id
    uri = f"{served.client.get_run(run_id).info.artifact_uri}/{REFERENCE_ARTIFACT}"
    reference = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, tracking_uri=served.uri))
    original = reference.read_bytes()
    try:
        # insider: half the reference sample, enough to move what the drift comparison sees
        pd.read_parquet(reference).iloc[::2].to_parquet(reference)
        with pytest.raises(ModelError, match="differs from the digest its signed attestation holds"):
            _check_live(served, tmp_path, monkeypatch)
    finally:
        reference.write_bytes(original)
