"""The one promotion API, used by the CLI and the Prefect flow alike, and the one rollback.

    run = prepare(client, root, settings, version)      # recover, policy of record, candidate, champion
    results = [run_gate(run, name) for name in run.gate_names]   # (the flow runs each as its own task)
    outcome = decide(client, run, results)              # verdicts recorded; blocked flag, or champion moved

`decide` signs a pass attestation (fraudguard.attestation) and moves `champion` through the journaled
`fraudguard.registry.move_champion`, compare-and-set against the champion the gates compared with. A
blocked candidate is an outcome (`blocked=True`), not an exception. `rollback` moves back to a previous
champion only on its signed pass attestation and the files it will serve; tags are display only.
"""

from __future__ import annotations

import copy
import importlib
import logging
import shutil
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fraudguard.attestation import (
    REFERENCE_SUBJECT,
    check_policy_coverage,
    check_served_copy,
    load_attestation,
    load_attested_bundle,
    load_served_bundle,
    promotion_statement,
    served_copy_digests,
    sign_and_store,
)
from fraudguard.audit import AuditEntry, current_actor
from fraudguard.errors import DataError, FraudGuardError, ModelError, PolicyError, RegistryError
from fraudguard.faults import crash_point
from fraudguard.files import write_json
from fraudguard.gates.base import GateContext, GateFn, GateResult, ModelUnderTest
from fraudguard.names import DATA_MD5_TAG
from fraudguard.paths import ProjectPaths
from fraudguard.policy import GatePolicy, committed_policy, policy_from_settings
from fraudguard.reporting import GATE_SECTION_TITLE, MAX_DESCRIPTION_CHARS, champion_label, gate_table_markdown
from fraudguard.registry import (
    BLOCKED_REASONS_TAG,
    GATE_TAG_PREFIX,
    STATUS_BLOCKED,
    STATUS_TAG,
    ChampionChange,
    RecoveryOutcome,
    RegistryState,
    alias_drift_problem,
    committed_attestation_for,
    get_version,
    move_champion,
    newest_verdict,
    newest_version,
    previous_champion,
    read_state,
    record_block,
    recover,
    recover_locked,
    registry_lock,
)
from fraudguard.signing import Signer, Verifier, load_signer, load_verifier

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient

    from fraudguard.config import GatesSettings, Settings

logger = logging.getLogger(__name__)

# Libraries the standard gates import lazily (the union of the table's heavy_imports, kept as a constant so
# the benchmark can name it without importing the gates). Their first import must not race in two gate
# threads: ART's circular imports deadlock (`_DeadlockError: art.attacks.inference`) when imported concurrently.
# Not Evidently: the drift gate runs it in its own interpreter (gates/drift.py, run_comparisons).
STANDARD_HEAVY_IMPORTS = ("torch", "sklearn", "art")
_MAX_TAG_REASON_CHARS = 2000


@dataclass(frozen=True)
class GateRun:
    """One prepared promotion: what is gated, against which champion, under which policy."""

    model_name: str
    version: int
    champion_before: int | None
    candidate: ModelUnderTest
    context: GateContext
    policy: GatePolicy
    gates: Mapping[str, GateFn]
    report_dir: Path
    promote: bool
    recovery: tuple[RecoveryOutcome, ...] = ()
    # The subject digests of the files the gates tested (the served copy the candidate was loaded from), with
    # the run's drift reference sample: what a pass attestation signs. None for a dry run given a candidate.
    candidate_digests: Mapping[str, str] | None = None
    # sha256 of the candidate's signed build provenance (fraudguard.provenance), checked against those digests.
    provenance: str | None = None

    @property
    def gate_names(self) -> list[str]:
        return list(self.gates)


@dataclass(frozen=True)
class PromotionOutcome:
    """What a promotion attempt did: the verdicts, and where `champion` was before and after."""

    version: int
    promoted: bool
    dry_run: bool
    blocked: bool
    champion_before: int | None
    champion_after: int | None
    results: tuple[GateResult, ...]
    durations_s: Mapping[str, float] = field(default_factory=dict)
    audit: AuditEntry | None = None
    report_dir: Path | None = None
    attestation: str = ""
    policy_source: str = ""
    approver: str = ""

    @property
    def failed_gates(self) -> list[str]:
        return [r.name for r in self.results if not r.passed]

    def summary(self) -> str:
        """One line: the version and what happened to it."""
        before = champion_label(self.champion_before)
        if self.blocked:
            reasons = "; ".join(f"{r.name}: {r.reason}" for r in self.results if not r.passed)
            return (f"version {self.version} BLOCKED by {', '.join(self.failed_gates)}; champion unchanged "
                    f"({before}): {reasons}")
        if self.dry_run:
            return f"version {self.version} passed every gate (dry run); champion unchanged ({before})"
        return f"version {self.version} promoted: champion {before} -> v{self.champion_after}"


