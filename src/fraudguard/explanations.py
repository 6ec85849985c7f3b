"""Per-feature attributions of a model's fraud probability, and how much of them the attacker controls.

Integrated gradients (Captum) on P(fraud) = softmax(module(x))[1], in standardized input space, from the
baseline x = 0: the training mean of every feature. Attributions add up to P(fraud | x) - P(fraud | mean)
(completeness; `delta` is how far the numerical integral is from it). Why Captum and not shap:
docs/serving.md, "Explanations".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from fraudguard.model import ModelBundle

METHOD = "integrated_gradients"
BASELINE = "the training mean of every feature (0 in standardized space)"
_INTERNAL_BATCH = 16_384  # rows x steps evaluated at once: bounds memory when many rows are explained


@dataclass(frozen=True)
class Attributions:
    """Attributions of N rows: values (N, F) in probability units, per standardized feature."""

    features: tuple[str, ...]
    values: np.ndarray
    probability: np.ndarray
    baseline_probability: float
    delta: np.ndarray

    def row(self, i: int) -> dict[str, float]:
        return {name: float(v) for name, v in zip(self.features, self.values[i])}


def explain_standardized(bundle: "ModelBundle", x: np.ndarray, steps: int) -> Attributions:
    """Integrated-gradients attributions of P(fraud) for standardized rows `x` (N, F), from the zero baseline."""
    import torch
    from captum.attr import IntegratedGradients

    module = bundle.module.eval()

    def fraud_probability(inputs: torch.Tensor) -> torch.Tensor:
        return torch.softmax(module(inputs), dim=1)[:, 1]

    inputs = torch.as_tensor(np.asarray(x, dtype=np.float32))
    baseline = torch.zeros_like(inputs)
    values, delta = IntegratedGradients(fraud_probability).attribute(
        inputs, baselines=baseline, n_steps=steps, internal_batch_size=_INTERNAL_BATCH,
        return_convergence_delta=True)
    with torch.no_grad():
        probability = fraud_probability(inputs).double().numpy()
        base = float(fraud_probability(baseline[:1]).item())
    return Attributions(tuple(bundle.features), values.detach().double().numpy(), probability, base,
                        delta.detach().double().numpy())


def controlled_share(attributions: Attributions, controlled: Iterable[str]) -> np.ndarray:
    """Per row: the share of the attributions' total magnitude that falls on the `controlled` features."""
    mask = np.isin(np.asarray(attributions.features), list(controlled))
    magnitude = np.abs(attributions.values)
    total = magnitude.sum(axis=1)
    return np.divide(magnitude[:, mask].sum(axis=1), total, out=np.zeros_like(total), where=total > 0)


@dataclass(frozen=True)
class ControlledAttribution:
    """The attacker-controlled share of the attributions of flagged live traffic vs flagged training rows."""

    live_share: float
    reference_share: float
    n_live: int
    n_reference: int
    reference_rows: str  # which training rows were explained
    margin: float

    @property
    def alert(self) -> bool:
        return self.n_live > 0 and self.live_share > self.reference_share + self.margin


def _sample(frame: "pd.DataFrame", max_rows: int, seed: int) -> "pd.DataFrame":
    return frame if len(frame) <= max_rows else frame.sample(n=max_rows, random_state=seed)


def compare_controlled_attribution(bundle: "ModelBundle", reference: "pd.DataFrame", live_flagged: "pd.DataFrame",
                                   controlled: Iterable[str], margin: float, max_rows: int, steps: int,
                                   seed: int = 0) -> ControlledAttribution:
    """Mean controlled share over flagged live rows against the same over the reference rows the bundle flags.

    When the bundle flags none of the reference, its top-scored 1% (at least 10 rows) stand in for them.
    At most `max_rows` rows of each side are explained (a seeded sample).
    """
    controlled = list(controlled)
    scores = bundle.predict_proba(reference)
    flagged = reference[scores >= bundle.threshold]
    rows = "flagged at the operating threshold"
    if flagged.empty:
        k = min(len(reference), max(10, len(reference) // 100))
        flagged = reference.iloc[np.argsort(-scores, kind="stable")[:k]]
        rows = f"none flagged: the top {k} by score"
    ref = controlled_share(explain_standardized(bundle, bundle.standardizer.transform(
        _sample(flagged, max_rows, seed)), steps), controlled)
    if live_flagged.empty:
        live_share, n_live = float("nan"), 0
    else:
        live = controlled_share(explain_standardized(bundle, bundle.standardizer.transform(
            _sample(live_flagged, max_rows, seed)), steps), controlled)
        live_share, n_live = float(live.mean()), len(live)
    return ControlledAttribution(live_share, float(ref.mean()), n_live, len(ref), rows, margin)
