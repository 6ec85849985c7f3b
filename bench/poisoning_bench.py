"""Poisoning benchmark: terminal-risk dilution against the model with and without the known-fraud counts.

The attack (issue 11): small legitimate-labelled payments added at the compromised terminals (scenario 2),
`--share` of the rows (default 0.5 %), spread over the days each terminal served frauds, in training and
test alike. For each feature set (params.yaml's model.features, and the same without the
TERMINAL_ID_NB_FRAUD_* counts) the MLP is trained on the clean and on the diluted data, and scored on the
diluted test period: recall (at the threshold of 1 % FPR on the same scores) on the test frauds at the
diluted terminals, and AP over the whole test split. Also printed: what validation flags (volume bursts)
and quarantines on the diluted data. All figures from one run on the same data; the ratios compare
hardened to baseline in that run.

    .venv/bin/python bench/poisoning_bench.py [--params params.yaml] [--share 0.005] [--epochs N]
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

logger = logging.getLogger("poisoning_bench")


def dilute(clean: pd.DataFrame, share: float, seed: int = 0) -> tuple[pd.DataFrame, set[int]]:
    """`share` x rows of small legitimate payments at the compromised terminals, on their fraud days."""
    rng = np.random.default_rng(seed)
    frauds = clean[clean[schema.TX_FRAUD_SCENARIO] == 2]
    days = frauds.groupby([schema.TERMINAL_ID, frauds[schema.TX_DATETIME].dt.floor("D")]).size().index.to_frame(
        index=False)
    n = int(round(share * len(clean)))
    picked = days.iloc[rng.integers(0, len(days), size=n)]
    added = pd.DataFrame({
        schema.TRANSACTION_ID: clean[schema.TRANSACTION_ID].max() + 1 + np.arange(n),
        schema.TX_DATETIME: picked[schema.TX_DATETIME].to_numpy()
        + pd.to_timedelta(rng.integers(8 * 3600, 20 * 3600, size=n), unit="s"),
        schema.CUSTOMER_ID: rng.choice(clean[schema.CUSTOMER_ID].unique(), size=n),
        schema.TERMINAL_ID: picked[schema.TERMINAL_ID].to_numpy(),
        schema.TX_AMOUNT: np.round(rng.uniform(1, 5, size=n), 2),
        schema.TX_FRAUD: 0, schema.TX_FRAUD_SCENARIO: 0,
    })
    diluted = pd.concat([clean, added], ignore_index=True).sort_values(schema.TX_DATETIME, kind="stable")
    return diluted.reset_index(drop=True), set(int(t) for t in days[schema.TERMINAL_ID])


def split(frame: pd.DataFrame, settings) -> tuple[pd.DataFrame, pd.DataFrame]:
    from fraudguard.features import compute_features, split_train_test

    return split_train_test(compute_features(frame, settings.featurize), settings.featurize)


def score(settings, features: list[str], train: pd.DataFrame, test: pd.DataFrame, terminals: set[int]) -> dict:
    from fraudguard.evaluation import average_precision
    from fraudguard.training import train_model

    local = settings.model_copy(update={"model": settings.model.model_copy(update={"features": features})})
    bundle = train_model(train, local, progress=False).bundle
    scores = bundle.predict_proba(test)
    y = test[schema.TX_FRAUD].to_numpy().astype(int)
    threshold = float(np.quantile(scores[y == 0], 1 - local.evaluate.fpr_for_recall))
    attacked = (y == 1) & test[schema.TERMINAL_ID].isin(terminals).to_numpy()
    return {"recall_at_diluted_terminals": float((scores[attacked] > threshold).mean()) if attacked.any() else None,
            "frauds_at_diluted_terminals": int(attacked.sum()),
            "average_precision": average_precision(y, scores)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--share", type=float, default=0.005)
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from fraudguard.data.simulator import simulate_transactions
    from fraudguard.data.validation import validate_transactions

    settings = load_settings(args.params)
    if args.epochs:
        settings = settings.model_copy(update={"train": settings.train.model_copy(update={"epochs": args.epochs})})
    clean = simulate_transactions(settings.simulate)
    diluted, terminals = dilute(clean, args.share)
    lenient = settings.validate_.model_copy(update={"max_quarantine_share": 1.0})
    report = validate_transactions(diluted, lenient, now=pd.Timestamp("2100-01-01")).report
    clean_report = validate_transactions(clean, lenient, now=pd.Timestamp("2100-01-01")).report
    print(f"world: {len(clean):,} rows; dilution: {len(diluted) - len(clean):,} rows ({args.share:.1%}) at "
          f"{len(terminals)} compromised terminals")
    print(f"validation, clean: {clean_report['rows_quarantined']} quarantined {clean_report['reasons']}, bursts "
          f"{clean_report['volume_bursts']['terminal_days']} terminal-days / "
          f"{clean_report['volume_bursts']['customer_days']} customer-days")
    print(f"validation, diluted: {report['rows_quarantined']} quarantined {report['reasons']}, bursts "
          f"{report['volume_bursts']['terminal_days']} terminal-days / "
          f"{report['volume_bursts']['customer_days']} customer-days")

    clean_train, _ = split(clean, settings)
    diluted_train, diluted_test = split(diluted, settings)
    hardened = list(settings.model.features)
    baseline = [f for f in hardened if "_NB_FRAUD_" not in f]
    results = {}
    for name, features in (("baseline", baseline), ("hardened", hardened)):
        for trained_on, train in (("clean", clean_train), ("diluted", diluted_train)):
            start = time.perf_counter()
            results[(name, trained_on)] = score(settings, features, train, diluted_test, terminals)
            r = results[(name, trained_on)]
            print(f"{name:8s} trained on {trained_on:7s}, scoring diluted test: recall at diluted terminals "
                  f"{r['recall_at_diluted_terminals']:.3f} ({r['frauds_at_diluted_terminals']} frauds), AP "
                  f"{r['average_precision']:.3f}  [{time.perf_counter() - start:.0f} s]")
    print("BENCH_JSON " + json.dumps({f"{n}.{t}": r for (n, t), r in results.items()}))


if __name__ == "__main__":
    main()
