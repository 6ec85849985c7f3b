"""Model evaluation: ranking metrics, the handbook's card precision@k, and robust AP under attack.

Metrics take plain arrays (or a frame with the raw schema columns) and return floats; `evaluate_bundle`
scores a model bundle on a test split and returns every metric the `evaluate` stage records.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from fraudguard.data.schema import CUSTOMER_ID, TX_DATETIME, TX_FRAUD
from fraudguard.errors import DataError

if TYPE_CHECKING:
    from fraudguard.config import EvaluateSettings, ThreatModelSettings
    from fraudguard.model import ModelBundle
    from fraudguard.threat import ThreatModel

logger = logging.getLogger(__name__)

# Column used internally to carry scores through the per-day grouping of card_precision_at_k.
_SCORE = "_score"


def _check_binary(y: np.ndarray, scores: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(int).ravel()
    scores = np.asarray(scores, dtype=float).ravel()
    if y.shape != scores.shape:
        raise DataError(f"{metric}: {y.size} labels but {scores.size} scores")
    if not np.isin(y, (0, 1)).all():
        raise DataError(f"{metric}: labels must be 0/1, got values {sorted(set(np.unique(y)) - {0, 1})}")
    if np.isnan(scores).any():
        raise DataError(f"{metric}: {int(np.isnan(scores).sum())} scores are NaN")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise DataError(
            f"{metric}: needs both classes, got {n_pos} fraud and {y.size - n_pos} legitimate rows"
        )
    return y, scores


def average_precision(y: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve (sklearn's step-wise average precision)."""
    from sklearn.metrics import average_precision_score

    y, scores = _check_binary(y, scores, "average_precision")
    return float(average_precision_score(y, scores))


