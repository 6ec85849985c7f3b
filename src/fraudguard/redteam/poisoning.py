"""What the three poisoning attacks share: import poisoned data into a copy of the scratch project, run
validate, featurize and train there, run the promotion gates on the poisoned candidate (the target as
champion), and measure recall on the attack's targeted frauds. The registry is never written: the gates
are the pipeline's own functions called with the project's policy, so nothing poisoned gets a version.
"""

from __future__ import annotations

import logging
import traceback
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import pandas as pd

from fraudguard.data.schema import QUARANTINE_REASON, TRANSACTION_ID, TX_FRAUD
from fraudguard.errors import DataError
from fraudguard.redteam.base import (
    CAUGHT_GATE,
    CAUGHT_HARMLESS,
    CAUGHT_IMPORT_REFUSED,
    CAUGHT_QUARANTINED,
    CAUGHT_VALIDATION_FLAG,
    AttackResult,
    RedTeamContext,
)

if TYPE_CHECKING:
    from fraudguard.gates.base import GateContext, GateResult
    from fraudguard.model import ModelBundle

logger = logging.getLogger(__name__)

KIND = "poisoning"
# Rewrites the transactions the targeted rows are read from (the backdoor adds its trigger); default: none.
Probe = Callable[[pd.DataFrame], pd.DataFrame]


@dataclass(frozen=True)
class Poison:
    """One poisoning attack's data: the poisoned transactions, which of their rows the attacker wrote or
    changed, and the frauds whose detection it aims to suppress (TRANSACTION_IDs of the clean test split)."""

    transactions: pd.DataFrame
    poisoned_ids: frozenset[int]
    targeted_ids: np.ndarray
    description: str
    probe: Probe | None = None


def recall_on(bundle: "ModelBundle", features: pd.DataFrame, ids: np.ndarray) -> tuple[float, int]:
    """Share of the rows with these TRANSACTION_IDs that `bundle` flags at its threshold, and their count."""
    rows = features[features[TRANSACTION_ID].isin(ids)]
    if rows.empty:
        return float("nan"), 0
    return float(bundle.predict(rows).mean()), len(rows)


def targeted_features(transactions: pd.DataFrame, ctx: RedTeamContext, probe: Probe | None) -> pd.DataFrame:
    """Features of every transaction (after `probe`), as featurize computes them."""
    from fraudguard.features import compute_features

    return compute_features(probe(transactions) if probe else transactions, ctx.settings.featurize)


def _quarantine_of(poison: Poison, quarantined: pd.DataFrame) -> tuple[int, Counter]:
    """How many poisoned rows the import quarantined, and their reasons."""
    if quarantined.empty or TRANSACTION_ID not in quarantined.columns:
        return 0, Counter()
    ids = pd.to_numeric(quarantined[TRANSACTION_ID], errors="coerce")
    hit = quarantined[ids.isin(list(poison.poisoned_ids)).to_numpy()]
    reasons: Counter = Counter()
    for text in hit[QUARANTINE_REASON].astype(str):
        reasons.update(code for code in text.split(";") if code)
    return len(hit), reasons


def _gate_context(ctx: RedTeamContext, train: pd.DataFrame, test: pd.DataFrame, recent: pd.DataFrame,
                  root, report_dir) -> "GateContext":
    from fraudguard.features import newest_window
    from fraudguard.gates.base import GateContext, ModelUnderTest

    return GateContext(
        settings=ctx.settings, train_features=train, test_features=test,
        newest_window=newest_window(recent, ctx.settings.gates.drift.window_days),
        source_root=root, report_dir=report_dir,
        champion=ModelUnderTest(bundle=ctx.target, train_features=ctx.train),
    )


def _run_gate(name: str, gate, candidate: "ModelBundle", context: "GateContext") -> "GateResult":
    from fraudguard.gates.base import GateResult, ModelUnderTest

    try:
        return gate(ModelUnderTest(bundle=candidate), context, getattr(context.settings.gates, name, None))
    except Exception as exc:  # a crashing gate blocks promotion in the pipeline: the same here
        logger.error("gate %s raised:\n%s", name, traceback.format_exc())
        return GateResult(name=name, passed=False, metrics={}, thresholds={},
                          reason=f"gate raised {exc.__class__.__name__}: {exc}")


