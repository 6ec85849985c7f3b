"""Data history is immutable: an import is diffed against the version it replaces.

A transaction already in the previous version (same TRANSACTION_ID) whose label, amount or any other
field changed is a finding, not an update: the new values are quarantined (`changed_history`) and the
previous values are kept, unless the import brings a reviewed relabel list (TRANSACTION_ID, new
TX_FRAUD, optionally TX_FRAUD_SCENARIO) that names the change. What an import did to history is written
beside the data as its intake record (data/raw/.intake.json, versioned with it), which the validate stage
reads into its report: label changes, changed rows kept, and the fraud rate of the previous version.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fraudguard.data import schema
from fraudguard.data.io import check_column_names, clip_text, read_transactions
from fraudguard.data.validation import CHANGED_HISTORY, parse_columns, repeated_ids
from fraudguard.errors import DataError
from fraudguard.files import read_json_object, write_json

# Hidden, so the validate stage does not read it as transactions; inside data/raw, so DVC versions it
# with the data it describes.
INTAKE_RECORD_NAME = ".intake.json"
# Changed or relabelled rows listed by TRANSACTION_ID in the record, at most this many.
MAX_LISTED_IDS = 100
_COMPARED = (schema.TX_DATETIME, schema.CUSTOMER_ID, schema.TERMINAL_ID, schema.TX_AMOUNT,
             schema.TX_FRAUD, schema.TX_FRAUD_SCENARIO)
_LABELS = (schema.TX_FRAUD, schema.TX_FRAUD_SCENARIO)


@dataclass(frozen=True)
class HistoryDiff:
    """How a new frame relates to the previous version, by position in the new frame.

    changed: rows of an existing transaction with a value changed and no reviewed relabel for it, every
    copy of an existing transaction the new frame repeats, and every row of an id the previous frame held
    more than once (`unresolved`); relabelled: rows whose label change the relabel list approves (applied);
    previous_rows: for each changed row, the position of its transaction in the previous frame (-1 for an
    unresolved id: it has no one previous row).
    """

    changed: np.ndarray
    relabelled: np.ndarray
    previous_rows: np.ndarray
    label_changed: np.ndarray
    amount_changed: np.ndarray
    existing: int
    missing_from_new: int
    relabels_unused: int
    redundant: np.ndarray  # extra copies of a repeated existing id: dropped from the stored frame
    # Rows of an id the previous frame held more than once (validation quarantined every copy there): which
    # copy was the transaction is unknown, so a file giving the id is not allowed to settle it.
    unresolved: np.ndarray
    # Positions in the previous frame of every copy of those ids: they are stored again as they were.
    unresolved_previous_rows: np.ndarray

    def summary(self, transaction_ids: pd.Series) -> dict[str, Any]:
        """Counts (and the first ids) for the intake record and the import report."""
        ids = transaction_ids.to_numpy()
        return {
            "existing_transactions": self.existing,
            CHANGED_HISTORY: int(self.changed.sum()),
            "changed_history_label": int((self.changed & self.label_changed).sum()),
            "changed_history_amount": int((self.changed & self.amount_changed).sum()),
            "changed_history_unresolved_duplicate": int(self.unresolved.sum()),
            "changed_history_ids": [str(i) for i in pd.unique(ids[self.changed])[:MAX_LISTED_IDS]],
            "label_changes": int(self.relabelled.sum()),
            "label_change_ids": [str(i) for i in ids[self.relabelled][:MAX_LISTED_IDS]],
            "previous_transactions_missing": self.missing_from_new,
            "relabels_unused": self.relabels_unused,
        }


def diff_history(previous: pd.DataFrame, new: pd.DataFrame,
                 relabels: pd.DataFrame | None = None) -> HistoryDiff:
    """Compare `new` with `previous` (both as read: any dtypes) on their parsed values, by TRANSACTION_ID.

    Rows whose id does not parse are left to validation (not compared).
    An id of `previous` that `new` repeats is a change of history whatever the copies hold (which copy is
    the transaction is unknown; a decoy copy would otherwise hide a changed one): every copy is changed.
    So is every row of an id that `previous` repeats (validation quarantined all its copies there): a file
    that gives it once would otherwise pick, unrecorded, which copy becomes training data. Its previous
    copies are stored again, so the id stays quarantined as a duplicate.
    A relabel (TRANSACTION_ID, TX_FRAUD[, TX_FRAUD_SCENARIO]) approves a change when the new row's labels
    are the listed ones and nothing but the labels changed.
    """
    old, new_typed = _typed(previous), _typed(new)
    old_repeated = old["_ok_id"].to_numpy() & repeated_ids(old[schema.TRANSACTION_ID], _failed(old))
    unresolved_ids = pd.unique(old[schema.TRANSACTION_ID].to_numpy()[old_repeated])
    unresolved = new_typed["_ok_id"].to_numpy() & new_typed[schema.TRANSACTION_ID].isin(unresolved_ids).to_numpy()
    given_unresolved = pd.unique(new_typed[schema.TRANSACTION_ID].to_numpy()[unresolved])
    unresolved_previous_rows = np.flatnonzero(
        old_repeated & old[schema.TRANSACTION_ID].isin(given_unresolved).to_numpy())
    old = old[old["_ok_id"] & ~old_repeated]
    repeated = repeated_ids(new_typed[schema.TRANSACTION_ID], _failed(new_typed))
    position = pd.Series(np.arange(len(old)), index=old.index)
    lookup = pd.Series(position.to_numpy(), index=old[schema.TRANSACTION_ID].to_numpy())
    old_pos = lookup.reindex(new_typed[schema.TRANSACTION_ID].to_numpy()).to_numpy()
    known = new_typed["_ok_id"].to_numpy() & ~np.isnan(old_pos)
    existing = known & ~repeated
    repeated_existing = known & repeated
    n = len(new)
    differs = {c: np.zeros(n, dtype=bool) for c in _COMPARED}
    rows = np.flatnonzero(existing)
    matched = old.iloc[old_pos[rows].astype(np.int64)]
    for column in _COMPARED:
        # A column only one version has (the optional scenario) is not a change of any transaction.
        if column in new_typed.columns and column in old.columns:
            differs[column][rows] = ~_same(new_typed[column].to_numpy()[rows], matched[column].to_numpy())
    label_changed = differs[schema.TX_FRAUD] | differs[schema.TX_FRAUD_SCENARIO]
    other_changed = np.zeros(n, dtype=bool)
    for column in _COMPARED:
        if column not in _LABELS:
            other_changed |= differs[column]
    any_change = label_changed | other_changed

    approved = np.zeros(n, dtype=bool)
    unused = 0
    if relabels is not None and len(relabels):
        listed = relabels.set_index(schema.TRANSACTION_ID)
        wanted = listed.reindex(new_typed[schema.TRANSACTION_ID].to_numpy())
        approved = ~wanted[schema.TX_FRAUD].isna().to_numpy()
        for column in _LABELS:
            if column in listed.columns and column in new_typed.columns:
                want = wanted[column].to_numpy(dtype="float64")
                has = new_typed[column].to_numpy(dtype="float64")
                approved &= np.isnan(want) | (want == has)
        approved &= label_changed & ~other_changed & existing
        unused = int(len(listed) - approved.sum())
    changed = (any_change & ~approved) | repeated_existing | unresolved
    all_rows = np.flatnonzero(known)
    previous_rows = np.full(n, -1, dtype=np.int64)
    previous_rows[all_rows] = old.index.to_numpy()[old_pos[all_rows].astype(np.int64)]
    # Of the copies of a repeated existing id, the first keeps the transaction (at its previous values).
    redundant = repeated_existing & pd.Series(previous_rows).duplicated().to_numpy()
    return HistoryDiff(
        changed=changed, relabelled=approved, previous_rows=previous_rows,
        label_changed=label_changed, amount_changed=differs[schema.TX_AMOUNT],
        existing=int(len(np.unique(old_pos[all_rows]))) + len(given_unresolved),
        missing_from_new=int(len(old) - len(np.unique(old_pos[all_rows])))
        + len(unresolved_ids) - len(given_unresolved),
        relabels_unused=unused, redundant=redundant,
        unresolved=unresolved, unresolved_previous_rows=unresolved_previous_rows,
    )


def keep_history(previous: pd.DataFrame, new: pd.DataFrame,
                 diff: HistoryDiff) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(`new` with each changed row's values put back to the previous version's, the changed rows as they
    came with reason `changed_history`). Order is `new`'s; of the copies of a repeated existing transaction
    only the first stays (at its previous values), so every copy the file brought is in the second frame.
    The rows of an unresolved id (repeated in `previous`) are replaced by all its previous copies, at the
    end, so validation quarantines them as duplicates again."""
    kept = new.reset_index(drop=True).copy()
    rows = np.flatnonzero(diff.changed)
    rejected = kept.iloc[rows].copy()
    rejected[schema.QUARANTINE_REASON] = CHANGED_HISTORY
    previous = previous.reset_index(drop=True)
    restored = np.flatnonzero(diff.changed & ~diff.unresolved)
    if len(restored):
        _put_values(kept, kept.index[restored], previous.loc[diff.previous_rows[restored]])
    if diff.redundant.any() or diff.unresolved.any():
        kept = kept.loc[~(diff.redundant | diff.unresolved)].reset_index(drop=True)
    if len(diff.unresolved_previous_rows):
        source = previous.loc[diff.unresolved_previous_rows].reset_index(drop=True)
        copies = pd.DataFrame({
            column: _in_dtype(source[column], kept[column].dtype)[0] if column in source.columns
            else pd.Series([None] * len(source), dtype=object)
            for column in kept.columns})
        kept = pd.concat([kept, copies], ignore_index=True)
    return kept, rejected


