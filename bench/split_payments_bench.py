"""Split-payments benchmark: the share of caught frauds still flagged when paid in k pieces, with and without
the defence.

The attack (issue 11, fraudguard.splitting): every test fraud the model flags whole is paid in k payments
interval_s apart at its terminal; all features are recomputed by compute_features on the validated
transactions with those frauds replaced by their pieces (the red team's exact measure, not the gate's
per-row derivation); a fraud stays caught when any piece is flagged. Two models on the same data: params.yaml
as it is (hour-window features + split-payment training copies) and the baseline without the defence
(model.features without the hour windows, no copies). Printed per model: test AP, frauds caught whole, the
share for each k, and the ratio defended / baseline at the gated k.

    .venv/bin/python bench/split_payments_bench.py [--params params.yaml] [--splits 2 3 10] [--epochs N]
"""

from __future__ import annotations

import argparse
import json
import logging
import time

import numpy as np
import pandas as pd

from fraudguard.config import load_settings
from fraudguard.data import schema

logger = logging.getLogger("split_payments_bench")


def still_flagged_share(bundle, transactions: pd.DataFrame, caught_ids: np.ndarray, k: int, interval_s: float,
                        featurize) -> float:
    """Share of `caught_ids` with a piece flagged when every one of them is paid in k pieces."""
    from fraudguard.features import compute_features
    from fraudguard.splitting import split_into_payments

    first_new = int(transactions[schema.TRANSACTION_ID].max()) + 1
    table, pieces = split_into_payments(transactions, caught_ids, k, interval_s, first_new)
    features = compute_features(table, featurize)
    rows = features[features[schema.TRANSACTION_ID].isin(pieces[schema.TRANSACTION_ID])]
    flagged = pd.DataFrame({schema.TRANSACTION_ID: rows[schema.TRANSACTION_ID].to_numpy(),
                            "flagged": bundle.predict_proba(rows) >= bundle.threshold})
    per_fraud = pieces.merge(flagged, on=schema.TRANSACTION_ID).groupby("original")["flagged"].any()
    return float(per_fraud.reindex(caught_ids, fill_value=False).mean())


def main() -> None:
    from sklearn.metrics import average_precision_score

    from fraudguard.data.simulator import simulate_transactions
    from fraudguard.features import compute_features, split_train_test
    from fraudguard.training import train_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--splits", type=int, nargs="+", default=[2, 3, 10])
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    settings = load_settings(args.params)
    if args.epochs is not None:
        settings = settings.model_copy(update={"train": settings.train.model_copy(update={"epochs": args.epochs})})
    threat = settings.threat_model.split_payments
    interval_s = threat.interval_s if threat is not None else settings.redteam.split_payments.interval_s
    gated = settings.gates.robustness.split_payments.splits if settings.gates.robustness.split_payments else 3
    transactions = simulate_transactions(settings.simulate)
    train, test = split_train_test(compute_features(transactions, settings.featurize), settings.featurize)

    baseline_features = [f for f in settings.model.features if "HOUR_WINDOW" not in f]
    derived = {k: v for k, v in settings.threat_model.derived_features.items() if k in baseline_features}
    baseline = settings.model_copy(update={
        "model": settings.model.model_copy(update={"features": baseline_features}),
        "threat_model": settings.threat_model.model_copy(update={"derived_features": derived}),
        "train": settings.train.model_copy(update={"split_payments": None}),
    })
    figures: dict = {"splits": args.splits, "gated_splits": gated, "test_frauds": int(test[schema.TX_FRAUD].sum())}
    for name, run_settings in (("defended", settings), ("baseline", baseline)):
        start = time.perf_counter()
        bundle = train_model(train, run_settings, progress=False).bundle
        seconds = time.perf_counter() - start
        frauds = test[test[schema.TX_FRAUD] == 1]
        caught = frauds.loc[bundle.predict_proba(frauds) >= bundle.threshold, schema.TRANSACTION_ID].to_numpy()
        shares = {str(k): still_flagged_share(bundle, transactions, caught, k, interval_s, run_settings.featurize)
                  for k in args.splits}
        ap = float(average_precision_score(test[schema.TX_FRAUD], bundle.predict_proba(test)))
        figures[name] = {"average_precision": ap, "caught_whole": int(caught.size), "flagged_share_by_k": shares,
                         "train_seconds": seconds}
        print(f"{name:9s} AP {ap:.3f}, {caught.size} frauds caught whole; still flagged: "
              + ", ".join(f"k={k} {s:.3f}" for k, s in shares.items()) + f" (trained in {seconds:.0f} s)")
    ratio = figures["defended"]["flagged_share_by_k"][str(gated)] / max(
        figures["baseline"]["flagged_share_by_k"][str(gated)], 1e-9)
    figures["ratio_defended_vs_baseline_at_gated_k"] = ratio
    print(f"k={gated}: defended / baseline share {ratio:.2f}x; AP {figures['defended']['average_precision']:.3f} "
          f"vs {figures['baseline']['average_precision']:.3f}")
    print("BENCH_JSON " + json.dumps(figures))


if __name__ == "__main__":
    main()
