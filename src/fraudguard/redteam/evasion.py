"""What the evasion attacks share: the detected test frauds they attack (the robustness gate's sample:
gates.robustness.max_attack_rows, seeded) inside the threat model, and how a result is judged: caught when
robust recall (attacked frauds still flagged) is at least the gate's floor, gates.robustness.min_robust_recall."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fraudguard.data.schema import TX_FRAUD
from fraudguard.redteam.base import CAUGHT_ROBUST, AttackResult, RedTeamContext

if TYPE_CHECKING:
    from art.estimators.classification import PyTorchClassifier

    from fraudguard.threat import ThreatModel

KIND = "evasion"
METRIC = "robust recall (detected frauds still flagged)"


@dataclass(frozen=True)
class EvasionTargets:
    """Standardized rows of the detected test frauds to attack, the threat model, an ART classifier."""

    x: np.ndarray
    threat: "ThreatModel"
    classifier: "PyTorchClassifier"
    n_fraud: int
    n_detected: int


def detected_frauds(ctx: RedTeamContext) -> EvasionTargets:
    """The target's detected test frauds, a seeded sample of at most gates.robustness.max_attack_rows."""
    from fraudguard.attacks import make_art_classifier
    from fraudguard.threat import build_threat_model

    bundle = ctx.target
    gate = ctx.settings.gates.robustness
    threat = build_threat_model(ctx.settings.threat_model, bundle.standardizer)
    x = bundle.standardizer.transform(ctx.test)
    fraud = np.flatnonzero(ctx.test[TX_FRAUD].to_numpy() == 1)
    detected = fraud[bundle.predict_proba_standardized(x[fraud]) >= bundle.threshold]
    if detected.size > gate.max_attack_rows:
        rng = np.random.default_rng(gate.seed)
        detected = np.sort(rng.choice(detected, gate.max_attack_rows, replace=False))
    return EvasionTargets(x=x[detected], threat=threat, classifier=make_art_classifier(bundle.module, x.shape[1]),
                          n_fraud=len(fraud), n_detected=len(detected))


def still_flagged(ctx: RedTeamContext, threat: "ThreatModel", x_adv: np.ndarray, x_orig: np.ndarray,
                  eps: float) -> np.ndarray:
    """Whether each attacked row is still flagged, after projecting it onto the threat model (whatever the
    attack returned, only points the attacker can reach count)."""
    x_adv = threat.project(x_adv, x_orig, eps)
    return ctx.target.predict_proba_standardized(x_adv) >= ctx.target.threshold


def evasion_result(ctx: RedTeamContext, name: str, flagged: np.ndarray, eps: float, description: str) -> AttackResult:
    """The scorecard row: robust recall against the robustness gate's floor."""
    floor = ctx.settings.gates.robustness.min_robust_recall
    n = int(flagged.size)
    recall = float(flagged.mean()) if n else float("nan")
    caught = (f"{CAUGHT_ROBUST}: robust recall {recall:.3f} >= floor {floor:g}",) if n and recall >= floor else ()
    summary = (f"{description} at epsilon {eps:g} on {n} detected frauds: {int(flagged.sum())} still flagged"
               if n else f"{description}: the target detects no test fraud, nothing to attack")
    return AttackResult(name, KIND, caught, METRIC, 1.0, recall, summary,
                        {"n_attacked": n, "n_still_flagged": int(flagged.sum()), "epsilon": eps,
                         "min_robust_recall": floor})