def load_relabels(path: Path | str) -> pd.DataFrame:
    """A reviewed relabel list (CSV or Parquet): TRANSACTION_ID, TX_FRAUD and optionally TX_FRAUD_SCENARIO,
    as int64. Raises DataError naming the file for a missing column, a bad value or a repeated id."""
    path = Path(path)
    try:
        table = pd.read_parquet(path) if path.suffix.lower() in (".parquet", ".pq") else \
            pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read relabel list: {clip_text(exc)}") from exc
    check_column_names(table.columns, str(path))
    missing = [c for c in (schema.TRANSACTION_ID, schema.TX_FRAUD) if c not in table.columns]
    if missing:
        raise DataError(f"{path}: relabel list lacks column(s) {', '.join(missing)}")
    columns = [c for c in (schema.TRANSACTION_ID, *_LABELS) if c in table.columns]
    out = {}
    for column in columns:
        values = pd.to_numeric(table[column], errors="coerce")
        bad = values.isna() | (values != np.floor(values))
        if bad.any():
            raise DataError(f"{path}: relabel list row {int(np.flatnonzero(bad.to_numpy())[0]) + 2}: "
                            f"{column} is not an integer")
        out[column] = values.astype("int64")
    frame = pd.DataFrame(out)
    if not frame[schema.TX_FRAUD].isin([0, 1]).all():
        raise DataError(f"{path}: relabel list holds a TX_FRAUD other than 0 or 1")
    repeated = frame[schema.TRANSACTION_ID].duplicated()
    if repeated.any():
        raise DataError(f"{path}: relabel list names TRANSACTION_ID "
                        f"{int(frame[schema.TRANSACTION_ID][repeated].iloc[0])} twice")
    return frame


