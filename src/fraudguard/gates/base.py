"""What every gate takes and returns."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fraudguard.files import write_json

if TYPE_CHECKING:  # heavy imports only for type checkers
    import pandas as pd

    from fraudguard.config import Settings
    from fraudguard.model import ModelBundle


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict: numbers measured, thresholds applied, a one-line reason, reports written."""

    name: str
    passed: bool
    metrics: dict[str, float]
    thresholds: dict[str, float]
    reason: str
    report_paths: tuple[Path, ...] = ()


@dataclass(frozen=True)
class ModelUnderTest:
    """A model a gate can score and attack: the candidate, or the current champion."""

    bundle: "ModelBundle"
    version: int | None = None
    run_id: str | None = None
    # The training features this model was fitted on (the drift reference), when known.
    train_features: "pd.DataFrame | None" = None


@dataclass(frozen=True)
class GateContext:
    """Everything a gate may need beyond the candidate; built once per promotion."""

    settings: "Settings"
    train_features: "pd.DataFrame"     # the candidate's training split (privacy members)
    test_features: "pd.DataFrame"      # the current time-ordered test split
    newest_window: "pd.DataFrame"      # newest data window (drift target)
    source_root: Path                  # code the candidate was built from (static analysis)
    report_dir: Path                   # where gates write their reports
    champion: ModelUnderTest | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def finish_gate(name: str, passed: bool, metrics: dict[str, float], thresholds: dict[str, float], reason: str,
                report_json: Path, report: dict[str, Any], extra_reports: tuple[Path, ...] = ()) -> GateResult:
    """Write the gate's JSON report, log its verdict, and return its GateResult (report listed first)."""
    write_json(report_json, report)
    logging.getLogger(f"fraudguard.gates.{name}").info(
        "%s gate %s: %s", name, "passed" if passed else "BLOCKED", reason)
    return GateResult(name=name, passed=passed, metrics=metrics, thresholds=thresholds, reason=reason,
                      report_paths=(report_json, *extra_reports))
