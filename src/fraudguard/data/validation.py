"""Validation and quarantine of raw transactions.

Parsing is vectorised and row by row in its outcome: each column is converted with explicit rules
(ISO-8601 timestamps without a zone, exact int64 ids from their text, numbers), and a value that does
not convert quarantines its row with a reason code, never the file and never after a per-row
fallback. Key uniqueness is checked on every row whose id parses (all copies quarantined, whatever
else fails in them); a pandera schema then checks ranges, labels and the plausible time window on the
typed rows. Dataset-level checks (conflicting labels, impossible velocity, per-customer amount
outliers) run on the rows that passed. The last two only say a row looks unusual: a fraud-labelled
row is flagged in the report for them, never quarantined. Every quarantined row carries stable
reason codes, and rows in = accepted + quarantined always.
"""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fraudguard.config import ValidateSettings
from fraudguard.data import schema
from fraudguard.data.io import check_column_names, clip_text, name_list
from fraudguard.errors import DataError

logger = logging.getLogger(__name__)

# Stable reason codes, written into the quarantine file's `reason` column and the report.
MISSING_VALUE = "missing_value"
UNPARSEABLE_TIMESTAMP = "unparseable_timestamp"
TIMEZONE_OFFSET = "timezone_offset"
TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"
UNPARSEABLE_AMOUNT = "unparseable_amount"
UNPARSEABLE_ID = "unparseable_id"
ID_OUT_OF_RANGE = "id_out_of_range"
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
# Poisoning defences. TX_FRAUD disagrees with TX_FRAUD_SCENARIO (0 with a scenario, or 1 without one):
LABEL_SCENARIO_MISMATCH = "label_scenario_mismatch"
# A legitimate-labelled near copy of a fraud (same customer, terminal, close amount and time):
CONFLICTING_LABEL_DUPLICATE = "conflicting_label_duplicate"
# Set by an import (fraudguard.data.history): the file changed a transaction of the previous version.
CHANGED_HISTORY = "changed_history"

REASON_CODES = (
    MISSING_VALUE, UNPARSEABLE_TIMESTAMP, TIMEZONE_OFFSET, TIMESTAMP_OUT_OF_RANGE, UNPARSEABLE_AMOUNT,
    UNPARSEABLE_ID, ID_OUT_OF_RANGE, UNPARSEABLE_LABEL, NON_INTEGER_ID, NEGATIVE_ID, NON_FINITE_AMOUNT,
    NEGATIVE_AMOUNT, AMOUNT_ABOVE_MAX, INVALID_LABEL, INVALID_SCENARIO, DUPLICATE_TRANSACTION_ID,
    CONFLICTING_LABEL, LABEL_SCENARIO_MISMATCH, CONFLICTING_LABEL_DUPLICATE, CHANGED_HISTORY,
    IMPOSSIBLE_VELOCITY, AMOUNT_OUTLIER,
)
# Checks that only say a row looks unusual: a fraud-labelled row failing them is flagged, not
# quarantined (frauds do look unusual; dropping them would lose the pattern the model must learn).
UNUSUAL_CODES = (IMPOSSIBLE_VELOCITY, AMOUNT_OUTLIER)
# Columns the quarantine file adds to the input's: an input column with one of these names is refused.
QUARANTINE_COLUMNS = (schema.QUARANTINE_REASON,)
VELOCITY_OFF = "off: no terminal-location table (set validate.terminal_locations to enable it)"
# Flagged rows listed by TRANSACTION_ID in the report, per code, at most this many.
MAX_FLAGGED_IDS = 100
# Flagged, never quarantined: legitimate rows that dilute a terminal's risk (terminal_dilution_mask). Listed
# up to this many, so a reviewer (and the red team) can tell the rows that dilute from the terminal's others.
TERMINAL_DILUTION = "terminal_dilution"
MAX_DILUTION_FLAGGED_IDS = 10_000

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
TERMINAL_LOCATION_COLUMNS = (schema.TERMINAL_ID, "x_terminal_id", "y_terminal_id")

