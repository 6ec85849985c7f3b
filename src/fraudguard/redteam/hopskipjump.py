"""HopSkipJump (black-box, decision-based), on the robustness gate's budget of rows and iterations."""

from __future__ import annotations

import numpy as np

from fraudguard.redteam.base import AttackResult, RedTeamContext
from fraudguard.redteam.evasion import detected_frauds, evasion_result, still_flagged

NAME = "hopskipjump"


def run_hopskipjump(ctx: RedTeamContext) -> AttackResult:
    """HopSkipJump on gates.robustness.hopskipjump_samples detected frauds (seeded), within the budget."""
    from fraudguard.attacks import hop_skip_jump

    gate = ctx.settings.gates.robustness
    t = detected_frauds(ctx)
    rng = np.random.default_rng(gate.seed)
    n = min(gate.hopskipjump_samples, len(t.x))
    x = t.x[np.sort(rng.choice(len(t.x), n, replace=False))] if n else t.x[:0]
    # Seeded inside hop_skip_jump (starting points and numpy's global generator), as the robustness gate's.
    x_adv = hop_skip_jump(t.classifier, x, t.threat, gate.hopskipjump_max_iter, seed=gate.seed) if n else x
    return evasion_result(ctx, NAME, still_flagged(ctx, t.threat, x_adv, x, t.threat.epsilon),
                          t.threat.epsilon, "HopSkipJump")
