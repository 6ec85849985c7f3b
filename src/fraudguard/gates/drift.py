"""Drift gate: Evidently data-drift between the candidate's training features and (a) the champion's
training features, (b) the newest data window.

The share of drifted model features above `drift_share_threshold` in either comparison blocks; drifted
attacker-controlled features (threat_model.controlled_features) are named in the reason, since a shift
there may be an evasion campaign rather than a change of customers.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fraudguard.errors import DataError
from fraudguard.gates.base import GateContext, GateResult, GateSpec, ModelUnderTest, finish_gate

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor
    from types import ModuleType

    import pandas as pd

    from fraudguard.config import DriftGateSettings
    from fraudguard.priority import BackgroundWork

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
    report_path: Path | None  # None: not compared (too few rows; fraudguard.monitoring)


def _model_frame(frame: "pd.DataFrame", features: list[str], what: str) -> "pd.DataFrame":
    missing = [f for f in features if f not in frame.columns]
    if missing:
        raise DataError(f"drift gate: {what} lacks model feature column(s) {missing}")
    out = frame[features]
    if len(out) > MAX_ROWS:
        out = out.sample(n=MAX_ROWS, random_state=SAMPLE_SEED)
    return out.astype("float64").reset_index(drop=True)


@dataclass(frozen=True)
class _DriftJob:
    """One comparison's inputs, already reduced to the model features (picklable for a separate interpreter)."""

    reference: "pd.DataFrame"
    current: "pd.DataFrame"
    features: list[str]
    drift_share: float
    report_path: Path
    label: str


def _job(reference: "pd.DataFrame", current: "pd.DataFrame", features: list[str], drift_share: float,
         report_path: Path, label: str) -> _DriftJob:
    ref = _model_frame(reference, features, f"{label} reference")
    cur = _model_frame(current, features, f"{label} current data")
    if ref.empty or cur.empty:
        raise DataError(f"drift gate: {label}: empty {'reference' if ref.empty else 'current'} data")
    return _DriftJob(ref, cur, features, drift_share, report_path, label)


def _evidently_drift(job: _DriftJob) -> DriftComparison:
    """Evidently's DataDriftPreset on one job; saves the HTML report."""
    _wait_for_evidently()
    from evidently import Report
    from evidently.presets import DataDriftPreset

    snapshot = Report([DataDriftPreset(columns=job.features, drift_share=job.drift_share)], include_tests=True).run(
        reference_data=job.reference, current_data=job.current
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
        share = len(drifted) / len(job.features)
    job.report_path.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(job.report_path))
    return DriftComparison(job.label, share, tuple(sorted(drifted)), len(job.reference), len(job.current),
                           job.report_path)


# The interpreter start_evidently_interpreter() started ahead, Evidently loaded in it (process-wide, like MLflow's
# tracking URI: set by an entry point, the flow, never by library code).
_ready_interpreter: "ProcessPoolExecutor | None" = None


# In that interpreter: Evidently's import running ahead (see _load_evidently).
_evidently_loading: "BackgroundWork[ModuleType] | None" = None


def _load_evidently() -> None:
    """Start Evidently's import at lower priority (fraudguard.priority) and return: it runs beside the training;
    the reports later run in this interpreter's main thread at normal priority (_wait_for_evidently)."""
    global _evidently_loading
    import importlib

    from fraudguard.priority import BackgroundWork

    _evidently_loading = BackgroundWork(lambda: importlib.import_module("evidently"), name="evidently-import").start()


def _wait_for_evidently() -> None:
    """The reports need Evidently now: its import, if still running, goes on at this thread's priority where the
    system allows it (fraudguard.priority), and this thread waits for it rather than import beside it."""
    if _evidently_loading is not None:
        _evidently_loading.hurry()
        try:
            _evidently_loading.result()
        except Exception as exc:  # the import below meets the same error and raises it
            logger.debug("loading Evidently ahead failed: %s", exc)


def _new_interpreter() -> "ProcessPoolExecutor":
    from fraudguard.child_interpreter import spawn_interpreter

    # spawn, not fork: the caller has threads (Prefect's, the other gates'), which fork does not copy safely;
    # and it exits when this process dies (a kill -9 or a crash of the flow must not leave it waiting).
    return spawn_interpreter()