@dataclass(frozen=True)
class RollbackOutcome:
    """A rollback: champion moved from `from_version` to `to_version`, and its audit entry."""

    from_version: int | None
    to_version: int | None
    reason: str
    audit: AuditEntry
    weights_sha256: str = ""
    completed_interrupted: bool = False


# --------------------------------------------------------------------------------------- the gates

def discover_gates(gates: "GatesSettings") -> dict[str, GateFn]:
    """gate name -> run function, one per gate of params' `gates` section, from the table of gates
    (fraudguard.gates.table).

    A configured gate the table lacks becomes a gate that fails, never a silent skip.
    """
    from fraudguard.gates.table import GATE_TABLE

    found: dict[str, GateFn] = {}
    for name in type(gates).model_fields:
        gate = GATE_TABLE.get(name)
        found[name] = gate.run if gate is not None else _missing_gate(name, "not in fraudguard.gates.table")
    return found


def _missing_gate(name: str, problem: str) -> GateFn:
    def run(candidate: ModelUnderTest, context: GateContext, settings: "Settings") -> GateResult:
        raise RegistryError(f"gate {name!r} is configured in params.yaml but cannot be loaded ({problem})")

    return run


def warm_imports(gates: Mapping[str, GateFn], extra: tuple[str, ...] = ()) -> None:
    """Import, in this thread, the heavy libraries the gates will need (each table gate's heavy_imports)."""
    from fraudguard.gates.table import GATE_TABLE

    wanted: list[str] = list(extra)
    for name, fn in gates.items():
        gate = GATE_TABLE.get(name)
        if gate is not None and fn == gate.run:
            wanted.extend(gate.heavy_imports)
    for name in dict.fromkeys(wanted):
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except ImportError as exc:  # the gate itself will fail with the real error
            logger.warning("cannot pre-import %s for the gates: %s", name, exc)


def load_gate_libraries(gates: "GatesSettings") -> None:
    """Import every configured gate and the libraries it needs (what `prepare` does before the gates run),
    so a caller with idle time (the flow while DVC runs the stages) can do it ahead."""
    warm_imports(discover_gates(gates), STANDARD_HEAVY_IMPORTS)


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


# ------------------------------------------------------------------------------------ the context

def _read_features(path: Path) -> "pd.DataFrame":
    import pandas as pd

    if not path.exists():
        raise DataError(f"{path}: features file not found; run `dvc repro featurize` first")
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read features: {exc}") from exc


