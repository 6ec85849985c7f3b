"""Derived features of the Fraud Detection Handbook and the time-ordered train/test split.

Windows are computed vectorised: rows are sorted by (entity, time), and every window bound is one
global ``np.searchsorted`` over a composite (entity, time-rank) key, so a window sum is a difference
of two cumulative sums. No per-row Python.

Window semantics (t = the transaction's time, w = window, d = label delay, in days):

* customer windows ``(t - w, t]``: the transactions of the card up to and including the current one
  (pandas ``rolling('7D')`` semantics, as in the handbook); day windows give a count and an average
  amount, hour windows (featurize.windows_hours) a count and a total spend;
* terminal windows ``(t - d - w, t - d]``: only transactions whose label is known at time t (a label
  arrives d days after its transaction). The current transaction's own label is never used, even
  when d = 0.

Offline (compute_features, a whole table) and online (transaction_features, one transaction from the
gateway's state store, fraudguard.serving.state) share the definitions below: the window bounds
(customer_window_offsets, terminal_window_offsets), the calendar flags, and the final arithmetic and
dtypes (window_mean, window_risk, window_fraud_count). The parity test replays a test period through the gateway.
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
_HOUR_NS = np.int64(3_600 * 10**9)


def customer_nb_tx(window_days: int) -> str:
    return f"{CUSTOMER_ID}_NB_TX_{window_days}DAY_WINDOW"


def customer_avg_amount(window_days: int) -> str:
    return f"{CUSTOMER_ID}_AVG_AMOUNT_{window_days}DAY_WINDOW"


def customer_nb_tx_hours(window_hours: int) -> str:
    """The card's transactions in the last `window_hours` hours, the current one included."""
    return f"{CUSTOMER_ID}_NB_TX_{window_hours}HOUR_WINDOW"


def customer_spend_hours(window_hours: int) -> str:
    """The card's total amount in the last `window_hours` hours, the current one included: a payment split
    into pieces minutes apart adds up here to the whole amount."""
    return f"{CUSTOMER_ID}_SPEND_{window_hours}HOUR_WINDOW"


def terminal_nb_tx(window_days: int) -> str:
    return f"{TERMINAL_ID}_NB_TX_{window_days}DAY_WINDOW"


def terminal_risk(window_days: int) -> str:
    return f"{TERMINAL_ID}_RISK_{window_days}DAY_WINDOW"


def terminal_nb_fraud(window_days: int) -> str:
    """Known (label-matured) frauds at the terminal in the risk's delayed window. Beside the risk (a share),
    a count cannot be diluted: legitimate rows added at a compromised terminal lower its risk, not this."""
    return f"{TERMINAL_ID}_NB_FRAUD_{window_days}DAY_WINDOW"


def feature_names(settings: FeaturizeSettings) -> list[str]:
    """The derived feature columns compute_features adds, in output order."""
    names = [TX_DURING_WEEKEND, TX_DURING_NIGHT]
    for w in settings.windows_days:
        names += [customer_nb_tx(w), customer_avg_amount(w)]
    for w in settings.windows_days:
        names += [terminal_nb_tx(w), terminal_risk(w)]
    names += [terminal_nb_fraud(w) for w in settings.windows_days]
    for h in settings.windows_hours:
        names += [customer_nb_tx_hours(h), customer_spend_hours(h)]
    return names


def customer_window_offsets(settings: FeaturizeSettings) -> list[int]:
    """Per window w, the offset o in ns such that the customer window of a transaction at t is (t - o, t]."""
    return [int(w) * int(_DAY_NS) for w in settings.windows_days]


def customer_hour_window_offsets(settings: FeaturizeSettings) -> list[int]:
    """Per hour window h, the offset o in ns such that the customer window of a transaction at t is (t - o, t]."""
    return [int(h) * int(_HOUR_NS) for h in settings.windows_hours]


def terminal_window_offsets(settings: FeaturizeSettings) -> tuple[int, list[int]]:
    """(end offset, start offsets): the terminal window w of a transaction at t is (t - start_w, t - end]."""
    delay = int(settings.label_delay_days) * int(_DAY_NS)
    return delay, [delay + int(w) * int(_DAY_NS) for w in settings.windows_days]


def calendar_flags(weekday, hour, settings: FeaturizeSettings) -> tuple[np.ndarray, np.ndarray]:
    """(TX_DURING_WEEKEND, TX_DURING_NIGHT) as int32 from weekday (Monday 0) and hour, scalars or arrays."""
    weekday, hour = np.asarray(weekday), np.asarray(hour)
    return (weekday >= 5).astype(np.int32), (hour <= settings.night_end_hour).astype(np.int32)


