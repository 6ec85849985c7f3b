"""The table of gates: every gate the promotion runs, by name, in the order params.yaml lists them.

Explicit rather than discovered by module name, so a reader sees every gate in one place and a type
checker sees what each one is. Adding a gate: one module with a `GATE`, one line here, one section under
`gates` in params.yaml (config.GatesSettings); a unit test checks the table and the settings agree.
"""

from __future__ import annotations

from fraudguard.gates import data_changes, drift, privacy, quality, robustness, static_analysis
from fraudguard.gates.base import Gate

GATE_TABLE: dict[str, Gate] = {gate.name: gate for gate in (
    quality.GATE,
    robustness.GATE,
    drift.GATE,
    static_analysis.GATE,
    privacy.GATE,
    data_changes.GATE,
)}