def build_gate_context(
    client: "MlflowClient", root: Path, settings: "Settings", version: int, report_dir: Path,
    champion_version: int | None, champion_attestation: tuple[str, Verifier] | None = None,
) -> tuple[ModelUnderTest, GateContext, dict[str, str]]:
    """The candidate, the GateContext for one promotion, and the digests of the files the candidate is.

    The candidate is loaded from the files `models:/<name>/<version>` serves (attestation.load_served_bundle),
    the copy a pass attestation signs; the run's bundle/ folder is another copy and is not what is gated.

    The champion, when there is one other than the candidate, comes with its bundle and the features it
    was trained on; a champion that cannot be loaded stops the promotion (RegistryError), never skips it.
    With `champion_attestation` (the digest the audit log commits for it, and the key to open it) the champion
    is loaded as the gateway loads it: its served files and drift reference checked against that signed
    attestation, so a worse copy swapped into the store cannot make a candidate look non-inferior. Without it
    (a dry run on a host with no verify key) the champion is checked against its version's tags only.
    """
    from fraudguard.features import newest_window
    from fraudguard.tracking import WEIGHTS_SHA_TAG, load_bundle_for_version, load_reference_features

    name = settings.registry.model_name
    paths = ProjectPaths.at(root)
    mv = get_version(client, name, version)
    work = report_dir / "_downloads"
    served = work / f"v{version}-served"
    if served.exists():
        shutil.rmtree(served)  # a copy left by an earlier attempt is not what the store serves now
    bundle, digests = load_served_bundle(client, name, version, served,
                                         expected_weights_sha256=(mv.tags or {}).get(WEIGHTS_SHA_TAG))
    candidate = ModelUnderTest(bundle=bundle, version=version, run_id=mv.run_id)
    train = _read_features(paths.train_features)
    test = _read_features(paths.test_features)
    champion = None
    if champion_version is not None and champion_version != version:
        try:
            champion_mv = get_version(client, name, champion_version)
            champion_dir = work / f"v{champion_version}"
            if champion_dir.exists():
                shutil.rmtree(champion_dir)  # never reuse a copy an earlier attempt downloaded
            if champion_attestation is not None:
                digest, verifier = champion_attestation
                champion_bundle, attested = load_attested_bundle(client, champion_mv, digest, verifier, champion_dir)
                reference_sha256: str | None = attested.subjects.get(REFERENCE_SUBJECT)
                gated_data = _gated_data_md5(attested.predicate)
            else:
                logger.warning("model %r version %s: the champion compared with is checked against its version's "
                               "tags only (no verify key for its signed attestation)", name, champion_version)
                champion_bundle = load_bundle_for_version(client, name, champion_version, champion_dir)
                reference_sha256 = None
                gated_data = (champion_mv.tags or {}).get(DATA_MD5_TAG)  # a claim: dry run only
            champion = ModelUnderTest(
                bundle=champion_bundle, version=champion_version, run_id=champion_mv.run_id,
                train_features=load_reference_features(client, name, champion_version,
                                                       expected_sha256=reference_sha256),
                gated_data_md5=gated_data,
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
        newest_window=newest_window(recent, settings.gates.drift.window_days),  # features' one definition
        source_root=Path(root).resolve(), report_dir=report_dir, champion=champion,
    )
    return candidate, context, digests


# ------------------------------------------------------------------------------------ the records

def _describe(client: "MlflowClient", name: str, version: int, existing: str | None, table: str) -> None:
    head = (existing or "").split(GATE_SECTION_TITLE, 1)[0].rstrip()
    room = MAX_DESCRIPTION_CHARS - len(table) - 2
    head = head[:max(0, room)]
    client.update_model_version(name, str(version), description=(head + "\n\n" + table).strip())


def _write_summary(report_dir: Path, version: int, results: tuple[GateResult, ...],
                   durations: Mapping[str, float], policy: GatePolicy) -> Path:
    summary = {
        "version": version,
        "policy": {"source": policy.source, "sha256": policy.sha256},
        "passed": all(r.passed for r in results),
        "gates": [
            {**{k: v for k, v in asdict(r).items() if k != "report_paths"},
             "report_paths": [str(p) for p in r.report_paths], "duration_s": durations.get(r.name)}
            for r in results
        ],
    }
    return write_json(report_dir / "gate_summary.json", summary, default=str)


def _log_reports(client: "MlflowClient", run_id: str | None, results: tuple[GateResult, ...],
                 summary: Path) -> None:
    if not run_id:
        logger.warning("candidate version has no run: gate reports stay local under %s", summary.parent)
        return
    client.log_artifact(run_id, str(summary), "gates")
    _log_gate_metrics(client, run_id, results)
    for result in results:
        for path in result.report_paths:
            if Path(path).is_file():
                client.log_artifact(run_id, str(path), f"gates/{result.name}")
            else:
                logger.warning("gate %s listed report %s, which does not exist", result.name, path)


def _log_gate_metrics(client: "MlflowClient", run_id: str, results: tuple[GateResult, ...]) -> None:
    """Every gate's numbers as run metrics `gate.<name>.<metric>` (and `gate.<name>.passed` 0/1), so MLflow's
    compare view shows robust recall per attack and epsilon, attack AUC and drift share across versions."""
    import math
    import time as _time

    from mlflow.entities import Metric

    now = int(_time.time() * 1000)
    metrics = []
    for result in results:
        metrics.append(Metric(f"gate.{result.name}.passed", float(result.passed), now, 0))
        for key, value in result.metrics.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            if math.isfinite(number):
                safe = "".join(c if c.isalnum() or c in "_-./ " else "_" for c in str(key))[:200]
                metrics.append(Metric(f"gate.{result.name}.{safe}", number, now, 0))
    for start in range(0, len(metrics), 900):  # MLflow takes at most 1000 metrics per batch
        client.log_batch(run_id, metrics=metrics[start:start + 900])


