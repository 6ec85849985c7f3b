"""The gateway's state store: the customer and terminal history the online features need, in SQLite
(one gateway; fraudguard.serving.redis_state holds the Redis store for several replicas, same interface).

One table of transactions (time in ns, card, terminal, amount) with their confirmed labels (fraud flag and
the time the label became known). Features come from fraudguard.features.transaction_features, the same
definitions as the featurize stage. A transaction's label counts in terminal risk at time t only when the
transaction lies in the terminal window (t - d - w, t - d] (as in training) and its label was recorded with
a label time <= t. Bootstrapped history (bootstrap) gets label time = transaction time + label delay, the
assumption training makes.

Not thread-safe by itself: the gateway calls it from its event loop only (one writer, in order). score_and_add
reads a transaction's features and records it in one SQLite transaction (BEGIN IMMEDIATE: the write lock is held
from the read), so even another process on the same file cannot record anything in between.
fraudguard.serving.stores.open_state_store picks the backend named by `serve.state.backend`.
"""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import pandas as pd

from fraudguard.config import FeaturizeSettings
from fraudguard.data.schema import CUSTOMER_ID, TERMINAL_ID, TRANSACTION_ID, TX_AMOUNT, TX_DATETIME, TX_FRAUD
from fraudguard.errors import DataError, FraudGuardError
from fraudguard.features import customer_window_offsets, terminal_window_offsets, transaction_features

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

REDIS_URL_ENV = "FRAUDGUARD_REDIS_URL"

_EPOCH = dt.datetime(1970, 1, 1)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS tx (
    id INTEGER PRIMARY KEY,
    t INTEGER NOT NULL,
    customer INTEGER NOT NULL,
    terminal INTEGER NOT NULL,
    amount REAL NOT NULL,
    fraud INTEGER NOT NULL DEFAULT 0,
    label_t INTEGER
);
CREATE INDEX IF NOT EXISTS tx_customer_t ON tx (customer, t);
CREATE INDEX IF NOT EXISTS tx_terminal_t ON tx (terminal, t);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def time_ns(stamp: dt.datetime) -> int:
    """Nanoseconds since the epoch of a naive local time, exactly as features._time_ns reads a column."""
    delta = stamp - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


@dataclass(frozen=True)
class RawTransaction:
    transaction_id: int
    time: dt.datetime
    customer_id: int
    terminal_id: int
    amount: float


class DuplicateTransaction(DataError):
    """The transaction id is already in the state store."""


class StateUnavailable(FraudGuardError):
    """The state store cannot be reached (a Redis server down or timing out): nothing can be scored."""


def featurize_key(settings: FeaturizeSettings) -> str:
    """What a store records about the settings its history was built under (it refuses to open under others)."""
    return f"windows={list(settings.windows_days)};label_delay_days={settings.label_delay_days}"


class StateStore(Protocol):
    """What the gateway needs from a state store (FeatureStore in SQLite, RedisFeatureStore in Redis)."""

    location: str

    def transaction(self): ...
    def count(self) -> int: ...
    def features(self, tx: RawTransaction) -> dict[str, float]: ...
    def add(self, tx: RawTransaction) -> None: ...
    def score_and_add(self, tx: RawTransaction) -> dict[str, float]: ...
    def transaction_time(self, transaction_id: int) -> int | None: ...
    def record_label(self, transaction_id: int, fraud: bool, label_time: dt.datetime) -> bool: ...
    def fraud_label_time(self, transaction_id: int) -> int | None: ...
    def bootstrap(self, transactions: pd.DataFrame, until: pd.Timestamp | None = None) -> int: ...
    def close(self) -> None: ...


