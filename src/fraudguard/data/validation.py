"""Validation and quarantine of raw transactions.

Two pandera schemas do the per-row work: the parse schema coerces each column to its type (rows that
do not parse fail there), the value schema checks ranges, labels and key uniqueness on typed rows.
Dataset-level checks (conflicting labels, impossible velocity, per-customer amount outliers) then
run on the rows that passed both. Every failing row is quarantined with stable reason codes.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fraudguard.config import ValidateSettings
from fraudguard.data import schema
from fraudguard.errors import DataError

logger = logging.getLogger(__name__)

# Stable reason codes, written into the quarantine file's `reason` column and the report.
MISSING_VALUE = "missing_value"
UNPARSEABLE_TIMESTAMP = "unparseable_timestamp"
UNPARSEABLE_AMOUNT = "unparseable_amount"
UNPARSEABLE_ID = "unparseable_id"
UNPARSEABLE_LABEL = "unparseable_label"
NON_INTEGER_ID = "non_integer_id"
NEGATIVE_ID = "negative_id"
NON_FINITE_AMOUNT = "non_finite_amount"
NEGATIVE_AMOUNT = "negative_amount"
AMOUNT_ABOVE_MAX = "amount_above_max"
INVALID_LABEL = "invalid_label"
INVALID_SCENARIO = "invalid_scenario"
DUPLICATE_TRANSACTION_ID = "duplicate_transaction_id"
CONFLICTING_LABEL = "conflicting_label"
IMPOSSIBLE_VELOCITY = "impossible_velocity"
AMOUNT_OUTLIER = "amount_outlier"

REASON_CODES = (
    MISSING_VALUE, UNPARSEABLE_TIMESTAMP, UNPARSEABLE_AMOUNT, UNPARSEABLE_ID, UNPARSEABLE_LABEL,
    NON_INTEGER_ID, NEGATIVE_ID, NON_FINITE_AMOUNT, NEGATIVE_AMOUNT, AMOUNT_ABOVE_MAX, INVALID_LABEL,
    INVALID_SCENARIO, DUPLICATE_TRANSACTION_ID, CONFLICTING_LABEL, IMPOSSIBLE_VELOCITY, AMOUNT_OUTLIER,
)

ID_COLUMNS = (schema.TRANSACTION_ID, schema.CUSTOMER_ID, schema.TERMINAL_ID)
LABEL_COLUMNS = (schema.TX_FRAUD, schema.TX_FRAUD_SCENARIO)
# The accepted frame's dtypes (the raw schema's proper types).
RAW_DTYPES = {
    schema.TRANSACTION_ID: "int64",
    schema.TX_DATETIME: "datetime64[ns]",
    schema.CUSTOMER_ID: "int64",
    schema.TERMINAL_ID: "int64",
    schema.TX_AMOUNT: "float64",
    schema.TX_FRAUD: "int64",
    schema.TX_FRAUD_SCENARIO: "int64",
}
_UNPARSEABLE = {
    schema.TX_DATETIME: UNPARSEABLE_TIMESTAMP,
    schema.TX_AMOUNT: UNPARSEABLE_AMOUNT,
    schema.TRANSACTION_ID: UNPARSEABLE_ID,
    schema.CUSTOMER_ID: UNPARSEABLE_ID,
    schema.TERMINAL_ID: UNPARSEABLE_ID,
    schema.TX_FRAUD: UNPARSEABLE_LABEL,
    schema.TX_FRAUD_SCENARIO: UNPARSEABLE_LABEL,
}
TERMINAL_LOCATION_COLUMNS = (schema.TERMINAL_ID, "x_terminal_id", "y_terminal_id")


@dataclass(frozen=True)
class ValidationResult:
    """Accepted rows (raw-schema dtypes), quarantined rows (as given, plus `reason`), and a report."""

    accepted: pd.DataFrame
    quarantined: pd.DataFrame
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def quarantine_share(self) -> float:
        rows_in = self.report.get("rows_in", 0)
        return self.report.get("rows_quarantined", 0) / rows_in if rows_in else 0.0


class QuarantineShareExceeded(DataError):
    """Too many rows were quarantined; `.result` holds the full outcome so it can still be written."""

    def __init__(self, message: str, result: ValidationResult):
        super().__init__(message)
        self.result = result


def validate_transactions(
    df: pd.DataFrame,
    settings: ValidateSettings,
    source: str = "<frame>",
    terminal_locations: pd.DataFrame | None = None,
) -> ValidationResult:
    """Split `df` into accepted and quarantined rows (rows_in == accepted + quarantined).

    Raises DataError (naming `source`) if a required column is missing or there are no rows, and
    QuarantineShareExceeded (a DataError carrying the result) if the quarantined share is above
    settings.max_quarantine_share.
    """
    missing = [c for c in schema.REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{source}: missing required column(s) {', '.join(missing)}")
    if df.empty:
        raise DataError(f"{source}: no rows")
    columns = [c for c in schema.RAW_COLUMNS if c in df.columns]
    original = df.reset_index(drop=True)
    work = original[columns]
    reasons: dict[int, list[str]] = {}

    typed = _coerce_rows(work, reasons, source)

    _, value_failures = _run_schema(_value_schema(settings, typed.columns), typed, source)
    _add_reasons(reasons, value_failures)
    clean = typed.loc[typed.index.difference(pd.Index(list(value_failures)))]

    for code, mask in (
        (CONFLICTING_LABEL, conflicting_label_mask(clean)),
        (IMPOSSIBLE_VELOCITY, impossible_velocity_mask(clean, settings, terminal_locations)),
        (AMOUNT_OUTLIER, amount_outlier_mask(clean, settings)),
    ):
        for idx in clean.index[mask.to_numpy()]:
            reasons.setdefault(int(idx), []).append(code)

    bad = pd.Index(sorted(reasons), dtype="int64")
    accepted = _to_raw_dtypes(clean.loc[clean.index.difference(bad)])
    quarantined = original.loc[bad].copy()
    quarantined[schema.QUARANTINE_REASON] = [";".join(_ordered(reasons[i])) for i in bad]

    rows_in = len(original)
    if rows_in != len(accepted) + len(quarantined):
        raise AssertionError(
            f"{source}: row invariant broken: {rows_in} in != {len(accepted)} accepted + "
            f"{len(quarantined)} quarantined"
        )
    result = ValidationResult(
        accepted=accepted.reset_index(drop=True),
        quarantined=quarantined.reset_index(drop=True),
        report=_report(original, accepted, quarantined, reasons, source),
    )
    share = result.quarantine_share
    if share > settings.max_quarantine_share:
        top = ", ".join(f"{code} ({n})" for code, n in list(result.report["reasons"].items())[:3])
        raise QuarantineShareExceeded(
            f"{source}: {share:.1%} of rows quarantined ({len(quarantined)} of {rows_in}), above "
            f"validate.max_quarantine_share {settings.max_quarantine_share:.1%}; top reasons: {top}",
            result,
        )
    logger.info("%s: %d rows in, %d accepted, %d quarantined", source, rows_in, len(accepted),
                len(quarantined))
    return result


def conflicting_label_mask(df: pd.DataFrame) -> pd.Series:
    """Rows whose transaction (time, customer, terminal, amount) appears again with another TX_FRAUD."""
    if df.empty:
        return pd.Series(False, index=df.index)
    key = [schema.TX_DATETIME, schema.CUSTOMER_ID, schema.TERMINAL_ID, schema.TX_AMOUNT]
    n_labels = df.groupby(key, sort=False)[schema.TX_FRAUD].transform("nunique")
    return n_labels > 1


def impossible_velocity_mask(df: pd.DataFrame, settings: ValidateSettings,
                             terminal_locations: pd.DataFrame | None = None) -> pd.Series:
    """The later of two consecutive transactions of a customer at different terminals when the card
    would have moved faster than max_speed_km_per_hour.

    Distance: from `terminal_locations` (grid units) when given; otherwise every pair of different
    terminals is taken as `assumed_terminal_distance_units` apart, so the rule becomes "different
    terminals less than distance / max_speed apart in time".
    """
    if df.empty:
        return pd.Series(False, index=df.index)
    ordered = df.sort_values([schema.CUSTOMER_ID, schema.TX_DATETIME, schema.TRANSACTION_ID], kind="stable")
    same_customer = ordered[schema.CUSTOMER_ID].eq(ordered[schema.CUSTOMER_ID].shift())
    prev_terminal = ordered[schema.TERMINAL_ID].shift()
    moved = same_customer & ordered[schema.TERMINAL_ID].ne(prev_terminal)
    seconds = ordered[schema.TX_DATETIME].diff().dt.total_seconds()

    if terminal_locations is not None:
        units = _terminal_distance_units(ordered[schema.TERMINAL_ID], prev_terminal, terminal_locations)
    else:
        units = pd.Series(settings.assumed_terminal_distance_units, index=ordered.index)
    km = units * settings.grid_km_per_unit
    # Speed = km / hours; written as a product so a zero time gap needs no division.
    too_fast = km * 3600.0 > settings.max_speed_km_per_hour * seconds
    flagged = moved & too_fast & (km > 0)
    return flagged.reindex(df.index, fill_value=False)


def amount_outlier_mask(df: pd.DataFrame, settings: ValidateSettings) -> pd.Series:
    """Amounts whose per-customer robust z-score 0.6745 * |x - median| / MAD exceeds max_robust_z, for
    customers with at least min_customer_history transactions (and a non-zero MAD)."""
    if df.empty:
        return pd.Series(False, index=df.index)
    count = df.groupby(schema.CUSTOMER_ID)[schema.TX_AMOUNT].transform("size")
    z = robust_z_scores(df).abs()
    # NaN z (zero MAD) compares False: no evidence of an outlier.
    return (count >= settings.min_customer_history) & (z > settings.max_robust_z)


def robust_z_scores(df: pd.DataFrame) -> pd.Series:
    """Per-customer robust z-score of each amount (NaN where the customer's MAD is zero)."""
    amount = df[schema.TX_AMOUNT]
    median = amount.groupby(df[schema.CUSTOMER_ID]).transform("median")
    mad = (amount - median).abs().groupby(df[schema.CUSTOMER_ID]).transform("median")
    return 0.6745 * (amount - median) / mad.where(mad > 0)


def load_terminal_locations(path: Path | str) -> pd.DataFrame:
    """A terminal-location table (TERMINAL_ID, x_terminal_id, y_terminal_id) from CSV or Parquet."""
    path = Path(path)
    try:
        table = pd.read_parquet(path) if path.suffix.lower() in (".parquet", ".pq") else pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read terminal-location table: {exc}") from exc
    missing = [c for c in TERMINAL_LOCATION_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"{path}: terminal-location table lacks column(s) {', '.join(missing)}")
    return table[list(TERMINAL_LOCATION_COLUMNS)]


def _terminal_distance_units(terminal: pd.Series, prev_terminal: pd.Series,
                             locations: pd.DataFrame) -> pd.Series:
    loc = locations.set_index(schema.TERMINAL_ID)[["x_terminal_id", "y_terminal_id"]]
    here = loc.reindex(terminal.to_numpy()).to_numpy()
    there = loc.reindex(prev_terminal.to_numpy()).to_numpy()
    dist = np.sqrt(((here - there) ** 2).sum(axis=1))
    # A terminal missing from the table gives NaN: no evidence, so no flag.
    return pd.Series(np.nan_to_num(dist, nan=0.0), index=terminal.index)


def _parse_schema(frame: pd.DataFrame):
    """Coerce each column to its type; nulls and unparseable values fail here."""
    import pandera.pandas as pa

    columns = {}
    for col in frame.columns:
        if col == schema.TX_DATETIME:
            dtype = "datetime64[ns]"
        elif col == schema.TX_AMOUNT:
            dtype = "float64"
        elif pd.api.types.is_integer_dtype(frame[col]):
            dtype = "int64"
        else:
            # Parsed as float first so "3.0" is an id and "3.5" fails a named check, not coercion.
            dtype = "float64"
        columns[col] = pa.Column(dtype, coerce=True, nullable=False)
    return pa.DataFrameSchema(columns, strict=True)


def _value_schema(settings: ValidateSettings, columns):
    """Range, label and key checks on typed columns; each check is named by its reason code."""
    import pandera.pandas as pa

    def integral(s: pd.Series) -> pd.Series:
        return np.isfinite(s) & (s == np.floor(s))

    def id_checks() -> list:
        return [pa.Check(integral, name=NON_INTEGER_ID), pa.Check(lambda s: s >= 0, name=NEGATIVE_ID)]

    checks = {
        schema.TRANSACTION_ID: pa.Column(checks=id_checks(), nullable=False, unique=True),
        schema.CUSTOMER_ID: pa.Column(checks=id_checks(), nullable=False),
        schema.TERMINAL_ID: pa.Column(checks=id_checks(), nullable=False),
        schema.TX_DATETIME: pa.Column(nullable=False),
        schema.TX_AMOUNT: pa.Column(checks=[
            pa.Check(lambda s: np.isfinite(s), name=NON_FINITE_AMOUNT),
            pa.Check(lambda s: s >= 0, name=NEGATIVE_AMOUNT),
            pa.Check(lambda s: ~np.isfinite(s) | (s <= settings.max_amount), name=AMOUNT_ABOVE_MAX),
        ], nullable=False),
        schema.TX_FRAUD: pa.Column(checks=[pa.Check(lambda s: s.isin([0, 1]), name=INVALID_LABEL)],
                                   nullable=False),
        schema.TX_FRAUD_SCENARIO: pa.Column(
            checks=[pa.Check(lambda s: s.isin([0, 1, 2, 3]), name=INVALID_SCENARIO)], nullable=False),
    }
    return pa.DataFrameSchema({c: checks[c] for c in columns}, strict=True)


def _coerce_rows(work: pd.DataFrame, reasons: dict[int, list[str]], source: str) -> pd.DataFrame:
    """The rows that parse, coerced to their types; failing rows get their reasons recorded.

    Repeated because pandera skips a column's null check when part of the column failed coercion,
    so a value that parses to null ("nan") only shows up once the unparseable rows are gone.
    """
    parse_schema = _parse_schema(work)
    rows = work
    for _ in range(4):
        typed, failures = _run_schema(parse_schema, rows, source)
        if not failures:
            return typed
        _add_reasons(reasons, failures)
        rows = rows.loc[rows.index.difference(pd.Index(list(failures)))]
    raise DataError(f"{source}: rows still fail to parse after repeated quarantine passes")


def _run_schema(schema_obj, frame: pd.DataFrame, source: str) -> tuple[pd.DataFrame, dict[int, list[str]]]:
    """Validate lazily; return the (possibly partly coerced) frame and reason codes per failing row."""
    import pandera.pandas as pa

    try:
        return schema_obj.validate(frame, lazy=True), {}
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases
    failures: dict[int, list[str]] = {}
    for column, check, value, index in cases[["column", "check", "failure_case", "index"]].itertuples(
            index=False):
        if index is None or (isinstance(index, float) and np.isnan(index)):
            # A column-level failure (e.g. the dtype check after a failed coercion) repeats the
            # row-level cases reported beside it.
            continue
        code = _reason_code(str(column), str(check), value)
        if code is not None:
            failures.setdefault(int(index), []).append(code)
    if not failures:
        # Only column-level failures: no row to quarantine, so the batch itself is unusable.
        first = cases.iloc[0]
        raise DataError(f"{source}: column {first['column']} fails {first['check']} as a whole "
                        f"({first['failure_case']})")
    return frame, failures


def _reason_code(column: str, check: str, value: Any) -> str | None:
    if check in REASON_CODES:
        return check
    if check == "not_nullable" or (check.startswith("coerce_dtype") and _is_null(value)):
        return MISSING_VALUE
    if check.startswith("coerce_dtype"):
        return _UNPARSEABLE.get(column, MISSING_VALUE)
    if check == "field_uniqueness":
        return DUPLICATE_TRANSACTION_ID
    if check.startswith("dtype("):
        return None  # restates a coercion failure already recorded for that row
    raise AssertionError(f"unmapped pandera check {check!r} on column {column!r}")


def _is_null(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _add_reasons(reasons: dict[int, list[str]], new: dict[int, list[str]]) -> None:
    for idx, codes in new.items():
        reasons.setdefault(idx, []).extend(codes)


def _ordered(codes: list[str]) -> list[str]:
    """Unique codes in REASON_CODES order, so the same failures always give the same string."""
    present = set(codes)
    return [c for c in REASON_CODES if c in present]


def _to_raw_dtypes(frame: pd.DataFrame) -> pd.DataFrame:
    # The optional scenario column stays absent when the input has none: 0 would claim "no scenario".
    columns = [c for c in schema.RAW_COLUMNS if c in frame.columns]
    return frame[columns].astype({c: RAW_DTYPES[c] for c in columns})


def _report(original: pd.DataFrame, accepted: pd.DataFrame, quarantined: pd.DataFrame,
            reasons: dict[int, list[str]], source: str) -> dict[str, Any]:
    counts = Counter(code for codes in reasons.values() for code in set(codes))
    fraud_in = pd.to_numeric(original[schema.TX_FRAUD], errors="coerce")
    frauds_in = int((fraud_in == 1).sum())
    frauds_accepted = int((accepted[schema.TX_FRAUD] == 1).sum()) if len(accepted) else 0
    return {
        "source": source,
        "rows_in": len(original),
        "rows_accepted": len(accepted),
        "rows_quarantined": len(quarantined),
        "quarantine_share": len(quarantined) / len(original) if len(original) else 0.0,
        "reasons": dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        "fraud_rate": frauds_accepted / len(accepted) if len(accepted) else 0.0,
        "frauds_in": frauds_in,
        "frauds_quarantined_share": (frauds_in - frauds_accepted) / frauds_in if frauds_in else 0.0,
    }
