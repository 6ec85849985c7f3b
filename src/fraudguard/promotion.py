"""Gated promotion and one-command rollback of registered model versions.

`promote_version` runs every gate named in params.yaml `gates` concurrently, records the verdicts on the
version (tags, a markdown table in its description, report files in its run under `gates/`) and moves
`champion` only when every gate passed. `rollback` moves `champion` back to a previous good version after
re-checking its gate verdicts and the sha256 of its weights. Both are audited.
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fraudguard.audit import AuditEntry, AuditEvent, append_audit_entry
from fraudguard.errors import DataError, FraudGuardError, PromotionBlocked, RegistryError
from fraudguard.gates.base import GateContext, GateResult, ModelUnderTest
from fraudguard.paths import ProjectPaths
from fraudguard.registry import (
    BLOCKED_REASONS_TAG,
    CHAMPION_ALIAS,
    GATE_TAG_PREFIX,
    STATUS_TAG,
    check_weights_integrity,
    gate_verdicts,
    get_registered_tags_and_aliases,
    get_version,
    history_from_tags,
    move_champion_locked,
    newest_version,
    registry_lock,
    set_champion,
)

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient

    from fraudguard.config import Settings

logger = logging.getLogger(__name__)

# A gate takes the candidate, the shared context and its own params section (settings.gates.<name>;
# None for a gate with no section); the full settings are context.settings.
GateFn = Callable[[ModelUnderTest, GateContext, Any], GateResult]
# Libraries the standard gates import lazily. Their first import must not race in two gate threads:
# ART's circular imports deadlock (`_DeadlockError: art.attacks.inference`) when imported concurrently.
STANDARD_HEAVY_IMPORTS = ("torch", "sklearn", "art", "evidently")
GATE_SECTION_TITLE = "## Gate verdicts"
_MAX_DESCRIPTION_CHARS = 4900  # model_versions.description is VARCHAR(5000) in SQL stores
_MAX_TAG_REASON_CHARS = 2000


@dataclass(frozen=True)
class PromotionOutcome:
    """What a promotion attempt did: the verdicts, and where `champion` was before and after."""

    version: int
    promoted: bool
    dry_run: bool
    champion_before: int | None
    champion_after: int | None
    results: tuple[GateResult, ...]
    durations_s: Mapping[str, float] = field(default_factory=dict)
    audit: AuditEntry | None = None
    report_dir: Path | None = None

    @property
    def failed_gates(self) -> list[str]:
        return [r.name for r in self.results if not r.passed]


@dataclass(frozen=True)
class RollbackOutcome:
    """A completed rollback: champion moved from `from_version` to `to_version`, and its audit entry."""

    from_version: int
    to_version: int
    reason: str
    audit: AuditEntry
    weights_sha256: str


# --------------------------------------------------------------------------------------- the gates

def discover_gates(settings: "Settings") -> dict[str, GateFn]:
    """gate name -> function, one per `gates` section in params (module fraudguard.gates.<name>).

    A configured gate whose module or function is missing becomes a gate that fails, never a silent skip.
    """
    gates: dict[str, GateFn] = {}
    for name in type(settings.gates).model_fields:
        try:
            module = importlib.import_module(f"fraudguard.gates.{name}")
            gates[name] = getattr(module, f"run_{name}_gate")
        except (ImportError, AttributeError) as exc:
            gates[name] = _missing_gate(name, f"{exc.__class__.__name__}: {exc}")
    return gates


def _missing_gate(name: str, problem: str) -> GateFn:
    def run(candidate: ModelUnderTest, context: GateContext, settings: "Settings") -> GateResult:
        raise RegistryError(f"gate {name!r} is configured in params.yaml but cannot be loaded ({problem})")

    return run


def warm_imports(gates: Mapping[str, GateFn], extra: tuple[str, ...] = ()) -> None:
    """Import, in this thread, the heavy libraries the gates will need (module attribute HEAVY_IMPORTS)."""
    wanted: list[str] = list(extra)
    for fn in gates.values():
        module = sys.modules.get(getattr(fn, "__module__", "") or "")
        wanted.extend(getattr(module, "HEAVY_IMPORTS", ()))
    for name in dict.fromkeys(wanted):
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except ImportError as exc:  # the gate itself will fail with the real error
            logger.warning("cannot pre-import %s for the gates: %s", name, exc)


def _run_one(name: str, fn: GateFn, candidate: ModelUnderTest, context: GateContext,
             section: Any) -> tuple[GateResult, float]:
    start = time.perf_counter()
    try:
        result = fn(candidate, context, section)
        if not isinstance(result, GateResult):
            raise TypeError(f"returned {type(result).__name__}, not GateResult")
    except Exception as exc:  # a crashing gate is a failed gate, never a pass and never a crash of the caller
        logger.error("gate %s raised:\n%s", name, traceback.format_exc())
        result = GateResult(name=name, passed=False, metrics={}, thresholds={},
                            reason=f"gate raised {exc.__class__.__name__}: {exc}")
    return result, time.perf_counter() - start


def run_gates(candidate: ModelUnderTest, context: GateContext, settings: "Settings",
              gates: Mapping[str, GateFn]) -> tuple[tuple[GateResult, ...], dict[str, float]]:
    """Run every gate concurrently, each with its params section; results in the gates' order, with wall times."""
    if not gates:
        raise RegistryError("no gates configured: refusing to promote without any check")
    with ThreadPoolExecutor(max_workers=len(gates), thread_name_prefix="gate") as pool:
        futures = {name: pool.submit(_run_one, name, fn, candidate, context, getattr(settings.gates, name, None))
                   for name, fn in gates.items()}
        done = {name: future.result() for name, future in futures.items()}
    results = tuple(done[name][0] for name in gates)
    durations = {name: round(done[name][1], 3) for name in gates}
    for result in results:
        logger.info("gate %s: %s (%s)", result.name, "passed" if result.passed else "FAILED", result.reason)
    return results, durations