class FeatureStore:
    """Customer and terminal history in one SQLite file (WAL); survives restarts."""

    def __init__(self, path: Path, settings: FeaturizeSettings):
        self.path = Path(path)
        self.location = str(self.path)
        self.settings = settings
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._check_settings()
        self._customer_span = max(customer_window_offsets(settings))
        self._terminal_end, starts = terminal_window_offsets(settings)
        self._terminal_span = max(starts)

    def _check_settings(self) -> None:
        """History kept under other label-delay semantics would give other features: refuse it."""
        key = featurize_key(self.settings)
        row = self._db.execute("SELECT value FROM meta WHERE key='featurize'").fetchone()
        if row is not None and row[0] != key and self.count():
            raise DataError(f"{self.path}: state was built for {row[0]}, params say {key}; "
                            "bootstrap a new state file")
        if row is None or row[0] != key:  # a new or still empty store takes the current settings' stamp
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('featurize', ?)", (key,))

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One SQLite transaction: everything inside is committed together or rolled back. IMMEDIATE: it holds
        the file's write lock from its first read, so another connection cannot write between a read and a write."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM tx").fetchone()[0])

    def features(self, tx: RawTransaction) -> dict[str, float]:
        """The transaction's derived features from the history before it (the store is not changed)."""
        t = time_ns(tx.time)
        # Payments at the same instant are ordered as compute_features orders them, by TRANSACTION_ID: one with a
        # higher id is not "before" this one, whichever arrived first (before, one that arrived first was counted).
        cust = self._db.execute(
            "SELECT t, amount FROM tx WHERE customer=? AND t>? AND (t<? OR (t=? AND id<?)) ORDER BY t, id",
            (tx.customer_id, t - self._customer_span, t, t, tx.transaction_id)).fetchall()
        # A label counts once it is known at t: fraud recorded with a label time at or before t. The window ends at
        # t - delay; with no delay it ends at this payment, ties ordered by id as above.
        end = t - self._terminal_end
        term = self._db.execute(
            "SELECT t, (fraud = 1 AND label_t IS NOT NULL AND label_t <= ?) FROM tx "
            "WHERE terminal=? AND t>? AND (t<? OR (t=? AND (? > 0 OR id<?))) ORDER BY t, id",
            (t, tx.terminal_id, t - self._terminal_span, end, end, self._terminal_end, tx.transaction_id)).fetchall()
        cust_t = np.fromiter((r[0] for r in cust), dtype=np.int64, count=len(cust))
        cust_amount = np.fromiter((r[1] for r in cust), dtype=np.float64, count=len(cust))
        term_t = np.fromiter((r[0] for r in term), dtype=np.int64, count=len(term))
        known = np.fromiter((r[1] for r in term), dtype=np.float64, count=len(term))
        return transaction_features(t, tx.time.weekday(), tx.time.hour, tx.amount,
                                    cust_t, cust_amount, term_t, known, self.settings)

    def score_and_add(self, tx: RawTransaction) -> dict[str, float]:
        """features(tx) and add(tx) as one step: inside the caller's transaction(), else in one of its own.
        DuplicateTransaction if the id is known (then nothing of it is recorded)."""
        if self._db.in_transaction:
            found = self.features(tx)
            self.add(tx)
            return found
        with self.transaction():
            found = self.features(tx)
            self.add(tx)
        return found

    def add(self, tx: RawTransaction) -> None:
        """Record the transaction as history (no label yet); DuplicateTransaction if its id is known."""
        try:
            self._db.execute("INSERT INTO tx (id, t, customer, terminal, amount) VALUES (?, ?, ?, ?, ?)",
                             (tx.transaction_id, time_ns(tx.time), tx.customer_id, tx.terminal_id, tx.amount))
        except sqlite3.IntegrityError as exc:
            raise DuplicateTransaction(f"TRANSACTION_ID {tx.transaction_id} was already scored") from exc

    def transaction_time(self, transaction_id: int) -> int | None:
        row = self._db.execute("SELECT t FROM tx WHERE id=?", (transaction_id,)).fetchone()
        return None if row is None else int(row[0])

    def record_label(self, transaction_id: int, fraud: bool, label_time: dt.datetime) -> bool:
        """Store a confirmed label (a chargeback: fraud=True) known from label_time; False if the id is unknown or
        already holds a fraud label, which is history: never erased, relabelled or moved in time."""
        cur = self._db.execute("UPDATE tx SET fraud=?, label_t=? WHERE id=? AND NOT (fraud = 1 AND label_t IS NOT NULL)",
                               (int(bool(fraud)), time_ns(label_time), transaction_id))
        return cur.rowcount == 1

    def fraud_label_time(self, transaction_id: int) -> int | None:
        """When the transaction's fraud label became known (ns), or None when it holds none."""
        row = self._db.execute("SELECT label_t FROM tx WHERE id=? AND fraud = 1 AND label_t IS NOT NULL",
                               (transaction_id,)).fetchone()
        return None if row is None else int(row[0])

    def bootstrap(self, transactions: pd.DataFrame, until: pd.Timestamp | None = None) -> int:
        """Load history (raw schema with TX_FRAUD) before `until` (all when None); labels known after the delay.

        Rows whose id is already in the store are skipped. Returns the number of rows added.
        """
        frame = transactions
        if until is not None:
            frame = frame[frame[TX_DATETIME] < until]
        frame = frame.sort_values([TX_DATETIME, TRANSACTION_ID], kind="mergesort")
        stamps = frame[TX_DATETIME]
        if isinstance(stamps.dtype, pd.DatetimeTZDtype):
            stamps = stamps.dt.tz_convert("UTC").dt.tz_localize(None)
        t = stamps.to_numpy(dtype="datetime64[ns]").astype(np.int64)
        delay = self._terminal_end
        rows = zip(frame[TRANSACTION_ID].to_numpy(np.int64).tolist(), t.tolist(),
                   frame[CUSTOMER_ID].to_numpy(np.int64).tolist(), frame[TERMINAL_ID].to_numpy(np.int64).tolist(),
                   frame[TX_AMOUNT].to_numpy(np.float64).tolist(), frame[TX_FRAUD].to_numpy(np.int64).tolist(),
                   (t + delay).tolist())
        before = self.count()
        with self.transaction():
            self._db.executemany("INSERT OR IGNORE INTO tx VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        added = self.count() - before
        logger.info("state %s: bootstrapped %d transaction(s) (%d in the store)", self.path, added, before + added)
        return added