def _record_verdicts(client: "MlflowClient", name: str, version: int, results: tuple[GateResult, ...]) -> None:
    for result in results:
        client.set_model_version_tag(name, str(version), f"{GATE_TAG_PREFIX}{result.name}",
                                     "passed" if result.passed else "failed")


# ------------------------------------------------------------------------------ the promotion API

def _keys(signer: Signer | None, verifier: Verifier | None) -> tuple[Signer, Verifier]:
    signer = signer or load_signer()
    return signer, verifier or signer.verifier()


def prepare(
    client: "MlflowClient",
    root: Path,
    settings: "Settings",
    version: int | None = None,
    *,
    promote: bool = True,
    policy: GatePolicy | None = None,
    gates: Mapping[str, GateFn] | None = None,
    candidate: ModelUnderTest | None = None,
    context: GateContext | None = None,
    signer: Signer | None = None,
    verifier: Verifier | None = None,
    workspace: Path | None = None,
) -> GateRun:
    """Everything the gates need for `version` (default: newest), and the champion they compare against.

    workspace: where the stages wrote the features the gates read (a run's scratch copy; default root).

    A half-done move left by a crash is finished or reverted first. For a real promotion the policy is the
    committed params.yaml (PolicyError when the working tree departs from it); a dry run may use the
    working tree. `gates`, `candidate`, `context` and `policy` replace discovery (tests, custom pipelines).
    """
    name = settings.registry.model_name
    recovery: tuple[RecoveryOutcome, ...] = ()
    if promote:
        signer, verifier = _keys(signer, verifier)
        recovery = tuple(recover(client, name, signer, verifier))
    if policy is None:
        policy = committed_policy(root, settings) if promote else policy_from_settings(settings, "working tree")
    version = int(version) if version is not None else newest_version(client, name)
    get_version(client, name, version)  # fails early, naming the version, when it does not exist
    state = read_state(client, name, verifier or load_verifier()) if promote else None
    if state is not None:
        drift = alias_drift_problem(state)
        if drift:
            raise RegistryError(f"model {name!r}: {drift}; run `fraudguard audit recover` first")
    from fraudguard.registry import get_champion_version

    champion_before = state.champion if state is not None else get_champion_version(client, name)
    if promote and champion_before == version:
        raise RegistryError(f"version {version} of {name!r} is already the champion")
    report_dir = context.report_dir if context is not None else \
        ProjectPaths.at(root).reports_dir / "gates" / f"v{version}"
    report_dir.mkdir(parents=True, exist_ok=True)
    candidate_digests: dict[str, str] | None = None
    context_from_checkout = context is None
    if candidate is None or context is None:
        built_candidate, built_context, built_digests = build_gate_context(
            client, workspace or root, settings, version, report_dir, champion_before,
            _champion_attestation(client, name, state, champion_before, verifier))
        if candidate is None:
            candidate, candidate_digests = built_candidate, built_digests
        context = context or built_context
    if candidate_digests is None and promote:
        # A ready-made candidate (tests, custom pipelines): sign what the store served when the gates started.
        candidate_digests = served_copy_digests(client, name, version)
    provenance = _candidate_provenance(client, name, version, candidate_digests, verifier, promote)
    if candidate_digests is not None and promote:
        from fraudguard.tracking import checked_reference_sha256, reference_sha256

        # The monitor's drift reference, signed beside: when the gates read the checkout, it must be the sample
        # of the checkout's training features that registration draws (not a file swapped into the store).
        reference = (checked_reference_sha256(client, name, version, context.train_features,
                                              settings.registry.reference_sample_rows,
                                              settings.registry.reference_sample_seed)
                     if context_from_checkout else reference_sha256(client, name, version))
        if reference is not None:
            candidate_digests = {**candidate_digests, REFERENCE_SUBJECT: reference}
    if promote and policy.committed is not None and context.committed is None:
        # The reviewed files a gate acts on are read at the policy's commit, like the policy itself.
        context = replace(context, committed=policy.committed)
    discovered = gates is None
    gates = discover_gates(settings.gates) if gates is None else dict(gates)
    warm_imports(gates, STANDARD_HEAVY_IMPORTS if discovered else ())
    return GateRun(model_name=name, version=version, champion_before=champion_before, candidate=candidate,
                   context=context, policy=policy, gates=gates, report_dir=report_dir, promote=promote,
                   recovery=recovery, candidate_digests=candidate_digests, provenance=provenance)