def window_mean(sums, counts) -> np.ndarray:
    """A customer window's average amount (float64 sums over counts > 0), as float32."""
    return (np.asarray(sums, dtype=np.float64) / np.asarray(counts)).astype(np.float32)


def window_spend(sums) -> np.ndarray:
    """A customer window's total amount (float64 sums), as float32."""
    return np.asarray(sums, dtype=np.float64).astype(np.float32)


def window_fraud_count(frauds) -> np.ndarray:
    """A terminal window's count of known frauds (float64 sums of 0/1 labels), as int32."""
    return np.rint(np.asarray(frauds, dtype=np.float64)).astype(np.int32)


def window_risk(frauds, counts) -> np.ndarray:
    """A terminal window's fraud share, 0 for an empty window, as float32."""
    frauds, counts = np.asarray(frauds, dtype=np.float64), np.asarray(counts)
    out = np.divide(frauds, counts, out=np.zeros(frauds.shape, dtype=np.float64), where=counts > 0)
    return out.astype(np.float32)


def transaction_features(time_ns: int, weekday: int, hour: int, amount: float,
                         customer_times: np.ndarray, customer_amounts: np.ndarray,
                         terminal_times: np.ndarray, terminal_known_frauds: np.ndarray,
                         settings: FeaturizeSettings) -> dict[str, float]:
    """The derived features of one transaction at `time_ns`, as compute_features defines them.

    customer_*: the card's earlier transactions (the current one excluded) with times in
    (t - longest window, t], ascending; terminal_*: the terminal's transactions with times in
    (t - d - longest window, t - d], ascending, and 1 where a fraud label is known at t, else 0.
    """
    weekend, night = calendar_flags(weekday, hour, settings)
    out: dict[str, float] = {TX_DURING_WEEKEND: int(weekend), TX_DURING_NIGHT: int(night)}
    customer_times = np.asarray(customer_times, dtype=np.int64)
    amounts_cs = _cumsum0(np.asarray(customer_amounts, dtype=np.float64))
    n = len(customer_times)
    for w, offset in zip(settings.windows_days, customer_window_offsets(settings)):
        start = int(np.searchsorted(customer_times, time_ns - offset, side="right"))
        count = n - start + 1
        total = (amounts_cs[n] - amounts_cs[start]) + float(amount)
        out[customer_nb_tx(w)] = count
        out[customer_avg_amount(w)] = float(window_mean(total, count))
    for h, offset in zip(settings.windows_hours, customer_hour_window_offsets(settings)):
        start = int(np.searchsorted(customer_times, time_ns - offset, side="right"))
        out[customer_nb_tx_hours(h)] = n - start + 1
        out[customer_spend_hours(h)] = float(window_spend((amounts_cs[n] - amounts_cs[start]) + float(amount)))
    terminal_times = np.asarray(terminal_times, dtype=np.int64)
    frauds_cs = _cumsum0(np.asarray(terminal_known_frauds, dtype=np.float64))
    end_offset, start_offsets = terminal_window_offsets(settings)
    stop = int(np.searchsorted(terminal_times, time_ns - end_offset, side="right"))
    for w, offset in zip(settings.windows_days, start_offsets):
        start = min(int(np.searchsorted(terminal_times, time_ns - offset, side="right")), stop)
        count = stop - start
        out[terminal_nb_tx(w)] = count
        out[terminal_risk(w)] = float(window_risk(frauds_cs[stop] - frauds_cs[start], count))
        out[terminal_nb_fraud(w)] = int(window_fraud_count(frauds_cs[stop] - frauds_cs[start]))
    return out


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


@dataclass(frozen=True)
class _CardSums:
    """Running totals of the amounts restarted at each card, for window sums (rows sorted by (card, time)).

    One running total over the whole table made every window sum a difference of two totals of the table: its
    rounding grew with the table's total, not the card's (a 0.01 payment's average was off by 1.7e-4 of itself
    behind 1e6 payments of 20,000), where the gateway sums the card's own history."""

    inclusive: np.ndarray    # per row: the sum of its card's amounts up to and including it
    first: np.ndarray        # per row: the row where its card starts

    @classmethod
    def build(cls, amounts: np.ndarray, codes: np.ndarray) -> "_CardSums":
        n = len(amounts)
        new_card = np.ones(n, dtype=bool)
        new_card[1:] = codes[1:] != codes[:-1]
        first = np.maximum.accumulate(np.where(new_card, np.arange(n), 0))
        inclusive = pd.Series(amounts).groupby(np.cumsum(new_card), sort=False).cumsum().to_numpy(np.float64)
        return cls(inclusive, first)

    def window(self, start: np.ndarray, last: np.ndarray) -> np.ndarray:
        """Sum of the amounts of rows start..last (inclusive, one card each: start >= its card's first row)."""
        before = np.where(start > self.first[last], self.inclusive[np.maximum(start - 1, 0)], 0.0)
        return self.inclusive[last] - before


