"""Robustness gate: do the frauds a model catches stay caught when the fraudster adapts?

ART evasion attacks run on the fraud rows of the test split that the model DETECTS at its operating
threshold, inside the threat model (attacker-controlled features only, within bounds and epsilon):
FGSM and PGD (white-box) at each configured epsilon, HopSkipJump (decision-based, black-box) at the
budget. Robust recall = share of those frauds still flagged after the attack. Terminal-risk dilution
(threat_model.dilution, a poisoning capability) is measured beside them on the detected frauds at terminals
with known frauds, with its own floor (min_dilution_recall).

Split payments (gates.robustness.split_payments, with threat_model.split_payments): every detected fraud is
paid in k pieces interval_s apart (fraudguard.splitting.piece_features recomputes their features); the
share with a piece still flagged must reach min_flagged_share.
"""

from __future__ import annotations

import logging
from concurrent.futures import Executor, Future
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fraudguard.data.schema import TX_FRAUD
from fraudguard.errors import ConfigError
from fraudguard.gates.base import GateContext, GateResult, GateSpec, ModelUnderTest, finish_gate

if TYPE_CHECKING:
    import pandas as pd

    from fraudguard.config import RobustnessGateSettings, ThreatModelSettings
    from fraudguard.model import ModelBundle
    from fraudguard.threat import ThreatModel

logger = logging.getLogger(__name__)

NAME = "robustness"
# The gate's verdict rests on the strongest white-box attack at the attacker's full budget.
GATED_ATTACK = "pgd"


@dataclass(frozen=True)
class AttackOutcome:
    """One attack at one epsilon: how many detected frauds were attacked and how many stayed detected."""

    attack: str
    epsilon: float
    n_attacked: int
    n_still_detected: int

    @property
    def robust_recall(self) -> float:
        return self.n_still_detected / self.n_attacked if self.n_attacked else float("nan")

    @property
    def attack_success_rate(self) -> float:
        return 1.0 - self.robust_recall


@dataclass(frozen=True)
class RobustnessProfile:
    """All attacks against one model; `budget` is the threat model's epsilon."""

    n_fraud: int
    n_detected: int
    budget: float
    outcomes: tuple[AttackOutcome, ...]

    def recall(self, attack: str, epsilon: float) -> float:
        for outcome in self.outcomes:
            if outcome.attack == attack and np.isclose(outcome.epsilon, epsilon):
                return outcome.robust_recall
        raise KeyError(f"no {attack} outcome at epsilon {epsilon}")

    def metrics(self, prefix: str = "") -> dict[str, float]:
        """Flat metrics: robust_recall.<attack>.eps_<e>, attack_success_rate.<attack>.eps_<e>, counts."""
        out = {f"{prefix}n_fraud": float(self.n_fraud), f"{prefix}n_detected": float(self.n_detected)}
        for o in self.outcomes:
            tag = f"{o.attack}.eps_{o.epsilon:g}"
            out[f"{prefix}robust_recall.{tag}"] = o.robust_recall
            out[f"{prefix}attack_success_rate.{tag}"] = o.attack_success_rate
        return out


def attack_epsilons(settings: "RobustnessGateSettings", budget: float) -> list[float]:
    """The configured epsilons, checked against the budget, with the budget itself always included."""
    too_big = [eps for eps in settings.epsilons if eps > budget + 1e-9]
    if too_big:
        raise ConfigError(
            f"gates.robustness.epsilons {too_big} exceed the attacker budget threat_model.epsilon={budget}"
        )
    return sorted({float(eps) for eps in settings.epsilons} | {float(budget)})


@dataclass(frozen=True)
class _PendingProfile:
    """One model's attack sweep, submitted: the counts known up front and one future per attack."""

    n_fraud: int
    n_detected: int
    budget: float
    futures: tuple["Future[AttackOutcome]", ...]

    def collect(self) -> RobustnessProfile:
        return RobustnessProfile(self.n_fraud, self.n_detected, self.budget,
                                 tuple(future.result() for future in self.futures))


