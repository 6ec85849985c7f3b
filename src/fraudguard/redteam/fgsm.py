"""FGSM (white-box, one signed-gradient step) at the attacker's full budget, as the robustness gate runs it."""

from __future__ import annotations

import numpy as np

from fraudguard.redteam.base import AttackResult, RedTeamContext
from fraudguard.redteam.evasion import detected_frauds, evasion_result, still_flagged

NAME = "fgsm"


def run_fgsm(ctx: RedTeamContext) -> AttackResult:
    """Masked FGSM at threat_model.epsilon on the detected test frauds."""
    from fraudguard.attacks import masked_fgsm

    t = detected_frauds(ctx)
    eps = t.threat.epsilon
    x_adv = masked_fgsm(t.classifier, t.x, np.ones(len(t.x), dtype=np.int64), t.threat, eps,
                        batch_size=ctx.settings.gates.robustness.batch_size) if len(t.x) else t.x
    return evasion_result(ctx, NAME, still_flagged(ctx, t.threat, x_adv, t.x, eps), eps, "FGSM")