_INT64_MAX_DIGITS = str(np.iinfo(np.int64).max)          # 9223372036854775807
_INT64_MIN_DIGITS = str(np.iinfo(np.int64).min)[1:]      # 9223372036854775808
# Integers above this are not all exact as float64: an id this large stored as a float may be rounded.
_FLOAT_EXACT_LIMIT = 2 ** 53
# An ISO-like date and time followed by a zone designator: Z, +02, +0200, +02:00, or a zone name.
_ZONED_TIMESTAMP = (
    r"^\d{4}-?\d{1,2}-?\d{1,2}[T ]\d{1,2}(?::?\d{1,2}(?::?\d{1,2}(?:[.,]\d+)?)?)?\s*"
    r"(?:(?:[zZ]|[+-]\d{1,2}(?::?\d{2}){0,2}|\(?[A-Za-z][A-Za-z_/+-]{0,40}\)?)(?:\s*\[[A-Za-z0-9_/+:-]{1,40}\])?"
    r"|\[[A-Za-z0-9_/+:-]{1,40}\])$"
)
# The pattern is a fast path and names unparseable zone forms; a zone it misses is still found after
# parsing, value by value (_parse_iso_naive).
# ...except a 12-hour clock's AM/PM, which is a format error (unparseable), not a zone.
_AM_PM = r"\d\s*[AaPp]\.?[Mm]\.?$"
_INTEGER_TEXT = r"[+-]?\d+(?:\.0*)?"


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
    now: pd.Timestamp | None = None,
) -> ValidationResult:
    """Split `df` into accepted and quarantined rows (rows_in == accepted + quarantined).

    `now` (default: the local clock) bounds the plausible time window from above. Raises DataError
    (naming `source`) if a required column is missing, a column name is repeated or reserved for
    the quarantine file, or there are no rows, and QuarantineShareExceeded (a DataError carrying the
    result) if the quarantined share is above settings.max_quarantine_share.
    """
    missing = [c for c in schema.REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{source}: missing required column(s) {', '.join(missing)}")
    check_column_names(df.columns, source)
    # Compared as check_column_names compares: `Reason` beside the quarantine file's `reason` is as ambiguous.
    reserved = [c for c in df.columns if str(c).strip().casefold() in {q.casefold() for q in QUARANTINE_COLUMNS}]
    if reserved:
        raise DataError(f"{source}: input column(s) {name_list(reserved)} collide with the quarantine "
                        f"file's own column(s); rename or drop them")
    if df.empty:
        raise DataError(f"{source}: no rows")
    columns = [c for c in schema.RAW_COLUMNS if c in df.columns]
    original = df.reset_index(drop=True)
    reasons: dict[int, list[str]] = {}

    id_failures: dict[int, list[str]] = {}
    typed_id = parse_columns(original[[schema.TRANSACTION_ID]], id_failures)
    typed = parse_columns(original[[c for c in columns if c != schema.TRANSACTION_ID]], reasons)
    typed.insert(columns.index(schema.TRANSACTION_ID), schema.TRANSACTION_ID, typed_id[schema.TRANSACTION_ID])
    _add_reasons(reasons, id_failures)
    # Key uniqueness on every row whose id parses, before any other check drops a row: a decoy copy of an
    # id (say with an empty amount) must not leave the other copy looking unique.
    for idx in original.index[repeated_ids(typed_id[schema.TRANSACTION_ID], id_failures)]:
        reasons.setdefault(int(idx), []).append(DUPLICATE_TRANSACTION_ID)
    parsed_ok = typed.loc[typed.index.difference(pd.Index(sorted(reasons), dtype="int64"))]

    now = pd.Timestamp.now() if now is None else pd.Timestamp(now)
    window = (pd.Timestamp(settings.min_timestamp),
              now + pd.Timedelta(hours=settings.future_tolerance_hours))
    _, value_failures = _run_schema(_value_schema(settings, parsed_ok.columns, window), parsed_ok, source)
    _add_reasons(reasons, value_failures)
    clean = parsed_ok.loc[parsed_ok.index.difference(pd.Index(list(value_failures), dtype="int64"))]

    is_fraud = (clean[schema.TX_FRAUD] == 1).to_numpy()
    flagged: dict[str, list[int]] = {}
    for code, mask in (
        (CONFLICTING_LABEL, conflicting_label_mask(clean)),
        (LABEL_SCENARIO_MISMATCH, label_scenario_mismatch_mask(clean)),
        (CONFLICTING_LABEL_DUPLICATE, conflicting_label_duplicate_mask(clean, settings)),
        (IMPOSSIBLE_VELOCITY, impossible_velocity_mask(clean, settings, terminal_locations)),
        (AMOUNT_OUTLIER, amount_outlier_mask(clean, settings)),
    ):
        hit = mask.to_numpy()
        if code in UNUSUAL_CODES:
            flagged[code] = clean.index[hit & is_fraud].tolist()
            hit = hit & ~is_fraud
        for idx in clean.index[hit]:
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
    report = _report(original, accepted, quarantined, reasons, source)
    report["velocity_check"] = "on" if terminal_locations is not None else VELOCITY_OFF
    report["volume_bursts"] = summarize_bursts(volume_bursts(accepted, settings))
    report["flagged"] = {code: len(rows) for code, rows in flagged.items() if rows}
    report["flagged_transaction_ids"] = {
        code: [int(typed.at[i, schema.TRANSACTION_ID]) for i in rows[:MAX_FLAGGED_IDS]]
        for code, rows in flagged.items() if rows
    }
    diluting, report[TERMINAL_DILUTION] = terminal_dilution_mask(accepted, settings)
    if diluting.any():
        ids = accepted.loc[diluting.to_numpy(), schema.TRANSACTION_ID]
        report["flagged_transaction_ids"][TERMINAL_DILUTION] = [int(i) for i in ids.iloc[:MAX_DILUTION_FLAGGED_IDS]]
    result = ValidationResult(
        accepted=accepted.reset_index(drop=True),
        quarantined=quarantined.reset_index(drop=True),
        report=report,
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


def parse_columns(frame: pd.DataFrame, reasons: dict[int, list[str]]) -> pd.DataFrame:
    """Every raw column converted to its type, vectorised (a bad value costs what a good one does);
    the rows whose value does not convert get their reason codes in `reasons` (keyed by index
    label) and hold a placeholder in the returned frame."""
    parsers = {
        schema.TX_DATETIME: parse_timestamps,
        schema.TRANSACTION_ID: parse_ids,
        schema.CUSTOMER_ID: parse_ids,
        schema.TERMINAL_ID: parse_ids,
        schema.TX_AMOUNT: lambda s: _parse_numbers(s, UNPARSEABLE_AMOUNT),
        schema.TX_FRAUD: lambda s: _parse_numbers(s, UNPARSEABLE_LABEL),
        schema.TX_FRAUD_SCENARIO: lambda s: _parse_numbers(s, UNPARSEABLE_LABEL),
    }
    typed = {}
    for column in frame.columns:
        values, failures = parsers[column](frame[column])
        typed[column] = values
        for code, mask in failures:
            for idx in frame.index[np.asarray(mask, dtype=bool)]:
                reasons.setdefault(int(idx), []).append(code)
    return pd.DataFrame(typed, index=frame.index)


def repeated_ids(ids: pd.Series, id_failures: dict[int, list[str]]) -> np.ndarray:
    """Rows whose parsed id another row with a parsed id shares (every copy, whatever else fails in
    them); rows whose id did not parse (keys of `id_failures`) are never counted."""
    ok = ~ids.index.isin(list(id_failures))
    repeated = np.zeros(len(ids), dtype=bool)
    repeated[ok] = ids[ok].duplicated(keep=False).to_numpy()
    return repeated


def parse_timestamps(values: pd.Series) -> tuple[pd.Series, list[tuple[str, np.ndarray]]]:
    """datetime64[ns] values (NaT where a row fails) and the failing rows per reason: missing, a zone
    designator or offset (timezone_offset: never converted, the times are naive local times), not an
    ISO-8601 date-time, or outside what datetime64[ns] can hold (timestamp_out_of_range)."""
    null = values.isna().to_numpy()
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return (pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns]"),
                [(MISSING_VALUE, null), (TIMEZONE_OFFSET, ~null)])
    if pd.api.types.is_datetime64_dtype(values.dtype):
        typed, too_far = _datetimes_to_ns(values)
        return typed, [(MISSING_VALUE, null), (TIMESTAMP_OUT_OF_RANGE, too_far)]
    text = values.astype("string[pyarrow]").str.strip()
    nullish = null | text.str.lower().isin(["nan", "nat", ""]).fillna(False).to_numpy(dtype=bool)
    zoned = (text.str.contains(_ZONED_TIMESTAMP, regex=True) & ~text.str.contains(_AM_PM, regex=True)
             ).fillna(False).to_numpy(dtype=bool)
    candidates = text.where(~(nullish | zoned)).astype(object)
    parsed, aware = _parse_iso_naive(candidates)
    zoned |= aware
    typed, too_far = _datetimes_to_ns(parsed)
    failed = typed.isna().to_numpy() & ~nullish & ~zoned
    # A well-formed date whose year datetime64[ns] cannot hold (before 1678, after 2261) is out of
    # range, not unparseable.
    if failed.any():
        year = pd.to_numeric(text[failed].str.extract(r"^(\d{4})-\d{2}-\d{2}", expand=False).astype(object),
                             errors="coerce").to_numpy(dtype="float64")
        with np.errstate(invalid="ignore"):
            too_far = too_far.copy()
            too_far[np.flatnonzero(failed)] |= (year < 1678) | (year > 2261)
    unparseable = failed & ~too_far
    return typed, [(MISSING_VALUE, nullish), (TIMEZONE_OFFSET, zoned),
                   (UNPARSEABLE_TIMESTAMP, unparseable), (TIMESTAMP_OUT_OF_RANGE, too_far)]


def _parse_iso_naive(candidates: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """ISO-8601 text as naive datetimes (NaT where it does not parse or carries a zone) and the mask of values
    that parsed with a zone or offset, in whatever form (`+2`, `Z` after a one-digit month): those are
    timezone_offset, never converted. Mixed naive and zoned values never raise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # mixed offsets: handled value by value below
        try:
            parsed: pd.Series | None = pd.to_datetime(candidates, format="ISO8601", errors="coerce")
        except (TypeError, ValueError):  # pandas versions that refuse mixed offsets outright
            parsed = None
    if parsed is not None and isinstance(parsed.dtype, pd.DatetimeTZDtype):
        # Every value that parsed carries a zone.
        return (pd.Series(pd.NaT, index=candidates.index, dtype="datetime64[ns]"),
                parsed.notna().to_numpy(dtype=bool))
    if parsed is not None and pd.api.types.is_datetime64_dtype(parsed.dtype):
        return parsed, np.zeros(len(candidates), dtype=bool)
    # Naive and zoned values mixed (object dtype): judged one by one.
    if parsed is None:
        parsed = candidates.map(_parse_one_iso)
    values = parsed.to_numpy(dtype=object)
    aware = np.array([getattr(v, "tzinfo", None) is not None for v in values], dtype=bool)
    naive = [pd.NaT if zone or v is None else v for v, zone in zip(values, aware)]
    return pd.Series(pd.to_datetime(pd.Series(naive, index=candidates.index, dtype=object), errors="coerce"),
                     index=candidates.index), aware


def _parse_one_iso(value: object) -> object:
    if not isinstance(value, str):
        return pd.NaT
    try:
        return pd.to_datetime(value, format="ISO8601")
    except (TypeError, ValueError, OverflowError):
        return pd.NaT


def parse_ids(values: pd.Series) -> tuple[pd.Series, list[tuple[str, np.ndarray]]]:
    """Exact int64 ids (0 where a row fails) and the failing rows per reason. Text is converted
    digit by digit, never through float64: 9007199254740993 stays itself and 99999999999999999999
    is id_out_of_range, not rounded or wrapped. A float column's values at or above 2**53 are
    id_out_of_range (they may already be rounded)."""
    index = values.index
    null = values.isna().to_numpy()
    if pd.api.types.is_bool_dtype(values.dtype):
        return pd.Series(0, index=index, dtype="int64"), [(MISSING_VALUE, null), (UNPARSEABLE_ID, ~null)]
    if pd.api.types.is_integer_dtype(values.dtype):
        as_object = values.astype(object).where(~null, 0)
        too_big = np.array([int(v) > np.iinfo(np.int64).max for v in as_object], dtype=bool) \
            if values.dtype.kind == "u" else np.zeros(len(values), dtype=bool)
        typed = pd.Series(np.where(too_big | null, 0, as_object).astype(np.int64), index=index)
        return typed, [(MISSING_VALUE, null), (ID_OUT_OF_RANGE, too_big)]
    if pd.api.types.is_float_dtype(values.dtype):
        return _float_ids(values.astype("float64"), null)

    text = values.astype("string[pyarrow]").str.strip()
    nullish = null | text.str.lower().isin(["nan", ""]).fillna(False).to_numpy(dtype=bool)
    is_integer = text.str.fullmatch(_INTEGER_TEXT).fillna(False).to_numpy(dtype=bool)
    negative = is_integer & text.str.startswith("-").fillna(False).to_numpy(dtype=bool)
    digits = text.where(is_integer, "0").str.replace(r"^[+-]?0*", "", regex=True) \
        .str.replace(r"\.0*$", "", regex=True)
    digits = digits.where(digits.str.len() > 0, "0")
    length = digits.str.len().to_numpy(dtype=np.int64)
    limit = np.where(negative, _INT64_MIN_DIGITS, _INT64_MAX_DIGITS)
    too_big = is_integer & ((length > 19) | ((length == 19) & (digits.to_numpy(dtype=object) > limit)))
    exact = is_integer & ~too_big
    # The magnitude of -2**63 does not fit int64 itself: it is converted as signed text.
    signed = ("-" + digits).where(pd.Series(negative, index=index), digits).where(
        pd.Series(exact, index=index), "0")
    typed = pd.Series(signed.astype("int64[pyarrow]").to_numpy(dtype=np.int64), index=index)

    # Other spellings (1e3, 12.5, inf, abc): numeric ones are judged as floats.
    other = ~is_integer & ~nullish
    as_float = pd.to_numeric(text.where(other).astype(object), errors="coerce").astype("float64")
    unparseable = other & as_float.isna().to_numpy()
    float_typed, float_failures = _float_ids(as_float, ~other | unparseable)
    typed = typed.where(~other, float_typed)
    failures = [(MISSING_VALUE, nullish), (ID_OUT_OF_RANGE, too_big), (UNPARSEABLE_ID, unparseable)]
    return typed, failures + [(code, mask & other) for code, mask in float_failures if code != MISSING_VALUE]


def _float_ids(values: pd.Series, null: np.ndarray) -> tuple[pd.Series, list[tuple[str, np.ndarray]]]:
    array = values.to_numpy(dtype="float64")
    with np.errstate(invalid="ignore"):
        integral = np.isfinite(array) & (array == np.floor(array))
        too_big = integral & (np.abs(array) >= _FLOAT_EXACT_LIMIT)
    non_integer = ~null & ~integral
    ok = integral & ~too_big & ~null
    typed = pd.Series(np.where(ok, array, 0.0).astype(np.int64), index=values.index)
    return typed, [(MISSING_VALUE, null), (NON_INTEGER_ID, non_integer), (ID_OUT_OF_RANGE, too_big & ~null)]


def _parse_numbers(values: pd.Series, unparseable_code: str) -> tuple[pd.Series, list[tuple[str, np.ndarray]]]:
    """float64 values (NaN where missing or unparseable) and the failing rows per reason."""
    null = values.isna().to_numpy()
    if pd.api.types.is_bool_dtype(values.dtype) or pd.api.types.is_numeric_dtype(values.dtype):
        typed = values.astype("float64")
        return typed, [(MISSING_VALUE, typed.isna().to_numpy())]
    text = values.astype("string[pyarrow]").str.strip()
    nullish = null | text.str.lower().isin(["nan", "+nan", "-nan", ""]).fillna(False).to_numpy(dtype=bool)
    typed = pd.to_numeric(text.where(~pd.Series(nullish, index=values.index)).astype(object),
                          errors="coerce").astype("float64")
    unparseable = typed.isna().to_numpy() & ~nullish
    return typed, [(MISSING_VALUE, nullish), (unparseable_code, unparseable)]


def _datetimes_to_ns(values: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """`values` as datetime64[ns]; those beyond its range (years before 1677 or after 2262) become
    NaT and are returned as a mask."""
    if str(values.dtype) == "datetime64[ns]":
        return values, np.zeros(len(values), dtype=bool)
    lo, hi = pd.Timestamp.min, pd.Timestamp.max
    too_far = ((values < lo) | (values > hi)).fillna(False).to_numpy(dtype=bool)
    return values.where(~too_far).astype("datetime64[ns]"), too_far


def conflicting_label_mask(df: pd.DataFrame) -> pd.Series:
    """Rows whose transaction (time, customer, terminal, amount) appears again with another TX_FRAUD."""
    if df.empty:
        return pd.Series(False, index=df.index)
    key = [schema.TX_DATETIME, schema.CUSTOMER_ID, schema.TERMINAL_ID, schema.TX_AMOUNT]
    n_labels = df.groupby(key, sort=False)[schema.TX_FRAUD].transform("nunique")
    return n_labels > 1


def label_scenario_mismatch_mask(df: pd.DataFrame) -> pd.Series:
    """Rows whose TX_FRAUD contradicts TX_FRAUD_SCENARIO: legitimate with a fraud scenario, or fraud
    with scenario 0. All False when the frame has no scenario column."""
    if df.empty or schema.TX_FRAUD_SCENARIO not in df.columns:
        return pd.Series(False, index=df.index)
    fraud = df[schema.TX_FRAUD] == 1
    scenario = df[schema.TX_FRAUD_SCENARIO] != 0
    return fraud != scenario


def conflicting_label_duplicate_mask(df: pd.DataFrame, settings: ValidateSettings,
                                     known_frauds: pd.DataFrame | None = None) -> pd.Series:
    """Legitimate-labelled rows that nearly duplicate a fraud: same customer and terminal, amount within
    near_duplicate_amount_tolerance and time within near_duplicate_window_hours. The frauds are those
    of `df` plus `known_frauds` (e.g. an earlier version's). A copy of a fraud relabelled legitimate
    teaches the model that the fraud's pattern is genuine (backdoor poisoning)."""
    if df.empty:
        return pd.Series(False, index=df.index)
    key = [schema.CUSTOMER_ID, schema.TERMINAL_ID]
    cols = key + [schema.TX_DATETIME, schema.TX_AMOUNT]
    frauds = df.loc[df[schema.TX_FRAUD] == 1, cols]
    if known_frauds is not None and len(known_frauds):
        frauds = pd.concat([frauds, known_frauds.loc[known_frauds[schema.TX_FRAUD] == 1, cols]])
    legit = df.loc[df[schema.TX_FRAUD] == 0, cols]
    if frauds.empty or legit.empty:
        return pd.Series(False, index=df.index)
    pairs = legit.reset_index().merge(frauds, on=key, suffixes=("", "_fraud"))
    close = ((pairs[schema.TX_AMOUNT] - pairs[f"{schema.TX_AMOUNT}_fraud"]).abs()
             <= settings.near_duplicate_amount_tolerance)
    close &= ((pairs[schema.TX_DATETIME] - pairs[f"{schema.TX_DATETIME}_fraud"]).abs()
              <= pd.Timedelta(hours=settings.near_duplicate_window_hours))
    hit = pd.Index(pairs.loc[close, "index"].unique())
    return pd.Series(df.index.isin(hit), index=df.index)


BURST_ENTITIES = (schema.CUSTOMER_ID, schema.TERMINAL_ID)


def volume_bursts(df: pd.DataFrame, settings: ValidateSettings) -> pd.DataFrame:
    """Days on which a customer or terminal made more than max(burst_min_daily_tx, burst_factor x its
    baseline), the baseline being the lower of its mean daily count over the (up to) burst_history_days
    before that day and its median day over the whole frame (idle days count as 0): columns entity
    (CUSTOMER_ID or TERMINAL_ID), id, day, count, baseline. Flagged, never quarantined: a burst is where
    dilution (many small legitimate rows at a compromised terminal) shows, but busy days are real too."""
    columns = ["entity", "id", "day", "count", "baseline"]
    if df.empty:
        return pd.DataFrame(columns=columns)
    day = df[schema.TX_DATETIME].dt.floor("D")
    found = []
    history = settings.burst_history_days
    for entity in BURST_ENTITIES:
        counts = df.groupby([df[entity], day]).size().rename("count").reset_index()
        counts.columns = ["id", "day", "count"]
        # Daily counts on a full calendar per entity (idle days are 0): days x entities.
        wide = counts.pivot(index="day", columns="id", values="count")
        wide = wide.reindex(pd.date_range(wide.index.min(), wide.index.max(), freq="D")).fillna(0)
        daily = wide.to_numpy(dtype=np.float64)
        # Mean of the (up to) `history` days before each day, from one cumulative sum; 0 on the first day.
        cs = np.vstack([np.zeros((1, daily.shape[1])), np.cumsum(daily, axis=0)])
        i = np.arange(daily.shape[0])
        lo = np.maximum(i - history, 0)
        before = (cs[i] - cs[lo]) / np.maximum(i - lo, 1)[:, None]
        # The baseline is the lower of the trailing mean and the entity's median day over all the data: a
        # sustained burst (dilution for weeks) would otherwise raise its own trailing mean and go unseen.
        before = np.minimum(before, np.median(daily, axis=0)[None, :])
        busy = daily > np.maximum(settings.burst_min_daily_tx, settings.burst_factor * before)
        rows, cols = np.nonzero(busy)
        found += [(entity, int(wide.columns[c]), wide.index[r], int(daily[r, c]), float(before[r, c]))
                  for r, c in zip(rows, cols)]
    return pd.DataFrame(found, columns=columns)


def terminal_dilution_mask(df: pd.DataFrame, settings: ValidateSettings) -> tuple[pd.Series, dict[str, Any]]:
    """Legitimate rows that dilute a terminal's risk, and a summary (terminals, terminal_days, rows).

    A row is flagged when it is legitimate, dated within dilution_horizon_days before a fraud at its terminal
    (so that fraud's delayed risk windows count it), and inside a dilution_window_days window, also before a
    fraud, in which the terminal's legitimate count exceeds max(dilution_min_rows, dilution_factor x the
    terminal's usual count: the lower of its median over full windows that no fraud followed and over
    those before its first fraud). Unlike a volume burst this needs no
    single busy day: a terminal whose usual traffic doubles for weeks while it serves frauds is seen.
    Flagged, never quarantined."""
    none = pd.Series(False, index=df.index)
    summary: dict[str, Any] = {"terminals": 0, "terminal_days": 0, "rows": 0}
    if df.empty:
        return none, summary
    is_fraud = (df[schema.TX_FRAUD] == 1).to_numpy()
    at_risk = df[schema.TERMINAL_ID].isin(df.loc[is_fraud, schema.TERMINAL_ID].unique()).to_numpy()
    if not at_risk.any():
        return none, summary
    rows = df[at_risk]
    day = rows[schema.TX_DATETIME].dt.floor("D")
    first = day.min()
    day_no = ((day - first) // pd.Timedelta(days=1)).to_numpy(dtype=np.int64)
    terminals, col = np.unique(rows[schema.TERMINAL_ID].to_numpy(), return_inverse=True)
    n_days = int(day_no.max()) + 1
    fraud_rows = (rows[schema.TX_FRAUD] == 1).to_numpy()
    legit = np.zeros((n_days, len(terminals)))
    frauds = np.zeros((n_days, len(terminals)))
    np.add.at(legit, (day_no[~fraud_rows], col[~fraud_rows]), 1.0)
    np.add.at(frauds, (day_no[fraud_rows], col[fraud_rows]), 1.0)

    def cumsum0(a: np.ndarray) -> np.ndarray:
        return np.vstack([np.zeros((1, a.shape[1])), np.cumsum(a, axis=0)])

    d = np.arange(n_days)
    horizon, k = settings.dilution_horizon_days, settings.dilution_window_days
    fcs, lcs = cumsum0(frauds), cumsum0(legit)
    # A day's rows are counted by the risk windows of the frauds on it and the horizon after it.
    before_fraud = (fcs[np.minimum(d + horizon + 1, n_days)] - fcs[d]) > 0
    window = lcs[d + 1] - lcs[np.maximum(d + 1 - k, 0)]     # legitimate rows over (d - k, d]
    full = (d >= k - 1)[:, None] & np.ones_like(window, dtype=bool)
    # The usual count: the lower of the median over windows no fraud followed and over windows before the
    # terminal's first fraud (dilution spread over quiet weeks too would otherwise raise the first).
    first_fraud = np.argmax(frauds > 0, axis=0)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: no such window
        quiet = np.nanmedian(np.where(full & ~before_fraud, window, np.nan), axis=0)
        early = np.nanmedian(np.where(full & (d[:, None] < first_fraud[None, :]), window, np.nan), axis=0)
        usual = np.nanmedian(np.where(full, window, np.nan), axis=0)
    lowest = np.fmin(quiet, early)
    baseline = np.nan_to_num(np.where(np.isnan(lowest), usual, lowest), nan=0.0)
    hot = before_fraud & (window > np.maximum(settings.dilution_min_rows, settings.dilution_factor * baseline))
    # A day is flagged when a hot window covers it: some hot day in [day, day + k - 1].
    hcs = cumsum0(hot.astype(np.float64))
    covered = (hcs[np.minimum(d + k, n_days)] - hcs[d]) > 0
    flagged_days = covered & before_fraud
    hit = flagged_days[day_no, col] & ~fraud_rows
    mask = none.copy()
    mask.loc[rows.index[hit]] = True
    summary = {"terminals": int(flagged_days.any(axis=0).sum()), "terminal_days": int(flagged_days.sum()),
               "rows": int(hit.sum())}
    return mask, summary


def summarize_bursts(bursts: pd.DataFrame, limit: int = 20) -> dict[str, Any]:
    """Counts of burst days per entity kind and the largest ones (for the validation report)."""
    top = bursts.assign(ratio=bursts["count"] / bursts["baseline"].clip(lower=1e-9)) \
        .sort_values(["count", "ratio"], ascending=False).head(limit) if len(bursts) else bursts
    return {
        "customer_days": int((bursts["entity"] == schema.CUSTOMER_ID).sum()) if len(bursts) else 0,
        "terminal_days": int((bursts["entity"] == schema.TERMINAL_ID).sum()) if len(bursts) else 0,
        "largest": [{"entity": r.entity, "id": r.id, "day": str(pd.Timestamp(r.day).date()), "count": r.count,
                     "baseline": round(r.baseline, 3)} for r in top.itertuples(index=False)],
    }


def impossible_velocity_mask(df: pd.DataFrame, settings: ValidateSettings,
                             terminal_locations: pd.DataFrame | None = None) -> pd.Series:
    """The later of two consecutive transactions of a customer at different terminals when the card
    would have moved faster than max_speed_km_per_hour, distances from `terminal_locations` (grid
    units). Without a table the rule is off (all False): a guessed distance flags genuine rows."""
    if df.empty or terminal_locations is None:
        return pd.Series(False, index=df.index)
    ordered = df.sort_values([schema.CUSTOMER_ID, schema.TX_DATETIME, schema.TRANSACTION_ID], kind="stable")
    same_customer = ordered[schema.CUSTOMER_ID].eq(ordered[schema.CUSTOMER_ID].shift())
    prev_terminal = ordered[schema.TERMINAL_ID].shift()
    moved = same_customer & ordered[schema.TERMINAL_ID].ne(prev_terminal)
    seconds = ordered[schema.TX_DATETIME].diff().dt.total_seconds()
    units = _terminal_distance_units(ordered[schema.TERMINAL_ID], prev_terminal, terminal_locations)
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
        raise DataError(f"{path}: cannot read terminal-location table: {clip_text(exc)}") from exc
    missing = [c for c in TERMINAL_LOCATION_COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"{path}: terminal-location table lacks column(s) {', '.join(missing)}")
    check_column_names(table.columns, str(path))
    return table[list(TERMINAL_LOCATION_COLUMNS)]


def configured_terminal_locations(settings: ValidateSettings, root: Path) -> pd.DataFrame | None:
    """validate.terminal_locations' table (a relative path is taken from `root`), or None if unset."""
    if settings.terminal_locations is None:
        return None
    path = settings.terminal_locations
    return load_terminal_locations(path if path.is_absolute() else root / path)


def _terminal_distance_units(terminal: pd.Series, prev_terminal: pd.Series,
                             locations: pd.DataFrame) -> pd.Series:
    loc = locations.set_index(schema.TERMINAL_ID)[["x_terminal_id", "y_terminal_id"]]
    here = loc.reindex(terminal.to_numpy()).to_numpy()
    there = loc.reindex(prev_terminal.to_numpy()).to_numpy()
    dist = np.sqrt(((here - there) ** 2).sum(axis=1))
    # A terminal missing from the table gives NaN: no evidence, so no flag.
    return pd.Series(np.nan_to_num(dist, nan=0.0), index=terminal.index)


def _value_schema(settings: ValidateSettings, columns, window: tuple[pd.Timestamp, pd.Timestamp]):
    """Range, label, time-window and key checks on typed columns; each check is named by its reason
    code. `window` is the plausible (earliest, latest) transaction time."""
    import pandera.pandas as pa

    earliest, latest = window

    def id_checks() -> list:
        return [pa.Check(lambda s: s >= 0, name=NEGATIVE_ID)]

    checks = {
        # Uniqueness is checked on the raw ids (repeated_ids), before rows are dropped for other reasons.
        schema.TRANSACTION_ID: pa.Column(checks=id_checks(), nullable=False),
        schema.CUSTOMER_ID: pa.Column(checks=id_checks(), nullable=False),
        schema.TERMINAL_ID: pa.Column(checks=id_checks(), nullable=False),
        schema.TX_DATETIME: pa.Column(checks=[
            pa.Check(lambda s: (s >= earliest) & (s <= latest), name=TIMESTAMP_OUT_OF_RANGE),
        ], nullable=False),
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
        # The failing value is not quoted: messages carry no file content beyond column names.
        first = cases.iloc[0]
        raise DataError(f"{source}: column {name_list([first['column']])} fails "
                        f"{clip_text(first['check'], 80)} as a whole")
    return frame, failures


def _reason_code(column: str, check: str, value: Any) -> str | None:
    if check in REASON_CODES:
        return check
    if check == "not_nullable":
        return MISSING_VALUE
    if check == "field_uniqueness":
        return DUPLICATE_TRANSACTION_ID
    if check.startswith("dtype("):
        return None  # restates a coercion failure already recorded for that row
    raise AssertionError(f"unmapped pandera check {check!r} on column {column!r}")


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
