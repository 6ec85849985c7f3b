"""Drift gate: Evidently data-drift between the candidate's training features and (a) the champion's
training features, (b) the newest data window.

The share of drifted model features above `drift_share_threshold` in either comparison blocks; drifted
attacker-controlled features (threat_model.controlled_features) are named in the reason, since a shift
there may be an evasion campaign rather than a change of customers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fraudguard.errors import DataError
from fraudguard.gates.base import GateContext, GateResult, GateSpec, ModelUnderTest, finish_gate

if TYPE_CHECKING:
    import pandas as pd

    from fraudguard.config import DriftGateSettings

logger = logging.getLogger(__name__)

NAME = "drift"
MAX_ROWS = 20_000
SAMPLE_SEED = 0


@dataclass(frozen=True)
class DriftComparison:
    """One Evidently comparison: share of drifted columns, which ones, and the HTML report."""

    label: str
    drift_share: float
    drifted_columns: tuple[str, ...]
    n_reference: int
    n_current: int
    report_path: Path


def _model_frame(frame: "pd.DataFrame", features: list[str], what: str) -> "pd.DataFrame":
    missing = [f for f in features if f not in frame.columns]
    if missing:
        raise DataError(f"drift gate: {what} lacks model feature column(s) {missing}")
    out = frame[features]
    if len(out) > MAX_ROWS:
        out = out.sample(n=MAX_ROWS, random_state=SAMPLE_SEED)
    return out.astype("float64").reset_index(drop=True)


def compare_features(
    reference: "pd.DataFrame", current: "pd.DataFrame", features: list[str], drift_share: float,
    report_path: Path, label: str,
) -> DriftComparison:
    """Run Evidently's DataDriftPreset on the model features (<= 20k rows each); save the HTML report."""
    from evidently import Report
    from evidently.presets import DataDriftPreset

    ref = _model_frame(reference, features, f"{label} reference")
    cur = _model_frame(current, features, f"{label} current data")
    if ref.empty or cur.empty:
        raise DataError(f"drift gate: {label}: empty {'reference' if ref.empty else 'current'} data")
    snapshot = Report([DataDriftPreset(columns=features, drift_share=drift_share)], include_tests=True).run(
        reference_data=ref, current_data=cur
    )
    result = snapshot.dict()
    share = None
    for metric in result.get("metrics", []):
        if metric.get("config", {}).get("type", "").endswith("DriftedColumnsCount"):
            share = float(metric["value"]["share"])
    drifted = []
    for test in result.get("tests", []):
        params = test.get("metric_config", {}).get("params", {})
        if params.get("type", "").endswith("ValueDrift") and test.get("status") == "FAIL":
            drifted.append(str(params.get("column")))
    if share is None:  # the count metric's layout changed; fall back on the per-column tests
        share = len(drifted) / len(features)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(report_path))
    return DriftComparison(label, share, tuple(sorted(drifted)), len(ref), len(cur), report_path)


def run_drift_gate(candidate: ModelUnderTest, context: GateContext, settings: "DriftGateSettings") -> GateResult:
    """Fail when the drifted-feature share against the champion's data or the newest window exceeds the threshold.

    `settings` is the gates.drift section; model features and the threat model come from context.settings.
    """
    cfg = settings
    features = list(context.settings.model.features)
    controlled = set(context.settings.threat_model.controlled_features)
    comparisons: list[DriftComparison] = []
    if context.champion is not None and context.champion.train_features is not None:
        comparisons.append(compare_features(
            context.champion.train_features, context.train_features, features, cfg.drift_share_threshold,
            context.report_dir / "drift_vs_champion.html", "champion"))
    comparisons.append(compare_features(
        context.train_features, context.newest_window, features, cfg.drift_share_threshold,
        context.report_dir / "drift_vs_newest_window.html", "newest_window"))

    metrics: dict[str, float] = {}
    problems: list[str] = []
    notes: list[str] = []
    for c in comparisons:
        metrics[f"drift_share_{c.label}"] = round(c.drift_share, 4)
        metrics[f"drifted_columns_{c.label}"] = float(len(c.drifted_columns))
        hot = sorted(controlled & set(c.drifted_columns))
        metrics[f"drifted_controlled_{c.label}"] = float(len(hot))
        line = f"{c.label}: {c.drift_share:.0%} of features drifted"
        if hot:
            line += f", attacker-controlled {', '.join(hot)} among them"
        (problems if c.drift_share > cfg.drift_share_threshold else notes).append(line)
    if context.champion is None or context.champion.train_features is None:
        notes.append("no champion reference (first promotion or none recorded)")
    passed = not problems
    reason = ("; ".join(problems) + f" (threshold {cfg.drift_share_threshold:.0%})") if problems else \
        f"drift within {cfg.drift_share_threshold:.0%}: " + "; ".join(notes)
    thresholds = {"drift_share_threshold": cfg.drift_share_threshold}
    return finish_gate(NAME, passed, metrics, thresholds, reason, context.report_dir / f"{NAME}.json", {
        "gate": NAME,
        "passed": passed,
        "reason": reason,
        "metrics": metrics,
        "thresholds": thresholds,
        "comparisons": [{"label": c.label, "drift_share": c.drift_share, "drifted_columns": list(c.drifted_columns),
                         "n_reference": c.n_reference, "n_current": c.n_current, "html": str(c.report_path)}
                        for c in comparisons],
    }, extra_reports=tuple(c.report_path for c in comparisons))


# Heavy imports: Evidently's data-drift report.
GATE = GateSpec(NAME, run_drift_gate, heavy_imports=("evidently",))
