"""Training benchmark: cost of adversarial augmentation, and what it buys.

Prints seconds per clean and per augmented epoch and their ratio; then AP, card precision@k and robust AP
(AP after masked PGD of the test frauds at the threat model's budget) of the undefended MLP, the
adversarially augmented MLP, and a logistic-regression baseline, all on the same time-ordered split.

Data: data/features/{train,test}.parquet when the featurize stage has run, else the params.yaml world
simulated and featurized in memory.

    .venv/bin/python bench/training_bench.py [--params params.yaml] [--epochs N] [--attack pgd]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fraudguard.config import Settings, load_settings
from fraudguard.data.schema import TX_FRAUD
from fraudguard.model import ModelBundle, Standardizer
from fraudguard.paths import ProjectPaths

logger = logging.getLogger("training_bench")


def load_split(settings: Settings, paths: ProjectPaths) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """The featurize stage's split if present, else the params world simulated in memory."""
    if paths.train_features.is_file() and paths.test_features.is_file():
        from fraudguard.data.io import read_transactions

        return read_transactions(paths.train_features), read_transactions(paths.test_features), "data/features"
    from fraudguard.data.simulator import simulate_transactions
    from fraudguard.features import compute_features, split_train_test

    features = compute_features(simulate_transactions(settings.simulate), settings.featurize)
    train, test = split_train_test(features, settings.featurize)
    return train, test, "simulated (params.yaml simulate section)"


def logistic_bundle(train: pd.DataFrame, settings: Settings) -> tuple[ModelBundle, float]:
    """A class-balanced logistic regression, expressed as a 2-logit linear module so that the same
    attacks and metrics apply to it; returns the bundle and its fit seconds."""
    from sklearn.linear_model import LogisticRegression

    standardizer = Standardizer.fit(train, settings.model.features)
    start = time.perf_counter()
    lr = LogisticRegression(class_weight="balanced", max_iter=2000)
    lr.fit(standardizer.transform(train), train[TX_FRAUD].to_numpy().astype(int))
    seconds = time.perf_counter() - start
    linear = torch.nn.Linear(len(standardizer.features), 2)
    with torch.no_grad():
        # softmax([0, w.x + b])[1] = sigmoid(w.x + b): exactly the regression's probability.
        linear.weight.zero_()
        linear.bias.zero_()
        linear.weight[1] = torch.from_numpy(lr.coef_[0].astype(np.float32))
        linear.bias[1] = float(lr.intercept_[0])
    bundle = ModelBundle(module=linear, standardizer=standardizer, hidden_sizes=(), dropout=0.0, threshold=0.5)
    return bundle, seconds


def score(bundle: ModelBundle, test: pd.DataFrame, settings: Settings) -> dict[str, float]:
    from fraudguard.evaluation import average_precision, card_precision_at_k, robust_average_precision
    from fraudguard.threat import build_threat_model

    y = test[TX_FRAUD].to_numpy().astype(int)
    scores = bundle.predict_proba(test)
    threat = build_threat_model(settings.threat_model, bundle.standardizer)
    return {
        "ap": average_precision(y, scores),
        "cp_at_k": card_precision_at_k(test, scores, settings.evaluate.card_precision_k),
        "robust_ap": robust_average_precision(bundle, test, threat),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    parser.add_argument("--attack", default=None, help="override train.adversarial.attack")
    parser.add_argument("--threads", type=int, default=None, help="override train.torch_threads")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)

    overrides: dict = {}
    if args.epochs:
        overrides["train.epochs"] = args.epochs
    if args.attack:
        overrides.setdefault("train", {})["adversarial"] = {"attack": args.attack}
    if args.threads:
        overrides.setdefault("train", {})["torch_threads"] = args.threads
    settings = load_settings(args.params, overrides=overrides or None)
    paths = ProjectPaths.at(Path(args.params).resolve().parent)

    from fraudguard.training import train_model

    train, test, source = load_split(settings, paths)
    print(f"data: {source}; train {len(train)} rows (fraud rate {train[TX_FRAUD].mean():.4f}), "
          f"test {len(test)} rows (fraud rate {test[TX_FRAUD].mean():.4f})")
    cfg = settings.train
    print(f"MLP {settings.model.hidden_sizes}, {cfg.epochs} epochs, batch {cfg.batch_size}, "
          f"{cfg.torch_threads} torch thread(s); augmentation {cfg.adversarial.attack}, ratio "
          f"{cfg.adversarial.ratio}, eps {settings.threat_model.epsilon}")

    clean = train_model(train, settings, adversarial=False, progress=False)
    augmented = train_model(train, settings, adversarial=True, progress=False)
    lr_bundle, lr_seconds = logistic_bundle(train, settings)

    # The first epoch carries one-off warm-up costs; the median is the steady-state figure.
    clean_s = float(np.median([h["seconds"] for h in clean.history]))
    aug_s = float(np.median([h["seconds"] for h in augmented.history]))
    craft_s = float(np.median([h["adversarial_seconds"] for h in augmented.history]))
    print()
    print(f"seconds per clean epoch      {clean_s:8.3f}")
    print(f"seconds per augmented epoch  {aug_s:8.3f}  (of which crafting adversarial rows {craft_s:.3f})")
    print(f"augmented / clean            {aug_s / clean_s:8.2f}x")
    print(f"logistic regression fit      {lr_seconds:8.3f} s (whole fit)")
    print()
    k = settings.evaluate.card_precision_k
    scores: dict[str, dict] = {}
    print(f"{'model':<36}{'AP':>8}{f'CP@{k}':>9}{'robust AP':>11}")
    for name, bundle in (
        ("logistic regression", lr_bundle),
        ("MLP undefended", clean.bundle),
        (f"MLP augmented ({cfg.adversarial.attack})", augmented.bundle),
    ):
        m = score(bundle, test, settings)
        print(f"{name:<36}{m['ap']:8.3f}{m['cp_at_k']:9.3f}{m['robust_ap']:11.3f}")
        scores[name] = {key: round(float(value), 4) for key, value in m.items()}

    print("BENCH_JSON " + json.dumps({
        "seconds_per_clean_epoch": round(clean_s, 4), "seconds_per_augmented_epoch": round(aug_s, 4),
        "crafting_seconds_per_epoch": round(craft_s, 4), "ratio_augmented_vs_clean": round(aug_s / clean_s, 3),
        "logistic_fit_s": round(lr_seconds, 4), "scores": scores,
    }))


if __name__ == "__main__":
    main()
