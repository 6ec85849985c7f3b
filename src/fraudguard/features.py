"""Derived features of the Fraud Detection Handbook and the time-ordered train/test split.

Windows are computed vectorised: rows are sorted by (entity, time), and every window bound is one
global ``np.searchsorted`` over a composite (entity, time-rank) key, so a window sum is a difference
of two cumulative sums. No per-row Python.

Window semantics (t = the transaction's time, w = window, d = label delay, in days):

* customer windows ``(t - w, t]``: the transactions of the card up to and including the current one
  (pandas ``rolling('7D')`` semantics, as in the handbook);
* terminal windows ``(t - d - w, t - d]``: only transactions whose label is known at time t (a label
  arrives d days after its transaction). The current transaction's own label is never used, even
  when d = 0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fraudguard.config import FeaturizeSettings
from fraudguard.data.schema import (
    CUSTOMER_ID,
    REQUIRED_COLUMNS,
    TERMINAL_ID,
    TRANSACTION_ID,
    TX_AMOUNT,
    TX_DATETIME,
    TX_FRAUD,
)
from fraudguard.errors import DataError

logger = logging.getLogger(__name__)

TX_DURING_WEEKEND = "TX_DURING_WEEKEND"
TX_DURING_NIGHT = "TX_DURING_NIGHT"

_DAY_NS = np.int64(86_400 * 10**9)


def customer_nb_tx(window_days: int) -> str:
    return f"{CUSTOMER_ID}_NB_TX_{window_days}DAY_WINDOW"


def customer_avg_amount(window_days: int) -> str:
    return f"{CUSTOMER_ID}_AVG_AMOUNT_{window_days}DAY_WINDOW"


def terminal_nb_tx(window_days: int) -> str:
    return f"{TERMINAL_ID}_NB_TX_{window_days}DAY_WINDOW"


def terminal_risk(window_days: int) -> str:
    return f"{TERMINAL_ID}_RISK_{window_days}DAY_WINDOW"


def feature_names(settings: FeaturizeSettings) -> list[str]:
    """The derived feature columns compute_features adds, in output order."""
    names = [TX_DURING_WEEKEND, TX_DURING_NIGHT]
    for w in settings.windows_days:
        names += [customer_nb_tx(w), customer_avg_amount(w)]
    for w in settings.windows_days:
        names += [terminal_nb_tx(w), terminal_risk(w)]
    return names


def _check_transactions(transactions: pd.DataFrame) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in transactions.columns]
    if missing:
        raise DataError(f"transactions lack required column(s) {missing}; got {list(transactions.columns)}")
    if not pd.api.types.is_datetime64_any_dtype(transactions[TX_DATETIME]):
        raise DataError(
            f"column {TX_DATETIME} must be datetime64, got {transactions[TX_DATETIME].dtype}"
        )
    for column in REQUIRED_COLUMNS:
        nulls = transactions[column].isna().to_numpy()
        if nulls.any():
            row = int(np.flatnonzero(nulls)[0])
            raise DataError(
                f"column {column} has {int(nulls.sum())} missing value(s); first at row {row} "
                f"({TRANSACTION_ID}={transactions[TRANSACTION_ID].iloc[[row]].tolist()[0]!r})"
            )


def _time_ns(datetimes: pd.Series) -> np.ndarray:
    """Nanoseconds since the epoch (UTC instants for tz-aware columns)."""
    if isinstance(datetimes.dtype, pd.DatetimeTZDtype):
        datetimes = datetimes.dt.tz_convert("UTC").dt.tz_localize(None)
    return datetimes.to_numpy(dtype="datetime64[ns]").astype(np.int64)


@dataclass(frozen=True)
class _EntityIndex:
    """Rows sorted by (entity, time), with a composite key that makes windows one searchsorted."""

    order: np.ndarray        # positions in the time-sorted frame, in (entity, time) order
    codes: np.ndarray        # entity code of each sorted row
    times: np.ndarray        # int64 ns of each sorted row
    all_times: np.ndarray    # int64 ns of every row, ascending (the time-sorted frame's order)

    @classmethod
    def build(cls, entity: pd.Series, times_ns: np.ndarray) -> "_EntityIndex":
        """times_ns must be ascending (the frame is sorted by time)."""
        codes, _ = pd.factorize(entity, sort=False)
        # The frame is time-sorted, so a stable sort by entity alone orders by (entity, time) and
        # keeps rows with equal (entity, time) in the frame's (time, id) order.
        order = np.argsort(codes, kind="stable")
        return cls(order=order, codes=codes[order], times=times_ns[order], all_times=times_ns)

    def bounds(self, offsets_ns: list[np.int64]) -> list[np.ndarray]:
        """For each offset o: per sorted row i, the first row of i's entity with time > t_i - o.

        A time x is replaced by r(x), the number of transactions at or before x: for a row time t
        and any x, t <= x iff r(t) <= r(x), so entity * (n + 1) + r is an exact int64 sort key
        whatever the time span or the number of entities.
        """
        n = len(self.times)
        base = self.codes.astype(np.int64) * np.int64(n + 1)
        row_key = base + self.rank(self.all_times)[self.order]
        # Keys are searched in ascending order both times, which keeps the binary searches cache-friendly.
        return [np.searchsorted(row_key, base + self.rank(self.all_times - off)[self.order], side="right")
                for off in offsets_ns]

    def rank(self, times_ns: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.all_times, times_ns, side="right").astype(np.int64)


def _cumsum0(values: np.ndarray) -> np.ndarray:
    out = np.zeros(len(values) + 1, dtype=np.float64)
    np.cumsum(values, out=out[1:])
    return out


def _scatter(order: np.ndarray, sorted_values: np.ndarray, dtype: type) -> np.ndarray:
    out = np.empty(len(order), dtype=dtype)
    out[order] = sorted_values
    return out


def compute_features(transactions: pd.DataFrame, settings: FeaturizeSettings) -> pd.DataFrame:
    """The raw columns plus the handbook's derived features, sorted by TX_DATETIME; no NaN.

    Flags and counts are int32, averages and risks float32 (all exact in float32).
    Raises DataError on a missing column, a non-datetime TX_DATETIME or a missing value.
    """
    _check_transactions(transactions)
    frame = transactions.sort_values([TX_DATETIME, TRANSACTION_ID], kind="mergesort").reset_index(drop=True)
    n = len(frame)
    times = _time_ns(frame[TX_DATETIME])
    stamps = frame[TX_DATETIME]
    derived: dict[str, np.ndarray] = {
        TX_DURING_WEEKEND: (stamps.dt.weekday >= 5).to_numpy().astype(np.int32),
        TX_DURING_NIGHT: (stamps.dt.hour <= settings.night_end_hour).to_numpy().astype(np.int32),
    }
    windows = list(settings.windows_days)
    row = np.arange(n, dtype=np.int64)

    # Customer windows (t - w, t]: from the first row after t - w up to and including the current row.
    cust = _EntityIndex.build(frame[CUSTOMER_ID], times)
    amounts = frame[TX_AMOUNT].to_numpy(dtype=np.float64)[cust.order]
    amount_cs = _cumsum0(amounts)
    starts = cust.bounds([np.int64(w) * _DAY_NS for w in windows])
    for w, start in zip(windows, starts):
        end = row + 1
        count = end - start
        avg = (amount_cs[end] - amount_cs[start]) / count
        derived[customer_nb_tx(w)] = _scatter(cust.order, count, np.int32)
        derived[customer_avg_amount(w)] = _scatter(cust.order, avg, np.float32)

    # Terminal windows (t - d - w, t - d]: labels known at t only; never the current row's own label.
    delay = np.int64(settings.label_delay_days) * _DAY_NS
    term = _EntityIndex.build(frame[TERMINAL_ID], times)
    fraud_cs = _cumsum0(frame[TX_FRAUD].to_numpy(dtype=np.float64)[term.order])
    bounds = term.bounds([delay] + [delay + np.int64(w) * _DAY_NS for w in windows])
    stop = np.minimum(bounds[0], row)
    for w, start in zip(windows, bounds[1:]):
        start = np.minimum(start, stop)
        count = stop - start
        frauds = fraud_cs[stop] - fraud_cs[start]
        risk = np.divide(frauds, count, out=np.zeros(n, dtype=np.float64), where=count > 0)
        derived[terminal_nb_tx(w)] = _scatter(term.order, count, np.int32)
        derived[terminal_risk(w)] = _scatter(term.order, risk, np.float32)

    names = feature_names(settings)
    stale = [c for c in names if c in frame.columns]
    if stale:
        frame = frame.drop(columns=stale)
    for name in names:
        # Column by column: building one frame from all of them first costs a block consolidation.
        frame[name] = derived[name]
    return frame


@dataclass(frozen=True)
class SplitPlan:
    """Day boundaries of the split: train [start, train_end), gap [train_end, test_start), test [test_start, test_end)."""

    start: pd.Timestamp
    train_end: pd.Timestamp
    test_start: pd.Timestamp
    test_end: pd.Timestamp


def plan_split(features: pd.DataFrame, settings: FeaturizeSettings) -> SplitPlan:
    """The split's day boundaries, starting at midnight of the first transaction's day.

    Raises DataError when the data covers fewer calendar days than train + gap + test.
    """
    if TX_DATETIME not in features.columns:
        raise DataError(f"features lack column {TX_DATETIME}")
    if features.empty:
        raise DataError("cannot split an empty feature table: 0 days of data")
    first = features[TX_DATETIME].min().normalize()
    last = features[TX_DATETIME].max().normalize()
    available = (last - first).days + 1
    needed = settings.train_days + settings.delay_gap_days + settings.test_days
    if available < needed:
        raise DataError(
            f"data covers {available} day(s) ({first.date()} to {last.date()}) but the split needs {needed} "
            f"(featurize.train_days={settings.train_days} + delay_gap_days={settings.delay_gap_days} "
            f"+ test_days={settings.test_days})"
        )
    day = pd.Timedelta(days=1)
    train_end = first + settings.train_days * day
    test_start = train_end + settings.delay_gap_days * day
    return SplitPlan(first, train_end, test_start, test_start + settings.test_days * day)


def split_train_test(features: pd.DataFrame, settings: FeaturizeSettings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Time-ordered split: train days, a dropped gap, then test days, without known-compromised cards in test.

    As in the handbook, a test transaction is dropped when its customer had a fraud whose label was
    known by the start of the test transaction's day: a fraud on day f is known from day
    f + label_delay_days + 1 on. This removes every card with a fraud in train (when the gap is at
    least the label delay), and cards whose fraud became known during the gap or test period.
    """
    plan = plan_split(features, settings)
    stamps = features[TX_DATETIME]
    train = features[(stamps >= plan.start) & (stamps < plan.train_end)]
    test = features[(stamps >= plan.test_start) & (stamps < plan.test_end)]

    day_of = (stamps.dt.normalize() - plan.start).dt.days
    frauds = features[TX_FRAUD].to_numpy() == 1
    first_fraud_day = day_of[frauds].groupby(features.loc[frauds, CUSTOMER_ID]).min()
    known_from = first_fraud_day + settings.label_delay_days + 1
    test_known_from = test[CUSTOMER_ID].map(known_from)
    compromised = (day_of.loc[test.index] >= test_known_from).to_numpy()
    if compromised.any():
        logger.info(
            "dropped %d test transaction(s) of %d card(s) already known compromised",
            int(compromised.sum()), test.loc[compromised, CUSTOMER_ID].nunique(),
        )
    return train.reset_index(drop=True), test[~compromised].reset_index(drop=True)


