"""Split payments: the fraudster pays a fraud's amount in k smaller payments at the same terminal,
interval_s apart (the threat model's attacker also chooses how many payments, within the total).

For each fraud of the test split that the target flags whole, the fraud is replaced by its k pieces in
the transactions, every feature is recomputed as featurize computes it (so the customer windows see the
earlier pieces), and the fraud counts as still caught when any piece is flagged. Caught: at k =
gated_splits, at least min_flagged_share of those frauds still have a piece flagged.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fraudguard.data.schema import TRANSACTION_ID, TX_FRAUD
from fraudguard.redteam.base import CAUGHT_ROBUST, AttackResult, RedTeamContext
from fraudguard.splitting import split_into_payments

__all__ = ["split_into_payments", "flagged_share", "run_split_payments"]

NAME = "split_payments"
KIND = "split payments"


def flagged_share(ctx: RedTeamContext, caught_ids: np.ndarray, k: int) -> float:
    """Share of `caught_ids` with at least one of their k pieces flagged by the target."""
    from fraudguard.features import compute_features

    cfg = ctx.settings.redteam.split_payments
    first_new = int(ctx.validated[TRANSACTION_ID].max()) + 1
    tx, pieces = split_into_payments(ctx.validated, caught_ids, k, cfg.interval_s, first_new)
    features = compute_features(tx, ctx.settings.featurize)
    rows = features[features[TRANSACTION_ID].isin(pieces[TRANSACTION_ID])]
    flagged = pd.DataFrame({TRANSACTION_ID: rows[TRANSACTION_ID].to_numpy(), "flagged": ctx.target.predict(rows)})
    per_fraud = pieces.merge(flagged, on=TRANSACTION_ID).groupby("original")["flagged"].any()
    return float(per_fraud.reindex(caught_ids, fill_value=False).mean())


def run_split_payments(ctx: RedTeamContext) -> AttackResult:
    """The share of whole-caught test frauds still flagged when split into k payments, for each k."""
    cfg = ctx.settings.redteam.split_payments
    frauds = ctx.test[ctx.test[TX_FRAUD] == 1]
    caught_ids = frauds.loc[ctx.target.predict(frauds), TRANSACTION_ID].to_numpy()
    if caught_ids.size == 0:
        return AttackResult(NAME, KIND, (), f"share flagged at k={cfg.gated_splits}", 1.0, float("nan"),
                            "the target flags no test fraud whole: nothing to split", {"caught_whole": 0})
    shares = {k: flagged_share(ctx, caught_ids, k) for k in cfg.splits}
    gated = shares[cfg.gated_splits]
    caught = (f"{CAUGHT_ROBUST}: {gated:.3f} of frauds still flagged at k={cfg.gated_splits} "
              f">= {cfg.min_flagged_share:g}",) if gated >= cfg.min_flagged_share else ()
    summary = (f"{caught_ids.size} frauds caught whole; share with a piece flagged: "
               + ", ".join(f"k={k} {s:.2f}" for k, s in shares.items()))
    return AttackResult(NAME, KIND, caught, f"share flagged at k={cfg.gated_splits}", 1.0, gated, summary,
                        {"caught_whole": int(caught_ids.size), "flagged_share_by_k": {str(k): s for k, s in shares.items()},
                         "min_flagged_share": cfg.min_flagged_share})