def raw_fraud_rate(frame: pd.DataFrame) -> float:
    """Share of rows labelled TX_FRAUD == 1 (unparseable labels count as not fraud)."""
    labels = pd.to_numeric(frame[schema.TX_FRAUD], errors="coerce")
    return float((labels == 1).mean()) if len(frame) else 0.0


def fraud_rate_change(previous: float, current: float, max_factor: float) -> dict[str, Any]:
    """The fraud rate against the previous version's: factor = larger / smaller (inf when one is 0 and the
    other not); exceeded when it is above max_factor."""
    if previous == current:
        factor = 1.0
    elif min(previous, current) <= 0:
        factor = float("inf")
    else:
        factor = max(previous, current) / min(previous, current)
    return {"previous": previous, "current": current, "factor": factor if np.isfinite(factor) else "inf",
            "max_factor": max_factor, "exceeded": bool(factor > max_factor)}


def history_report(record: dict[str, Any] | None, inputs: dict[str, str], fraud_rate: float,
                   max_factor: float) -> dict[str, Any]:
    """The report's `history` (what the import that brought this data did to the previous version: label
    changes applied, changed rows kept out) and `fraud_rate_change` (against the previous version's fraud
    rate, `exceeded` beyond max_factor), from the intake record and the validated files (`inputs`: name ->
    md5). Unchecked, and saying why, when the data did not come through `fraudguard data import`, was changed
    after it, or data/raw holds any file besides the imported one (its rows were never diffed)."""
    recorded = record.get("transactions_md5") if record is not None else None
    others = sorted(name for name, md5 in inputs.items() if md5 != recorded)
    if record is None:
        why = "no intake record: data/raw was not written by `fraudguard data import`"
    elif recorded not in inputs.values():
        why = "stale intake record: data/raw changed after its import"
    elif others or len(inputs) != 1:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        why = (f"data/raw holds file(s) besides the imported one ({shown or 'a second copy of it'}), "
               "not diffed by `fraudguard data import`")
    else:
        history = {"checked": True, "previous_md5": record.get("previous_md5"),
                   "previous_rows": record.get("previous_rows"), **(record.get("history") or {})}
        previous_rate = record.get("previous_fraud_rate")
        change = fraud_rate_change(float(previous_rate), fraud_rate, max_factor) if previous_rate is not None \
            else {"checked": False, "reason": "no previous version"}
        if previous_rate is not None:
            change["checked"] = True
        return {"history": history, "fraud_rate_change": change}
    logging.getLogger(__name__).warning("validation: history and fraud-rate change unchecked (%s)", why)
    return {"history": {"checked": False, "reason": why}, "fraud_rate_change": {"checked": False, "reason": why}}


