"""The attacker model: which features a fraudster controls, within which bounds, by how much.

Everything is expressed in the model's standardized input space, because that is where the ART attacks
work. Bounds come from params.yaml in real units and are converted with the model's Standardizer.

Two decisions, documented in the README as well:
- Binary flags (TX_DURING_WEEKEND, TX_DURING_NIGHT) are left continuous inside their [0, 1] bounds
  (a relaxation): the relaxed attacker can reach every point a rounding attacker can, so robust
  metrics measured against it are pessimistic (a lower bound), which is what a security gate wants.
- Controlled features always stay inside the L-inf ball of radius eps around the original point. The
  valid range of a feature is widened to include the original value, so a transaction that already
  lies outside the configured bounds (it happened, after all) is never dragged further than eps.
- Derived features (customer average amounts whose window includes the current transaction) are not
  free for the attacker, nor frozen: they follow their source exactly, avg' = avg + (amount' - amount)
  / count, with count the window's transaction count (unchanged by the amount); a window sum (the hour
  spend) has no count: spend' = spend + (amount' - amount).
- Terminal-risk dilution (threat_model.dilution) is a poisoning capability, not an evasion of one
  transaction: legitimate payments added at a terminal raise its window counts and lower its risk
  features, never its known-fraud counts (dilute_terminal_risk). Training copies and the robustness gate
  use it; validation flags dilution beyond the budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fraudguard.errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

    from fraudguard.config import DilutionThreatSettings, ThreatModelSettings
    from fraudguard.model import Standardizer


@dataclass(frozen=True)
class DerivedFeature:
    """Feature `index` moves by (change of feature `source`, real units) / count, where the count is
    feature `count_index` of the original point; all indices into ThreatModel.features."""

    index: int
    source: int
    count_index: int
    source_std: float
    std: float
    count_mean: float
    count_std: float

    def shift(self, delta_source_std: np.ndarray, x_orig: np.ndarray) -> np.ndarray:
        """Standardized change of this feature for a standardized change of its source."""
        count = np.rint(x_orig[..., self.count_index].astype(np.float64) * self.count_std + self.count_mean)
        count = np.maximum(count, 1.0)  # the window holds at least the current transaction
        return delta_source_std.astype(np.float64) * self.source_std / (count * self.std)


@dataclass(frozen=True)
class ThreatModel:
    """Attacker capabilities in standardized feature space; `project` enforces them on any candidate point."""

    features: tuple[str, ...]
    controlled: tuple[str, ...]
    mask: np.ndarray          # float32 (n_features,): 1 where the attacker controls the feature
    lower: np.ndarray         # float32 (n_features,): standardized lower bound (-inf if uncontrolled)
    upper: np.ndarray         # float32 (n_features,): standardized upper bound (+inf if uncontrolled)
    epsilon: float
    eps_step: float
    pgd_iterations: int
    derived: tuple[DerivedFeature, ...] = ()

    @property
    def moved_mask(self) -> np.ndarray:
        """float32 (n_features,): 1 where an attack may change the feature (controlled or derived)."""
        moved = self.mask.copy()
        for d in self.derived:
            moved[d.index] = 1.0
        return moved

    @property
    def n_features(self) -> int:
        return len(self.features)

    def project(self, x_adv: np.ndarray, x_orig: np.ndarray, eps: float) -> np.ndarray:
        """Map candidate points onto the threat model: controlled features lie within eps (L-inf) of
        x_orig and within [lower, upper] widened to x_orig; derived features follow their source
        exactly; every other feature equals x_orig exactly."""
        x_adv = np.asarray(x_adv, dtype=np.float32)
        x_orig = np.asarray(x_orig, dtype=np.float32)
        if x_adv.shape != x_orig.shape or x_adv.shape[-1] != self.n_features:
            raise ValueError(
                f"project: shapes {x_adv.shape} and {x_orig.shape} do not match {self.n_features} features"
            )
        if eps < 0:
            raise ValueError(f"project: eps must be >= 0, got {eps}")
        eps32 = np.float32(eps)
        projected = np.clip(x_adv, x_orig - eps32, x_orig + eps32)
        lower = np.minimum(self.lower, x_orig)
        upper = np.maximum(self.upper, x_orig)
        projected = np.clip(projected, lower, upper)
        projected = np.where(self.mask > 0, projected, x_orig).astype(np.float32)
        for d in self.derived:
            delta = projected[..., d.source] - x_orig[..., d.source]
            projected[..., d.index] = (x_orig[..., d.index] + d.shift(delta, x_orig)).astype(np.float32)
        return projected


def build_threat_model(threat_settings: "ThreatModelSettings", standardizer: "Standardizer") -> ThreatModel:
    """Translate the params.yaml threat model (real-unit bounds) into the standardizer's input space."""
    features = tuple(standardizer.features)
    unknown = sorted(set(threat_settings.controlled_features) - set(features))
    if unknown:
        raise ConfigError(
            f"threat_model.controlled_features names features the model was not fitted on: {unknown}"
        )
    n = len(features)
    mask = np.zeros(n, dtype=np.float32)
    lower = np.full(n, -np.inf, dtype=np.float32)
    upper = np.full(n, np.inf, dtype=np.float32)
    controlled = []
    for i, name in enumerate(features):
        bounds = threat_settings.controlled_features.get(name)
        if bounds is None:
            continue
        controlled.append(name)
        mask[i] = 1.0
        mean, std = float(standardizer.mean[i]), float(standardizer.std[i])
        lower[i] = (bounds.min - mean) / std
        upper[i] = (bounds.max - mean) / std
    index = {name: i for i, name in enumerate(features)}
    derived = []
    for name, spec in threat_settings.derived_features.items():
        missing = [f for f in (name, spec.source, spec.count) if f is not None and f not in index]
        if missing:
            raise ConfigError(
                f"threat_model.derived_features.{name} names features the model was not fitted on: {missing}"
            )
        i, src = index[name], index[spec.source]
        # A window sum (no count) moves by the source's change itself: a constant count of 1 (mean 1, std 0).
        cnt = index[spec.count] if spec.count is not None else src
        derived.append(DerivedFeature(
            index=i,
            source=src,
            count_index=cnt,
            source_std=float(standardizer.std[src]),
            std=float(standardizer.std[i]),
            count_mean=float(standardizer.mean[cnt]) if spec.count is not None else 1.0,
            count_std=float(standardizer.std[cnt]) if spec.count is not None else 0.0,
        ))
    return ThreatModel(
        derived=tuple(derived),
        features=features,
        controlled=tuple(controlled),
        mask=mask,
        lower=lower,
        upper=upper,
        epsilon=float(threat_settings.epsilon),
        eps_step=float(threat_settings.eps_step),
        pgd_iterations=int(threat_settings.pgd_iterations),
    )


