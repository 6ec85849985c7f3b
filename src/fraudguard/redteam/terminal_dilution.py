"""Terminal-risk dilution: small legitimate-labelled transactions added at the terminals the fraudster
compromised, so that their fraud-rate features stay low. Targeted: the test frauds at those terminals."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from fraudguard.data.schema import (
    CUSTOMER_ID,
    TERMINAL_ID,
    TRANSACTION_ID,
    TX_AMOUNT,
    TX_DATETIME,
    TX_FRAUD,
    TX_FRAUD_SCENARIO,
)
from fraudguard.redteam.base import AttackResult, RedTeamContext
from fraudguard.redteam.poisoning import Poison, run_poisoning, clean_test_fraud_ids

NAME = "terminal_dilution"
# The simulator's scenario of a compromised terminal (every transaction there is fraud for some days).
COMPROMISED_TERMINAL_SCENARIO = 2


def compromised_terminals(ctx: RedTeamContext) -> np.ndarray:
    """Terminals of the test frauds: those of compromised-terminal frauds when the data says which."""
    test_ids = clean_test_fraud_ids(ctx)
    frauds = ctx.raw[ctx.raw[TRANSACTION_ID].isin(test_ids)]
    if TX_FRAUD_SCENARIO in frauds.columns:
        scenario = frauds[frauds[TX_FRAUD_SCENARIO] == COMPROMISED_TERMINAL_SCENARIO]
        if not scenario.empty:
            frauds = scenario
    return np.sort(frauds[TERMINAL_ID].unique())


def run_terminal_dilution(ctx: RedTeamContext) -> AttackResult:
    """Add redteam.terminal_dilution.share_of_rows x (rows) small legitimate rows, spread over the
    compromised terminals' fraud periods (first fraud to last test fraud)."""
    cfg = ctx.settings.redteam
    dl = cfg.terminal_dilution
    raw = ctx.raw
    terminals = compromised_terminals(ctx)
    rng = np.random.default_rng(cfg.seed)
    n = max(1, math.ceil(dl.share_of_rows * len(raw)))
    test_ids = clean_test_fraud_ids(ctx)
    frauds = raw[(raw[TX_FRAUD] == 1) & raw[TERMINAL_ID].isin(terminals)]
    first = frauds.groupby(TERMINAL_ID)[TX_DATETIME].min()
    last = frauds[frauds[TRANSACTION_ID].isin(test_ids)].groupby(TERMINAL_ID)[TX_DATETIME].max()
    at = rng.choice(terminals, n) if len(terminals) else np.array([], dtype=np.int64)
    start = first.reindex(at).to_numpy().astype("datetime64[ns]").astype(np.int64)
    end = last.reindex(at).to_numpy().astype("datetime64[ns]").astype(np.int64)
    stamps = start + (rng.random(n) * np.maximum(end - start, 0)).astype(np.int64)
    first_id = int(raw[TRANSACTION_ID].max()) + 1
    added = pd.DataFrame({
        TRANSACTION_ID: np.arange(first_id, first_id + n, dtype=np.int64),
        TX_DATETIME: pd.to_datetime(stamps).floor("s"),
        CUSTOMER_ID: rng.choice(raw[CUSTOMER_ID].unique(), n),
        TERMINAL_ID: at.astype(raw[TERMINAL_ID].dtype),
        TX_AMOUNT: np.round(rng.uniform(dl.min_amount, dl.max_amount, n), 2),
        TX_FRAUD: np.zeros(n, dtype=raw[TX_FRAUD].dtype),
    })
    if TX_FRAUD_SCENARIO in raw.columns:
        added[TX_FRAUD_SCENARIO] = np.zeros(n, dtype=raw[TX_FRAUD_SCENARIO].dtype)
    tx = pd.concat([raw, added[list(raw.columns)]], ignore_index=True)
    targeted = raw.loc[raw[TRANSACTION_ID].isin(test_ids) & raw[TERMINAL_ID].isin(terminals), TRANSACTION_ID]
    return run_poisoning(ctx, NAME, Poison(
        transactions=tx, poisoned_ids=frozenset(int(i) for i in added[TRANSACTION_ID]),
        targeted_ids=targeted.to_numpy(),
        description=(f"{n} legitimate transactions of {dl.min_amount:g}-{dl.max_amount:g} added at "
                     f"{len(terminals)} compromised terminals ({dl.share_of_rows:.1%} of rows)")))
