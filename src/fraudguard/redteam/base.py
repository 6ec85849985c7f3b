"""What every attack takes and returns: the RedTeamContext built once per suite run, and an AttackResult."""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # heavy imports only for type checkers
    import pandas as pd

    from fraudguard.config import Settings
    from fraudguard.features import SplitPlan
    from fraudguard.model import ModelBundle
    from fraudguard.paths import ProjectPaths

# How an attack was caught: the layers of the pipeline, in the order data meets them.
CAUGHT_IMPORT_REFUSED = "import refused"
CAUGHT_QUARANTINED = "quarantined"
CAUGHT_VALIDATION_FLAG = "validation flag"
CAUGHT_GATE = "gate"
CAUGHT_HARMLESS = "harmless"
CAUGHT_ROBUST = "robust"


@dataclass(frozen=True)
class AttackResult:
    """One attack's row of the scorecard.

    `caught_by` lists every layer that caught it ("gate:quality", "quarantined: 120 of 400 rows (...)",
    "harmless", ...); empty means not caught. `metric` names the number compared: `baseline` without the
    attack, `attacked` with it, `change` = attacked - baseline.
    """

    name: str
    kind: str                     # poisoning | evasion | split payments
    caught_by: tuple[str, ...]
    metric: str
    baseline: float
    attacked: float
    summary: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def caught(self) -> bool:
        return bool(self.caught_by)

    @property
    def change(self) -> float:
        return self.attacked - self.baseline

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN becomes null."""
        def clean(value: Any) -> Any:
            if isinstance(value, float) and not math.isfinite(value):
                return None
            if isinstance(value, dict):
                return {str(k): clean(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [clean(v) for v in value]
            return value

        return clean({"name": self.name, "kind": self.kind, "caught": self.caught, "caught_by": list(self.caught_by),
                      "metric": self.metric, "baseline": self.baseline, "attacked": self.attacked,
                      "change": self.change, "summary": self.summary, "details": self.details})


@dataclass(frozen=True)
class RedTeamContext:
    """Everything an attack needs, built once: the target model and the clean pipeline's outputs in a
    scratch project (`base`, never the user's checkout), which poisoning attacks copy and re-run."""

    settings: "Settings"
    target: "ModelBundle"
    target_name: str              # "candidate (models/model.pt)" or "champion (version 3)"
    base: "ProjectPaths"          # scratch project: clean data versioned, validated and featurized
    raw: "pd.DataFrame"           # the clean raw transactions (what an attacker's file starts from)
    validated: "pd.DataFrame"     # the clean validated transactions
    clean_report: dict[str, Any]  # the clean data's validation report (flags to compare with)
    train: "pd.DataFrame"         # the clean feature splits
    test: "pd.DataFrame"
    recent: "pd.DataFrame"
    plan: "SplitPlan"
    work_dir: Path                # where attacks make their own scratch copies and reports
    # gate name -> the target's own verdict on the clean data (filled on demand by control_verdict)
    controls: dict[str, Any] = field(default_factory=dict)

    def attack_dir(self, name: str) -> Path:
        path = self.work_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def clone_base(self, name: str) -> "ProjectPaths":
        """A fresh copy of the scratch project (git, DVC, clean data and features) for one attack."""
        from fraudguard.paths import ProjectPaths

        dest = self.work_dir / name / "project"
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(self.base.root, dest, symlinks=True)
        return ProjectPaths.at(dest)


AttackFn = Callable[[RedTeamContext], AttackResult]