def configured_gates(ctx: RedTeamContext) -> dict:
    """The promotion's gates (fraudguard.promotion.discover_gates) but redteam.skip_gates."""
    from fraudguard.promotion import discover_gates

    return {name: fn for name, fn in discover_gates(ctx.settings.gates).items()
            if name not in ctx.settings.redteam.skip_gates}


def control_verdict(ctx: RedTeamContext, name: str, gate) -> "GateResult":
    """The gate's verdict on the target itself, on the clean data (cached): a gate that blocks the clean
    target too says nothing about the attack."""
    if name not in ctx.controls:
        context = _gate_context(ctx, ctx.train, ctx.test, ctx.recent, ctx.base.root,
                                ctx.attack_dir("control") / "gates")
        ctx.controls[name] = _run_gate(name, gate, ctx.target, context)
    return ctx.controls[name]


def run_poisoning(ctx: RedTeamContext, name: str, poison: Poison) -> AttackResult:
    """Push `poison` through import, validate, featurize, train and the gates of a scratch copy; report
    every layer that caught it, and recall on the targeted frauds before and after."""
    from fraudguard.data.io import read_transactions, write_transactions
    from fraudguard.data.validation import QuarantineShareExceeded
    from fraudguard.data.versioning import import_data
    from fraudguard.stages import featurize, validate
    from fraudguard.training import train_model

    cfg = ctx.settings.redteam
    paths = ctx.clone_base(name)
    incoming = paths.root / "incoming" / f"{name}.parquet"
    write_transactions(poison.transactions, incoming)
    caught: list[str] = []
    details: dict = {"attack": poison.description, "poisoned_rows": len(poison.poisoned_ids),
                     "targeted_frauds": int(len(poison.targeted_ids))}

    clean_features = targeted_features(ctx.validated, ctx, poison.probe)
    baseline, n_targeted = recall_on(ctx.target, clean_features, poison.targeted_ids)
    details["targeted_frauds_found"] = n_targeted

    # Import: the layer that sees the data first (and diffs it against the tracked version).
    stopped = ""
    report: dict = {}
    try:
        outcome = import_data(incoming, paths, ctx.settings.validate_)
        report = outcome.validation_report
    except QuarantineShareExceeded as exc:
        stopped = f"{CAUGHT_IMPORT_REFUSED}: {str(exc)[:300]}"
        report = exc.result.report
    except DataError as exc:
        stopped = f"{CAUGHT_IMPORT_REFUSED}: {str(exc)[:300]}"
    quarantined = read_transactions(paths.import_quarantine) if paths.import_quarantine.is_file() else pd.DataFrame()
    n_quarantined, reasons = _quarantine_of(poison, quarantined)
    share = n_quarantined / len(poison.poisoned_ids) if poison.poisoned_ids else 0.0
    details.update({"quarantined_poisoned_rows": n_quarantined, "quarantine_reasons": dict(reasons),
                    "import_report_reasons": report.get("reasons", {})})
    if stopped:
        caught.append(stopped)
    if n_quarantined and share >= cfg.min_quarantined_share:
        caught.append(f"{CAUGHT_QUARANTINED}: {n_quarantined} of {len(poison.poisoned_ids)} poisoned rows ("
                      + ", ".join(f"{code} {n}" for code, n in reasons.most_common()) + ")")
    # Flags count when they point at the poisoned rows (fraud-labelled rows flagged as unusual, and any
    # defence that lists the rows it flags under flagged_transaction_ids).
    flagged = {code: len(set(int(i) for i in ids) & poison.poisoned_ids)
               for code, ids in (report.get("flagged_transaction_ids") or {}).items()}
    flagged = {code: n for code, n in flagged.items() if n}
    details["flagged_poisoned_rows"] = flagged
    if flagged and max(flagged.values()) / max(1, len(poison.poisoned_ids)) >= cfg.min_quarantined_share:
        caught.append(f"{CAUGHT_VALIDATION_FLAG}: " + ", ".join(f"{c} {n}" for c, n in flagged.items()))
    if stopped:
        return AttackResult(name, KIND, tuple(caught), "recall on targeted frauds", baseline, baseline,
                            f"{poison.description}; the pipeline stopped at import", details)

    # The pipeline as DVC would run it, in the scratch copy.
    try:
        validation = validate.run(validate.ValidatePaths.of(paths), ctx.settings.validate_)
    except QuarantineShareExceeded as exc:
        caught.append(f"{CAUGHT_IMPORT_REFUSED} (validate stage): {str(exc)[:300]}")
        return AttackResult(name, KIND, tuple(caught), "recall on targeted frauds", baseline, baseline,
                            f"{poison.description}; the pipeline stopped at validate", details)
    featurize.run(featurize.FeaturizePaths.of(paths), ctx.settings.featurize)
    train = pd.read_parquet(paths.train_features)
    test = pd.read_parquet(paths.test_features)
    recent = pd.read_parquet(paths.recent_features)
    candidate = train_model(train, ctx.settings, progress=False).bundle

    context = _gate_context(ctx, train, test, recent, paths.root, ctx.attack_dir(name) / "gates")
    details["gates"] = {}
    for gate_name, gate in configured_gates(ctx).items():
        result = _run_gate(gate_name, gate, candidate, context)
        details["gates"][gate_name] = {"passed": result.passed, "reason": result.reason,
                                       "metrics": dict(result.metrics), "thresholds": dict(result.thresholds)}
        if result.passed:
            continue
        control = control_verdict(ctx, gate_name, gate)
        if control.passed:
            caught.append(f"{CAUGHT_GATE}:{gate_name}")
        else:
            details["gates"][gate_name]["not_counted"] = f"blocks the clean target too: {control.reason}"

    poisoned_features = targeted_features(validation.accepted, ctx, poison.probe)
    attacked, _ = recall_on(candidate, poisoned_features, poison.targeted_ids)
    target_on_poisoned, _ = recall_on(ctx.target, poisoned_features, poison.targeted_ids)
    details.update({"candidate_recall_targeted": attacked, "target_recall_targeted_clean": baseline,
                    "target_recall_targeted_poisoned": target_on_poisoned})
    drops = [baseline - attacked, baseline - target_on_poisoned]
    flagged_clean = round(baseline * n_targeted) if n_targeted else 0
    details["targeted_flagged_clean"] = flagged_clean
    measurable = flagged_clean >= cfg.min_targeted_flagged
    if measurable and max(drops) <= cfg.harmless_recall_drop:
        caught.append(f"{CAUGHT_HARMLESS}: targeted recall fell by {max(drops):+.3f} at most "
                      f"(tolerance {cfg.harmless_recall_drop:g})")
    summary = (f"{poison.description}; targeted frauds {n_targeted}: recall {baseline:.3f} -> candidate "
               f"{attacked:.3f}, target on poisoned data {target_on_poisoned:.3f}")
    if not measurable:
        summary += (f"; harm not measurable: the target flags {flagged_clean} of them on clean data "
                    f"(redteam.min_targeted_flagged {cfg.min_targeted_flagged})")
    return AttackResult(name, KIND, tuple(caught), "recall on targeted frauds", baseline, attacked, summary,
                        details)


def training_period_frauds(ctx: RedTeamContext) -> pd.DataFrame:
    """The clean raw frauds dated in the training period (what a poisoner relabels or copies)."""
    tx = ctx.raw
    stamps = tx["TX_DATETIME"]
    in_train = (stamps >= ctx.plan.train_start) & (stamps < ctx.plan.train_end)
    return tx[in_train & (tx[TX_FRAUD] == 1)]


def clean_test_fraud_ids(ctx: RedTeamContext) -> np.ndarray:
    """TRANSACTION_IDs of the frauds of the clean test split (the frauds the model is judged on)."""
    return ctx.test.loc[ctx.test[TX_FRAUD] == 1, TRANSACTION_ID].to_numpy()
