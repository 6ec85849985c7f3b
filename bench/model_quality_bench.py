"""Model quality: the champion MLP against a logistic regression, same split, same features, same metrics.

    python bench/model_quality_bench.py [--worlds default handbook] [--scale 0.25] [-S train.epochs=40] [--write]

For each world (default: params.yaml; handbook: params.handbook.yaml merged over it, its customer and terminal
counts and card_precision_k times --scale), simulated and featurized in memory and split by the featurize
section's calendar split:
  MLP  train_model with the params' train section (the champion's recipe: adversarial augmentation included);
  LR   sklearn LogisticRegression, class-balanced, on the same standardized features (training_bench's
       logistic_bundle: a 2-logit linear module, so the same attacks apply).
Both are scored by evaluate_bundle on the test split: ROC AUC, AP, CP@k, recall at the FPR of
evaluate.fpr_for_recall, robust AP (masked PGD of the test frauds at the threat model's budget).
Targets (issue #10): MLP AUC and AP >= LR's; MLP robust AP >= 0.95 x its clean AP.
--write puts the table, the command and the date into bench/results.md (its model-quality section).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_project import ROOT, print_bench_json  # noqa: E402
from handbook_bench import scaled_profile  # noqa: E402
from training_bench import logistic_bundle  # noqa: E402

RESULTS_MD = Path(__file__).resolve().parent / "results.md"
SECTION = "model-quality"
COLUMNS = (("roc_auc", "ROC AUC"), ("average_precision", "AP"), ("card_precision_at_k", "CP@k"),
           ("recall_at_fpr", "recall@FPR"), ("robust_average_precision", "robust AP"))


def world_settings(world: str, scale: float, overrides: dict[str, Any]):
    """Typed settings of a world: params.yaml, plus the scaled handbook profile for `handbook`, plus overrides."""
    from fraudguard.ci_report import merge_ci_profile
    from fraudguard.config import merge_overrides, parse_settings

    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    if world == "handbook":
        merge_ci_profile(params, scaled_profile(scale), source="params.handbook.yaml")  # refuses unknown keys
        params = merge_overrides(params, scaled_profile(scale))
    return parse_settings(merge_overrides(params, overrides) if overrides else params, source=f"{world} world")


def compare_on_world(world: str, scale: float, overrides: dict[str, Any]) -> dict[str, Any]:
    """Simulate, featurize and split the world; train the MLP and the LR; score both on the test split."""
    from fraudguard.data.simulator import simulate_transactions
    from fraudguard.evaluation import evaluate_bundle
    from fraudguard.features import compute_features, plan_split, split_train_test
    from fraudguard.training import train_model

    settings = world_settings(world, scale, overrides)
    features = compute_features(simulate_transactions(settings.simulate), settings.featurize)
    train, test = split_train_test(features, settings.featurize, plan_split(features, settings.featurize))
    start = time.perf_counter()
    mlp = train_model(train, settings, progress=False)
    mlp_s = time.perf_counter() - start
    lr_bundle, lr_s = logistic_bundle(train, settings)
    out: dict[str, Any] = {
        "world": world, "scale": scale if world == "handbook" else 1.0,
        "train_rows": len(train), "test_rows": len(test), "test_frauds": int(test["TX_FRAUD"].sum()),
        "k": settings.evaluate.card_precision_k, "fpr": settings.evaluate.fpr_for_recall,
        "epsilon": settings.threat_model.epsilon, "epochs_run": len(mlp.history),
        "best_epoch": mlp.extra.get("best_epoch"), "mlp_fit_s": round(mlp_s, 1), "lr_fit_s": round(lr_s, 1),
        "mlp": evaluate_bundle(mlp.bundle, test, settings.evaluate, settings.threat_model),
        "lr": evaluate_bundle(lr_bundle, test, settings.evaluate, settings.threat_model),
    }
    mlp_m, lr_m = out["mlp"], out["lr"]
    out["targets"] = {
        "mlp_auc_ge_lr": mlp_m["roc_auc"] >= lr_m["roc_auc"],
        "mlp_ap_ge_lr": mlp_m["average_precision"] >= lr_m["average_precision"],
        "mlp_robust_ap_ge_95pct_clean": mlp_m["robust_average_precision"] >= 0.95 * mlp_m["average_precision"],
    }
    return out


def render_table(results: list[dict[str, Any]]) -> str:
    """Markdown: one row per world and model, the five metrics, then the target verdicts."""
    lines = ["| World | Model | " + " | ".join(label for _, label in COLUMNS) + " |",
             "|---|---|" + "---|" * len(COLUMNS)]
    for r in results:
        where = (f"{r['world']} (scale {r['scale']:g}; train {r['train_rows']:,} rows, test {r['test_rows']:,} "
                 f"rows / {r['test_frauds']} frauds; k={r['k']}, FPR {r['fpr']:g}, eps {r['epsilon']:g})")
        for model, label in (("mlp", f"MLP ({r['epochs_run']} epochs"
                               + (f", best {r['best_epoch']}" if r["best_epoch"] else "") + ")"),
                             ("lr", "logistic regression")):
            values = " | ".join(f"{r[model][key]:.3f}" for key, _ in COLUMNS)
            lines.append(f"| {where} | {label} | {values} |")
            where = ""
    lines.append("")
    for r in results:
        verdicts = ", ".join(f"{name}: {'met' if ok else 'NOT met'}" for name, ok in r["targets"].items())
        lines.append(f"- {r['world']}: {verdicts}")
    return "\n".join(lines)


def write_results_section(table: str, command: str, overrides: dict[str, Any], worlds: list[str],
                          scale: float) -> None:
    """Replace (or append) this run's model-quality section of bench/results.md (one per set of worlds,
    scale and overrides), leaving the rest as it is."""
    parts = [*worlds, f"scale-{scale:g}", *(f"{k}-{v}" for k, v in sorted(overrides.items()))]
    name = SECTION + "".join("-" + re.sub(r"[^\w]+", "-", part) for part in parts)
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    title = "params.yaml" + (" with " + ", ".join(f"{k}={v}" for k, v in overrides.items()) if overrides else "")
    section = (f"{start}\n## Model quality: MLP vs logistic regression ({title})\n\n"
               f"`{command}` on {dt.date.today().isoformat()} (cores usable: {len(os.sched_getaffinity(0))}, "
               f"load avg {os.getloadavg()[0]:.1f}).\n\n{table}\n{end}\n")
    text = RESULTS_MD.read_text(encoding="utf-8") if RESULTS_MD.is_file() else ""
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end) + r"\n?", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else (text + ("\n" if text else "") + section)
    RESULTS_MD.write_text(text, encoding="utf-8")


def parse_set_options(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, Any]:
    """`-S dotted.key=YAML value` options as an overrides mapping; a malformed one is a usage error."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r}: expected dotted.key=value")
        overrides[key] = yaml.safe_load(value)
    return overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", nargs="+", choices=("default", "handbook"), default=["default", "handbook"])
    parser.add_argument("--scale", type=float, default=1.0, help="handbook world size relative to the handbook's")
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[],
                        help="params override dotted.key=YAML value, for both worlds (e.g. -S train.epochs=40)")
    parser.add_argument("--write", action="store_true", help="update the model-quality section of bench/results.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    overrides = parse_set_options(parser, args.overrides)

    results = []
    for world in args.worlds:
        start = time.perf_counter()
        results.append(compare_on_world(world, args.scale, overrides))
        print(f"{world}: done in {time.perf_counter() - start:.0f} s", flush=True)
    table = render_table(results)
    print(table)
    if args.write:
        write_results_section(table, "python bench/model_quality_bench.py " + " ".join(sys.argv[1:]), overrides,
                              args.worlds, args.scale)
        print(f"wrote {RESULTS_MD}")
    print_bench_json({r["world"]: {"mlp": {k: round(r["mlp"][k], 4) for k, _ in COLUMNS},
                                   "lr": {k: round(r["lr"][k], 4) for k, _ in COLUMNS},
                                   "targets_met": r["targets"], "scale": r["scale"]} for r in results})


if __name__ == "__main__":
    main()
