"""Where the robust AP is lost: the MLP's robust AP with the attacker restricted to subsets of what it controls.

    python bench/robust_loss_bench.py [--world handbook] [--scale 1] [-S key=value ...]

Simulates and splits the world as bench/model_quality_bench.py does, trains the MLP once (train_model with the
params' train section), then attacks the test frauds with masked PGD at the threat model's budget (what
evaluate's robust AP does), the attacker restricted to:
  all                     every controlled feature, derived features following (evaluate's attack);
  amount (+ derived)      TX_AMOUNT only, the customer averages and the hour spend following it;
  amount, derived frozen  TX_AMOUNT only, its derived features left as they were (an off-manifold point: shown
                          only to measure how much of the loss goes through the derived features);
  flags                   TX_DURING_WEEKEND and TX_DURING_NIGHT only (relaxed to [0, 1]).
For each, the AP with only one group of frauds attacked (the others keep their clean scores): the simulator's
scenario 1 (amount above simulate.fraud_amount_threshold), 2 (compromised terminal), 3 (compromised card).
Robust AP of every row is the figure evaluate reports; the groups say which frauds lose their rank.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_project import print_bench_json  # noqa: E402
from model_quality_bench import parse_set_options, world_settings  # noqa: E402

FLAGS = ("TX_DURING_WEEKEND", "TX_DURING_NIGHT")


def attacker_subsets(threat_model: Any) -> dict[str, Any]:
    """The threat model, and copies of it whose attacker controls only part of what it does."""
    controlled = threat_model.controlled_features
    amount = {k: v for k, v in controlled.items() if k == "TX_AMOUNT"}
    return {
        "all": threat_model,
        "amount (+ derived)": threat_model.model_copy(update={"controlled_features": amount}),
        "amount, derived frozen": threat_model.model_copy(update={"controlled_features": amount,
                                                                  "derived_features": {}}),
        "flags": threat_model.model_copy(update={
            "controlled_features": {k: v for k, v in controlled.items() if k in FLAGS}, "derived_features": {}}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", choices=("default", "handbook"), default="handbook")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from fraudguard.attacks import make_art_classifier, masked_pgd
    from fraudguard.data.simulator import simulate_transactions
    from fraudguard.evaluation import average_precision
    from fraudguard.features import compute_features, plan_split, split_train_test
    from fraudguard.threat import build_threat_model
    from fraudguard.training import train_model

    settings = world_settings(args.world, args.scale, parse_set_options(parser, args.overrides))
    features = compute_features(simulate_transactions(settings.simulate), settings.featurize)
    train, test = split_train_test(features, settings.featurize, plan_split(features, settings.featurize))
    start = time.perf_counter()
    bundle = train_model(train, settings, progress=False).bundle
    print(f"{args.world}: MLP trained in {time.perf_counter() - start:.0f} s", flush=True)

    y = test["TX_FRAUD"].to_numpy().astype(int)
    x = bundle.standardizer.transform(test)
    clean = bundle.predict_proba_standardized(x)
    fraud = np.flatnonzero(y == 1)
    scenario = test["TX_FRAUD_SCENARIO"].to_numpy()[fraud]
    groups = {f"scenario {s}": scenario == s for s in (1, 2, 3)}
    ap = average_precision(y, clean)
    print(f"clean AP {ap:.4f}; {len(fraud)} test frauds: "
          + ", ".join(f"{name} {int(m.sum())}" for name, m in groups.items()))
    out: dict[str, Any] = {"clean_ap": round(ap, 4), "frauds": {k: int(m.sum()) for k, m in groups.items()}}
    for name, threat_settings in attacker_subsets(settings.threat_model).items():
        threat = build_threat_model(threat_settings, bundle.standardizer)
        x_adv = masked_pgd(make_art_classifier(bundle.module, x.shape[1]), x[fraud], y[fraud], threat,
                           threat.epsilon, threat.eps_step, threat.pgd_iterations)
        attacked = bundle.predict_proba_standardized(x_adv)
        scores = clean.copy()
        scores[fraud] = attacked
        row = {"robust_ap": round(average_precision(y, scores), 4)}
        for group, mask in groups.items():
            only = clean.copy()
            only[fraud[mask]] = attacked[mask]
            row[f"only {group}"] = round(average_precision(y, only), 4)
        out[name] = row
        print(f"  {name:24s} robust AP {row['robust_ap']:.4f} (ratio {row['robust_ap'] / ap:.3f}); "
              + ", ".join(f"{k} attacked: {v:.4f}" for k, v in row.items() if k != "robust_ap"), flush=True)
    print_bench_json({args.world: out})


if __name__ == "__main__":
    main()
