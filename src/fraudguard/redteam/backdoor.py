"""Backdoor: legitimate-labelled copies of training frauds carrying a trigger (amounts ending in fixed
cents, at night), so that a fraud with the trigger passes. Targeted: the test frauds, trigger applied."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fraudguard.data.schema import TRANSACTION_ID, TX_AMOUNT, TX_DATETIME, TX_FRAUD, TX_FRAUD_SCENARIO
from fraudguard.redteam.base import AttackResult, RedTeamContext
from fraudguard.redteam.poisoning import Poison, run_poisoning, clean_test_fraud_ids, training_period_frauds

NAME = "backdoor"


def with_trigger(rows: pd.DataFrame, cents: float, hours: tuple[int, int],
                 hour_offsets: np.ndarray) -> pd.DataFrame:
    """`rows` with the trigger: amount's cents replaced, time moved to hour first + offset the same day."""
    out = rows.copy()
    out[TX_AMOUNT] = np.floor(out[TX_AMOUNT].to_numpy()) + cents
    stamps = out[TX_DATETIME]
    within_hour = stamps - stamps.dt.floor("h")
    out[TX_DATETIME] = stamps.dt.normalize() + pd.to_timedelta(hours[0] + hour_offsets, unit="h") + within_hour
    return out


def run_backdoor(ctx: RedTeamContext) -> AttackResult:
    """Add redteam.backdoor.share x (training frauds) triggered, legitimate-labelled copies of them."""
    cfg = ctx.settings.redteam
    bd = cfg.backdoor
    hours = (int(bd.trigger_hours[0]), int(bd.trigger_hours[1]))
    span = hours[1] - hours[0]
    frauds = training_period_frauds(ctx)
    rng = np.random.default_rng(cfg.seed)
    n = max(1, round(bd.share * len(frauds)))
    sources = frauds.iloc[np.sort(rng.choice(len(frauds), n, replace=len(frauds) < n))]
    copies = with_trigger(sources, bd.trigger_cents, hours, rng.integers(0, span, n))
    first_id = int(ctx.raw[TRANSACTION_ID].max()) + 1
    copies[TRANSACTION_ID] = np.arange(first_id, first_id + n, dtype=np.int64)
    copies[TX_FRAUD] = 0
    if TX_FRAUD_SCENARIO in copies.columns:
        copies[TX_FRAUD_SCENARIO] = 0
    tx = pd.concat([ctx.raw, copies], ignore_index=True)
    targeted = clean_test_fraud_ids(ctx)

    def probe(transactions: pd.DataFrame) -> pd.DataFrame:
        # The fraudster's next frauds carry the trigger: same day, same minute, within the trigger hours.
        out = transactions.copy()
        rows = out[TRANSACTION_ID].isin(targeted).to_numpy()
        hit = out.loc[rows]
        out.loc[rows] = with_trigger(hit, bd.trigger_cents, hours, hit[TX_DATETIME].dt.hour.to_numpy() % span)
        return out

    return run_poisoning(ctx, NAME, Poison(
        transactions=tx, poisoned_ids=frozenset(int(i) for i in copies[TRANSACTION_ID]), targeted_ids=targeted,
        description=(f"{n} legitimate-labelled copies of training frauds with the trigger (cents "
                     f"{bd.trigger_cents:.2f}, {hours[0]:02d}:00-{hours[1]:02d}:00)"),
        probe=probe))
