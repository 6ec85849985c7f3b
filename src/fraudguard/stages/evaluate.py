"""DVC stage `evaluate`: score the trained model on the test split; write metrics and PR-curve plots.

Reads models/model.pt, models/preprocess.json and data/features/test.parquet; writes
models/evaluation.json, models/plots/pr_curve.json (for `dvc plots`) and models/plots/pr_curve.png.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fraudguard.files import write_json
from fraudguard.paths import ProjectPaths

logger = logging.getLogger(__name__)

PR_CURVE_MAX_POINTS = 200


def pr_curve_json_path(paths: ProjectPaths) -> Path:
    return paths.plots_dir / "pr_curve.json"


def pr_curve_png_path(paths: ProjectPaths) -> Path:
    return paths.plots_dir / "pr_curve.png"


def write_pr_curve_png(points: list[dict[str, float]], average_precision: float, path: Path) -> None:
    """Draw the precision-recall curve to a PNG (matplotlib object API: no display, no pyplot state)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4))
    ax = fig.subplots()
    ax.step([p["recall"] for p in points], [p["precision"] for p in points], where="post")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Precision-recall on the test split (AP {average_precision:.3f})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def run_evaluate(paths: ProjectPaths) -> dict[str, float]:
    """Evaluate the model under `paths` on its test split and write the stage outputs; returns the metrics."""
    import pandas as pd
    import torch

    from fraudguard.config import load_settings
    from fraudguard.data.schema import TX_FRAUD
    from fraudguard.errors import DataError
    from fraudguard.evaluation import evaluate_bundle, pr_curve_points
    from fraudguard.model import load_bundle

    settings = load_settings(paths.params)
    torch.set_num_threads(settings.train.torch_threads)
    bundle = load_bundle(paths.model_weights, paths.preprocess)
    if not paths.test_features.is_file():
        raise DataError(f"{paths.test_features}: test features not found; run the featurize stage first")
    test = pd.read_parquet(paths.test_features)
    if TX_FRAUD not in test.columns:
        raise DataError(f"{paths.test_features}: lacks the label column {TX_FRAUD}")
    n_fraud = int(test[TX_FRAUD].sum())
    if n_fraud == 0 or n_fraud == len(test):
        raise DataError(
            f"{paths.test_features}: {n_fraud} fraud rows of {len(test)}; evaluation needs both classes "
            "(enlarge simulate.n_customers or featurize.test_days)"
        )

    metrics = evaluate_bundle(bundle, test, settings)
    points = pr_curve_points(test[TX_FRAUD].to_numpy(), bundle.predict_proba(test), PR_CURVE_MAX_POINTS)

    paths.plots_dir.mkdir(parents=True, exist_ok=True)
    write_json(paths.evaluation, metrics, sort_keys=True)
    write_json(pr_curve_json_path(paths), points, indent=1)
    write_pr_curve_png(points, metrics["average_precision"], pr_curve_png_path(paths))
    logger.info("wrote %s, %s and %s", paths.evaluation, pr_curve_json_path(paths), pr_curve_png_path(paths))
    return metrics


def main() -> None:
    from fraudguard.logs import configure_logging

    configure_logging()
    run_evaluate(ProjectPaths.at("."))


if __name__ == "__main__":
    main()