def roc_auc(y: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve."""
    from sklearn.metrics import roc_auc_score

    y, scores = _check_binary(y, scores, "roc_auc")
    return float(roc_auc_score(y, scores))


def recall_at_fpr(y: np.ndarray, scores: np.ndarray, fpr: float) -> float:
    """Best recall (TPR) reachable by a threshold whose false-positive rate is at most `fpr`."""
    from sklearn.metrics import roc_curve

    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"recall_at_fpr: fpr must be in [0, 1], got {fpr}")
    y, scores = _check_binary(y, scores, "recall_at_fpr")
    fprs, tprs, _ = roc_curve(y, scores, drop_intermediate=False)
    # roc_curve starts at (0, 0), so at least one point qualifies.
    return float(tprs[fprs <= fpr + 1e-12].max())


def card_precision_at_k(frame: pd.DataFrame, scores: np.ndarray, k: int) -> float:
    """The Fraud Detection Handbook's card precision top-k, averaged over the days of `frame`.

    Each day, every card (CUSTOMER_ID) gets its highest score and its worst label that day; precision
    is the share of the k highest-scored cards that are compromised (divided by k even on a day with
    fewer cards, as in the handbook). Cards detected as compromised (in the top k with a fraud) are
    removed from the following days, as investigators would have blocked them.
    """
    if k <= 0:
        raise ValueError(f"card_precision_at_k: k must be positive, got {k}")
    missing = [c for c in (TX_DATETIME, CUSTOMER_ID, TX_FRAUD) if c not in frame.columns]
    if missing:
        raise DataError(f"card_precision_at_k: frame lacks column(s) {missing}")
    scores = np.asarray(scores, dtype=float).ravel()
    if scores.size != len(frame):
        raise DataError(f"card_precision_at_k: {len(frame)} rows but {scores.size} scores")
    if len(frame) == 0:
        raise DataError("card_precision_at_k: empty frame")

    data = pd.DataFrame(
        {
            "day": pd.to_datetime(frame[TX_DATETIME]).dt.normalize().to_numpy(),
            CUSTOMER_ID: frame[CUSTOMER_ID].to_numpy(),
            TX_FRAUD: frame[TX_FRAUD].to_numpy().astype(int),
            _SCORE: scores,
        }
    )
    per_card_day = data.groupby(["day", CUSTOMER_ID], sort=True).agg(
        score=(_SCORE, "max"), fraud=(TX_FRAUD, "max")
    )
    detected: set = set()
    precisions = []
    # A loop per day (tens of days), each a vectorised top-k, is what the handbook's definition needs:
    # day d's candidates depend on the cards detected on days before d.
    for _, day_cards in per_card_day.groupby(level="day", sort=True):
        cards = day_cards.droplevel("day")
        if detected:
            cards = cards[~cards.index.isin(list(detected))]
        top = cards.sort_values("score", ascending=False, kind="mergesort").head(k)
        hits = top.index[top["fraud"].to_numpy() == 1]
        precisions.append(len(hits) / k)
        detected.update(hits.tolist())
    return float(np.mean(precisions))


def pr_curve_points(y: np.ndarray, scores: np.ndarray, max_points: int = 200) -> list[dict[str, float]]:
    """Precision-recall curve as [{recall, precision}], ordered by recall, thinned to <= max_points."""
    from sklearn.metrics import precision_recall_curve

    if max_points < 2:
        raise ValueError(f"pr_curve_points: max_points must be >= 2, got {max_points}")
    y, scores = _check_binary(y, scores, "pr_curve_points")
    precision, recall, _ = precision_recall_curve(y, scores)
    order = np.argsort(recall, kind="mergesort")
    precision, recall = precision[order], recall[order]
    if recall.size > max_points:
        keep = np.unique(np.linspace(0, recall.size - 1, max_points).round().astype(int))
        precision, recall = precision[keep], recall[keep]
    return [{"recall": float(r), "precision": float(p)} for r, p in zip(recall, precision)]


def _labels(frame: pd.DataFrame, where: str) -> np.ndarray:
    if TX_FRAUD not in frame.columns:
        raise DataError(f"{where}: frame lacks the label column {TX_FRAUD}")
    return frame[TX_FRAUD].to_numpy().astype(int)


def robust_average_precision(
    bundle: "ModelBundle",
    frame: pd.DataFrame,
    threat: "ThreatModel",
    *,
    eps: float | None = None,
    eps_step: float | None = None,
    max_iter: int | None = None,
    batch_size: int = 1024,
) -> float:
    """AP after a masked PGD attack (inside the threat model, budget `eps`) on the fraud rows only.

    Legitimate rows keep their clean scores: the adversary is the fraudster, who wants to pass as
    legitimate. Defaults come from the threat model (epsilon, eps_step, pgd_iterations).
    """
    from fraudguard.attacks import make_art_classifier, masked_pgd

    y = _labels(frame, "robust_average_precision")
    x = bundle.standardizer.transform(frame)
    fraud = np.flatnonzero(y == 1)
    scores = bundle.predict_proba_standardized(x)
    if fraud.size:
        classifier = make_art_classifier(bundle.module, x.shape[1])
        x_adv = masked_pgd(
            classifier,
            x[fraud],
            y[fraud],
            threat,
            eps=threat.epsilon if eps is None else eps,
            eps_step=threat.eps_step if eps_step is None else eps_step,
            max_iter=threat.pgd_iterations if max_iter is None else max_iter,
            batch_size=batch_size,
        )
        scores = scores.copy()
        scores[fraud] = bundle.predict_proba_standardized(x_adv)
    return average_precision(y, scores)


def ranking_metrics(
    y: np.ndarray, scores: np.ndarray, frame: pd.DataFrame, evaluate: "EvaluateSettings"
) -> dict[str, float]:
    """The clean (no attack) metrics: roc_auc, average_precision, card_precision_at_k, recall_at_fpr."""
    return {
        "roc_auc": roc_auc(y, scores),
        "average_precision": average_precision(y, scores),
        "card_precision_at_k": card_precision_at_k(frame, scores, evaluate.card_precision_k),
        "recall_at_fpr": recall_at_fpr(y, scores, evaluate.fpr_for_recall),
    }


def evaluate_bundle(bundle: "ModelBundle", test_frame: pd.DataFrame, evaluate: "EvaluateSettings",
                    threat_model: "ThreatModelSettings") -> dict[str, float]:
    """Every evaluation metric of `bundle` on `test_frame` (params: `evaluate`), robust AP at the budget of
    `threat_model` included."""
    from fraudguard.threat import build_threat_model

    y = _labels(test_frame, "evaluate_bundle")
    scores = bundle.predict_proba(test_frame)
    metrics = ranking_metrics(y, scores, test_frame, evaluate)
    threat = build_threat_model(threat_model, bundle.standardizer)
    metrics["robust_average_precision"] = robust_average_precision(bundle, test_frame, threat)
    metrics["fraud_rate"] = float(y.mean())
    metrics["n_rows"] = float(len(test_frame))
    logger.info(
        "evaluated %d rows: AP %.3f, robust AP %.3f, CP@%d %.3f",
        len(test_frame), metrics["average_precision"], metrics["robust_average_precision"],
        evaluate.card_precision_k, metrics["card_precision_at_k"],
    )
    return metrics
