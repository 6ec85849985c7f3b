"""Reading and writing raw transaction files (CSV or Parquet) without silent coercion."""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from fraudguard.data import schema
from fraudguard.errors import DataError

logger = logging.getLogger(__name__)

PARQUET_MAGIC = b"PAR1"
# Fixed writer settings: with these, the same frame gives the same bytes (no timestamps are written).
_PARQUET_OPTIONS = dict(
    compression="snappy",
    version="2.6",
    data_page_version="1.0",
    use_dictionary=True,
    write_statistics=True,
    row_group_size=1_000_000,
)
# A header line longer than this is not a transactions file (a 50 MB single-line file is refused
# before pandas parses it).
MAX_HEADER_BYTES = 64 * 1024
# Error messages name at most this many columns, each cut to this many characters: a message never
# carries more of a file's content than the offending column names.
MAX_NAMES_IN_MESSAGE = 8
MAX_NAME_CHARS = 64
MAX_DETAIL_CHARS = 200


def read_transactions(path: Path | str, follow_symlinks: bool = True) -> pd.DataFrame:
    """The file's rows as read: Parquet with its stored dtypes, CSV as strings (bad values stay for
    validation to quarantine). Raises DataError naming the file if it cannot be read at all, is a
    symbolic link and `follow_symlinks` is false, has duplicate column names or lacks a required
    column. Messages never quote the file beyond the offending column names (clipped)."""
    path = Path(path)
    if path.is_symlink() and not follow_symlinks:
        raise DataError(f"{path}: is a symbolic link; refusing to follow it (pass --follow-symlinks "
                        f"to read the file it points to)")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    kind = _file_kind(path)
    if kind == "parquet":
        frame = _read_parquet(path)
    else:
        frame = _read_csv(path)
    missing = [c for c in schema.REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(
            f"{path}: missing required column(s) {', '.join(missing)} "
            f"({len(frame.columns)} column(s) found)"
        )
    logger.info("read %d rows from %s", len(frame), path)
    return frame


def clip_text(text: object, limit: int = MAX_DETAIL_CHARS) -> str:
    """`text` (an exception or any value, as its str) cut to `limit` characters (with a marker saying how much was cut)."""
    shown = str(text)
    if len(shown) <= limit:
        return shown
    return f"{shown[:limit]}... [{len(shown) - limit} more characters]"


def name_list(names: Iterable[object]) -> str:
    """Column names for an error message: at most MAX_NAMES_IN_MESSAGE, each clipped."""
    names = [str(n) for n in names]
    shown = [repr(clip_text(n, MAX_NAME_CHARS)) for n in names[:MAX_NAMES_IN_MESSAGE]]
    more = len(names) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def check_column_names(names: Iterable[object], source: str) -> None:
    """Raise DataError naming `source` and the names if two columns share a name (compared
    stripped and case-folded: ` TX_AMOUNT` beside `TX_AMOUNT` is as ambiguous as a repeat)."""
    seen: dict[str, str] = {}
    duplicates: list[str] = []
    for name in map(str, names):
        key = name.strip().casefold()
        if key in seen and name not in duplicates:
            duplicates.append(name)
        seen.setdefault(key, name)
    if duplicates:
        raise DataError(f"{source}: duplicate column name(s) {name_list(duplicates)}: "
                        f"which one holds the data is ambiguous")


def write_transactions(df: pd.DataFrame, path: Path | str) -> None:
    """Write `df` as Parquet, byte-identical for identical frames (fixed settings, no pandas metadata
    with versions or timestamps), atomically (temp file then rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pandas(df, preserve_index=False)
    # The pandas metadata block embeds the pandas version; dropping it keeps the bytes stable across
    # environments. Column types survive: they are native Parquet types.
    table = table.replace_schema_metadata(None)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        pq.write_table(table, tmp, **_PARQUET_OPTIONS)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would make a shared data file unreadable to others
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_quarantine(df: pd.DataFrame, path: Path | str) -> None:
    """Write quarantined rows (as given, plus `reason`) like write_transactions; a column Arrow cannot type
    (mixed Python objects, e.g. rows of several raw files or a Parquet's ints beside a CSV's text) is written as
    text, the other columns keep their types, so the rows are always kept for review."""
    import pyarrow as pa

    try:
        write_transactions(df, path)
    except (pa.ArrowException, ValueError, TypeError):
        write_transactions(df.assign(**{name: df[name].astype("string") for name in _untypable_columns(df)}), path)


def _untypable_columns(df: pd.DataFrame) -> list[str]:
    """The columns Arrow cannot give one type (every column when none alone is the cause: never lose rows)."""
    import pyarrow as pa

    bad = []
    for name in df.columns:
        try:
            pa.array(df[name], from_pandas=True)
        except (pa.ArrowException, ValueError, TypeError):
            bad.append(name)
    return bad or [str(name) for name in df.columns]


def file_md5(path: Path | str) -> str:
    """Hex md5 of a file's bytes (what DVC records for a file)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".csv", ".txt"):
        return "csv"
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if head.startswith(PARQUET_MAGIC):
        return "parquet"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: neither Parquet nor UTF-8 CSV (binary content)") from exc
    return "csv"


def _read_parquet(path: Path) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file: {clip_text(exc)}") from exc
    check_column_names(names, str(path))
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file: {clip_text(exc)}") from exc
    # ignore_metadata: a column pandas wrote as its index (df.set_index("TRANSACTION_ID").to_parquet) stays a
    # column, as the file's schema lists it, instead of vanishing into the frame's index.
    frame = table.to_pandas(ignore_metadata=True)
    for name, kind in zip(table.column_names, table.schema.types):
        if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
            # Bytes as text for validation to parse; bytes that are not UTF-8 keep their escapes (b"\xff" ->
            # "\\xff"), which parse as nothing, so the row is quarantined, not the whole read stopped.
            frame[name] = frame[name].map(
                lambda value: value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value)
    return frame


def _csv_header(path: Path) -> list[str]:
    """The header row's names, read from at most MAX_HEADER_BYTES of the first line, which must hold the whole
    header: after a blank first line or with a quote left open at its end the parser would take another line as
    the header than the one checked here (a repeated column would then pass as an extra one)."""
    with open(path, "rb") as fh:
        line = fh.readline(MAX_HEADER_BYTES + 1)
    if len(line) > MAX_HEADER_BYTES:
        raise DataError(f"{path}: first line longer than {MAX_HEADER_BYTES} bytes: not a CSV header "
                        f"of transaction columns")
    try:
        text = line.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 CSV file (binary content at byte {exc.start})") from exc
    if not text.strip():
        raise DataError(f"{path}: line 1 is blank: a transactions CSV starts with its header line")
    try:
        return next(csv.reader([text.rstrip("\r\n")], strict=True), [])
    except csv.Error as exc:
        raise DataError(f"{path}: unreadable CSV header on line 1 (a quote left open?): {clip_text(exc)}") from exc


def _read_csv(path: Path) -> pd.DataFrame:
    # pandas renames a repeated column (TX_AMOUNT.1), so duplicates are checked on the raw header.
    header = _csv_header(path)
    check_column_names(header, str(path))
    has_quotes, lines = _scan_csv_bytes(path)
    try:
        # Strings everywhere: a value that does not parse must reach validation, not become NaN here
        # (and ids stay exact: no trip through float64).
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 CSV file (binary content at byte {exc.start})") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise DataError(f"{path}: not a readable CSV file: {clip_text(exc)}") from exc
    if not isinstance(frame.index, pd.RangeIndex):
        # pandas takes the leading columns a header lacks names for as the index: every value would move.
        raise DataError(_longer_row_message(path, len(header)))
    if len(frame.columns) != len(header):
        raise DataError(f"{path}: the parser read {len(frame.columns)} header fields where line 1 holds "
                        f"{len(header)}; refused")
    if has_quotes and lines != len(frame) + 1:  # one line a record and the header: no record can span lines
        _refuse_multiline_records(path, frame)
    return frame


def _scan_csv_bytes(path: Path) -> tuple[bool, int]:
    """(whether the file holds a quote character, its number of lines); DataError naming the line of the first
    NUL byte. The CSV parser ends a field at a NUL without a word ("1<NUL>150.00" is read as 1), so no file
    holding one is read."""
    line, has_quotes, last = 1, False, b""
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            nul = block.find(b"\0")
            if nul >= 0:
                at = line + block.count(b"\n", 0, nul)
                raise DataError(f"{path}: NUL byte on line {at}: not a text CSV (the parser would cut the value "
                                f"there); refused")
            line += block.count(b"\n")
            has_quotes = has_quotes or b'"' in block
            last = block[-1:]
    return has_quotes, line - 1 if last == b"\n" else line


def _refuse_multiline_records(path: Path, frame: pd.DataFrame) -> None:
    """DataError naming the lines of the first record that runs over several. A quote opened and closed lines
    later makes one record of them: the rows between would end up inside one field (of an extra column: dropped
    unseen), so no value may hold a line break."""
    for column in frame.columns:
        spans = frame[column].str.contains("[\r\n]", regex=True, na=False).to_numpy()
        if spans.any():
            start, end = _record_lines(path, int(spans.argmax()))
            raise DataError(f"{path}: the record starting on line {start} runs to line {end}: a quoted field of "
                            f"column {name_list([column])} holds a line break (a quote left open?), so those "
                            f"lines would be read as one transaction; refused")


def _record_lines(path: Path, index: int) -> tuple[int, int]:
    """The first and last physical line of data record `index` (0: the first after the header)."""
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
        next(reader, None)
        end = reader.line_num
        for position, _ in enumerate(reader):
            start, end = end + 1, reader.line_num
            if position == index:
                return start, end
    return end, end


def _longer_row_message(path: Path, n_header: int) -> str:
    """Why a CSV whose data rows have more fields than its header is refused, naming the first such line."""
    line, fields = 0, 0
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh)
        next(reader, None)
        for row in reader:
            if len(row) > n_header:
                line, fields = reader.line_num, len(row)
                break
    return (f"{path}: line {line} has {fields} fields, the header {n_header}: rows with more fields than the "
            "header (a trailing comma?) would shift the values into other columns; refused (remove the extra field "
            "or name it in the header)")
