"""Quality gate: absolute metric floors, non-inferiority against the champion on the same test split, and the
operating point: the share of legitimate test payments flagged at the model's own threshold."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from fraudguard.data.schema import TX_FRAUD
from fraudguard.gates.base import GateContext, GateResult, GateSpec, ModelUnderTest, finish_gate

if TYPE_CHECKING:
    from fraudguard.config import QualityGateSettings

logger = logging.getLogger(__name__)

NAME = "quality"
# Metrics the gate judges, with the settings key holding each floor.
_FLOORS = {
    "average_precision": "min_average_precision",
    "card_precision_at_k": "min_card_precision_at_k",
    "recall_at_fpr": "min_recall_at_fpr",
}


def score_quality(candidate: ModelUnderTest, context: GateContext) -> dict[str, float]:
    """Clean ranking metrics of one model on context.test_features (no attack), and its operating point: the
    shares of legitimate and fraudulent test payments its own threshold flags."""
    import numpy as np

    from fraudguard.evaluation import ranking_metrics

    frame = context.test_features
    scores = candidate.bundle.predict_proba(frame)
    y = frame[TX_FRAUD].to_numpy().astype(int)
    metrics = ranking_metrics(y, scores, frame, context.settings.evaluate)
    flagged = np.asarray(scores) >= candidate.bundle.threshold
    metrics["false_positive_rate"] = float(flagged[y == 0].mean()) if (y == 0).any() else float("nan")
    metrics["recall_at_threshold"] = float(flagged[y == 1].mean()) if (y == 1).any() else float("nan")
    return metrics


def run_quality_gate(
    candidate: ModelUnderTest, context: GateContext, settings: "QualityGateSettings"
) -> GateResult:
    """Pass when every judged metric clears its floor and, with a champion, is >= champion - tolerance."""
    measured = score_quality(candidate, context)
    metrics = dict(measured)
    thresholds: dict[str, float] = {}
    failures: list[str] = []

    for metric, key in _FLOORS.items():
        floor = float(getattr(settings, key))
        thresholds[f"{metric}.floor"] = floor
        if measured[metric] < floor:
            failures.append(f"{metric} {measured[metric]:.4f} < floor {floor:.4f}")

    ceiling = float(settings.max_false_positive_rate)
    thresholds["false_positive_rate.ceiling"] = ceiling
    fpr = measured["false_positive_rate"]
    if not fpr <= ceiling:  # NaN (no legitimate test row) fails too
        failures.append(f"false_positive_rate {fpr:.4f} at the model's threshold "
                        f"{candidate.bundle.threshold:.4g} > ceiling {ceiling:.4f}")

    champion_metrics: dict[str, float] | None = None
    if context.champion is not None:
        champion_metrics = score_quality(context.champion, context)
        tolerance = settings.non_inferiority_tolerance
        for metric in _FLOORS:
            bar = champion_metrics[metric] - tolerance
            metrics[f"champion.{metric}"] = champion_metrics[metric]
            thresholds[f"{metric}.non_inferiority"] = bar
            if measured[metric] < bar:
                failures.append(
                    f"{metric} {measured[metric]:.4f} < champion {champion_metrics[metric]:.4f}"
                    f" - tolerance {tolerance:.4f}"
                )

    passed = not failures
    if passed:
        reason = "all quality metrics clear their floors" + (
            " and are non-inferior to the champion" if champion_metrics is not None else " (no champion)"
        )
    else:
        reason = "; ".join(failures)

    report = context.report_dir / "quality.json"
    return finish_gate(NAME, passed, metrics, thresholds, reason, report, {
        "gate": NAME,
        "passed": passed,
        "reason": reason,
        "candidate": measured,
        "champion": champion_metrics,
        "champion_version": context.champion.version if context.champion else None,
        "thresholds": thresholds,
        "n_test_rows": len(context.test_features),
    })


# Heavy imports: scores with the torch model; ranking metrics from scikit-learn.
GATE = GateSpec(NAME, run_quality_gate, heavy_imports=("torch", "sklearn"))
