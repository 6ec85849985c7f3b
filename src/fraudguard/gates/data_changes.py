"""Data-changes gate: a fraud-rate change against the previous data version, transactions of it deleted, or data
that differs from the champion's without `fraudguard data import`'s history check, block promotion until a
reviewer acknowledges them.

The validate stage records both in reports/validation.json (`fraud_rate_change`, factor
validate.max_fraud_rate_change_factor, and `history.previous_transactions_missing`, from the intake record
`fraudguard data import` writes). The gate reads that report from the checkout it runs in, the data every other
gate reads too, and passes when there is neither, or when the acknowledgement file (`fraudguard data acknowledge`,
committed for review) names the exact data files. A promotion reads that file at the commit of its policy of record
(GateContext.committed), never from the working tree: an acknowledgement nobody committed was never reviewed. The
candidate's copy in its MLflow run is not evidence (anyone
with write access to the store can rewrite it, and the gate's verdict is signed): it must name the same data files
as the checkout's (a candidate trained on other data is gated in a checkout of that data) and agree with it on what
the gate judges, else the gate fails.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from fraudguard.errors import DataError, PolicyError
from fraudguard.gates.base import GateContext, GateResult, GateSpec, ModelUnderTest, finish_gate

if TYPE_CHECKING:
    from fraudguard.config import DataChangesGateSettings
    from fraudguard.policy import CommittedTree

logger = logging.getLogger(__name__)

NAME = "data_changes"
VALIDATION_ARTIFACT = "reports/validation.json"
ACK_KEY = "fraud_rate_changes"


def data_key(report: dict[str, Any]) -> list[str]:
    """What an acknowledgement names: the md5s of the data files the report validated, sorted."""
    return sorted(str(v) for v in (report.get("inputs") or {}).values())


def read_acknowledgements(path: Path, committed: "CommittedTree | None" = None) -> list[dict[str, Any]]:
    """The acknowledged fraud-rate changes in `path` ([] when it does not exist), in the working tree, or at the
    `committed` commit (a promotion: an acknowledgement nobody committed has not been reviewed)."""
    if committed is not None:
        text = committed.read_text(path)
        if text is None:
            return []
    elif not path.is_file():
        return []
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise DataError(f"{path}: unreadable acknowledgement file: {exc}") from exc
    where = f"{path} at {committed.commit[:12]}" if committed is not None else str(path)
    try:
        content = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise DataError(f"{where}: unreadable acknowledgement file: {exc}") from exc
    entries = content.get(ACK_KEY, []) if isinstance(content, dict) else None
    if not isinstance(entries, list):
        raise DataError(f"{where}: `{ACK_KEY}` must be a list")
    return [e for e in entries if isinstance(e, dict)]


def _working_tree_acknowledges(path: Path, report: dict[str, Any]) -> bool:
    try:
        return any(e.get("data_md5s") == data_key(report) for e in read_acknowledgements(path))
    except DataError:
        return False


def deleted_transactions(report: dict[str, Any]) -> int:
    """Transactions of the previous version the data no longer holds (0 when its history is unchecked)."""
    history = report.get("history") or {}
    return int(history.get("previous_transactions_missing", 0) or 0) if history.get("checked") else 0


def acknowledge_data_changes(report: dict[str, Any], path: Path, by: str, reason: str) -> dict[str, Any]:
    """Append an acknowledgement of `report`'s fraud-rate change and deleted transactions (by whom, why) to
    `path`; returns the entry. Raises DataError when the report records neither (nothing to acknowledge)."""
    change = report.get("fraud_rate_change") or {}
    deleted = deleted_transactions(report)
    unchecked = not (report.get("history") or {}).get("checked", False)
    if not change.get("exceeded") and not deleted and not unchecked:
        raise DataError("the validation report records no fraud-rate change beyond "
                        "validate.max_fraud_rate_change_factor, no deleted transaction and a checked history: "
                        "nothing to acknowledge")
    if not by.strip() or not reason.strip():
        raise DataError("an acknowledgement needs a reviewer name and a reason")
    entry = {"data_md5s": data_key(report), "previous": change.get("previous"), "current": change.get("current"),
             "deleted_transactions": deleted, "history_unchecked": unchecked,
             "by": by, "reason": reason, "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    entries = read_acknowledgements(path)
    entries.append(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({ACK_KEY: entries}, sort_keys=False), encoding="utf-8")
    return entry


# The parts of a validation report the gate judges: a run's copy must agree with the checkout's on them.
JUDGED_REPORT_KEYS = ("inputs", "fraud_rate_change", "history")


def run_validation_report(run_id: str) -> dict[str, Any] | None:
    """The candidate run's copy of the validation report (None when the run has none)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory(prefix="fraudguard-validation-") as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=VALIDATION_ARTIFACT,
                                                        dst_path=tmp)
        except (MlflowException, OSError) as exc:
            logger.warning("run %s has no %s: %s", run_id, VALIDATION_ARTIFACT, exc)
            return None
        try:
            return json.loads(Path(local).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise DataError(f"run {run_id}: unreadable {VALIDATION_ARTIFACT} ({exc})") from exc


def candidate_validation_report(candidate: ModelUnderTest,
                                context: GateContext) -> tuple[dict[str, Any] | None, str]:
    """(the checkout's validation report, '') or (None, why the data cannot be judged).

    The checkout's report describes the data the gates read; the candidate run's copy only has to agree with it
    (same data files, same judged findings). Without that check an edit of the run's copy in the store would be
    signed as the gate's reading.
    """
    path = context.source_root / VALIDATION_ARTIFACT
    if not path.is_file():
        return None, (f"no {VALIDATION_ARTIFACT} in the checkout the gates read ({context.source_root}): run the "
                      "validate stage (`dvc repro validate`); the candidate run's copy in the store is not evidence")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable validation report ({exc})") from exc
    run_copy = run_validation_report(candidate.run_id) if candidate.run_id else None
    if run_copy is None:  # no run, or registered without a copy: the checkout's data is what is judged
        return report, ""
    if data_key(run_copy) != data_key(report):
        return None, (f"version {candidate.version} was validated on data "
                      f"{', '.join(data_key(run_copy)) or 'unknown'} but this checkout holds "
                      f"{', '.join(data_key(report)) or 'unknown'}: gate it in a checkout of the data it was trained "
                      "on (its git commit, then `dvc pull`)")
    differs = [key for key in JUDGED_REPORT_KEYS if run_copy.get(key) != report.get(key)]
    if differs:
        return None, (f"version {candidate.version}'s run copy of {VALIDATION_ARTIFACT} disagrees with the "
                      f"checkout's for the same data on {', '.join(differs)} (edited in the store, or written by "
                      "another version of validate: register the model again from this checkout); refusing to "
                      "judge either")
    return report, ""


def changed_outside_import(history: dict[str, Any], context: GateContext) -> str:
    """Why the candidate's data needs a reviewer although no import reported a change ('' when it does not):
    its history is unchecked (data/raw written, edited or added to without `fraudguard data import`, whose diff
    finds label flips and deletions), and data/raw is not the data the champion was gated on (the md5 its signed
    attestation holds). Without this, editing data/raw by hand, or deleting the intake record, skipped every
    check of history."""
    champion = context.champion
    if history.get("checked") or champion is None or not champion.gated_data_md5:
        return ""
    from fraudguard.data.versioning import directory_md5
    from fraudguard.lineage import data_md5
    from fraudguard.paths import ProjectPaths

    paths = ProjectPaths.at(context.source_root)
    # What data/raw holds; a workspace without it (a custom pipeline's) is judged by its data.dvc, as the
    # signer records it then.
    current = directory_md5(paths.raw_dir) if paths.raw_dir.is_dir() else data_md5(paths.raw_dvc_file)
    if current == champion.gated_data_md5:
        return ""
    return (f"data/raw (md5 {current[:16]}) is not the data champion version {champion.version} was gated on "
            f"(md5 {champion.gated_data_md5[:16]}) and its history is unchecked "
            f"({history.get('reason', 'no history report')})")


def run_data_changes_gate(candidate: ModelUnderTest, context: GateContext,
                          settings: "DataChangesGateSettings") -> GateResult:
    """Pass when the candidate's data changed the fraud rate within the factor and deleted no transaction of
    the previous version, or when those changes are acknowledged. No validation report at all fails (never a
    silent pass); unchecked data (not imported) passes and says so."""
    report_json = context.report_dir / f"{NAME}.json"
    ack_path = settings.acknowledgements if settings.acknowledgements.is_absolute() \
        else context.source_root / settings.acknowledgements
    report, problem = candidate_validation_report(candidate, context)
    if report is None:
        return finish_gate(NAME, False, {}, {}, f"{problem}: its data changes cannot be judged", report_json,
                           {"validation_report": None})
    change = report.get("fraud_rate_change") or {"checked": False, "reason": "the report predates the check"}
    history = report.get("history") or {}
    deleted = deleted_transactions(report)
    metrics = {"label_changes": float(history.get("label_changes", 0) or 0),
               "changed_history": float(history.get("changed_history", 0) or 0),
               # Transactions of the previous version missing from this one: a change of history too.
               "deleted_transactions": float(deleted),
               "history_replaced": float(bool(history.get("replaced"))),  # `data import --new-history`
               # Reported, not gated: the clean default world flags a few dozen rows too (docs/data.md).
               "terminal_dilution_rows": float((report.get("terminal_dilution") or {}).get("rows", 0) or 0)}
    thresholds: dict[str, float] = {}
    findings: list[str] = []  # what needs a reviewer's acknowledgement
    if change.get("checked"):
        factor = change["factor"]
        metrics["fraud_rate_change_factor"] = float("inf") if factor == "inf" else float(factor)
        metrics["fraud_rate"] = float(change.get("current", 0.0))
        metrics["previous_fraud_rate"] = float(change.get("previous", 0.0))
        # The factor of the policy of record (context.settings: a promotion has checked it against the committed
        # params), not the one the import or validate stage ran with, which an override or edit may have loosened.
        max_factor = float(context.settings.validate_.max_fraud_rate_change_factor)
        thresholds["max_fraud_rate_change_factor"] = max_factor
        if change.get("exceeded") or metrics["fraud_rate_change_factor"] > max_factor:
            findings.append(f"fraud rate {change['previous']:.4f} -> {change['current']:.4f} (factor "
                            f"{change['factor']} > {max_factor})")
    if deleted:
        findings.append(f"{deleted} transaction(s) of the previous version deleted")
    outside_import = changed_outside_import(history, context)
    if outside_import:
        findings.append(outside_import)
    metrics["changed_outside_import"] = float(bool(outside_import))
    try:
        # At a commit, a relative path is the checkout's (the gates may read features from a run's scratch copy).
        on_record = read_acknowledgements(settings.acknowledgements if context.committed is not None else ack_path,
                                          context.committed)
    except (DataError, PolicyError) as exc:
        return finish_gate(NAME, False, metrics, thresholds, f"acknowledgements cannot be read: {exc}", report_json,
                           {"fraud_rate_change": change, "history": history, "acknowledgement_file": str(ack_path)})
    acknowledged = [e for e in on_record if e.get("data_md5s") == data_key(report)]
    # Said when it is why the gate blocks: an acknowledgement written but not committed has not been reviewed.
    uncommitted = context.committed is not None and bool(findings) and not acknowledged \
        and _working_tree_acknowledges(ack_path, report)
    if not findings and not change.get("checked"):
        passed, reason = True, f"fraud-rate change unchecked ({change.get('reason', 'unknown')})"
    elif not findings:
        passed, reason = True, (f"fraud rate {change['previous']:.4f} -> {change['current']:.4f}, factor "
                                f"{metrics['fraud_rate_change_factor']:.2f} <= {thresholds['max_fraud_rate_change_factor']}"
                                ", no transaction deleted")
    elif acknowledged:
        passed, reason = True, (f"{'; '.join(findings)} acknowledged by {acknowledged[-1].get('by')}: "
                                f"{acknowledged[-1].get('reason')}")
    else:
        passed, reason = False, (f"{'; '.join(findings)} not acknowledged: review it, then "
                                 "`fraudguard data acknowledge --as NAME --reason TEXT` and commit "
                                 f"{settings.acknowledgements}")
        if uncommitted:
            reason += (f" (the working tree's {settings.acknowledgements} acknowledges this data, but commit "
                       f"{context.committed.commit[:12]} does not: commit it)")
    return finish_gate(NAME, passed, metrics, thresholds, reason, report_json,
                       {"fraud_rate_change": change, "history": history, "acknowledgement_file": str(ack_path),
                        "acknowledged_by": [e.get("by") for e in acknowledged]})


GATE = GateSpec(NAME, run_data_changes_gate, heavy_imports=())