def _cumsum0(values: np.ndarray) -> np.ndarray:
    out = np.zeros(len(values) + 1, dtype=np.float64)
    np.cumsum(values, out=out[1:])
    return out


def _scatter(order: np.ndarray, sorted_values: np.ndarray, dtype: type) -> np.ndarray:
    out: np.ndarray = np.empty(len(order), dtype=dtype)
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
    weekend, night = calendar_flags(stamps.dt.weekday.to_numpy(), stamps.dt.hour.to_numpy(), settings)
    derived: dict[str, np.ndarray] = {TX_DURING_WEEKEND: weekend, TX_DURING_NIGHT: night}
    windows = list(settings.windows_days)
    row = np.arange(n, dtype=np.int64)

    # Customer windows (t - w, t]: from the first row after t - w up to and including the current row.
    cust = _EntityIndex.build(frame[CUSTOMER_ID], times)
    amounts = frame[TX_AMOUNT].to_numpy(dtype=np.float64)[cust.order]
    card_sums = _CardSums.build(amounts, cust.codes)
    starts = cust.bounds([np.int64(o) for o in customer_window_offsets(settings)])
    for w, start in zip(windows, starts):
        end = row + 1
        count = end - start
        derived[customer_nb_tx(w)] = _scatter(cust.order, count, np.int32)
        derived[customer_avg_amount(w)] = _scatter(
            cust.order, window_mean(card_sums.window(start, row), count), np.float32)
    hour_starts = cust.bounds([np.int64(o) for o in customer_hour_window_offsets(settings)])
    for h, start in zip(settings.windows_hours, hour_starts):
        end = row + 1
        derived[customer_nb_tx_hours(h)] = _scatter(cust.order, end - start, np.int32)
        derived[customer_spend_hours(h)] = _scatter(cust.order, window_spend(card_sums.window(start, row)),
                                                    np.float32)

    # Terminal windows (t - d - w, t - d]: labels known at t only; never the current row's own label.
    end_offset, start_offsets = terminal_window_offsets(settings)
    term = _EntityIndex.build(frame[TERMINAL_ID], times)
    fraud_cs = _cumsum0(frame[TX_FRAUD].to_numpy(dtype=np.float64)[term.order])
    bounds = term.bounds([np.int64(o) for o in [end_offset, *start_offsets]])
    stop = np.minimum(bounds[0], row)
    for w, start in zip(windows, bounds[1:]):
        start = np.minimum(start, stop)
        count = stop - start
        derived[terminal_nb_tx(w)] = _scatter(term.order, count, np.int32)
        derived[terminal_risk(w)] = _scatter(
            term.order, window_risk(fraud_cs[stop] - fraud_cs[start], count), np.float32)
        derived[terminal_nb_fraud(w)] = _scatter(term.order, window_fraud_count(fraud_cs[stop] - fraud_cs[start]),
                                                 np.int32)

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
    """Day boundaries of the split (midnights; every `*_end` is exclusive).

    warm-up [data_start, warmup_end) · ... · train [train_start, train_end) · gap [train_end, test_start)
    · test [test_start, test_end) · ... · data_end (midnight after the newest transaction's day).
    """

    data_start: pd.Timestamp
    warmup_end: pd.Timestamp
    train_start: pd.Timestamp
    train_end: pd.Timestamp
    test_start: pd.Timestamp
    test_end: pd.Timestamp
    data_end: pd.Timestamp

    def describe(self) -> str:
        """The periods as inclusive calendar days, for messages."""
        return (f"train {_days(self.train_start, self.train_end)}, gap {_days(self.train_end, self.test_start)}, "
                f"test {_days(self.test_start, self.test_end)} (data {_days(self.data_start, self.data_end)}, "
                f"feature warm-up {_days(self.data_start, self.warmup_end)})")


_DAY = pd.Timedelta(days=1)


def _days(start: pd.Timestamp, end_exclusive: pd.Timestamp) -> str:
    if end_exclusive <= start:
        return f"none ({start.date()})"
    return f"{start.date()}..{(end_exclusive - _DAY).date()}"


