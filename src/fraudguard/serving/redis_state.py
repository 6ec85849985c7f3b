"""The gateway's state store in Redis: the same history and the same features as the SQLite store
(fraudguard.serving.state), shared by several gateway replicas.

Keys, under `serve.state.redis_key_prefix` (P):
  P:tx                hash   id -> "t_ns:customer:terminal:amount"  (duplicate check: HSETNX, atomic across replicas)
  P:label             hash   id -> "fraud:label_t_ns"                (confirmed labels, as /feedback records them)
  P:cust:<customer>   zset   score t_us, member "<t_ns:020d>:<id:020d>:<amount repr>"
  P:term:<terminal>   zset   score t_us, member "<t_ns:020d>:<id:020d>"
  P:meta              hash   featurize -> windows and label delay the history was built with
Scores are microseconds (below 2^53, exact in a double; nanoseconds since 1970 are not); the window bounds
are applied exactly on the nanoseconds held in the member, and members of one score sort by (t, id), the
order the SQLite store reads. Each write and each read is one Lua script: one round trip, atomic; the gateway
scores with score_and_add, whose one script checks the id, reads the history and records the transaction, so
replicas never interleave between a transaction's read and its write.

A batch is not one transaction as in SQLite: transaction() removes what the batch added when it fails
(a duplicate id), but a replica that dies mid-batch leaves the transactions it had added.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import datetime as dt

import numpy as np
import pandas as pd

from fraudguard.config import FeaturizeSettings, StateSettings
from fraudguard.data.schema import CUSTOMER_ID, TERMINAL_ID, TRANSACTION_ID, TX_AMOUNT, TX_DATETIME, TX_FRAUD
from fraudguard.errors import DataError
from fraudguard.features import customer_window_offsets, terminal_window_offsets, transaction_features
from fraudguard.serving.state import DuplicateTransaction, RawTransaction, StateUnavailable, featurize_key, time_ns

logger = logging.getLogger(__name__)

# KEYS: tx, customer zset, terminal zset, label; ARGV: id, record, t_us, customer member, terminal member, label
_ADD = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[5])
if ARGV[6] ~= '' then redis.call('HSET', KEYS[4], ARGV[1], ARGV[6]) end
return 1
"""
# The history a transaction's features read: customer and terminal members in their score ranges, and the terminal
# members' labels. The label hash is keyed by the id as written, so the padding of the member's id is stripped.
_READ_HISTORY = """
local function read_history(cust, term, label, c_lo, c_hi, t_lo, t_hi)
  local c = redis.call('ZRANGEBYSCORE', cust, c_lo, c_hi)
  local t = redis.call('ZRANGEBYSCORE', term, t_lo, t_hi)
  local labels = {}
  local i = 1
  while i <= #t do
    local ids = {}
    for j = i, math.min(i + 999, #t) do ids[#ids + 1] = string.match(string.sub(t[j], 22), '^0*(%d+)$') end
    local got = redis.call('HMGET', label, unpack(ids))
    for _, v in ipairs(got) do labels[#labels + 1] = v or '' end
    i = i + 1000
  end
  return {c, t, labels}
end
"""
# KEYS: customer zset, terminal zset, label; ARGV: customer and terminal score ranges.
_READ = _READ_HISTORY + """
return read_history(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3], ARGV[4])
"""
# Features and record in one step, so that no replica can record a transaction between this one's read and its
# write (the pieces of a split payment on several replicas each see the ones before them).
# KEYS: tx, customer zset, terminal zset, label; ARGV: id, record, t_us, customer member, terminal member,
# customer and terminal score ranges. Returns {0} for a known id (nothing read or written), else {1, c, t, labels}.
_SCORE_AND_ADD = _READ_HISTORY + """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return {0} end
local found = read_history(KEYS[2], KEYS[3], KEYS[4], ARGV[6], ARGV[7], ARGV[8], ARGV[9])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[5])
return {1, found[1], found[2], found[3]}
"""
# KEYS: tx, label; ARGV: id, label
_LABEL = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
local held = redis.call('HGET', KEYS[2], ARGV[1])
if held and string.sub(held, 1, 2) == '1:' then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
"""
# KEYS: tx, label, customer zset, terminal zset; ARGV: id, customer member, terminal member
_REMOVE = """
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[3])
redis.call('HDEL', KEYS[2], ARGV[1])
return redis.call('HDEL', KEYS[1], ARGV[1])
"""

_BOOTSTRAP_CHUNK = 5000


def _redacted(url: str) -> str:
    """The URL with its password hidden, in the user-info part and in a `?password=` query (redis-py reads both)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    query = "&".join(f"{key}=***" if key.lower() == "password" else (f"{key}={value}" if sep else key)
                     for key, sep, value in (item.partition("=") for item in parts.query.split("&") if item))
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class RedisFeatureStore:
    """Customer and terminal history in Redis; the FeatureStore interface, safe to share between replicas."""

    def __init__(self, url: str, settings: StateSettings, featurize: FeaturizeSettings):
        import redis

        self._errors = (redis.RedisError, OSError)
        self.settings = featurize
        self.location = f"{_redacted(url)} (keys {settings.redis_key_prefix}:*)"
        self._p = settings.redis_key_prefix
        # Any: with decode_responses=True replies are str, which redis's type hints (bytes) cannot express.
        self._db: Any = redis.Redis.from_url(url, socket_timeout=settings.redis_timeout_s,
                                        socket_connect_timeout=settings.redis_timeout_s, decode_responses=True)
        self._tx, self._label, self._meta = f"{self._p}:tx", f"{self._p}:label", f"{self._p}:meta"
        self._add = self._db.register_script(_ADD)
        self._read = self._db.register_script(_READ)
        self._score_and_add = self._db.register_script(_SCORE_AND_ADD)
        self._set_label = self._db.register_script(_LABEL)
        self._remove = self._db.register_script(_REMOVE)
        self._customer_span = max(customer_window_offsets(featurize))
        self._terminal_end, starts = terminal_window_offsets(featurize)
        self._terminal_span = max(starts)
        self._added: list[tuple[int, int, int, int, float]] | None = None
        with self._reachable():
            self._check_settings()

    @contextmanager
    def _reachable(self) -> Iterator[None]:
        try:
            yield
        except self._errors as exc:
            raise StateUnavailable(f"state store {self.location}: {type(exc).__name__}: {exc}") from exc

    def _check_settings(self) -> None:
        """History kept under other windows or label delay would give other features: refuse it."""
        key = featurize_key(self.settings)
        self._db.hsetnx(self._meta, "featurize", key)
        stored = self._db.hget(self._meta, "featurize")
        if stored != key and self._db.hlen(self._tx):
            raise DataError(f"{self.location}: state was built for {stored}, params say {key}; "
                            "use a new key prefix or bootstrap a new store")
        if stored != key:
            self._db.hset(self._meta, "featurize", key)

    def close(self) -> None:
        self._db.close()

    def _keys(self, customer: int, terminal: int) -> tuple[str, str]:
        return f"{self._p}:cust:{customer}", f"{self._p}:term:{terminal}"

    @staticmethod
    def _members(transaction_id: int, t: int, amount: float) -> tuple[str, str]:
        return f"{t:020d}:{transaction_id:020d}:{float(amount)!r}", f"{t:020d}:{transaction_id:020d}"

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """A batch: the transactions it added are removed again if it fails (other replicas may have read them)."""
        self._added = []
        try:
            yield
        except BaseException:
            added, self._added = self._added, None
            with self._reachable():
                for transaction_id, t, customer, terminal, amount in reversed(added):
                    cust_key, term_key = self._keys(customer, terminal)
                    self._remove(keys=[self._tx, self._label, cust_key, term_key],
                                 args=[transaction_id, *self._members(transaction_id, t, amount)])
            raise
        self._added = None

    def count(self) -> int:
        with self._reachable():
            return int(self._db.hlen(self._tx))

    def _ranges(self, t: int) -> tuple[int, int, int]:
        return t - self._customer_span, t - self._terminal_span, t - self._terminal_end

    def features(self, tx: RawTransaction) -> dict[str, float]:
        """The transaction's derived features from the history before it (the store is not changed)."""
        t = time_ns(tx.time)
        cust_key, term_key = self._keys(tx.customer_id, tx.terminal_id)
        c_lo, t_lo, t_hi = self._ranges(t)
        with self._reachable():
            cust, term, labels = self._read(keys=[cust_key, term_key, self._label],
                                            args=[c_lo // 1000, t // 1000, t_lo // 1000, t_hi // 1000])
        return self._features_from(tx, t, cust, term, labels)

    def score_and_add(self, tx: RawTransaction) -> dict[str, float]:
        """features(tx) and add(tx) as one atomic step (one Lua script): no replica records anything in between.
        DuplicateTransaction, with nothing read or written, if any replica knows its id."""
        t = time_ns(tx.time)
        cust_key, term_key = self._keys(tx.customer_id, tx.terminal_id)
        c_lo, t_lo, t_hi = self._ranges(t)
        with self._reachable():
            found = self._score_and_add(
                keys=[self._tx, cust_key, term_key, self._label],
                args=[tx.transaction_id, f"{t}:{tx.customer_id}:{tx.terminal_id}:{float(tx.amount)!r}", t // 1000,
                      *self._members(tx.transaction_id, t, tx.amount),
                      c_lo // 1000, t // 1000, t_lo // 1000, t_hi // 1000])
        if not found[0]:
            raise DuplicateTransaction(f"TRANSACTION_ID {tx.transaction_id} was already scored")
        if self._added is not None:
            self._added.append((tx.transaction_id, t, tx.customer_id, tx.terminal_id, tx.amount))
        return self._features_from(tx, t, *found[1:])

    def _features_from(self, tx: RawTransaction, t: int, cust: list[str], term: list[str],
                       labels: list[str]) -> dict[str, float]:
        """Features from the members read (score ranges are whole microseconds: the exact bounds apply here)."""
        c_lo, t_lo, t_hi = self._ranges(t)
        # Exact bounds on the nanoseconds: (t - span, t] for the card, (t - d - span, t - d] for the terminal.
        cust_t, cust_amount = [], []
        # Payments at the same instant count as earlier only with a lower TRANSACTION_ID (compute_features' order),
        # whichever arrived first; the terminal window too when it ends at this payment (no label delay).
        for member in cust:
            stamp, ident, amount = member.split(":")
            when = int(stamp)
            if c_lo < when < t or (when == t and int(ident) < tx.transaction_id):
                cust_t.append(when)
                cust_amount.append(float(amount))
        term_t, known = [], []
        for member, label in zip(term, labels):
            when = int(member[:20])
            if t_lo < when < t_hi or (when == t_hi and (t_hi < t or int(member[21:41]) < tx.transaction_id)):
                term_t.append(when)
                fraud, _, label_t = label.partition(":")
                known.append(1.0 if fraud == "1" and label_t and int(label_t) <= t else 0.0)
        return transaction_features(t, tx.time.weekday(), tx.time.hour, tx.amount,
                                    np.asarray(cust_t, dtype=np.int64), np.asarray(cust_amount, dtype=np.float64),
                                    np.asarray(term_t, dtype=np.int64), np.asarray(known, dtype=np.float64),
                                    self.settings)

    def _add_row(self, runner, transaction_id: int, t: int, customer: int, terminal: int, amount: float,
                 label: str):
        cust_key, term_key = self._keys(customer, terminal)
        return self._add(keys=[self._tx, cust_key, term_key, self._label],
                         args=[transaction_id, f"{t}:{customer}:{terminal}:{float(amount)!r}", t // 1000,
                               *self._members(transaction_id, t, amount), label], client=runner)

    def add(self, tx: RawTransaction) -> None:
        """Record the transaction as history (no label yet); DuplicateTransaction if any replica knows its id."""
        t = time_ns(tx.time)
        with self._reachable():
            added = self._add_row(self._db, tx.transaction_id, t, tx.customer_id, tx.terminal_id, tx.amount, "")
        if not added:
            raise DuplicateTransaction(f"TRANSACTION_ID {tx.transaction_id} was already scored")
        if self._added is not None:
            self._added.append((tx.transaction_id, t, tx.customer_id, tx.terminal_id, tx.amount))

    def transaction_time(self, transaction_id: int) -> int | None:
        with self._reachable():
            record = self._db.hget(self._tx, str(transaction_id))
        return None if record is None else int(record.split(":", 1)[0])

    def fraud_label_time(self, transaction_id: int) -> int | None:
        """When the transaction's fraud label became known (ns), or None when it holds none."""
        with self._reachable():
            held = self._db.hget(self._label, str(transaction_id))
        return int(held.split(":", 1)[1]) if held and held.startswith("1:") else None

    def record_label(self, transaction_id: int, fraud: bool, label_time: dt.datetime) -> bool:
        """Store a confirmed label (a chargeback: fraud=True) known from label_time; False if the id is unknown or
        already holds a fraud label, which is history: never erased, relabelled or moved in time."""
        with self._reachable():
            done = self._set_label(keys=[self._tx, self._label],
                                   args=[transaction_id, f"{int(bool(fraud))}:{time_ns(label_time)}"])
        return bool(done)

    def bootstrap(self, transactions: pd.DataFrame, until: pd.Timestamp | None = None) -> int:
        """Load history (raw schema with TX_FRAUD) before `until` (all when None); labels known after the delay.

        Rows whose id is already in the store are skipped. Returns the number of rows added.
        """
        frame = transactions
        if until is not None:
            frame = frame[frame[TX_DATETIME] < until]
        stamps = frame[TX_DATETIME]
        if isinstance(stamps.dtype, pd.DatetimeTZDtype):
            stamps = stamps.dt.tz_convert("UTC").dt.tz_localize(None)
        t = stamps.to_numpy(dtype="datetime64[ns]").astype(np.int64)
        rows = list(zip(frame[TRANSACTION_ID].to_numpy(np.int64).tolist(), t.tolist(),
                        frame[CUSTOMER_ID].to_numpy(np.int64).tolist(), frame[TERMINAL_ID].to_numpy(np.int64).tolist(),
                        frame[TX_AMOUNT].to_numpy(np.float64).tolist(), frame[TX_FRAUD].to_numpy(np.int64).tolist()))
        added = 0
        with self._reachable():
            for start in range(0, len(rows), _BOOTSTRAP_CHUNK):
                pipe = self._db.pipeline(transaction=False)
                for transaction_id, when, customer, terminal, amount, fraud in rows[start:start + _BOOTSTRAP_CHUNK]:
                    label = f"1:{when + self._terminal_end}" if fraud else ""
                    self._add_row(pipe, transaction_id, when, customer, terminal, amount, label)
                added += sum(int(r) for r in pipe.execute())
        logger.info("state %s: bootstrapped %d transaction(s) (%d in the store)", self.location, added, self.count())
        return added