def run_attack(
    attack: str,
    epsilon: float,
    bundle: "ModelBundle",
    x_orig: np.ndarray,
    threat: "ThreatModel",
    settings: "RobustnessGateSettings",
) -> AttackOutcome:
    """One cell of the sweep: `attack` at `epsilon` on the standardized detected frauds `x_orig`.

    A function of its arguments alone (its own ART classifier; FGSM and PGD draw nothing, HopSkipJump is
    seeded), so it gives the same outcome in this process or in a Dask worker, in any order.
    """
    from fraudguard.attacks import hop_skip_jump, make_art_classifier, masked_fgsm, masked_pgd

    classifier = make_art_classifier(bundle.module, x_orig.shape[1])
    y = np.ones(len(x_orig), dtype=np.int64)
    if attack == "fgsm":
        x_adv = masked_fgsm(classifier, x_orig, y, threat, epsilon, batch_size=settings.batch_size)
    elif attack == "pgd":
        # Step size scales with epsilon so every PGD run can reach its ball's boundary.
        step = threat.eps_step * epsilon / threat.epsilon
        x_adv = masked_pgd(classifier, x_orig, y, threat, epsilon, step, threat.pgd_iterations,
                           batch_size=settings.batch_size)
    elif attack == "hopskipjump":
        x_adv = hop_skip_jump(classifier, x_orig, threat, settings.hopskipjump_max_iter, eps=epsilon,
                              seed=settings.seed)
    else:
        raise ConfigError(f"robustness gate: unknown attack {attack!r}")
    # Re-project: whatever an attack returns, only points inside the threat model count.
    x_adv = threat.project(x_adv, x_orig, epsilon)
    still = int((bundle.predict_proba_standardized(x_adv) >= bundle.threshold).sum())
    return AttackOutcome(attack, epsilon, len(x_orig), still)


def _done(outcome: AttackOutcome) -> "Future[AttackOutcome]":
    future: Future[AttackOutcome] = Future()
    future.set_result(outcome)
    return future


def start_profile(
    bundle: "ModelBundle",
    frame: "pd.DataFrame",
    threat_settings: "ThreatModelSettings",
    settings: "RobustnessGateSettings",
    executor: "Executor | None" = None,
) -> _PendingProfile:
    """Pick the detected frauds of `frame` (a seeded sample of at most max_attack_rows) and start every
    attack on them: submitted to `executor` (a Dask cluster's, fraudguard.compute), or run here in order."""
    from fraudguard.threat import build_threat_model

    threat = build_threat_model(threat_settings, bundle.standardizer)
    epsilons = attack_epsilons(settings, threat.epsilon)
    y = frame[TX_FRAUD].to_numpy().astype(int)
    x = bundle.standardizer.transform(frame)
    fraud = np.flatnonzero(y == 1)
    detected = fraud[bundle.predict_proba_standardized(x[fraud]) >= bundle.threshold]
    if detected.size == 0:
        return _PendingProfile(len(fraud), 0, threat.epsilon, ())
    rng = np.random.default_rng(settings.seed)
    if detected.size > settings.max_attack_rows:
        detected = np.sort(rng.choice(detected, settings.max_attack_rows, replace=False))
    x_att = x[detected]
    jobs = [(attack, eps, x_att) for eps in epsilons for attack in ("fgsm", "pgd")]
    if settings.hopskipjump_samples > 0:
        n_hsj = min(settings.hopskipjump_samples, len(x_att))
        jobs.append(("hopskipjump", threat.epsilon, x_att[np.sort(rng.choice(len(x_att), n_hsj, replace=False))]))
    if executor is None:
        futures = [_done(run_attack(attack, eps, bundle, rows, threat, settings)) for attack, eps, rows in jobs]
    else:
        futures = [executor.submit(run_attack, attack, eps, bundle, rows, threat, settings)
                   for attack, eps, rows in jobs]
    return _PendingProfile(len(fraud), len(detected), threat.epsilon, tuple(futures))


def profile_robustness(
    bundle: "ModelBundle",
    frame: "pd.DataFrame",
    threat_settings: "ThreatModelSettings",
    settings: "RobustnessGateSettings",
    executor: "Executor | None" = None,
) -> RobustnessProfile:
    """Attack the detected frauds of `frame` (a seeded sample of at most max_attack_rows) with every attack,
    here or as one task per attack and epsilon on `executor`; the outcomes are the same either way."""
    return start_profile(bundle, frame, threat_settings, settings, executor).collect()


DILUTION = "dilution"


def dilution_recall(bundle: "ModelBundle", frame: "pd.DataFrame", threat_settings: "ThreatModelSettings",
                    settings: "RobustnessGateSettings") -> AttackOutcome | None:
    """Terminal-risk dilution (threat_model.dilution) against the frauds of `frame` that `bundle` detects at
    terminals with known frauds: each is diluted at budget x 1/steps, 2/steps, ..., 1 and counts as still
    detected when it is at every factor. None when the threat model has no dilution."""
    from fraudguard.threat import at_risky_terminal, dilute_terminal_risk

    dilution = threat_settings.dilution
    if dilution is None:
        return None
    budget = dilution.max_added_volume_factor
    frauds = frame[frame[TX_FRAUD].to_numpy() == 1]
    frauds = frauds[at_risky_terminal(frauds, dilution)]
    detected = frauds[bundle.predict_proba(frauds) >= bundle.threshold] if len(frauds) else frauds
    still = np.ones(len(detected), dtype=bool)
    for step in range(1, settings.dilution_steps + 1):
        if not len(detected):
            break
        diluted = dilute_terminal_risk(detected, dilution, budget * step / settings.dilution_steps)
        still &= bundle.predict_proba(diluted) >= bundle.threshold
    return AttackOutcome(DILUTION, budget, len(detected), int(still.sum()))


