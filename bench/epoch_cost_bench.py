"""Epoch cost of a training recipe on a world: seconds of an augmented and of a clean epoch, and their ratio.

    python bench/epoch_cost_bench.py [--world handbook] [--epochs 2] [-S train.adversarial.classes=both ...]

The world is model_quality_bench's (params.yaml, plus the handbook profile for `handbook`, plus the -S
overrides), simulated, featurized and split in memory; train_model then runs `--epochs` augmented and as many
clean epochs on its training split, and the epochs' own seconds (the training history) are printed. Issue 10
§6's targets are for the handbook world: an augmented epoch <= 5 s on 2 cores, augmented / clean <= 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_project import print_bench_json  # noqa: E402
from model_quality_bench import parse_set_options, world_settings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", choices=("default", "handbook"), default="handbook")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[],
                        help="params override dotted.key=YAML value")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from fraudguard.data.simulator import simulate_transactions
    from fraudguard.features import compute_features, plan_split, split_train_test
    from fraudguard.training import train_model

    overrides = parse_set_options(parser, args.overrides)
    overrides["train.epochs"] = args.epochs
    settings = world_settings(args.world, 1.0, overrides)
    features = compute_features(simulate_transactions(settings.simulate), settings.featurize)
    train, _ = split_train_test(features, settings.featurize, plan_split(features, settings.featurize))
    seconds = {}
    for adversarial in (True, False):
        history = train_model(train, settings, adversarial=adversarial, progress=False).history
        seconds[adversarial] = float(np.mean([h["seconds"] for h in history]))
        print(f"{'augmented' if adversarial else 'clean'} epochs: "
              + ", ".join(f"{h['seconds']:.2f} s ({h['adversarial_seconds']:.2f} s crafting)" for h in history))
    ratio = seconds[True] / seconds[False]
    print(f"{args.world}: {len(train):,} training rows; augmented {seconds[True]:.2f} s, clean {seconds[False]:.2f} s "
          f"an epoch, ratio {ratio:.2f}")
    print_bench_json({"world": args.world, "augmented_s": round(seconds[True], 2),
                      "clean_s": round(seconds[False], 2), "ratio": round(ratio, 2)})


if __name__ == "__main__":
    main()
