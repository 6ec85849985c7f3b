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