def _midnight(date, like: pd.Timestamp) -> pd.Timestamp:
    """Midnight of a calendar date, in the time zone of `like` (the data's)."""
    stamp = pd.Timestamp(date)
    return stamp.tz_localize(like.tz) if like.tz is not None else stamp


def plan_split(features: pd.DataFrame, settings: FeaturizeSettings) -> SplitPlan:
    """The split's day boundaries: explicit dates, or periods counted back from the newest transaction's day.

    Training never starts inside the feature warm-up (featurize.warmup_days from the first day of the
    data), where window features are incomplete. Raises DataError naming the dates when it would, or
    when the periods do not fit in the data.
    """
    if TX_DATETIME not in features.columns:
        raise DataError(f"features lack column {TX_DATETIME}")
    if features.empty:
        raise DataError("cannot split an empty feature table: 0 days of data")
    split = settings.split
    data_start = features[TX_DATETIME].min().normalize()
    data_end = features[TX_DATETIME].max().normalize() + _DAY
    warmup_end = data_start + settings.warmup_days * _DAY
    warmup = (f"the {settings.warmup_days}-day feature warm-up (longest window {max(settings.windows_days)} d "
              f"+ label delay {settings.label_delay_days} d) covers {_days(data_start, warmup_end)}")
    if split.uses_dates:
        train_start, test_start = _midnight(split.train_start, data_start), _midnight(split.test_start, data_start)
        train_end = _midnight(split.train_end, data_start) + _DAY
        test_end = _midnight(split.test_end, data_start) + _DAY
        plan = SplitPlan(data_start, warmup_end, train_start, train_end, test_start, test_end, data_end)
        if train_start < warmup_end:
            raise DataError(f"featurize.split.train_start {train_start.date()} is inside the feature warm-up: "
                            f"{warmup}; start training on {warmup_end.date()} or later")
        return plan
    test_end = data_end
    test_start = test_end - split.test_days * _DAY
    train_end = test_start - split.delay_gap_days * _DAY
    train_start = warmup_end if split.train_days is None else train_end - split.train_days * _DAY
    plan = SplitPlan(data_start, warmup_end, train_start, train_end, test_start, test_end, data_end)
    available = (train_end - warmup_end).days
    if train_start < warmup_end or train_end <= train_start:
        asked = "every day after the warm-up" if split.train_days is None else \
            f"featurize.split.train_days={split.train_days}"
        raise DataError(
            f"the data ({_days(data_start, data_end)}, {(data_end - data_start).days} days) is too short for the "
            f"split: {warmup}, then {asked}, delay_gap_days={split.delay_gap_days} and test_days={split.test_days} "
            f"counted back from {(data_end - _DAY).date()}; training would span {_days(train_start, train_end)}. "
            + (f"At most {available} training day(s) fit." if available > 0 else
               f"No training day fits: it needs {settings.warmup_days + (split.delay_gap_days or 0) + (split.test_days or 0) + 1} "
               "days of data or more.")
        )
    return plan


def _in(stamps: pd.Series, start: pd.Timestamp, end: pd.Timestamp) -> pd.Series:
    return (stamps >= start) & (stamps < end)


def known_compromised(features: pd.DataFrame, test: pd.DataFrame, plan: SplitPlan,
                      settings: FeaturizeSettings) -> np.ndarray:
    """Mask of the test rows whose card is known compromised on the row's day (the handbook's rule).

    A card is known compromised on test day t when it had a fraud in the training period, or a later
    fraud on day f whose label has matured by t (f + label_delay_days < t), counted day by day as in the
    handbook's get_train_test_set. `test_filter: handbook` counts frauds from the training start on;
    `strict` counts them from the first day of the data (every earlier fraud is known too).
    """
    since = plan.train_start if settings.test_filter == "handbook" else plan.data_start
    stamps = features[TX_DATETIME]
    frauds = (features[TX_FRAUD].to_numpy() == 1) & (stamps >= since).to_numpy()
    day_of = (stamps[frauds].dt.normalize() - plan.data_start).dt.days
    first_fraud_day = day_of.groupby(features.loc[frauds, CUSTOMER_ID].to_numpy()).min()
    first = test[CUSTOMER_ID].map(first_fraud_day).to_numpy(dtype=np.float64)  # NaN: no counted fraud
    test_day = (test[TX_DATETIME].dt.normalize() - plan.data_start).dt.days.to_numpy()
    train_end_day = (plan.train_end - plan.data_start).days
    with np.errstate(invalid="ignore"):
        return (first < train_end_day) | (first + settings.label_delay_days < test_day)


