"""Label flip: an insider relabels a share of the training period's frauds as legitimate, editing rows
that are already in the data (fraud scenario cleared too, so the labels stay consistent)."""

from __future__ import annotations

import numpy as np

from fraudguard.data.schema import TRANSACTION_ID, TX_FRAUD, TX_FRAUD_SCENARIO
from fraudguard.redteam.base import AttackResult, RedTeamContext
from fraudguard.redteam.poisoning import Poison, run_poisoning, clean_test_fraud_ids, training_period_frauds

NAME = "label_flip"


def run_label_flip(ctx: RedTeamContext) -> AttackResult:
    """Flip redteam.label_flip.share of the training-period frauds; targeted: every test fraud."""
    cfg = ctx.settings.redteam
    frauds = training_period_frauds(ctx)
    rng = np.random.default_rng(cfg.seed)
    n = max(1, round(cfg.label_flip.share * len(frauds)))
    chosen = frauds[TRANSACTION_ID].to_numpy()[np.sort(rng.choice(len(frauds), n, replace=False))]
    tx = ctx.raw.copy()
    rows = tx[TRANSACTION_ID].isin(chosen)
    tx.loc[rows, TX_FRAUD] = 0
    if TX_FRAUD_SCENARIO in tx.columns:
        tx.loc[rows, TX_FRAUD_SCENARIO] = 0
    return run_poisoning(ctx, NAME, Poison(
        transactions=tx, poisoned_ids=frozenset(int(i) for i in chosen), targeted_ids=clean_test_fraud_ids(ctx),
        description=f"{n} of {len(frauds)} training-period frauds relabelled legitimate in place"))
