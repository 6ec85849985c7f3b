"""Raw transactions for the gateway's feature-state tests (SQLite and Redis stores share them)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fraudguard.serving.state import RawTransaction


def random_transactions(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """`n` time-ordered transactions of 8 cards at 5 terminals over 60 days, a fifth of them fraud."""
    rng = np.random.default_rng(seed)
    times = pd.Timestamp("2024-04-01") + pd.to_timedelta(np.sort(rng.integers(0, 60 * 86400, n)), unit="s")
    return pd.DataFrame({"TRANSACTION_ID": np.arange(n), "TX_DATETIME": times,
                         "CUSTOMER_ID": rng.integers(0, 8, n), "TERMINAL_ID": rng.integers(0, 5, n),
                         "TX_AMOUNT": rng.gamma(2.0, 40.0, n).round(2), "TX_FRAUD": (rng.random(n) < 0.2).astype(int)})


def raw_transaction(row) -> RawTransaction:
    """One row of `random_transactions` as the gateway receives it (no label)."""
    return RawTransaction(int(row.TRANSACTION_ID), row.TX_DATETIME.to_pydatetime(), int(row.CUSTOMER_ID),
                          int(row.TERMINAL_ID), float(row.TX_AMOUNT))


def same_instant_pieces(transaction_ids: list[int], when, customer: int, terminal: int = 7) -> list[RawTransaction]:
    """Payments of one card at one instant, amounts 2^k: the spend each is scored with names exactly which of the
    others it counted (its bits)."""
    return [RawTransaction(tid, when, customer, terminal, float(2 ** k)) for k, tid in enumerate(transaction_ids)]


def scored_in_some_serial_order(pieces: list[RawTransaction], found: dict[int, dict]) -> bool:
    """Whether the features each piece was scored with are those of one serial order of the scorings: at one
    instant a piece counts the pieces with a lower TRANSACTION_ID recorded before it (compute_features' order).
    Each piece's counted set says, for every lower-id piece, which of the two came first; two scorings that read
    before either wrote can leave those orders in a cycle, which no serial order gives."""
    index = {p.transaction_id: k for k, p in enumerate(pieces)}
    before: dict[int, set[int]] = {k: set() for k in range(len(pieces))}  # k -> pieces that came before k
    for tid, features in found.items():
        k = index[tid]
        counted = int(round(features["CUSTOMER_ID_SPEND_1HOUR_WINDOW"] - pieces[k].amount))
        if features["CUSTOMER_ID_NB_TX_1HOUR_WINDOW"] != 1 + bin(counted).count("1"):
            return False
        for j, other in enumerate(pieces):
            if other.transaction_id < pieces[k].transaction_id:
                (before[k].add(j) if counted >> j & 1 else before[j].add(k))
            elif counted >> j & 1:
                return False  # a higher id counted as earlier
    done: set[int] = set()
    while len(done) < len(pieces):  # a topological order exists iff the "came before" relation has no cycle
        ready = [k for k in before if k not in done and before[k] <= done]
        if not ready:
            return False
        done.update(ready)
    return True


def same_instant_frame():
    """Raw rows of one card: a fraud five hours earlier (id 1), then payments 10 (100.0) and 11 (30.0) at the same
    instant, as compute_features reads them (ties by TRANSACTION_ID)."""
    at = pd.Timestamp("2024-05-01 12:00:00")
    return pd.DataFrame({"TRANSACTION_ID": [1, 10, 11], "TX_DATETIME": [at - pd.Timedelta(hours=5), at, at],
                         "CUSTOMER_ID": [3, 3, 3], "TERMINAL_ID": [7, 7, 7], "TX_AMOUNT": [5.0, 100.0, 30.0],
                         "TX_FRAUD": [1, 0, 0]})
