"""ART BoundaryAttack (decision-based, L2), an attack the robustness gate does not run.

BoundaryAttack has no feature mask, so each transaction is attacked in the space of the features the
attacker controls only: a small module embeds those into the transaction (derived customer averages
follow the amount as the threat model says) and shifts the logits so that the class ART sees is the
model's decision at its operating threshold, not at 0.5. Its random start is drawn within the controlled
features' bounds; the result is projected onto the threat model (epsilon) before it is scored.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from fraudguard.attacks import seeded_global_generators
from fraudguard.redteam.base import AttackResult, RedTeamContext
from fraudguard.redteam.evasion import detected_frauds, evasion_result, still_flagged
from fraudguard.threat import ThreatModel

NAME = "boundary"
# ART logs a "success rate" line at INFO for every row it attacks.
_ART_LOGGER = "art.attacks.evasion.boundary"


class _ControlledOnly(torch.nn.Module):
    """Scores the transaction `x0` with its controlled features replaced by the input z (float32, shape
    (N, n_controlled)); class 1 means flagged at `threshold`."""

    # Buffers set by register_buffer (declared for the type checker: nn.Module's __getattr__ is untyped).
    x0: torch.Tensor
    controlled: torch.Tensor

    def __init__(self, module: torch.nn.Module, x0: np.ndarray, threat: ThreatModel, threshold: float):
        super().__init__()
        self.module = module
        controlled = np.flatnonzero(threat.mask > 0)
        position = {int(i): p for p, i in enumerate(controlled)}
        self.register_buffer("x0", torch.from_numpy(x0.astype(np.float32)))
        self.register_buffer("controlled", torch.from_numpy(controlled.astype(np.int64)))
        derived = [(d.index, position[d.source], d.source, float(d.shift(np.array(1.0), x0))) for d in threat.derived]
        self.derived = derived
        t = min(max(threshold, 1e-7), 1 - 1e-7)
        self.offset = math.log(t / (1 - t))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z.float()
        x = self.x0.expand(z.shape[0], -1).clone()
        x[:, self.controlled] = z
        for index, pos, source, slope in self.derived:
            x[:, index] = self.x0[index] + (z[:, pos] - self.x0[source]) * slope
        logits = self.module(x)
        return torch.stack([logits[:, 0], logits[:, 1] - self.offset], dim=1)


def boundary_attack_row(ctx: RedTeamContext, threat: ThreatModel, x0: np.ndarray) -> np.ndarray:
    """One transaction attacked with BoundaryAttack in its controlled features; the full feature row back."""
    from art.attacks.evasion import BoundaryAttack
    from art.estimators.classification import PyTorchClassifier

    from fraudguard.attacks import _quiet_art

    cfg = ctx.settings.redteam.boundary
    controlled = np.flatnonzero(threat.mask > 0)
    lower = np.minimum(threat.lower[controlled], x0[controlled]).astype(np.float32)
    upper = np.maximum(threat.upper[controlled], x0[controlled]).astype(np.float32)
    with _quiet_art():
        classifier = PyTorchClassifier(
            model=_ControlledOnly(ctx.target.module, x0, threat, ctx.target.threshold),
            loss=torch.nn.CrossEntropyLoss(), input_shape=(len(controlled),), nb_classes=2,
            clip_values=(lower, upper), device_type="cpu")
        attack = BoundaryAttack(classifier, targeted=False, max_iter=cfg.max_iter, verbose=False)
        art_logger = logging.getLogger(_ART_LOGGER)
        disabled, art_logger.disabled = art_logger.disabled, True
        try:
            z_adv = attack.generate(x0[controlled][None, :].astype(np.float32))
        finally:
            art_logger.disabled = disabled
    x_adv = x0[None, :].copy()
    x_adv[0, controlled] = np.where(np.isfinite(z_adv[0]), z_adv[0], x0[controlled])
    return x_adv[0]


def run_boundary(ctx: RedTeamContext) -> AttackResult:
    """BoundaryAttack on redteam.boundary.samples detected frauds (seeded), projected onto epsilon."""
    cfg = ctx.settings.redteam
    t = detected_frauds(ctx)
    rng = np.random.default_rng(cfg.seed)
    n = min(cfg.boundary.samples, len(t.x))
    x = t.x[np.sort(rng.choice(len(t.x), n, replace=False))] if n else t.x[:0]
    with seeded_global_generators(cfg.seed):  # ART's BoundaryAttack draws its start and steps from numpy's
        x_adv = np.stack([boundary_attack_row(ctx, t.threat, row) for row in x]) if n else x
    return evasion_result(ctx, NAME, still_flagged(ctx, t.threat, x_adv, x, t.threat.epsilon),
                          t.threat.epsilon, "BoundaryAttack")
