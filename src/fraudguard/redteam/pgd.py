"""PGD (white-box, iterated projected steps) at the attacker's full budget, the robustness gate's gated attack."""

from __future__ import annotations

import numpy as np

from fraudguard.redteam.base import AttackResult, RedTeamContext
from fraudguard.redteam.evasion import detected_frauds, evasion_result, still_flagged

NAME = "pgd"


def run_pgd(ctx: RedTeamContext) -> AttackResult:
    """Masked PGD at threat_model.epsilon (eps_step, pgd_iterations) on the detected test frauds."""
    from fraudguard.attacks import masked_pgd

    t = detected_frauds(ctx)
    eps = t.threat.epsilon
    x_adv = masked_pgd(t.classifier, t.x, np.ones(len(t.x), dtype=np.int64), t.threat, eps, t.threat.eps_step,
                       t.threat.pgd_iterations, batch_size=ctx.settings.gates.robustness.batch_size) \
        if len(t.x) else t.x
    return evasion_result(ctx, NAME, still_flagged(ctx, t.threat, x_adv, t.x, eps), eps, "PGD")
