"""The Redis state store against a real redis-server (Debian's package, installed as root when missing, on
127.0.0.1, stopped by PID): the same features as compute_features and as the SQLite store, labels only once
known, a failed batch undone, restarts, an unreachable server reported as such, and concurrent replicas scoring
one card's split payment each seeing the pieces recorded before it."""

from __future__ import annotations

import datetime as dt
import threading

import pandas as pd
import pytest

from fraudguard.config import StateSettings
from fraudguard.errors import DataError
from fraudguard.features import compute_features, feature_names, terminal_risk
from fraudguard.serving.redis_state import RedisFeatureStore
from fraudguard.serving.state import DuplicateTransaction, FeatureStore, RawTransaction, StateUnavailable

from local_services import RedisServer, free_port
from state_samples import (
    random_transactions,
    raw_transaction,
    same_instant_frame,
    same_instant_pieces,
    scored_in_some_serial_order,
)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis-state")).start()
    yield server
    server.stop()


@pytest.fixture
def open_store(redis_server, request):
    """Opens RedisFeatureStores under a key prefix of this test's own."""
    prefix = f"t:{request.node.name[:40]}"
    opened = []

    def make(featurize, url: str | None = None):
        store = RedisFeatureStore(url or redis_server.url, StateSettings(backend="redis", redis_key_prefix=prefix),
                                  featurize)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


def test_redis_replay_equals_compute_features_and_the_sqlite_store(tmp_path, small_settings, open_store):
    settings = small_settings.featurize
    offline = compute_features(random_transactions(150), settings)
    redis_store, sqlite_store = open_store(settings), FeatureStore(tmp_path / "s.sqlite", settings)
    delay = dt.timedelta(days=settings.label_delay_days)
    for row in offline.itertuples():
        online = redis_store.features(raw_transaction(row))
        assert online == sqlite_store.features(raw_transaction(row)), row.TRANSACTION_ID
        for store in (redis_store, sqlite_store):
            store.add(raw_transaction(row))
            store.record_label(int(row.TRANSACTION_ID), bool(row.TX_FRAUD), row.TX_DATETIME.to_pydatetime() + delay)
        for name in feature_names(settings):
            expected = float(getattr(row, name))
            assert abs(online[name] - expected) <= 1e-6 * max(1.0, abs(expected)), (row.TRANSACTION_ID, name)
    assert redis_store.count() == len(offline)
    sqlite_store.close()


def test_a_redis_chargeback_counts_only_from_its_label_date(small_settings, open_store):
    settings = small_settings.featurize
    store = open_store(settings)
    t0 = dt.datetime(2024, 5, 1, 12, 0, 0, 123456)  # microseconds: exact bounds on the nanoseconds
    store.add(RawTransaction(1, t0, 1, 7, 50.0))
    late = t0 + dt.timedelta(days=settings.label_delay_days + 3)
    assert store.record_label(1, True, late) and not store.record_label(99, True, late)
    w = settings.windows_days[-1]
    probe = lambda when, i: store.features(RawTransaction(i, when, 2, 7, 10.0))[terminal_risk(w)]  # noqa: E731
    assert probe(t0 + dt.timedelta(days=settings.label_delay_days, hours=1), 2) == 0.0  # in window, label not yet known
    assert probe(late + dt.timedelta(hours=1), 3) == 1.0
    # the terminal window is (t - d - w, t - d]: a microsecond before t0 + d + w the transaction is in, at it out
    edge = t0 + dt.timedelta(days=settings.label_delay_days + w)
    count = lambda when, i: store.features(RawTransaction(i, when, 2, 7, 10.0))[f"TERMINAL_ID_NB_TX_{w}DAY_WINDOW"]  # noqa: E731
    assert count(edge - dt.timedelta(microseconds=1), 4) == 1 and count(edge, 5) == 0


def test_a_recorded_redis_chargeback_is_never_erased_or_moved_by_a_later_label(small_settings, open_store):
    store = open_store(small_settings.featurize)
    t0 = dt.datetime(2024, 5, 1, 12)
    store.add(RawTransaction(1, t0, 1, 7, 50.0))
    labelled = t0 + dt.timedelta(days=small_settings.featurize.label_delay_days)
    assert store.record_label(1, True, labelled)
    assert not store.record_label(1, False, labelled + dt.timedelta(days=1)) and not store.record_label(1, True, t0)
    assert store.fraud_label_time(1) == int(pd.Timestamp(labelled).value) and store.fraud_label_time(2) is None


