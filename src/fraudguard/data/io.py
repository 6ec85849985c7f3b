"""Reading and writing raw transaction files (CSV or Parquet) without silent coercion."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
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


def read_transactions(path: Path | str) -> pd.DataFrame:
    """The file's rows as read: Parquet with its stored dtypes, CSV as strings (bad values stay for
    validation to quarantine). Raises DataError naming the file if it cannot be read at all or lacks
    a required column."""
    path = Path(path)
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
            f"(found: {', '.join(map(str, frame.columns)) or 'none'})"
        )
    logger.info("read %d rows from %s", len(frame), path)
    return frame


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
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file: {exc}") from exc
    return table.to_pandas()


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        # Strings everywhere: a value that does not parse must reach validation, not become NaN here.
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not a UTF-8 CSV file (binary content at byte {exc.start})") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise DataError(f"{path}: not a readable CSV file: {exc}") from exc