def dilute_terminal_risk(frame: "pd.DataFrame", dilution: "DilutionThreatSettings",
                         factors: "np.ndarray | float") -> "pd.DataFrame":
    """A copy of `frame` as if legitimate payments of `factors` (one for all, one per row, or one per row and
    risk window in risk_features' order) x each risk window's volume had been added at the row's terminal: count' = round(count x (1 + factor)), risk' = risk x count /
    count' (the known frauds over more payments); every other column, the known-fraud counts included, kept.
    Raises ConfigError when a configured feature is missing from `frame`."""
    missing = sorted({*dilution.risk_features, *dilution.risk_features.values()} - set(frame.columns))
    if missing:
        raise ConfigError(f"threat_model.dilution.risk_features: the frame lacks {missing}")
    windows = len(dilution.risk_features)
    factor = np.asarray(factors, dtype=np.float64)
    factor = np.broadcast_to(factor[:, None] if factor.ndim == 1 else factor, (len(frame), windows))
    if (factor < 0).any():
        raise ValueError("dilute_terminal_risk: factors must be >= 0")
    out = frame.copy()
    for i, (risk, count) in enumerate(dilution.risk_features.items()):
        n = frame[count].to_numpy(dtype=np.float64)
        diluted = np.rint(n * (1.0 + factor[:, i]))
        share = np.divide(n, diluted, out=np.ones_like(n), where=diluted > 0)
        out[risk] = (frame[risk].to_numpy(dtype=np.float64) * share).astype(frame[risk].dtype)
        out[count] = diluted.astype(frame[count].dtype)
    return out


def at_risky_terminal(frame: "pd.DataFrame", dilution: "DilutionThreatSettings") -> "np.ndarray":
    """Rows whose terminal has a known fraud in some risk window (risk > 0): the rows dilution can move."""
    risks = frame[list(dilution.risk_features)].to_numpy(dtype=np.float64)
    return (risks > 0).any(axis=1)