def test_a_redis_batch_with_a_duplicate_is_undone(small_settings, open_store):
    store = open_store(small_settings.featurize)
    t0 = dt.datetime(2024, 5, 1, 12)
    store.add(RawTransaction(1, t0, 1, 7, 50.0))
    with pytest.raises(DuplicateTransaction):
        with store.transaction():
            store.add(RawTransaction(2, t0 + dt.timedelta(minutes=1), 1, 7, 60.0))
            store.add(RawTransaction(1, t0 + dt.timedelta(minutes=2), 1, 7, 70.0))
    assert store.count() == 1 and store.transaction_time(2) is None
    after = store.features(RawTransaction(3, t0 + dt.timedelta(minutes=3), 1, 7, 10.0))
    assert after["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 2 and after["CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"] == 30.0



def _score_concurrently(stores, pieces) -> list[dict[str, float]]:
    """Each piece scored by its own thread through its own replica's store, all released at once."""
    barrier, found, errors = threading.Barrier(len(pieces)), [None] * len(pieces), []

    def score(k: int) -> None:
        try:
            barrier.wait(timeout=10)
            found[k] = stores[k % len(stores)].score_and_add(pieces[k])
        except Exception as exc:  # reported below: a thread's exception would vanish otherwise
            errors.append(exc)

    threads = [threading.Thread(target=score, args=(k,)) for k in range(len(pieces))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors
    return found


def test_concurrent_replicas_scoring_a_split_payment_each_see_the_pieces_before_it(small_settings, open_store):
    settings = small_settings.featurize
    replicas = [open_store(settings) for _ in range(4)]  # four gateway replicas: four connections
    t = dt.datetime(2024, 7, 29, 13, 45)
    for round_ in range(5):  # a card's payment split into 8 pieces at one instant, sent to all replicas at once
        pieces = same_instant_pieces([1000 * round_ + k for k in range(8)], t, customer=500 + round_)
        found = _score_concurrently(replicas, pieces)
        # whatever order the server ran them in, each counted exactly the lower-id pieces run before it
        assert scored_in_some_serial_order(pieces, {pieces[k].transaction_id: f for k, f in enumerate(found)}), found
        after = replicas[round_ % 4].features(RawTransaction(10**6 + round_, t + dt.timedelta(seconds=1),
                                                             500 + round_, 7, 0.5))
        assert after["CUSTOMER_ID_NB_TX_1HOUR_WINDOW"] == 9 and after["CUSTOMER_ID_SPEND_1HOUR_WINDOW"] == 255.5
    assert replicas[0].count() == 40


def test_a_redis_batch_scored_atomically_with_a_duplicate_is_undone(small_settings, open_store):
    store = open_store(small_settings.featurize)
    t0 = dt.datetime(2024, 5, 1, 12)
    assert store.score_and_add(RawTransaction(1, t0, 1, 7, 50.0))["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 1
    with pytest.raises(DuplicateTransaction):
        with store.transaction():
            second = store.score_and_add(RawTransaction(2, t0 + dt.timedelta(minutes=1), 1, 7, 60.0))
            assert second["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 2
            store.score_and_add(RawTransaction(1, t0 + dt.timedelta(minutes=2), 1, 7, 70.0))
    assert store.count() == 1 and store.transaction_time(2) is None
    after = store.score_and_add(RawTransaction(3, t0 + dt.timedelta(minutes=3), 1, 7, 10.0))
    assert after["CUSTOMER_ID_NB_TX_1DAY_WINDOW"] == 2 and after["CUSTOMER_ID_AVG_AMOUNT_1DAY_WINDOW"] == 30.0


def test_redis_state_survives_a_server_restart_and_refuses_other_windows(small_settings, open_store,
                                                                          redis_server):
    settings = small_settings.featurize
    store = open_store(settings)
    assert store.bootstrap(random_transactions(50)) == 50
    redis_server.stop()
    redis_server.start()  # the append-only file is read back
    again = open_store(settings)
    assert again.count() == 50 and again.bootstrap(random_transactions(50)) == 0
    other = settings.model_copy(update={"label_delay_days": settings.label_delay_days + 1})
    with pytest.raises(DataError, match="new key prefix"):
        open_store(other)


def test_an_unreachable_redis_is_state_unavailable_without_its_password(small_settings, open_store):
    url = f"redis://gateway:s3cret@127.0.0.1:{free_port()}/0"
    with pytest.raises(StateUnavailable) as info:
        open_store(small_settings.featurize, url)
    assert "127.0.0.1" in str(info.value) and "s3cret" not in str(info.value)


def test_redis_counts_payments_at_the_same_instant_by_id_as_compute_features_does(small_settings, open_store):
    # Arriving 11 then 10 (same card, same instant), payment 10 counted 11 as earlier: 1-hour spend 130, not 100.
    settings = small_settings.featurize.model_copy(update={"label_delay_days": 0})
    frame = same_instant_frame()
    offline = compute_features(frame, settings).set_index("TRANSACTION_ID")
    store = open_store(settings)
    rows = {int(row.TRANSACTION_ID): raw_transaction(row) for row in frame.itertuples()}
    store.add(rows[1])
    store.record_label(1, True, rows[1].time)
    store.add(rows[11])
    online = store.features(rows[10])
    for name in feature_names(settings):
        assert online[name] == pytest.approx(float(offline.loc[10, name])), name