def _candidate_provenance(client: "MlflowClient", name: str, version: int, digests: Mapping[str, str] | None,
                          verifier: Verifier | None, promote: bool) -> str | None:
    """The sha256 of the candidate's build provenance, checked against the digests of the files to be gated.

    A promotion refuses a version without a valid one (registered outside `fraudguard register`, by someone
    without the pipeline's key) or whose files were changed after registration, before any gate runs. A dry run
    says so in the log and goes on (the gates' figures are still worth seeing)."""
    from fraudguard.provenance import verify_provenance

    if digests is None:
        return None
    try:
        return verify_provenance(get_version(client, name, version), digests, verifier or load_verifier())
    except FraudGuardError as exc:
        if promote:
            raise
        logger.warning("dry run: %s", exc)
        return None


def _champion_attestation(client: "MlflowClient", name: str, state: RegistryState | None,
                          champion: int | None, verifier: Verifier | None) -> tuple[str, Verifier] | None:
    """The attestation digest the audit log commits for the champion the gates compare with, and the key that
    opens it. A promotion requires it (RegistryError when the champion has none to trust); a dry run uses it
    when this host has a verify key, and otherwise falls back to the version's tags (None)."""
    if champion is None:
        return None
    if state is None or verifier is None:  # a dry run: a promotion has read both already
        try:
            verifier = verifier or load_verifier()
            state = read_state(client, name, verifier)
        except FraudGuardError as exc:
            logger.warning("dry run: the champion's signed attestation is not checked (%s)", exc)
            return None
    try:
        digest = committed_attestation_for(state, champion)
    except RegistryError as exc:
        raise RegistryError(f"current champion (version {champion}) cannot be trusted for comparison: {exc}; "
                            "repair it with `fraudguard rollback --to <good version>` first") from exc
    if digest is None:
        raise RegistryError(f"current champion (version {champion}) has no committed promotion in the audit log; "
                            "repair it with `fraudguard rollback --to <good version>` first")
    return digest, verifier


def run_gate(run: GateRun, name: str) -> tuple[GateResult, float]:
    """One gate of the run with its params section, timed; a gate that raises is a failed result.

    The gate gets its own copies of the candidate's and the champion's models (private_models): the gates of
    a run go at once, each in its own thread."""
    section = getattr(run.context.settings.gates, name, None)
    candidate, context = private_models(run.candidate, run.context)
    return _run_one(name, run.gates[name], candidate, context, section)


def private_models(candidate: ModelUnderTest, context: GateContext) -> tuple[ModelUnderTest, GateContext]:
    """The candidate and the context with copies of their models (torch modules, standardizers) that no other
    thread holds; the frames and settings are shared, as the gates only read them.

    Why: a torch module is not safe to share between threads that take gradients. ART's classifiers clear and
    fill the parameters' .grad and switch train/eval mode on the module they wrap; the robustness gate did so
    while the privacy and quality gates scored the same module, and the flow process died with SIGSEGV in
    libtorch (seen twice: CI's deployment walkthrough and a loaded run here). A copy of the models is small
    beside what one gate computes on them.
    """
    own_candidate = replace(candidate, bundle=copy.deepcopy(candidate.bundle))
    champion = context.champion
    if champion is None:
        return own_candidate, context
    own_champion = replace(champion, bundle=own_candidate.bundle if champion.bundle is candidate.bundle
                           else copy.deepcopy(champion.bundle))
    return own_candidate, replace(context, champion=own_champion)


def run_gates(run: GateRun) -> tuple[tuple[GateResult, ...], dict[str, float]]:
    """Every gate of the run concurrently; results in the gates' order, with wall times."""
    if not run.gates:
        raise RegistryError("no gates configured: refusing to promote without any check")
    with ThreadPoolExecutor(max_workers=len(run.gates), thread_name_prefix="gate") as pool:
        futures = {name: pool.submit(run_gate, run, name) for name in run.gates}
        done = {name: future.result() for name, future in futures.items()}
    results = tuple(done[name][0] for name in run.gates)
    durations = {name: round(done[name][1], 3) for name in run.gates}
    for result in results:
        logger.info("gate %s: %s (%s)", result.name, "passed" if result.passed else "FAILED", result.reason)
    return results, durations