# ------------------------------------------------------------------------------------ the context

def _read_features(path: Path) -> "pd.DataFrame":
    import pandas as pd

    if not path.exists():
        raise DataError(f"{path}: features file not found; run `dvc repro featurize` first")
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read features: {exc}") from exc


def newest_window(features: "pd.DataFrame", window_days: int) -> "pd.DataFrame":
    """The last `window_days` days of a time-ordered frame (by TX_DATETIME), or all of it without one."""
    import pandas as pd

    from fraudguard.data.schema import TX_DATETIME

    if TX_DATETIME not in features.columns or features.empty:
        return features
    times = pd.to_datetime(features[TX_DATETIME])
    start = times.max() - pd.Timedelta(days=window_days)
    return features.loc[times > start]


def build_gate_context(
    client: "MlflowClient", root: Path, settings: "Settings", version: int, report_dir: Path
) -> tuple[ModelUnderTest, GateContext]:
    """The candidate (bundle loaded and sha256-checked) and the GateContext for one promotion.

    The champion, when there is one other than the candidate, comes with its bundle and the features it
    was trained on; a champion that cannot be loaded stops the promotion (RegistryError), never skips it.
    """
    from fraudguard.tracking import load_bundle_for_version, load_reference_features

    name = settings.registry.model_name
    paths = ProjectPaths.at(root)
    mv = get_version(client, name, version)
    work = report_dir / "_downloads"
    candidate = ModelUnderTest(
        bundle=load_bundle_for_version(client, name, version, work / f"v{version}"),
        version=version, run_id=mv.run_id,
    )
    train = _read_features(paths.train_features)
    test = _read_features(paths.test_features)
    champion = None
    champion_version = get_registered_tags_and_aliases(client, name)[1].get(CHAMPION_ALIAS)
    if champion_version is not None and champion_version != version:
        try:
            champion_mv = get_version(client, name, champion_version)
            champion = ModelUnderTest(
                bundle=load_bundle_for_version(client, name, champion_version, work / f"v{champion_version}"),
                version=champion_version, run_id=champion_mv.run_id,
                train_features=load_reference_features(client, name, champion_version),
            )
        except FraudGuardError as exc:
            raise RegistryError(
                f"current champion (version {champion_version}) cannot be loaded for comparison: {exc}; "
                f"repair it with `fraudguard rollback --to <good version>` first"
            ) from exc
    # Drift target: the newest window of ALL traffic after training (featurize's recent.parquet), never the
    # evaluation test set, whose known-compromised cards are removed. Older feature dirs lack the file.
    if paths.recent_features.exists():
        recent = _read_features(paths.recent_features)
    else:
        logger.warning("%s not found (features from an older featurize): the drift gate compares with the "
                       "filtered test set; rerun `dvc repro featurize`", paths.recent_features)
        recent = test
    context = GateContext(
        settings=settings, train_features=train, test_features=test,
        newest_window=newest_window(recent, settings.gates.drift.window_days),
        source_root=Path(root).resolve(), report_dir=report_dir, champion=champion,
    )
    return candidate, context


