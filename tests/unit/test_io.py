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


def test_symlink_is_refused_unless_followed(frame, tmp_path):
    frame.to_csv(tmp_path / "real.csv", index=False)
    (tmp_path / "link.csv").symlink_to(tmp_path / "real.csv")
    with pytest.raises(DataError, match="link.csv: is a symbolic link.*--follow-symlinks"):
        read_transactions(tmp_path / "link.csv", follow_symlinks=False)
    assert len(read_transactions(tmp_path / "link.csv", follow_symlinks=True)) == len(frame)


def test_symlink_to_another_file_does_not_echo_its_content(tmp_path):
    (tmp_path / "secret.txt").write_text("root:x:0:0:root:/root:/bin/bash\nsecond line\n")
    (tmp_path / "link.csv").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(DataError) as info:
        read_transactions(tmp_path / "link.csv", follow_symlinks=True)
    assert "root:x" not in str(info.value)


@pytest.mark.parametrize("second", ["TX_AMOUNT", " TX_AMOUNT", "tx_amount"])
def test_csv_with_a_repeated_column_is_refused_naming_it(frame, tmp_path, second):
    text = frame.to_csv(index=False).splitlines()
    rows = [text[0] + f",{second}"] + [line + ",1.00" for line in text[1:]]
    (tmp_path / "tx.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=rf"tx.csv: duplicate column name\(s\) '{second}'"):
        read_transactions(tmp_path / "tx.csv")


def test_parquet_with_a_repeated_column_is_refused_naming_it(frame, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.append_column(schema.TX_AMOUNT, table.column(schema.TX_AMOUNT))
    pq.write_table(table, tmp_path / "tx.parquet")
    with pytest.raises(DataError, match=r"tx.parquet: duplicate column name\(s\) 'TX_AMOUNT'"):
        read_transactions(tmp_path / "tx.parquet")


def test_huge_single_line_file_gives_a_short_message_without_its_content(tmp_path):
    (tmp_path / "line.csv").write_text("A" * 300_000 + ",B" * 1000)
    with pytest.raises(DataError, match="line.csv: first line longer than") as info:
        read_transactions(tmp_path / "line.csv")
    assert len(str(info.value)) < 500
    assert "AAAA" not in str(info.value)


def test_missing_column_message_does_not_list_the_file_header(tmp_path):
    header = ",".join(f"secret_{i}" for i in range(500))
    (tmp_path / "tx.csv").write_text(header + "\n" + ",".join("1" * 500) + "\n")
    with pytest.raises(DataError, match=r"tx.csv: missing required column\(s\) TRANSACTION_ID.*500 column") as info:
        read_transactions(tmp_path / "tx.csv")
    assert "secret_" not in str(info.value)


def test_csv_ids_are_read_as_their_exact_text(frame, tmp_path):
    raw = frame.astype(str)
    raw.loc[0, schema.TRANSACTION_ID] = "9007199254740993"
    raw.to_csv(tmp_path / "tx.csv", index=False)
    assert read_transactions(tmp_path / "tx.csv").loc[0, schema.TRANSACTION_ID] == "9007199254740993"


def test_long_column_names_in_a_message_are_clipped():
    from fraudguard.data.io import check_column_names

    with pytest.raises(DataError) as info:
        check_column_names(["x" * 10_000, "x" * 10_000], "f.csv")
    assert len(str(info.value)) < 300


def test_a_quarantine_column_arrow_cannot_type_is_written_as_text_and_the_others_keep_their_types(frame, tmp_path):
    import pyarrow.parquet as pq

    from fraudguard.data.io import write_quarantine

    rows = frame.head(3).copy()
    rows[schema.TX_AMOUNT] = pd.Series([12.5, "abc", 7], dtype=object)  # a Parquet's floats beside a CSV's text
    rows["reason"] = "negative_amount"
    write_quarantine(rows, tmp_path / "quarantine.parquet")
    types = {field.name: str(field.type) for field in pq.read_schema(tmp_path / "quarantine.parquet")}
    assert types[schema.TX_AMOUNT] == "string"
    assert types[schema.CUSTOMER_ID] == "int64" and types[schema.TX_DATETIME].startswith("timestamp")
    kept = read_transactions(tmp_path / "quarantine.parquet")
    assert list(kept[schema.TX_AMOUNT]) == ["12.5", "abc", "7"]


def _csv_lines(frame: pd.DataFrame) -> list[str]:
    return frame.astype(str).to_csv(index=False).splitlines()


@pytest.mark.parametrize("column", [schema.TX_AMOUNT, "NOTE"])
def test_a_quote_left_open_over_several_lines_is_refused_naming_the_lines_not_read_as_one_row(frame, tmp_path, column):
    # A stray quote in a checked column or in an extra one: the lines up to its closing quote would be one record.
    raw = frame.head(6).astype(str).assign(NOTE="x")
    lines = _csv_lines(raw)
    lines[2] = lines[2].replace(f",{raw.iloc[1][column]}", f',"{raw.iloc[1][column]}', 1) if column != "NOTE" \
        else lines[2][:-1] + '"x'
    lines[5] = lines[5][:-1] + 'x"'
    (tmp_path / "tx.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"tx.csv: the record starting on line 3 runs to line 6: .*'{column}'"):
        read_transactions(tmp_path / "tx.csv")


def test_a_quoted_comma_inside_one_line_is_still_one_value(frame, tmp_path):
    raw = frame.head(3).astype(str).assign(NOTE="a, b")
    raw.to_csv(tmp_path / "tx.csv", index=False)  # pandas quotes "a, b"
    back = read_transactions(tmp_path / "tx.csv")
    assert len(back) == 3 and (back["NOTE"] == "a, b").all()


@pytest.mark.parametrize("field", [schema.TX_AMOUNT, schema.TX_FRAUD, schema.TRANSACTION_ID])
def test_a_nul_byte_inside_a_value_refuses_the_file_naming_its_line(frame, tmp_path, field):
    # The CSV parser ends the field at the NUL: "1<NUL>150.00" would be read as the amount 1.
    raw = frame.head(4).astype(str)
    raw.loc[2, field] = raw.loc[2, field][:1] + "\0" + raw.loc[2, field][1:]
    raw.to_csv(tmp_path / "tx.csv", index=False)
    with pytest.raises(DataError, match=r"tx.csv: NUL byte on line 4"):
        read_transactions(tmp_path / "tx.csv")


@pytest.mark.parametrize("first_line", ["\n", "   \n"])
def test_a_blank_first_line_cannot_hide_a_repeated_column_in_the_header_below_it(frame, tmp_path, first_line):
    lines = _csv_lines(frame.head(3))
    rows = [lines[0] + ",TX_AMOUNT"] + [line + ",99999" for line in lines[1:]]
    (tmp_path / "tx.csv").write_text(first_line + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"tx.csv: line 1 is blank"):
        read_transactions(tmp_path / "tx.csv")


def test_a_header_name_with_a_quoted_line_break_is_refused(frame, tmp_path):
    lines = _csv_lines(frame.head(3))
    header = lines[0].replace(schema.TX_DATETIME, f'"NOTE\nX",{schema.TX_DATETIME}') + ",TX_AMOUNT"
    rows = [header] + [line.replace(",", ",n,", 1) + ",99999" for line in lines[1:]]
    (tmp_path / "tx.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"tx.csv: unreadable CSV header on line 1"):
        read_transactions(tmp_path / "tx.csv")


def test_parquet_with_an_id_column_pandas_stored_as_its_index_reads_the_column(frame, tmp_path):
    frame.set_index(schema.TRANSACTION_ID).to_parquet(tmp_path / "tx.parquet")
    back = read_transactions(tmp_path / "tx.parquet")
    assert back[schema.TRANSACTION_ID].tolist() == frame[schema.TRANSACTION_ID].tolist()


def test_parquet_bytes_that_are_not_utf8_reach_validation_as_an_unparseable_value(frame, tmp_path, small_settings):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fraudguard.data.validation import validate_transactions

    rows = frame.head(4)
    table = pa.Table.from_pandas(rows, preserve_index=False)
    amounts = [f"{a}".encode() for a in rows[schema.TX_AMOUNT]]
    amounts[2] = b"\xff"
    table = table.set_column(table.schema.get_field_index(schema.TX_AMOUNT), schema.TX_AMOUNT, pa.array(amounts))
    pq.write_table(table, tmp_path / "tx.parquet")
    lenient = small_settings.validate_.model_copy(update={"max_quarantine_share": 1.0})
    result = validate_transactions(read_transactions(tmp_path / "tx.parquet"), lenient,
                                   now=pd.Timestamp("2030-01-01"))
    assert result.quarantined[schema.TRANSACTION_ID].tolist() == [rows[schema.TRANSACTION_ID].iloc[2]]
    assert result.quarantined[schema.QUARANTINE_REASON].str.contains("unparseable_amount").all()
    assert len(result.accepted) == 3