def _complete_results(run: GateRun, results: Sequence[GateResult]) -> tuple[GateResult, ...]:
    """The results in the run's gate order; a configured gate with no result counts as failed."""
    by_name = {r.name: r for r in results}
    completed = [by_name.get(name) or GateResult(name=name, passed=False, metrics={}, thresholds={},
                                                 reason="configured gate produced no result")
                 for name in run.gate_names]
    completed += [r for r in results if r.name not in run.gates]
    return tuple(completed)


APPROVAL_GATE = "approval"


def approval_result(approved: bool, reason: str) -> GateResult:
    """The reviewer's answer as a verdict beside the gates' (recorded, attested and audited like them)."""
    return GateResult(name=APPROVAL_GATE, passed=approved, metrics={}, thresholds={}, reason=reason)


def approval_required(policy: GatePolicy) -> bool:
    return bool(policy.sections.get("promotion", {}).get("approval", {}).get("required", False))


def decide(
    client: "MlflowClient",
    run: GateRun,
    results: Sequence[GateResult],
    durations: Mapping[str, float] | None = None,
    *,
    actor: str | None = None,
    approver: str = "",
    signer: Signer | None = None,
    verifier: Verifier | None = None,
) -> PromotionOutcome:
    """Record the verdicts on the version; if every gate passed (and this is no dry run), sign a pass
    attestation and move `champion` compare-and-set against `run.champion_before`.

    Blocked: version tagged blocked, a signed `block` audit record, champion untouched, `blocked=True`.
    """
    name, version = run.model_name, run.version
    actor = actor or current_actor()
    results = _complete_results(run, results)
    if run.promote and all(r.passed for r in results):
        _check_files_unchanged_since_gated(client, run)
    durations = dict(durations or {})
    mv = get_version(client, name, version)
    summary = _write_summary(run.report_dir, version, results, durations, run.policy)
    _record_verdicts(client, name, version, results)
    _describe(client, name, version, mv.description, gate_table_markdown(version, results))
    _log_reports(client, mv.run_id, results, summary)
    verdicts = {r.name: "passed" if r.passed else "failed" for r in results}
    base: dict[str, Any] = dict(version=version, champion_before=run.champion_before, results=results, durations_s=durations,
                report_dir=run.report_dir, policy_source=run.policy.source)

    failed = [r for r in results if not r.passed]
    if failed:
        reasons = tuple(f"{r.name}: {r.reason}" for r in failed)
        audit = None
        if run.promote:  # first: it refuses a version another run made champion meanwhile, tagged nothing then
            signer, verifier = _keys(signer, verifier)
            audit = record_block(client, name, version, champion=run.champion_before, reasons=reasons,
                                 gates=verdicts, signer=signer, verifier=verifier, actor=actor)
        client.set_model_version_tag(name, str(version), STATUS_TAG, STATUS_BLOCKED)
        client.set_model_version_tag(name, str(version), BLOCKED_REASONS_TAG, "; ".join(reasons)[:_MAX_TAG_REASON_CHARS])
        return PromotionOutcome(promoted=False, dry_run=not run.promote, blocked=True,
                                champion_after=run.champion_before, audit=audit, **base)

    # A pass clears a stale block left by an earlier attempt on the same version (display tags only).
    tags = mv.tags or {}
    for key in (BLOCKED_REASONS_TAG,) + ((STATUS_TAG,) if tags.get(STATUS_TAG) == STATUS_BLOCKED else ()):
        if key in tags:
            client.delete_model_version_tag(name, str(version), key)
    if not run.promote:
        return PromotionOutcome(promoted=False, dry_run=True, blocked=False, champion_after=run.champion_before,
                                **base)
    if approval_required(run.policy) and not approver:
        raise PolicyError(f"version {version} passed every gate, but the policy ({run.policy.source}) requires a "
                          "second person's approval: run the train-and-promote deployment, which waits for "
                          f"`fraudguard approve {version} --as NAME`")
    signer, verifier = _keys(signer, verifier)
    # Signed: the digests of the files the gates tested, never a fresh download (swapped files would be
    # signed as if they had passed). Files swapped after this point no longer match, and nothing serves them.
    digests = dict(run.candidate_digests or {})
    statement = promotion_statement(get_version(client, name, version), digests, results, run.policy,
                                    actor=actor, approver=approver, champion_before=run.champion_before,
                                    gated_workspace=gated_workspace_lineage(run.context),
                                    provenance=run.provenance)
    attestation = sign_and_store(client, mv, statement, signer)
    crash_point("attestation")
    move = move_champion(client, name, version, action="promote", expected_current=run.champion_before,
                         attestation=attestation, signer=signer, verifier=verifier, actor=actor,
                         reasons=("all gates passed",), gates=verdicts, approver=approver)
    return PromotionOutcome(promoted=True, dry_run=False, blocked=False, champion_after=version, audit=move.audit,
                            attestation=attestation, approver=approver, **base)