# ------------------------------------------------------------------------------------ the records

def _fmt_metrics(metrics: Mapping[str, float], limit: int = 4) -> str:
    items = list(metrics.items())[:limit]
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in items)


def gate_table_markdown(version: int, results: tuple[GateResult, ...]) -> str:
    """The gate verdicts as a markdown table, compact enough for a model version description."""
    verdict = "all gates passed" if all(r.passed for r in results) else \
        "BLOCKED by " + ", ".join(r.name for r in results if not r.passed)
    lines = [GATE_SECTION_TITLE, "", f"Version {version}: {verdict}.", "",
             "| Gate | Verdict | Reason | Metrics |", "|---|---|---|---|"]
    budget = max(60, (_MAX_DESCRIPTION_CHARS - 600) // max(1, len(results)) - 80)
    for r in results:
        reason = " ".join(r.reason.split()).replace("|", "/")
        metrics = _fmt_metrics(r.metrics).replace("|", "/")
        if len(reason) > budget * 2 // 3:
            reason = reason[: budget * 2 // 3 - 3] + "..."
        lines.append(f"| {r.name} | {'passed' if r.passed else '**failed**'} | {reason} | {metrics[: budget // 3]} |")
    return "\n".join(lines)


def _describe(client: "MlflowClient", name: str, version: int, existing: str | None, table: str) -> None:
    head = (existing or "").split(GATE_SECTION_TITLE, 1)[0].rstrip()
    room = _MAX_DESCRIPTION_CHARS - len(table) - 2
    head = head[:max(0, room)]
    client.update_model_version(name, str(version), description=(head + "\n\n" + table).strip())


def _write_summary(report_dir: Path, version: int, results: tuple[GateResult, ...],
                   durations: Mapping[str, float]) -> Path:
    summary = {
        "version": version,
        "passed": all(r.passed for r in results),
        "gates": [
            {**{k: v for k, v in asdict(r).items() if k != "report_paths"},
             "report_paths": [str(p) for p in r.report_paths], "duration_s": durations.get(r.name)}
            for r in results
        ],
    }
    path = report_dir / "gate_summary.json"
    path.write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    return path


def _log_reports(client: "MlflowClient", run_id: str | None, results: tuple[GateResult, ...],
                 summary: Path) -> None:
    if not run_id:
        logger.warning("candidate version has no run: gate reports stay local under %s", summary.parent)
        return
    client.log_artifact(run_id, str(summary), "gates")
    for result in results:
        for path in result.report_paths:
            if Path(path).is_file():
                client.log_artifact(run_id, str(path), f"gates/{result.name}")
            else:
                logger.warning("gate %s listed report %s, which does not exist", result.name, path)


def _record_verdicts(client: "MlflowClient", name: str, version: int, results: tuple[GateResult, ...]) -> None:
    for result in results:
        client.set_model_version_tag(name, str(version), f"{GATE_TAG_PREFIX}{result.name}",
                                     "passed" if result.passed else "failed")


# --------------------------------------------------------------------------------------- promote

def promote_version(
    client: "MlflowClient",
    root: Path,
    settings: "Settings",
    version: int | None = None,
    actor: str | None = None,
    promote: bool = True,
    gates: Mapping[str, GateFn] | None = None,
    candidate: ModelUnderTest | None = None,
    context: GateContext | None = None,
) -> PromotionOutcome:
    """Run every gate on `version` (default: newest), record the verdicts, and move `champion` if all pass.

    Any failed gate: champion untouched, version tagged blocked, audit "block", PromotionBlocked raised
    (its `.outcome` holds the verdicts). promote=False is a dry run: gates and tags, no alias move, no audit.
    `gates`, `candidate` and `context` replace discovery and context building (tests, custom pipelines).
    """
    name = settings.registry.model_name
    version = int(version) if version is not None else newest_version(client, name)
    get_version(client, name, version)  # fails early, naming the version, when it does not exist
    champion_before = get_registered_tags_and_aliases(client, name)[1].get(CHAMPION_ALIAS)
    if promote and champion_before == version:
        raise RegistryError(f"version {version} of {name!r} is already the champion")
    report_dir = context.report_dir if context is not None else \
        ProjectPaths.at(root).reports_dir / "gates" / f"v{version}"
    report_dir.mkdir(parents=True, exist_ok=True)
    if candidate is None or context is None:
        built_candidate, built_context = build_gate_context(client, root, settings, version, report_dir)
        candidate = candidate or built_candidate
        context = context or built_context
    discovered = gates is None
    gates = discover_gates(settings) if gates is None else dict(gates)
    warm_imports(gates, STANDARD_HEAVY_IMPORTS if discovered else ())

    results, durations = run_gates(candidate, context, settings, gates)
    return apply_gate_results(client, settings, version, results, durations, report_dir,
                              promote=promote, actor=actor, champion_before=champion_before)


def run_gate(name: str, fn: GateFn, candidate: ModelUnderTest, context: GateContext,
             settings: "Settings") -> tuple[GateResult, float]:
    """One gate with its params section, timed; a gate that raises is a failed result, never a crash."""
    return _run_one(name, fn, candidate, context, getattr(settings.gates, name, None))


def apply_gate_results(
    client: "MlflowClient",
    settings: "Settings",
    version: int,
    results: tuple[GateResult, ...],
    durations: Mapping[str, float],
    report_dir: Path,
    *,
    promote: bool = True,
    actor: str | None = None,
    champion_before: int | None = None,
) -> PromotionOutcome:
    """Record gate verdicts on `version` (tags, description table, reports on its run) and move
    `champion` if every gate passed; otherwise tag it blocked, audit the block and raise PromotionBlocked.

    Split from promote_version so an orchestrator can run each gate as its own task.
    """
    if not results:
        raise RegistryError("no gate results: refusing to promote without any check")
    name = settings.registry.model_name
    version = int(version)
    mv = get_version(client, name, version)
    if champion_before is None:
        champion_before = get_registered_tags_and_aliases(client, name)[1].get(CHAMPION_ALIAS)
    if promote and champion_before == version:
        raise RegistryError(f"version {version} of {name!r} is already the champion")
    summary = _write_summary(report_dir, version, results, durations)
    _record_verdicts(client, name, version, results)
    _describe(client, name, version, mv.description, gate_table_markdown(version, results))
    _log_reports(client, mv.run_id, results, summary)

    verdicts = {r.name: "passed" if r.passed else "failed" for r in results}
    failed = [r for r in results if not r.passed]
    if failed:
        reasons = [f"{r.name}: {r.reason}" for r in failed]
        client.set_model_version_tag(name, str(version), STATUS_TAG, "blocked")
        client.set_model_version_tag(name, str(version), BLOCKED_REASONS_TAG,
                                     "; ".join(reasons)[:_MAX_TAG_REASON_CHARS])
        audit = None
        if promote:
            audit = append_audit_entry(client, name, AuditEvent(
                action="block", from_version=champion_before, to_version=version,
                reasons=tuple(reasons), gates=verdicts, actor=actor))
        outcome = PromotionOutcome(version, False, not promote, champion_before, champion_before,
                                   results, durations, audit, report_dir)
        blocked = PromotionBlocked(version, [r.name for r in failed], [r.reason for r in failed])
        blocked.outcome = outcome  # type: ignore[attr-defined]  # the CLI prints the table from it
        raise blocked

    # A pass clears a stale block left by an earlier attempt on the same version.
    tags = get_version(client, name, version).tags or {}
    for key in (BLOCKED_REASONS_TAG,) + ((STATUS_TAG,) if tags.get(STATUS_TAG) == "blocked" else ()):
        if key in tags:
            client.delete_model_version_tag(name, str(version), key)
    if not promote:
        return PromotionOutcome(version, False, True, champion_before, champion_before, results, durations,
                                None, report_dir)
    move = set_champion(client, name, version, action="promote", actor=actor,
                        reasons=("all gates passed",), gates=verdicts, move_challenger=True)
    return PromotionOutcome(version, True, False, move.change.previous, version, results, durations,
                            move.audit, report_dir)


# -------------------------------------------------------------------------------------- rollback

def previous_champion(history: list, current: int) -> int | None:
    """The most recent earlier champion that was not itself rolled back from (and not re-promoted since)."""
    rolled_back: set[int] = set()
    for change in history:
        if change.action == "rollback" and change.previous is not None:
            rolled_back.add(change.previous)
        elif change.action == "promote":
            rolled_back.discard(change.version)
    for change in reversed(history):
        if change.version != current and change.version not in rolled_back:
            return change.version
    return None


def rollback(
    client: "MlflowClient",
    settings: "Settings",
    to_version: int | None = None,
    reason: str | None = None,
    actor: str | None = None,
) -> RollbackOutcome:
    """Move `champion` back to the previous good champion (or `to_version`), audited.

    The target must have passed every recorded gate and its weights must still match `artifact.sha256`;
    otherwise RegistryError and nothing changes. No torch/ART/Evidently on this path.
    """
    name = settings.registry.model_name
    # Checks and move under one lock hold: the registry is read once, and cannot change in between.
    with registry_lock(client):
        tags, aliases = get_registered_tags_and_aliases(client, name)
        current = aliases.get(CHAMPION_ALIAS)
        if current is None:
            raise RegistryError(f"model {name!r} has no champion to roll back from")
        target = int(to_version) if to_version is not None else previous_champion(history_from_tags(tags), current)
        if target is None:
            raise RegistryError(
                f"model {name!r}: no earlier champion in the history to roll back to from version {current}; "
                "name one with --to"
            )
        if target == current:
            raise RegistryError(f"version {target} of {name!r} is already the champion")
        mv = get_version(client, name, target)
        verdicts = gate_verdicts(mv)
        not_passed = sorted(g for g, v in verdicts.items() if v != "passed")
        if not verdicts or not_passed:
            what = f"failed gate(s) {', '.join(not_passed)}" if verdicts else "no recorded gate verdicts"
            raise RegistryError(f"refusing to roll back {name!r} to version {target}: it has {what}")
        if (mv.tags or {}).get(STATUS_TAG) == "blocked":
            raise RegistryError(f"refusing to roll back {name!r} to version {target}: it is tagged blocked")
        digest = check_weights_integrity(client, mv)
        reason = reason or f"rollback from version {current}"
        move = move_champion_locked(client, name, target, tags, aliases, action="rollback", actor=actor,
                                    reasons=(reason,), gates=verdicts)
    return RollbackOutcome(from_version=current, to_version=target, reason=reason, audit=move.audit,
                           weights_sha256=digest)