def start_evidently_interpreter() -> None:
    """Start now the interpreter the next run_comparisons will use, and load Evidently in it: for an entry point with idle
    time ahead (the flow, as the training starts: one torch thread leaves the second core free). Does nothing
    when this interpreter has Evidently loaded (it then runs the reports) or one was started already."""
    global _ready_interpreter
    import multiprocessing

    if _ready_interpreter is not None or "evidently" in sys.modules or multiprocessing.current_process().daemon:
        return
    import atexit

    interpreter = _new_interpreter()
    interpreter.submit(_load_evidently)
    atexit.register(interpreter.shutdown, wait=False, cancel_futures=True)
    _ready_interpreter = interpreter


def _stop_now(interpreter: "ProcessPoolExecutor") -> None:
    """Stop an interpreter started for one gate run, its reports written: terminated, not asked to exit, as a
    normal exit finalizes Evidently's modules (~1.5 s) and this process's own exit waits for it (the drift
    gate is often the last to finish)."""
    for process in list((getattr(interpreter, "_processes", None) or {}).values()):  # stdlib's: no public API in 3.11
        process.terminate()
    interpreter.shutdown(wait=False)


def run_comparisons(jobs: list[_DriftJob], here: bool | None = None) -> list[DriftComparison]:
    """Evidently on each job: in this interpreter when it has Evidently loaded already (or `here` is True),
    otherwise (or `here` is False) in one new interpreter for all of them.

    Importing Evidently takes ~3.6 s of pure Python (its top-level package loads every metric, preset and UI
    module), and its report is pandas/SciPy work: in this interpreter both hold the lock the other gates
    (threads of the same flow) and the training before them need. In a separate interpreter they run beside
    them on the second core. Same inputs, same seeded sampling: the same figures either way.
    """
    global _ready_interpreter
    import multiprocessing

    # A daemonic process (a Dask worker's, when the gates run on prefect-dask) may not start children.
    if here or multiprocessing.current_process().daemon or (
            here is None and "evidently" in sys.modules and _ready_interpreter is None):
        return [_evidently_drift(job) for job in jobs]
    if _ready_interpreter is not None:
        from concurrent.futures.process import BrokenProcessPool

        ready, _ready_interpreter = _ready_interpreter, None
        try:
            return list(ready.map(_evidently_drift, jobs))
        except BrokenProcessPool as exc:  # the interpreter died (killed, out of memory): a new one below
            logger.warning("the interpreter started for Evidently is gone (%s): starting another", exc)
        finally:
            _stop_now(ready)
    with _new_interpreter() as interpreter:
        return list(interpreter.map(_evidently_drift, jobs))


def compare_features(
    reference: "pd.DataFrame", current: "pd.DataFrame", features: list[str], drift_share: float,
    report_path: Path, label: str,
) -> DriftComparison:
    """Run Evidently's DataDriftPreset on the model features (<= 20k rows each); save the HTML report."""
    return run_comparisons([_job(reference, current, features, drift_share, report_path, label)])[0]


def run_drift_gate(candidate: ModelUnderTest, context: GateContext, settings: "DriftGateSettings") -> GateResult:
    """Fail when the drifted-feature share against the champion's data or the newest window exceeds the threshold.

    `settings` is the gates.drift section; model features and the threat model come from context.settings.
    """
    cfg = settings
    features = list(context.settings.model.features)
    controlled = set(context.settings.threat_model.controlled_features)
    jobs: list[_DriftJob] = []
    if context.champion is not None and context.champion.train_features is not None:
        jobs.append(_job(
            context.champion.train_features, context.train_features, features, cfg.drift_share_threshold,
            context.report_dir / "drift_vs_champion.html", "champion"))
    jobs.append(_job(
        context.train_features, context.newest_window, features, cfg.drift_share_threshold,
        context.report_dir / "drift_vs_newest_window.html", "newest_window"))
    thresholds = {"drift_share_threshold": cfg.drift_share_threshold, "min_rows": float(cfg.min_rows)}
    too_few = [f"{job.label}: {len(job.reference)} reference and {len(job.current)} current row(s)"
               for job in jobs if min(len(job.reference), len(job.current)) < cfg.min_rows]
    if too_few:
        reason = f"too few rows to judge drift ({'; '.join(too_few)}; min_rows {cfg.min_rows})"
        counts = {f"n_current_{job.label}": float(len(job.current)) for job in jobs}
        return finish_gate(NAME, False, counts, thresholds, reason, context.report_dir / f"{NAME}.json",
                           {"gate": NAME, "passed": False, "reason": reason, "metrics": counts,
                            "thresholds": thresholds})
    comparisons = run_comparisons(jobs)

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


# No heavy imports here: Evidently is loaded in the interpreter that runs the reports (run_comparisons).
GATE = GateSpec(NAME, run_drift_gate, heavy_imports=())