def gated_workspace_lineage(context: GateContext) -> dict[str, str]:
    """The lineage of the checkout the gates read, seen by the signer itself (not from editable tags)."""
    from fraudguard.files import sha256_file
    from fraudguard.lineage import data_md5, git_state, params_sha256

    paths = ProjectPaths.at(context.source_root)
    commit, _dirty = git_state(paths.root)
    try:
        data = data_md5(paths.raw_dvc_file)
    except FraudGuardError as exc:  # no data.dvc in a custom pipeline's workspace: say so, never guess
        logger.warning("gated workspace lineage: %s", exc)
        data = "unknown"
    return {
        "git_commit": commit,
        "data_md5": data,
        # What data/raw holds, hashed as DVC hashes a directory: data.dvc's md5 is only what was last `dvc add`ed.
        "data_content_md5": raw_content_md5(paths) or "unknown",
        "params_sha256": params_sha256(context.settings),
        "dvc_lock_sha256": sha256_file(paths.dvc_lock) if paths.dvc_lock.is_file() else "unknown",
    }


def raw_content_md5(paths: ProjectPaths) -> str | None:
    """DVC's directory md5 of what data/raw holds now (None when there is no data/raw)."""
    from fraudguard.data.versioning import directory_md5

    return directory_md5(paths.raw_dir) if paths.raw_dir.is_dir() else None


def _gated_data_md5(predicate: Mapping[str, Any]) -> str | None:
    """The data/raw md5 a signed attestation says its version was gated on (content when recorded, else data.dvc's)."""
    seen = predicate.get("gated_workspace") or {}
    for value in (seen.get("data_content_md5"), seen.get("data_md5")):
        if value and value not in ("unknown", "absent"):
            return str(value)
    return None


def _check_files_unchanged_since_gated(client: "MlflowClient", run: GateRun) -> None:
    """ModelError, before anything is recorded, when what the store serves differs from what was gated."""
    gated = run.candidate_digests
    if not gated:
        raise RegistryError(f"version {run.version}: the digests of the gated files are unknown (a dry-run "
                            "preparation cannot promote); nothing promoted")
    now = served_copy_digests(client, run.model_name, run.version)
    if REFERENCE_SUBJECT in gated:
        from fraudguard.tracking import reference_sha256

        now[REFERENCE_SUBJECT] = reference_sha256(client, run.model_name, run.version) or "missing"
    changed = sorted(subject for subject in set(gated) | set(now) if gated.get(subject) != now.get(subject))
    if changed:
        raise ModelError(f"model {run.model_name!r} version {run.version}: the files models:/{run.model_name}/"
                         f"{run.version} serves changed after the gates tested them ({', '.join(changed)}); "
                         "nothing recorded, champion untouched: re-run the promotion to gate what is there now")


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
    policy: GatePolicy | None = None,
    approver: str = "",
) -> PromotionOutcome:
    """prepare + every gate concurrently + decide: the CLI's `fraudguard promote`."""
    if promote and settings.promotion.approval.required and not approver:
        raise PolicyError("params.yaml requires a second person's approval of every promotion "
                          "(promotion.approval.required): promote through the train-and-promote deployment, "
                          "which waits for `fraudguard approve VERSION --as NAME`; `--dry-run` runs the gates only")
    run = prepare(client, root, settings, version, promote=promote, policy=policy, gates=gates,
                  candidate=candidate, context=context)
    results, durations = run_gates(run)
    return decide(client, run, results, durations, actor=actor, approver=approver)


# -------------------------------------------------------------------------------------- rollback

# Recorded among a plain rollback's reasons (signed with its audit entry): it went to the previous good champion
# rather than to a version the operator named, so a plain rollback right after it may be its own retry.
STEP_BACK_REASON = "plain rollback: to the previous good champion"