def newest_window(features: pd.DataFrame, days: int) -> pd.DataFrame:
    """The rows of the last `days` calendar days of the data (the drift monitoring target)."""
    if days <= 0:
        raise ValueError(f"days must be positive, got {days}")
    if features.empty:
        raise DataError("cannot take the newest window of an empty feature table")
    cutoff = features[TX_DATETIME].max().normalize() - pd.Timedelta(days=days - 1)
    return features[features[TX_DATETIME] >= cutoff].reset_index(drop=True)


def summarize_split(train: pd.DataFrame, test: pd.DataFrame, features: pd.DataFrame,
                    settings: FeaturizeSettings) -> dict:
    """JSON-ready figures of a split: rows, frauds, fraud rate and date range per part."""
    plan = plan_split(features, settings)

    def part(frame: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp) -> dict:
        frauds = int(frame[TX_FRAUD].sum())
        return {
            "rows": int(len(frame)),
            "frauds": frauds,
            "fraud_rate": frauds / len(frame) if len(frame) else 0.0,
            "customers": int(frame[CUSTOMER_ID].nunique()),
            "period_start": start.isoformat(),
            "period_end_exclusive": end.isoformat(),
            "first_tx": frame[TX_DATETIME].min().isoformat() if len(frame) else None,
            "last_tx": frame[TX_DATETIME].max().isoformat() if len(frame) else None,
        }

    stamps = features[TX_DATETIME]
    in_test_period = int(((stamps >= plan.test_start) & (stamps < plan.test_end)).sum())
    in_gap = int(((stamps >= plan.train_end) & (stamps < plan.test_start)).sum())
    return {
        "input_rows": int(len(features)),
        "train": part(train, plan.start, plan.train_end),
        "gap": {"rows_dropped": in_gap, "period_start": plan.train_end.isoformat(),
                "period_end_exclusive": plan.test_start.isoformat()},
        "test": {**part(test, plan.test_start, plan.test_end),
                 "rows_dropped_known_compromised": in_test_period - int(len(test))},
        "features": feature_names(settings),
        "label_delay_days": settings.label_delay_days,
    }