def split_payment_check(bundle: "ModelBundle", frame: "pd.DataFrame", context: GateContext,
                        settings: "RobustnessGateSettings") -> tuple[dict[str, float], str | None]:
    """(metrics, failure or None) of the split-payment check on the frauds of `frame` that `bundle` detects;
    no metrics when the check is off."""
    from fraudguard.splitting import flagged_share_of_split

    cfg, threat = settings.split_payments, context.settings.threat_model.split_payments
    if cfg is None or threat is None:
        return {}, None
    frauds = frame[frame[TX_FRAUD].to_numpy() == 1]
    detected = frauds[bundle.predict_proba(frauds) >= bundle.threshold]
    key = f"split_payments.flagged_share.k_{cfg.splits}"
    if detected.empty:
        return {}, None  # the detection failure is reported by the gate already
    share = flagged_share_of_split(bundle, detected, cfg.splits, threat.interval_s, context.settings.featurize)
    metrics = {key: share, "split_payments.n_detected": float(len(detected))}
    failure = (f"{key} {share:.4f} < floor {cfg.min_flagged_share:.4f}"
               if share < cfg.min_flagged_share else None)
    return metrics, failure


def _plot(path: Path, candidate: RobustnessProfile, champion: RobustnessProfile | None, floor: float) -> None:
    # The object API, not pyplot: gates may run in threads, and pyplot's global figure state is not safe there.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    markers = {"fgsm": "o", "pgd": "s"}
    for label, profile, line in (("candidate", candidate, "-"), ("champion", champion, "--")):
        if profile is None:
            continue
        for attack, marker in markers.items():
            pts = sorted((o.epsilon, o.robust_recall) for o in profile.outcomes if o.attack == attack)
            if pts:
                ax.plot(*zip(*pts), marker=marker, linestyle=line, label=f"{label} {attack.upper()}")
        hsj = [o for o in profile.outcomes if o.attack == "hopskipjump"]
        if hsj:
            ax.plot([hsj[0].epsilon], [hsj[0].robust_recall], marker="^", linestyle="none",
                    label=f"{label} HopSkipJump")
    ax.axhline(floor, color="red", linewidth=1, linestyle=":", label=f"floor {floor:g}")
    ax.axvline(candidate.budget, color="grey", linewidth=1, linestyle=":", label="budget")
    ax.set_xlabel("epsilon (standardized units, attacker-controlled features)")
    ax.set_ylabel("robust recall (detected frauds still detected)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Robust recall vs attack budget")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def run_robustness_gate(
    candidate: ModelUnderTest, context: GateContext, settings: "RobustnessGateSettings"
) -> GateResult:
    """Pass when PGD robust recall at the budget >= min_robust_recall and >= champion's - tolerance."""
    from fraudguard.compute import attack_executor

    threat_settings = context.settings.threat_model
    # Both models' sweeps are submitted before either is collected: on Dask every attack of both runs at once.
    with attack_executor(context.settings.compute) as executor:
        pending_cand = start_profile(candidate.bundle, context.test_features, threat_settings, settings, executor)
        pending_champ = (
            start_profile(context.champion.bundle, context.test_features, threat_settings, settings, executor)
            if context.champion is not None
            else None
        )
        cand = pending_cand.collect()
        champ = pending_champ.collect() if pending_champ is not None else None
    metrics = cand.metrics()
    thresholds = {"min_robust_recall": settings.min_robust_recall}
    failures: list[str] = []
    gated = f"robust_recall.{GATED_ATTACK}.eps_{cand.budget:g}"
    if cand.n_detected == 0:
        failures.append(f"the model detects none of the {cand.n_fraud} test frauds at its threshold")
    else:
        value = cand.recall(GATED_ATTACK, cand.budget)
        metrics["robust_recall_at_budget"] = value
        # Reported, not gated: HopSkipJump runs on a few rows only, too few to block on.
        metrics["robust_recall_worst_attack_at_budget"] = min(
            o.robust_recall for o in cand.outcomes if np.isclose(o.epsilon, cand.budget)
        )
        if value < settings.min_robust_recall:
            failures.append(f"{gated} {value:.4f} < floor {settings.min_robust_recall:.4f}")
        if champ is not None and champ.n_detected > 0:
            champ_value = champ.recall(GATED_ATTACK, champ.budget)
            bar = champ_value - settings.non_inferiority_tolerance
            metrics["champion.robust_recall_at_budget"] = champ_value
            thresholds["non_inferiority"] = bar
            if value < bar:
                failures.append(
                    f"{gated} {value:.4f} < champion {champ_value:.4f}"
                    f" - tolerance {settings.non_inferiority_tolerance:.4f}"
                )
    # Dilution is a poisoning capability (no epsilon): its own figure and floor, gated when measurable.
    cand_dil = dilution_recall(candidate.bundle, context.test_features, threat_settings, settings)
    champ_dil = (dilution_recall(context.champion.bundle, context.test_features, threat_settings, settings)
                 if context.champion is not None else None)
    if cand_dil is not None:
        metrics["dilution.n_attacked"] = float(cand_dil.n_attacked)
        metrics["dilution.max_added_volume_factor"] = cand_dil.epsilon
    if cand_dil is not None and cand_dil.n_attacked:
        metrics["robust_recall.dilution"] = cand_dil.robust_recall
        thresholds["min_dilution_recall"] = settings.min_dilution_recall
        if cand_dil.robust_recall < settings.min_dilution_recall:
            failures.append(f"robust_recall.dilution {cand_dil.robust_recall:.4f} < floor "
                            f"{settings.min_dilution_recall:.4f} ({cand_dil.n_attacked} detected frauds at "
                            f"terminals with known frauds, added volume up to {cand_dil.epsilon:g}x)")
        if champ_dil is not None and champ_dil.n_attacked:
            bar = champ_dil.robust_recall - settings.non_inferiority_tolerance
            metrics["champion.robust_recall.dilution"] = champ_dil.robust_recall
            thresholds["dilution_non_inferiority"] = bar
            if cand_dil.robust_recall < bar:
                failures.append(f"robust_recall.dilution {cand_dil.robust_recall:.4f} < champion "
                                f"{champ_dil.robust_recall:.4f} - tolerance {settings.non_inferiority_tolerance:.4f}")
    split_metrics, split_failure = split_payment_check(candidate.bundle, context.test_features, context, settings)
    metrics.update(split_metrics)
    if split_metrics and settings.split_payments is not None:
        thresholds["min_split_flagged_share"] = settings.split_payments.min_flagged_share
    if split_failure:
        failures.append(split_failure)
    if champ is not None:
        metrics.update(champ.metrics(prefix="champion."))
    # The gated figures first: the registry's gate table shows a gate's first few metrics.
    headline = (gated, "champion.robust_recall_at_budget",
                *[k for k in split_metrics if k.startswith("split_payments.flagged_share")],
                "robust_recall_worst_attack_at_budget")
    metrics = {**{key: metrics[key] for key in headline if key in metrics}, **metrics}

    passed = not failures
    reason = (
        f"{gated} {metrics['robust_recall_at_budget']:.4f} >= floor {settings.min_robust_recall:.4f}"
        + (f", robust_recall.dilution {metrics['robust_recall.dilution']:.4f} >= floor "
           f"{settings.min_dilution_recall:.4f}" if "robust_recall.dilution" in metrics else "")
        + (" and non-inferior to the champion" if champ is not None else " (no champion)")
        + "".join(f"; {key} {value:.4f} >= floor {settings.split_payments.min_flagged_share:.4f}"
                  for key, value in split_metrics.items()
                  if key.startswith("split_payments.flagged_share") and settings.split_payments is not None)
        if passed
        else "; ".join(failures)
    )

    context.report_dir.mkdir(parents=True, exist_ok=True)
    report_json = context.report_dir / "robustness.json"
    report_png = context.report_dir / "robustness.png"

    def table(profile: RobustnessProfile | None) -> dict | None:
        if profile is None:
            return None
        return {
            "n_fraud": profile.n_fraud,
            "n_detected": profile.n_detected,
            "budget": profile.budget,
            "outcomes": [
                {**asdict(o), "robust_recall": o.robust_recall, "attack_success_rate": o.attack_success_rate}
                for o in profile.outcomes
            ],
        }

    _plot(report_png, cand, champ, settings.min_robust_recall)
    return finish_gate(NAME, passed, metrics, thresholds, reason, report_json, {
        "gate": NAME,
        "passed": passed,
        "reason": reason,
        "gated_metric": gated,
        "thresholds": thresholds,
        "candidate": table(cand),
        "champion": table(champ),
        "dilution": {"candidate": asdict(cand_dil) if cand_dil else None,
                     "champion": asdict(champ_dil) if champ_dil else None},
        "champion_version": context.champion.version if context.champion else None,
        "split_payments": split_metrics or None,
    }, (report_png,))


# Heavy imports: ART's attacks on the torch model.
GATE = GateSpec(NAME, run_robustness_gate, heavy_imports=("torch", "art"))