def rollback(
    client: "MlflowClient",
    settings: "Settings",
    to_version: int | None = None,
    reason: str | None = None,
    actor: str | None = None,
    *,
    required_gates: Sequence[str] | None = None,
    signer: Signer | None = None,
    verifier: Verifier | None = None,
) -> RollbackOutcome:
    """Move `champion` back to the previous good champion (or `to_version`), journaled and audited.

    The target must have a committed promotion in the audit log that no later block overrides, whose
    signed pass attestation verifies and covers every gate configured today (`required_gates`, default:
    params' gates), and the files `models:/<name>/<target>` serves must match it. A rollback interrupted
    by a crash is completed first and counts as this rollback (a retry never rolls back twice).
    """
    name = settings.registry.model_name
    signer, verifier = _keys(signer, verifier)
    actor = actor or current_actor()
    required = list(required_gates) if required_gates is not None else list(type(settings.gates).model_fields)
    with registry_lock(client):
        state = read_state(client, name, verifier)
        recovery = recover_locked(client, state, signer, actor)
        if recovery is not None and recovery.kind == "completed" and recovery.action == "rollback" \
                and to_version in (None, recovery.to_version):
            return RollbackOutcome(from_version=recovery.from_version, to_version=recovery.to_version,
                                   reason="completed the interrupted rollback", audit=recovery.entry,
                                   completed_interrupted=True)
        drift = alias_drift_problem(state)
        if drift:
            raise RegistryError(f"model {name!r}: {drift}; run `fraudguard audit recover` first")
        current = state.champion
        if current is None:
            raise RegistryError(f"model {name!r} has no champion to roll back from")
        if to_version is None:
            _refuse_second_step_back(name, state.history, current)
        target = int(to_version) if to_version is not None else previous_champion(state.history, current)
        if target is None:
            raise RegistryError(
                f"model {name!r}: no earlier good champion in the history to roll back to from version {current}; "
                "name one with `--to VERSION` (the rollback flow's `to_version` parameter)"
            )
        if target == current:
            raise RegistryError(f"version {target} of {name!r} is already the champion")
        where = f"refusing to roll back {name!r} to version {target}"
        verdict = newest_verdict(state.entries, target)
        if verdict is None:
            raise RegistryError(f"{where}: it was never promoted through the gates (no committed promotion in "
                                "the audit log); gate it with `fraudguard promote --version "
                                f"{target}`")
        if verdict.action == "block":
            raise RegistryError(f"{where}: it was blocked at audit entry {verdict.seq} "
                                f"({'; '.join(verdict.reasons)[:200]}); it returns only through a fresh gate run")
        mv = get_version(client, name, target)
        try:
            attestation = load_attestation(mv, verdict.attestation, verifier)
            check_policy_coverage(attestation, required, f"version {target}")
            digests = check_served_copy(client, mv, attestation)
        except FraudGuardError as exc:
            raise RegistryError(f"{where}: {exc}") from exc
        reason = reason or f"rollback from version {current}"
        move = move_champion(client, name, target, action="rollback", expected_current=current,
                             attestation=verdict.attestation, signer=signer, verifier=verifier, actor=actor,
                             reasons=(reason, STEP_BACK_REASON) if to_version is None else (reason,),
                             gates={g: "passed" for g in attestation.gates})
    return RollbackOutcome(from_version=current, to_version=target, reason=reason, audit=move.audit,
                           weights_sha256=digests.get("model/artifacts/model.pt", ""))


def _refuse_second_step_back(name: str, history: list[ChampionChange], current: int) -> None:
    """RegistryError when the champion got where it is by a plain rollback (no target named) and this one names
    none either. A plain rollback killed after its commit leaves nothing a retry could tell from a second,
    deliberate one, and the retry stepped back once more, from a good version. Going further back after a plain
    rollback takes `--to VERSION`; after a rollback *to* a version, a plain one steps back as usual (case 11)."""
    arrival = history[-1] if history else None
    if arrival is None or arrival.action != "rollback" or arrival.version != current \
            or STEP_BACK_REASON not in arrival.reasons:
        return
    further = previous_champion(history, current)
    way = (f"name the version: `fraudguard rollback --to {further}`" if further is not None
           else "there is no earlier good champion to name")
    raise RegistryError(f"model {name!r}: champion {current} is there by the rollback from version "
                        f"{arrival.previous} (audit entry {arrival.audit_seq or arrival.seq}, {arrival.time}, "
                        f"{arrival.actor}); if that was this rollback cut short, it is done. To step back further, "
                        f"{way} (the rollback flow's `to_version`)")