def split_train_test(features: pd.DataFrame, settings: FeaturizeSettings,
                     plan: SplitPlan | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Calendar split: training days (after the feature warm-up), a dropped gap, then test days without the
    transactions of cards known compromised by then (featurize.test_filter, see known_compromised).

    Raises DataError naming the dates when the training or the (filtered) test set is empty.
    """
    plan = plan or plan_split(features, settings)
    stamps = features[TX_DATETIME]
    train = features[_in(stamps, plan.train_start, plan.train_end)]
    test = features[_in(stamps, plan.test_start, plan.test_end)]
    for name, part in (("training", train), ("test", test)):
        if part.empty:
            raise DataError(f"the {name} period holds no transaction: {plan.describe()}")
    compromised = known_compromised(features, test, plan, settings)
    if compromised.any():
        logger.info(
            "dropped %d test transaction(s) of %d card(s) already known compromised (test_filter=%s)",
            int(compromised.sum()), test.loc[compromised, CUSTOMER_ID].nunique(), settings.test_filter,
        )
    if compromised.all():
        raise DataError(f"every test transaction belongs to a card known compromised "
                        f"(test_filter={settings.test_filter}): {plan.describe()}")
    return train.reset_index(drop=True), test[~compromised].reset_index(drop=True)


def recent_traffic(features: pd.DataFrame, plan: SplitPlan) -> pd.DataFrame:
    """Every transaction after the training period, unfiltered: the traffic the drift gate and the monitor
    compare with the training rows (their newest window of it)."""
    return features[features[TX_DATETIME] >= plan.train_end].reset_index(drop=True)


def newest_window(features: pd.DataFrame, days: int) -> pd.DataFrame:
    """The rows of the last `days` calendar days of the data (the drift monitoring target)."""
    if days <= 0:
        raise ValueError(f"days must be positive, got {days}")
    if features.empty:
        raise DataError("cannot take the newest window of an empty feature table")
    cutoff = features[TX_DATETIME].max().normalize() - pd.Timedelta(days=days - 1)
    return features[features[TX_DATETIME] >= cutoff].reset_index(drop=True)


def summarize_split(train: pd.DataFrame, test: pd.DataFrame, features: pd.DataFrame,
                    settings: FeaturizeSettings, plan: SplitPlan | None = None) -> dict:
    """JSON-ready figures of a split: the dates of each period (first_day/last_day inclusive), rows, frauds,
    fraud rate, and the rows left out (warm-up, gap, known-compromised test cards)."""
    plan = plan or plan_split(features, settings)

    def dates(start: pd.Timestamp, end: pd.Timestamp) -> dict:
        return {"first_day": start.date().isoformat(), "last_day": (end - _DAY).date().isoformat(),
                "days": (end - start).days,
                "period_start": start.isoformat(), "period_end_exclusive": end.isoformat()}

    def part(frame: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp) -> dict:
        frauds = int(frame[TX_FRAUD].sum())
        return {
            **dates(start, end),
            "rows": int(len(frame)),
            "frauds": frauds,
            "fraud_rate": frauds / len(frame) if len(frame) else 0.0,
            "customers": int(frame[CUSTOMER_ID].nunique()),
            "first_tx": frame[TX_DATETIME].min().isoformat() if len(frame) else None,
            "last_tx": frame[TX_DATETIME].max().isoformat() if len(frame) else None,
        }

    stamps = features[TX_DATETIME]
    in_test_period = int(_in(stamps, plan.test_start, plan.test_end).sum())
    split = settings.split
    return {
        "input_rows": int(len(features)),
        "split_by": "dates" if split.uses_dates else "periods counted back from the newest day",
        "data": {**dates(plan.data_start, plan.data_end), "rows": int(len(features))},
        "warmup": {**dates(plan.data_start, plan.warmup_end),
                   "rows": int(_in(stamps, plan.data_start, plan.warmup_end).sum())},
        "train": part(train, plan.train_start, plan.train_end),
        "gap": {**dates(plan.train_end, plan.test_start),
                "rows_dropped": int(_in(stamps, plan.train_end, plan.test_start).sum())},
        "test": {**part(test, plan.test_start, plan.test_end),
                 "rows_in_period": in_test_period,
                 "rows_dropped_known_compromised": in_test_period - int(len(test))},
        "recent": {"rows": int((stamps >= plan.train_end).sum()),
                   "first_day": plan.train_end.date().isoformat(),
                   "last_day": (plan.data_end - _DAY).date().isoformat()},
        "test_filter": settings.test_filter,
        "features": feature_names(settings),
        "label_delay_days": settings.label_delay_days,
        "warmup_days": settings.warmup_days,
    }
