"""The gateway's feature state: same features as compute_features, labels only once known, restarts; and its
prediction log read back whatever a line holds."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
import json

import pandas as pd
import pytest

from fraudguard.errors import DataError
from fraudguard.features import compute_features, feature_names, terminal_risk
from fraudguard.serving.predictions import load_prediction_log
from fraudguard.serving.state import DuplicateTransaction, FeatureStore, RawTransaction
from state_samples import (
    random_transactions,
    raw_transaction,
    same_instant_frame,
    same_instant_pieces,
    scored_in_some_serial_order,
)


def test_store_replay_equals_compute_features_with_labels_dated_at_the_delay(tmp_path, small_settings):
    settings = small_settings.featurize
    frame = random_transactions()
    offline = compute_features(frame, settings)
    store = FeatureStore(tmp_path / "s.sqlite", settings)
    delay = dt.timedelta(days=settings.label_delay_days)
    for row in offline.itertuples():
        online = store.features(raw_transaction(row))
        store.add(raw_transaction(row))
        store.record_label(int(row.TRANSACTION_ID), bool(row.TX_FRAUD), row.TX_DATETIME.to_pydatetime() + delay)
        for name in feature_names(settings):
            expected = float(getattr(row, name))
            assert abs(online[name] - expected) <= 1e-6 * max(1.0, abs(expected)), (row.TRANSACTION_ID, name)


def test_a_chargeback_counts_only_from_its_label_date(tmp_path, small_settings):
    settings = small_settings.featurize
    store = FeatureStore(tmp_path / "s.sqlite", settings)
    t0 = dt.datetime(2024, 5, 1, 12)
    store.add(RawTransaction(1, t0, 1, 7, 50.0))
    late = t0 + dt.timedelta(days=settings.label_delay_days + 3)
    store.record_label(1, True, late)
    w = settings.windows_days[-1]
    probe = lambda when, i: store.features(RawTransaction(i, when, 2, 7, 10.0))[terminal_risk(w)]  # noqa: E731
    assert probe(t0 + dt.timedelta(days=settings.label_delay_days, hours=1), 2) == 0.0  # in window, label not yet known
    assert probe(late + dt.timedelta(hours=1), 3) == 1.0


def test_state_survives_reopening_and_refuses_other_windows(tmp_path, small_settings):
    settings = small_settings.featurize
    store = FeatureStore(tmp_path / "s.sqlite", settings)
    assert store.bootstrap(random_transactions(50)) == 50
    store.close()
    again = FeatureStore(tmp_path / "s.sqlite", settings)
    assert again.count() == 50 and again.bootstrap(random_transactions(50)) == 0
    again.close()
    other = settings.model_copy(update={"label_delay_days": settings.label_delay_days + 1})
    with pytest.raises(DataError, match="bootstrap a new state file"):
        FeatureStore(tmp_path / "s.sqlite", other)



def test_an_empty_store_opened_under_other_settings_takes_their_stamp(tmp_path, small_settings):
    settings = small_settings.featurize
    other = settings.model_copy(update={"label_delay_days": settings.label_delay_days + 2})
    FeatureStore(tmp_path / "s.sqlite", settings).close()  # first start with no history: stamped `settings`
    store = FeatureStore(tmp_path / "s.sqlite", other)    # still empty: opens, and is now stamped `other`
    store.add(RawTransaction(1, dt.datetime(2024, 5, 1), 1, 1, 5.0))
    store.close()
    FeatureStore(tmp_path / "s.sqlite", other).close()    # a restart under the same settings opens
    with pytest.raises(DataError, match="bootstrap a new state file"):
        FeatureStore(tmp_path / "s.sqlite", settings)     # history built under `other` is refused under `settings`


def test_two_connections_scoring_one_card_at_once_each_see_the_pieces_before_it(tmp_path, small_settings):
    import threading

    settings = small_settings.featurize
    FeatureStore(tmp_path / "s.sqlite", settings).close()
    stores = [FeatureStore(tmp_path / "s.sqlite", settings) for _ in range(2)]  # two processes' connections
    pieces = same_instant_pieces(list(range(8)), dt.datetime(2024, 7, 29, 13, 45), customer=42)
    barrier, found, errors = threading.Barrier(len(pieces)), {}, []
    locks = [threading.Lock(), threading.Lock()]  # one connection is used by one thread at a time, as in a gateway

    def score(k: int) -> None:
        try:
            barrier.wait(timeout=10)
            with locks[k % 2]:
                found[pieces[k].transaction_id] = stores[k % 2].score_and_add(pieces[k])
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=score, args=(k,)) for k in range(len(pieces))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors
    assert scored_in_some_serial_order(pieces, found), found
    assert stores[0].count() == len(pieces)
    # and nothing was lost: a payment a second later counts all eight
    after = stores[1].score_and_add(RawTransaction(99, pieces[0].time + dt.timedelta(seconds=1), 42, 7, 0.5))
    assert after["CUSTOMER_ID_NB_TX_1HOUR_WINDOW"] == 9 and after["CUSTOMER_ID_SPEND_1HOUR_WINDOW"] == 255.5
    with pytest.raises(DuplicateTransaction):
        stores[1].score_and_add(pieces[0])
    assert stores[0].count() == len(pieces) + 1


def _decision(transaction_id: int, when: str) -> str:
    return json.dumps({"time": 1.0, "request_id": "r", "client": "bank", "model_version": 1,
                       "transaction": {"TRANSACTION_ID": transaction_id, "TX_DATETIME": when, "CUSTOMER_ID": 1,
                                       "TERMINAL_ID": 2, "TX_AMOUNT": 10.5},
                       "features": {"CUSTOMER_ID_NB_TX_1DAY_WINDOW": 1.0}, "score": 0.1, "decision": False,
                       "threshold": 0.5, "latency_ms": 1.0}) + "\n"


def test_a_prediction_log_mixing_time_formats_and_bad_lines_reads_every_good_line(tmp_path):
    log = tmp_path / "predictions.jsonl"
    lines = [_decision(1, "2024-07-29T13:45:00"),              # written before the fixed format
             _decision(2, "2024-07-29T13:45:00.250000"),
             '{"time": 1.0, "transaction": {"TRANSACTION_ID": 3\n',  # torn
             _decision(4, "yesterday"),
             _decision(5, "2024-07-29T13:45:00+02:00"),        # a zone: not what the gateway writes
             _decision(6, "2024-07-29T13:46:00.000000")]
    log.write_text("".join(lines), encoding="utf-8")
    read = load_prediction_log(log)
    assert read.frame["TRANSACTION_ID"].tolist() == [1, 2, 6]
    assert read.frame["TX_DATETIME"].tolist() == [pd.Timestamp("2024-07-29 13:45:00"),
                                                  pd.Timestamp("2024-07-29 13:45:00.25"),
                                                  pd.Timestamp("2024-07-29 13:46:00")]
    assert read.skipped == 3 and [n for n, _ in read.skipped_lines] == [3, 4, 5]
    assert "line 4: transaction.TX_DATETIME is not an ISO 8601" in read.describe_skipped(log)


def test_a_line_torn_by_a_crash_does_not_swallow_the_next_record_written_after_restart(tmp_path):
    import json

    from fraudguard.serving.predictions import PredictionLog

    log = tmp_path / "predictions.jsonl"
    log.write_text(_decision(1, "2024-07-29T13:45:00") + _decision(2, "2024-07-29T13:46:00")[:40], encoding="utf-8")
    writer = PredictionLog(log, max_queue=10)
    for i in (3, 4):
        writer.put(json.loads(_decision(i, "2024-07-29T13:47:00")))
    writer.flush()
    writer.close()
    read = load_prediction_log(log)
    assert read.frame["TRANSACTION_ID"].tolist() == [1, 3, 4]  # before: record 3 was glued to the torn line
    assert read.skipped == 1 and writer.written == 2 and writer.dropped == 0


def test_a_disk_error_counts_the_records_it_lost_and_the_writer_keeps_going(tmp_path):
    import json

    from fraudguard.serving.predictions import PredictionLog

    dropped = []
    writer = PredictionLog(Path("/dev/full"), max_queue=10, on_drop=lambda: dropped.append(1))  # every write: ENOSPC
    for i in (1, 2, 3):
        writer.put(json.loads(_decision(i, "2024-07-29T13:45:00")))
    writer.flush()
    assert (writer.written, writer.dropped, len(dropped)) == (0, 3, 3)  # before: written 3, dropped 0, thread dead
    assert "No space left on device" in writer.last_error
    writer.put(json.loads(_decision(4, "2024-07-29T13:45:00")))
    writer.flush(timeout_s=15)
    assert writer._thread.is_alive() and writer.dropped == 4  # still draining after the error
    writer.close()


def test_a_recorded_chargeback_is_never_erased_or_moved_by_a_later_label(tmp_path, small_settings):
    settings = small_settings.featurize
    store = FeatureStore(tmp_path / "s.sqlite", settings)
    t0 = dt.datetime(2024, 5, 1, 12)
    store.add(RawTransaction(1, t0, 1, 7, 50.0))
    store.add(RawTransaction(2, t0, 2, 8, 50.0))
    labelled = t0 + dt.timedelta(days=settings.label_delay_days)
    assert store.record_label(2, False, labelled) and store.record_label(2, True, labelled)  # legit, then a chargeback
    assert store.record_label(1, True, labelled)
    assert not store.record_label(1, False, labelled + dt.timedelta(days=1))  # before: erased the chargeback
    assert not store.record_label(1, True, t0)  # nor moved in time
    assert store.fraud_label_time(1) == int(pd.Timestamp(labelled).value) and store.fraud_label_time(3) is None
    w = settings.windows_days[-1]
    probe = store.features(RawTransaction(9, labelled + dt.timedelta(hours=1), 3, 7, 10.0))[terminal_risk(w)]
    assert probe == 1.0


def test_lines_the_column_wide_time_parse_or_the_row_merge_would_trip_on_are_skipped_not_fatal(tmp_path):
    log = tmp_path / "predictions.jsonl"
    clash_time = json.loads(_decision(4, "2024-07-29T13:45:00"))
    clash_time["features"]["TX_DATETIME"] = 1.0
    clash_terminal = json.loads(_decision(5, "2024-07-29T13:45:00"))
    clash_terminal["features"]["TERMINAL_ID"] = 999
    log.write_text(_decision(1, "2024-07-29T13:45:00")
                   + _decision(2, "9999-12-31T00:00:00")          # before: OutOfBoundsDatetime stopped the read
                   + _decision(3, "2024-W31-1T13:45:00")          # a week date: Python reads it, pandas not
                   + json.dumps(clash_time) + "\n" + json.dumps(clash_terminal) + "\n"  # before: 999 overwrote 2
                   + _decision(6, "2024-07-29T13:46:00.000000"), encoding="utf-8")
    read = load_prediction_log(log)
    assert read.frame["TRANSACTION_ID"].tolist() == [1, 6] and read.frame["TERMINAL_ID"].tolist() == [2, 2]
    assert [n for n, _ in read.skipped_lines] == [2, 3, 4, 5]
    assert "features named like transaction or decision fields (TERMINAL_ID)" in read.describe_skipped(log)


def test_payments_at_the_same_instant_count_as_earlier_only_with_a_lower_id_whichever_arrived_first(
        tmp_path, small_settings):
    # compute_features orders same-instant payments by TRANSACTION_ID; the store counted whatever had arrived, so a
    # card's two payments at 12:00:00 arriving 11 then 10 gave payment 10 a 1-hour spend of 130 online, 100 offline.
    settings = small_settings.featurize.model_copy(update={"label_delay_days": 0})
    frame = same_instant_frame()
    offline = compute_features(frame, settings).set_index("TRANSACTION_ID")
    store = FeatureStore(tmp_path / "s.sqlite", settings)
    first = raw_transaction(next(frame.itertuples()))
    store.add(first)
    store.record_label(1, True, first.time)
    late = raw_transaction(frame.iloc[2:3].itertuples().__next__())   # id 11 arrives first
    store.add(late)
    online = store.features(raw_transaction(frame.iloc[1:2].itertuples().__next__()))  # then id 10
    for name in feature_names(settings):
        assert online[name] == pytest.approx(float(offline.loc[10, name])), name
