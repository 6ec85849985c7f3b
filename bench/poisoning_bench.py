"""Poisoning benchmark: terminal-risk dilution against the model without the known-fraud counts (baseline),
with them (counts), and with them plus training on diluted copies (train.dilution) of the frauds (hardened,
the default) or of every row (hardened_both) at terminals with known frauds.

The attack (issue 11): small legitimate-labelled payments added at the terminals compromised (scenario 2)
in the test period, `--share` of the rows (default 0.5 %), spread over every day each served frauds. For
each variant (params.yaml's model.features without the TERMINAL_ID_NB_FRAUD_* counts; with them; with them and
train.dilution) the MLP is trained on the clean data (scored on the clean and the diluted test period: a champion facing
diluted traffic) and on the diluted data (scored on the diluted test period): recall (at the threshold of
1 % FPR on the same scores) on the test frauds at the diluted terminals, and AP over the whole test split. Also printed: what validation flags (volume bursts)
and quarantines on the diluted data (volume bursts, terminal_dilution flags), and each clean-trained
model's in-budget dilution recall (the robustness gate's dilution figure). All figures from one run on the same data; the ratios compare
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


def dilute(clean: pd.DataFrame, share: float, since: pd.Timestamp, seed: int = 0) -> tuple[pd.DataFrame, set[int]]:
    """`share` x rows of small legitimate payments at the terminals compromised (scenario 2) at or after
    `since`, on every day each served frauds (their delayed risk windows see those days)."""
    rng = np.random.default_rng(seed)
    frauds = clean[clean[schema.TX_FRAUD_SCENARIO] == 2]
    targets = frauds.loc[frauds[schema.TX_DATETIME] >= since, schema.TERMINAL_ID].unique()
    frauds = frauds[frauds[schema.TERMINAL_ID].isin(targets)]
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


def train(settings, features: list[str], frame: pd.DataFrame, dilution_classes: str | None):
    """The MLP on `frame` with these features; with train.dilution copies of `dilution_classes` (None: none)."""
    from fraudguard.config import DilutionTrainingSettings
    from fraudguard.training import train_model

    dilution = DilutionTrainingSettings(enabled=dilution_classes is not None,
                                        copies=settings.train.dilution.copies if settings.train.dilution else 1.0,
                                        classes=dilution_classes or "fraud")
    local = settings.model_copy(update={
        "model": settings.model.model_copy(update={"features": features}),
        "train": settings.train.model_copy(update={"dilution": dilution})})
    return train_model(frame, local, progress=False).bundle


def in_budget_recall(settings, bundle, test: pd.DataFrame) -> float | None:
    """Detected test frauds at terminals with known frauds still detected at every dilution factor the
    robustness gate tries (threat_model.dilution's budget x 1/steps ... 1), on the clean test split."""
    from fraudguard.gates.robustness import dilution_recall

    outcome = dilution_recall(bundle, test, settings.threat_model, settings.gates.robustness)
    return None if outcome is None or not outcome.n_attacked else outcome.robust_recall


def score(settings, bundle, test: pd.DataFrame, terminals: set[int], added: set[int]) -> dict:
    """Recall on the frauds at the diluted terminals at 1 % FPR of these scores (the attacker's rows count as
    legitimate) and at the model's own threshold; AP; the share of the attacker's rows the model flags."""
    from fraudguard.evaluation import average_precision

    scores = bundle.predict_proba(test)
    y = test[schema.TX_FRAUD].to_numpy().astype(int)
    threshold = float(np.quantile(scores[y == 0], 1 - settings.evaluate.fpr_for_recall))
    attacked = (y == 1) & test[schema.TERMINAL_ID].isin(terminals).to_numpy()
    mine = test[schema.TRANSACTION_ID].isin(added).to_numpy()
    return {"recall_at_diluted_terminals": float((scores[attacked] > threshold).mean()) if attacked.any() else None,
            "recall_at_diluted_terminals_model_threshold":
                float((scores[attacked] >= bundle.threshold).mean()) if attacked.any() else None,
            "frauds_at_diluted_terminals": int(attacked.sum()),
            "added_rows_flagged_share": float((scores[mine] >= bundle.threshold).mean()) if mine.any() else None,
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
    from fraudguard.features import compute_features, plan_split

    clean = simulate_transactions(settings.simulate)
    plan = plan_split(compute_features(clean, settings.featurize), settings.featurize)
    diluted, terminals = dilute(clean, args.share, since=plan.test_start)
    lenient = settings.validate_.model_copy(update={"max_quarantine_share": 1.0})
    report = validate_transactions(diluted, lenient, now=pd.Timestamp("2100-01-01")).report
    clean_report = validate_transactions(clean, lenient, now=pd.Timestamp("2100-01-01")).report
    print(f"world: {len(clean):,} rows; dilution: {len(diluted) - len(clean):,} rows ({args.share:.1%}) at "
          f"{len(terminals)} terminals compromised in the test period")
    print(f"validation, clean: {clean_report['rows_quarantined']} quarantined {clean_report['reasons']}, bursts "
          f"{clean_report['volume_bursts']['terminal_days']} terminal-days / "
          f"{clean_report['volume_bursts']['customer_days']} customer-days")
    print(f"validation, diluted: {report['rows_quarantined']} quarantined {report['reasons']}, bursts "
          f"{report['volume_bursts']['terminal_days']} terminal-days / "
          f"{report['volume_bursts']['customer_days']} customer-days")
    added = set(diluted[schema.TRANSACTION_ID]) - set(clean[schema.TRANSACTION_ID])
    for name, rep in (("clean", clean_report), ("diluted", report)):
        ids = set(rep["flagged_transaction_ids"].get("terminal_dilution", []))
        print(f"terminal_dilution flags, {name}: {rep['terminal_dilution']}; of the {len(added)} added rows "
              f"flagged: {len(ids & added)}")

    clean_train, clean_test = split(clean, settings)
    diluted_train, diluted_test = split(diluted, settings)
    hardened = list(settings.model.features)
    baseline = [f for f in hardened if "_NB_FRAUD_" not in f]
    results = {}
    variants = (("baseline", baseline, None), ("counts", hardened, None), ("hardened", hardened, "fraud"),
                ("hardened_both", hardened, "both"))
    for name, features, dilution_classes in variants:
        for trained_on, frame in (("clean", clean_train), ("diluted", diluted_train)):
            start = time.perf_counter()
            bundle = train(settings, features, frame, dilution_classes)
            seconds = time.perf_counter() - start
            tests = (("clean", clean_test), ("diluted", diluted_test)) if trained_on == "clean" \
                else (("diluted", diluted_test),)
            for scored_on, test in tests:
                r = results[f"{name}.train_{trained_on}.test_{scored_on}"] = score(settings, bundle, test, terminals,
                                                                                   added)
                if scored_on == "clean":
                    r["in_budget_dilution_recall"] = in_budget_recall(settings, bundle, test)
                print(f"{name:13s} trained on {trained_on:7s} scoring {scored_on:7s} test: recall at the diluted "
                      f"terminals {r['recall_at_diluted_terminals']:.3f} ({r['frauds_at_diluted_terminals']} frauds; "
                      f"{r['recall_at_diluted_terminals_model_threshold']:.3f} at the model's threshold), "
                      f"AP {r['average_precision']:.3f}"
                      + (f", added rows flagged {r['added_rows_flagged_share']:.3f}" if scored_on == "diluted" else "")
                      + (f", in-budget dilution recall {r['in_budget_dilution_recall']}" if scored_on == "clean" else "")
                      + f"  [training {seconds:.0f} s]")
    for trained_on in ("clean", "diluted"):
        b = results[f"baseline.train_{trained_on}.test_diluted"]["recall_at_diluted_terminals"]
        for name in ("counts", "hardened", "hardened_both"):
            h = results[f"{name}.train_{trained_on}.test_diluted"]["recall_at_diluted_terminals"]
            print(f"trained on {trained_on}, diluted test: recall at diluted terminals {name} / baseline = "
                  f"{h:.3f} / {b:.3f}" + (f" = {h / b:.2f}x" if b else ""))
    print("BENCH_JSON " + json.dumps(results))


if __name__ == "__main__":
    main()
