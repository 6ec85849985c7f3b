"""What every gate takes and returns, and the contract every gate follows.

A gate is one module of fraudguard.gates with a `GATE` (a GateSpec: name, heavy imports, run function),
listed in fraudguard.gates.table; its params section is `gates.<name>`; its run function ends in
`finish_gate`, which writes `<name>.json`, logs the verdict and returns the GateResult.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

from fraudguard.files import write_json

if TYPE_CHECKING:  # heavy imports only for type checkers
    import pandas as pd

    from fraudguard.config import GatesSettings, Settings
    from fraudguard.model import ModelBundle
    from fraudguard.policy import CommittedTree


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
    # DVC's directory md5 of the data/raw the version was gated on (the champion's, from its signed attestation).
    gated_data_md5: str | None = None


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
    # The commit a promotion's policy of record came from: reviewed files (acknowledgements) are read there, not
    # from the working tree. None: the working tree (dry runs, tests).
    committed: "CommittedTree | None" = None


def finish_gate(name: str, passed: bool, metrics: dict[str, float], thresholds: dict[str, float], reason: str,
                report_json: Path, report: dict[str, Any], extra_reports: tuple[Path, ...] = ()) -> GateResult:
    """Write the gate's JSON report, log its verdict, and return its GateResult (report listed first)."""
    write_json(report_json, report)
    logging.getLogger(f"fraudguard.gates.{name}").info(
        "%s gate %s: %s", name, "passed" if passed else "BLOCKED", reason)
    return GateResult(name=name, passed=passed, metrics=metrics, thresholds=thresholds, reason=reason,
                      report_paths=(report_json, *extra_reports))


# The run function: the candidate, the shared context and the gate's own params section.
GateFn = Callable[[ModelUnderTest, GateContext, Any], GateResult]


@runtime_checkable
class Gate(Protocol):
    """What the promotion needs of a gate."""

    @property
    def name(self) -> str:
        """Its params section (gates.<name>), its verdict tag (gate.<name>) and its report (<name>.json)."""
        ...

    @property
    def heavy_imports(self) -> tuple[str, ...]:
        """Libraries its run imports lazily; imported once before gates run in threads, since a first
        import racing in two threads can deadlock (ART's circular imports do)."""
        ...

    def section(self, gates: "GatesSettings") -> Any:
        """Its own params section (None for a gate without one)."""
        ...

    def run(self, candidate: ModelUnderTest, context: GateContext, section: Any) -> GateResult:
        """Its verdict on the candidate, returned through finish_gate."""
        ...


@dataclass(frozen=True)
class GateSpec:
    """A gate as a module declares it (`GATE = GateSpec(...)`): satisfies the Gate protocol."""

    name: str
    run_fn: GateFn
    heavy_imports: tuple[str, ...] = ()

    def section(self, gates: "GatesSettings") -> Any:
        return getattr(gates, self.name, None)

    def run(self, candidate: ModelUnderTest, context: GateContext, section: Any) -> GateResult:
        return self.run_fn(candidate, context, section)