def write_intake_record(raw_dir: Path, record: dict[str, Any]) -> Path:
    """The intake record of the data in raw_dir (JSON, sorted keys: the same record gives the same bytes)."""
    return write_json(raw_dir / INTAKE_RECORD_NAME, record, sort_keys=True)


def read_intake_record(raw_dir: Path) -> dict[str, Any] | None:
    """raw_dir's intake record, or None when the data did not come through `fraudguard data import`."""
    path = raw_dir / INTAKE_RECORD_NAME
    if not path.is_file():
        return None
    return read_json_object(path, "intake record", DataError)


def previous_version(raw_dir: Path) -> pd.DataFrame | None:
    """The transactions data/raw holds now (the version an import replaces), or None when there are none."""
    if not raw_dir.is_dir():
        return None
    files = sorted(p for p in raw_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        return None
    frames = [read_transactions(f) for f in files]
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    """The compared columns parsed as validation parses them (NaN/NaT/0 where a value fails), plus _ok_id."""
    columns = [c for c in _COMPARED if c in frame.columns]
    base = frame.reset_index(drop=True)
    id_failures: dict[int, list[str]] = {}
    typed = parse_columns(base[columns], {})  # a value that fails compares as its placeholder
    typed[schema.TRANSACTION_ID] = parse_columns(base[[schema.TRANSACTION_ID]], id_failures)[schema.TRANSACTION_ID]
    ok = np.ones(len(base), dtype=bool)
    if id_failures:
        ok[np.fromiter(id_failures, dtype=np.int64)] = False
    typed["_ok_id"] = ok
    return typed


def _failed(typed: pd.DataFrame) -> dict[int, list[str]]:
    """The positions (as repeated_ids takes them) of `_typed` rows whose id did not parse."""
    return {int(i): [] for i in np.flatnonzero(~typed["_ok_id"].to_numpy())}


def _put_values(target: pd.DataFrame, at: pd.Index, source: pd.DataFrame) -> None:
    """Write `source`'s rows (the previous version's values) into `target` at the labels `at`, column by
    column: in `target`'s dtype where the values survive it unchanged, else in a dtype that holds both the
    column and them exactly (the previous value is kept as it was, never cast down to the new file's type)."""
    for column in target.columns:
        if column not in source.columns:
            continue
        values, fits = _in_dtype(source[column], target[column].dtype)
        if not fits:
            wider = _common_exact_dtype(target[column], source[column])
            target[column] = target[column].astype(object if wider is None else wider)
            values = source[column].astype(object) if wider is None else source[column].astype(wider)
        target.loc[at, column] = values.to_numpy()


def _in_dtype(values: pd.Series, dtype: Any) -> tuple[pd.Series, bool]:
    """(`values` in `dtype`, True) where they fit exactly, else (as they are, False): a file read as text (CSV)
    gets the previous values as text, so each column stays one type; a cast that would change a value
    (830.75 into int64, an id past int32, nanoseconds into seconds, float64 into float32) does not fit."""
    if dtype == object or pd.api.types.is_string_dtype(dtype):
        return values.astype(str), True
    try:
        cast = values.astype(dtype)
        exact = bool(_same(cast.astype(values.dtype).to_numpy(), values.to_numpy()).all())
    except (TypeError, ValueError, OverflowError):
        exact = False
    return (cast, True) if exact else (values.astype(object), False)


def _common_exact_dtype(a: pd.Series, b: pd.Series) -> Any:
    """A numpy dtype both series fit in exactly (int64 and float64 amounts: float64), else None."""
    try:
        common = np.result_type(a.dtype, b.dtype)
    except TypeError:
        return None
    if common == object:
        return None
    for values in (a, b):
        if not _in_dtype(values, common)[1]:
            return None
    return common


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise equality where two missing values are the same."""
    a_missing = pd.isna(a)
    b_missing = pd.isna(b)
    with np.errstate(invalid="ignore"):
        equal = np.asarray(a == b, dtype=bool) if len(a) else np.zeros(0, dtype=bool)
    return (equal & ~a_missing & ~b_missing) | (a_missing & b_missing)
