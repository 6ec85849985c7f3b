"""Reading raw transaction files: CSV or Parquet, no silent coercion, errors naming the file."""

from __future__ import annotations

import pandas as pd
import pytest

from fraudguard.data import schema
from fraudguard.data.io import file_md5, read_transactions, write_transactions
from fraudguard.data.simulator import simulate_transactions
from fraudguard.errors import DataError


@pytest.fixture
def frame(small_settings) -> pd.DataFrame:
    return simulate_transactions(small_settings.simulate).head(200)


def test_parquet_round_trip_keeps_values_and_dtypes(frame, tmp_path):
    write_transactions(frame, tmp_path / "tx.parquet")
    back = read_transactions(tmp_path / "tx.parquet")
    pd.testing.assert_frame_equal(back, frame)


def test_writing_the_same_frame_twice_gives_the_same_bytes(frame, tmp_path):
    write_transactions(frame, tmp_path / "a.parquet")
    write_transactions(frame, tmp_path / "b.parquet")
    assert file_md5(tmp_path / "a.parquet") == file_md5(tmp_path / "b.parquet")


def test_csv_values_are_read_as_strings_so_bad_values_survive(frame, tmp_path):
    raw = frame.astype(str)
    raw.loc[0, schema.TX_AMOUNT] = "12,50 EUR"
    raw.loc[1, schema.TX_DATETIME] = "yesterday"
    raw.to_csv(tmp_path / "tx.csv", index=False)
    back = read_transactions(tmp_path / "tx.csv")
    assert back.loc[0, schema.TX_AMOUNT] == "12,50 EUR"
    assert back.loc[1, schema.TX_DATETIME] == "yesterday"
    assert len(back) == len(frame)


def test_csv_empty_cell_is_read_as_missing(frame, tmp_path):
    raw = frame.astype(str)
    raw.loc[0, schema.CUSTOMER_ID] = ""
    raw.to_csv(tmp_path / "tx.csv", index=False)
    assert pd.isna(read_transactions(tmp_path / "tx.csv").loc[0, schema.CUSTOMER_ID])


def test_parquet_without_suffix_is_sniffed(frame, tmp_path):
    write_transactions(frame, tmp_path / "tx.parquet")
    (tmp_path / "tx.parquet").rename(tmp_path / "tx.data")
    assert len(read_transactions(tmp_path / "tx.data")) == len(frame)


def test_missing_file_error_names_the_file(tmp_path):
    with pytest.raises(DataError, match="nope.parquet: no such file"):
        read_transactions(tmp_path / "nope.parquet")


def test_empty_file_error_names_the_file(tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(DataError, match="empty.csv: file is empty"):
        read_transactions(tmp_path / "empty.csv")


def test_garbage_parquet_error_names_the_file(tmp_path):
    (tmp_path / "junk.parquet").write_bytes(b"\x00\xffthis is not parquet" * 10)
    with pytest.raises(DataError, match="junk.parquet: not a readable Parquet file"):
        read_transactions(tmp_path / "junk.parquet")


def test_binary_file_without_suffix_error_names_the_file(tmp_path):
    (tmp_path / "junk").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(DataError, match="junk: neither Parquet nor UTF-8 CSV"):
        read_transactions(tmp_path / "junk")


def test_missing_required_column_error_names_file_and_column(frame, tmp_path):
    frame.drop(columns=[schema.TX_FRAUD]).to_csv(tmp_path / "tx.csv", index=False)
    with pytest.raises(DataError, match=r"tx.csv: missing required column\(s\) TX_FRAUD"):
        read_transactions(tmp_path / "tx.csv")


def test_optional_scenario_column_may_be_absent(frame, tmp_path):
    frame.drop(columns=[schema.TX_FRAUD_SCENARIO]).to_csv(tmp_path / "tx.csv", index=False)
    assert schema.TX_FRAUD_SCENARIO not in read_transactions(tmp_path / "tx.csv").columns
