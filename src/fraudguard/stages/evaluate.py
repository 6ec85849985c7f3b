"""DVC stage `evaluate`: score the trained model on the test split; write metrics and PR-curve plots.

Reads models/model.pt, models/preprocess.json and data/features/test.parquet; writes
models/evaluation.json, models/plots/pr_curve.json (for `dvc plots`) and models/plots/pr_curve.png.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from fraudguard.config import EvaluateSettings, Settings, ThreatModelSettings, params_key, section_keys, select_section
from fraudguard.errors import DataError
from fraudguard.files import write_json
from fraudguard.paths import ProjectPaths
from fraudguard.stages import stage_main

logger = logging.getLogger(__name__)

PR_CURVE_MAX_POINTS = 200


@dataclass(frozen=True)
class EvaluateSection:
    """What the evaluate stage reads from params.yaml, field for field its dvc.yaml `params:`."""

    evaluate: EvaluateSettings
    threat_model: ThreatModelSettings
    # Scoring and the PGD attack run with the training's intra-op thread count.
    torch_threads: int = params_key("train.torch_threads")


PARAMS = section_keys(EvaluateSection)


def section_of(settings: Settings) -> EvaluateSection:
    return select_section(settings, EvaluateSection)


@dataclass(frozen=True)
class EvaluatePaths:
    """The evaluate stage's files: the test features and the bundle in; the metrics and the PR curve out."""

    test_features: Path
    weights: Path
    preprocess: Path
    evaluation: Path
    pr_curve_json: Path
    pr_curve_png: Path

    @classmethod
    def of(cls, project: ProjectPaths) -> "EvaluatePaths":
        return cls(project.test_features, project.model_weights, project.preprocess, project.evaluation,
                   project.pr_curve_json, project.pr_curve_png)


@dataclass(frozen=True)
class EvaluationSummary:
    """evaluation.json's metrics and the (thinned) precision-recall curve plotted."""

    metrics: dict[str, float]
    pr_curve: list[dict[str, float]]


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


def run(paths: EvaluatePaths, section: EvaluateSection) -> EvaluationSummary:
    """Evaluate the model on its test split and write the stage outputs; return the metrics and curve."""
    import pandas as pd
    import torch

    from fraudguard.data.schema import TX_FRAUD
    from fraudguard.evaluation import evaluate_bundle, pr_curve_points
    from fraudguard.model import load_bundle

    torch.set_num_threads(section.torch_threads)
    bundle = load_bundle(paths.weights, paths.preprocess)
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

    metrics = evaluate_bundle(bundle, test, section.evaluate, section.threat_model)
    points = pr_curve_points(test[TX_FRAUD].to_numpy(), bundle.predict_proba(test), PR_CURVE_MAX_POINTS)

    write_json(paths.evaluation, metrics, sort_keys=True)
    write_json(paths.pr_curve_json, points, indent=1)
    write_pr_curve_png(points, metrics["average_precision"], paths.pr_curve_png)
    logger.info("wrote %s, %s and %s", paths.evaluation, paths.pr_curve_json, paths.pr_curve_png)
    return EvaluationSummary(metrics, points)


def main(root: Path | str = ".") -> None:
    """Stage entry point: params.yaml's `evaluate`, `threat_model` and `train.torch_threads`, and the file
    layout of the project at `root`."""
    stage_main(root, lambda project, settings: run(EvaluatePaths.of(project), section_of(settings)))


if __name__ == "__main__":
    main()
