"""Privacy gate: can an attacker tell the model's training transactions from unseen ones?

ART's black-box membership inference attack (MembershipInferenceBlackBox) is trained on the model's
outputs for half of a sample of members (training split, after the feature warm-up) and non-members
(the newest window of unfiltered traffic after training), then scored on the other half; an attack AUC near 0.5 means the model leaks little about who was in its training data.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from fraudguard.data.schema import TX_FRAUD
from fraudguard.errors import DataError
from fraudguard.gates.base import GateContext, GateResult, GateSpec, ModelUnderTest, finish_gate

if TYPE_CHECKING:
    from fraudguard.config import PrivacyGateSettings
    from fraudguard.model import ModelBundle

logger = logging.getLogger(__name__)

NAME = "privacy"


def _sample(frame: "pd.DataFrame", n: int, rng: np.random.Generator) -> "pd.DataFrame":
    # Random order, not time order: the two halves must come from the same period.
    return frame.iloc[rng.choice(len(frame), n, replace=False)]


def membership_attack_auc(
    bundle: "ModelBundle",
    members: "pd.DataFrame",
    non_members: "pd.DataFrame",
    settings: "PrivacyGateSettings",
) -> dict[str, float]:
    """Attack AUC (and accuracy) of ART's black-box membership inference on held-out halves of the samples."""
    from art.attacks.inference.membership_inference import MembershipInferenceBlackBox
    from sklearn.metrics import roc_auc_score

    from fraudguard.attacks import make_art_classifier, seeded_global_generators

    rng = np.random.default_rng(settings.seed)
    n = min(settings.sample_size, len(members), len(non_members))
    if n < 4:
        raise DataError(
            f"privacy gate: needs >= 4 member and non-member rows, got {len(members)} and {len(non_members)}"
        )
    members, non_members = _sample(members, n, rng), _sample(non_members, n, rng)
    x_in, y_in = bundle.standardizer.transform(members), members[TX_FRAUD].to_numpy().astype(np.int64)
    x_out, y_out = bundle.standardizer.transform(non_members), non_members[TX_FRAUD].to_numpy().astype(np.int64)
    half = n // 2

    classifier = make_art_classifier(bundle.module, x_in.shape[1])
    attack = MembershipInferenceBlackBox(classifier, input_type="prediction",
                                         attack_model_type=settings.attack_model_type)
    # ART builds its default sklearn attack models unseeded; seed them so the gate is reproducible.
    if hasattr(attack.attack_model, "random_state"):
        attack.attack_model.set_params(random_state=settings.seed)
    # The nn attack model draws its weights and batches from torch's global generator: seeded for this block
    # only, and put back after (the gates run in threads of one process).
    with seeded_global_generators(settings.seed):
        attack.fit(x=x_in[:half], y=y_in[:half], test_x=x_out[:half], test_y=y_out[:half])
        p_in = np.asarray(attack.infer(x_in[half:], y_in[half:], probabilities=True), dtype=float).ravel()
        p_out = np.asarray(attack.infer(x_out[half:], y_out[half:], probabilities=True), dtype=float).ravel()
    truth = np.concatenate([np.ones(p_in.size), np.zeros(p_out.size)])
    guess = np.concatenate([p_in, p_out])
    return {
        "attack_auc": float(roc_auc_score(truth, guess)),
        "attack_accuracy": float(((guess >= 0.5) == truth).mean()),
        "n_attack_train": float(2 * half),
        "n_attack_eval": float(truth.size),
    }


def run_privacy_gate(
    candidate: ModelUnderTest, context: GateContext, settings: "PrivacyGateSettings"
) -> GateResult:
    """Block when the membership inference attack's AUC exceeds max_attack_auc.

    Members: the training split, which starts after the feature warm-up (featurize never trains inside
    it). Non-members: the newest window of all traffic after training, unfiltered (context.newest_window),
    so both sides hold every kind of card; the evaluation test set lacks known-compromised cards.
    """
    members, non_members = context.train_features, context.newest_window
    available = min(len(members), len(non_members))
    if available < settings.min_sample_size:
        reason = (f"too few rows to measure membership inference: {len(members)} member(s) and {len(non_members)} "
                  f"non-member(s) (the newest window), fewer than min_sample_size {settings.min_sample_size}")
        counts = {"n_members_available": float(len(members)), "n_non_members_available": float(len(non_members))}
        return finish_gate(NAME, False, counts, {"min_sample_size": float(settings.min_sample_size)}, reason,
                           context.report_dir / "privacy.json", {"gate": NAME, "passed": False, "reason": reason,
                                                                 "metrics": counts})
    metrics = membership_attack_auc(candidate.bundle, members, non_members, settings)
    metrics.update(n_members_available=float(len(members)), n_non_members_available=float(len(non_members)))
    auc = metrics["attack_auc"]
    passed = auc <= settings.max_attack_auc
    comparison = "<=" if passed else ">"
    reason = (f"membership inference attack_auc {auc:.4f} {comparison} max_attack_auc {settings.max_attack_auc:.4f} "
              f"({int(metrics['n_attack_eval'])} rows scored)")
    thresholds = {"max_attack_auc": settings.max_attack_auc}

    report = context.report_dir / "privacy.json"
    return finish_gate(NAME, passed, metrics, thresholds, reason, report, {
        "gate": NAME,
        "passed": passed,
        "reason": reason,
        "attack": f"art MembershipInferenceBlackBox (input_type=prediction, "
                  f"attack_model_type={settings.attack_model_type})",
        "metrics": metrics,
        "thresholds": thresholds,
    })


# Heavy imports: ART's membership inference on the torch model; its AUC from scikit-learn.
GATE = GateSpec(NAME, run_privacy_gate, heavy_imports=("torch", "art", "sklearn"))
