"""`fraudguard promote | rollback | status | audit verify | recover | checkpoint`: the registry side of the CLI.

Heavy libraries (mlflow, torch, evidently) are imported inside the commands so `fraudguard --help` stays fast.
Wire into the main app with `registry.register(app)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from fraudguard.config import Settings

audit_app = typer.Typer(no_args_is_help=True, help="The signed, hash-chained audit log kept in the registry.")

_ROOT = typer.Option(Path("."), "--root", help="Project checkout (holds params.yaml, data/, reports/).")


def _open(root: Path) -> tuple["MlflowClient", "Settings"]:
    import os

    from fraudguard.config import load_settings
    from fraudguard.logs import configure_logging
    from fraudguard.tracking import configure_mlflow

    configure_logging()
    # Registry commands download small files; MLflow's per-file progress bars would bury the answer.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # fraudguard.store retries within its own time budget; MLflow's default of 7 HTTP retries with
    # exponential backoff would hold a command for minutes against a server that is down.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    root = root.resolve()
    settings = load_settings(root / "params.yaml")
    return configure_mlflow(root, settings.registry), settings


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


def _print_results(results) -> None:
    width = max((len(r.name) for r in results), default=4)
    for r in results:
        verdict = typer.style("passed", fg=typer.colors.GREEN) if r.passed else \
            typer.style("FAILED", fg=typer.colors.RED, bold=True)
        typer.echo(f"  {r.name:<{width}}  {verdict}  {r.reason}")


def promote(
    version: Optional[int] = typer.Option(None, "--version", help="Version to gate (default: the newest)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Run the gates and tag the version; move no alias."),
    root: Path = _ROOT,
) -> None:
    """Run every gate on a registered version; make it the champion only if all pass."""
    from fraudguard.errors import FraudGuardError
    from fraudguard.promotion import promote_version

    try:
        client, settings = _open(root)
        outcome = promote_version(client, root.resolve(), settings, version=version, promote=not dry_run)
    except FraudGuardError as exc:
        _fail(exc)
        return
    typer.echo(f"version {outcome.version}: gates (policy {outcome.policy_source})")
    _print_results(outcome.results)
    if outcome.blocked:
        typer.secho(f"error: {outcome.summary()}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1)
    from fraudguard.reporting import champion_label

    if outcome.promoted:
        typer.echo(f"champion: {champion_label(outcome.champion_before)} -> v{outcome.champion_after} "
                   f"(audit entry {outcome.audit.seq if outcome.audit else '-'}, "
                   f"attestation {outcome.attestation[:16]})")
    else:
        typer.echo(f"dry run: all gates passed; champion stays {champion_label(outcome.champion_before)}")


def rollback(
    to: Optional[int] = typer.Option(None, "--to", help="Version to restore (default: the previous champion)."),
    reason: Optional[str] = typer.Option(None, "--reason", help="Why, recorded in the audit log."),
    root: Path = _ROOT,
) -> None:
    """Move the champion back to the previous good version (no prompt)."""
    from fraudguard.errors import FraudGuardError
    from fraudguard.promotion import rollback as rollback_champion

    try:
        client, settings = _open(root)
        outcome = rollback_champion(client, settings, to_version=to, reason=reason)
    except FraudGuardError as exc:
        _fail(exc)
        return
    if outcome.completed_interrupted:
        typer.echo(f"completed an interrupted rollback: champion {outcome.from_version} -> {outcome.to_version} "
                   f"(audit entry {outcome.audit.seq}); to go further back, name the version with --to")
        return
    typer.echo(f"champion: {outcome.from_version} -> {outcome.to_version} "
               f"(served weights sha256 {outcome.weights_sha256[:12]}, audit entry {outcome.audit.seq})")


def _history_table(report):
    from rich.table import Table

    table = Table(title=f"champion history of {report.model_name!r}", show_lines=False)
    for column in ("#", "time (UTC)", "action", "from", "to", "actor", "approver", "reason"):
        table.add_column(column)
    for change in report.history:
        reason = "; ".join(change.reasons)
        table.add_row(str(change.seq), change.time[:19], change.action, str(change.previous), str(change.version),
                      change.actor, change.approver or "-", ("(recovered) " if change.recovered else "") + reason)
    return table


def _recover_if_possible(client, name: str) -> list[str]:
    """Finish a half-done move when this host holds the signing key; lines saying what was done."""
    from fraudguard.registry import recover
    from fraudguard.signing import load_signer, signing_key_path

    if not signing_key_path().exists():
        return []
    signer = load_signer(create=False)
    return [o.describe() for o in recover(client, name, signer, signer.verifier())]


def status(root: Path = _ROOT) -> None:
    """The champion, its lineage and attestation, the champion history, and whether the record holds.

    Exits 1 when any check of `fraudguard audit verify` fails.
    """
    from rich.console import Console

    from fraudguard.errors import FraudGuardError
    from fraudguard.names import ARTIFACT_TAG_PREFIX, DATA_MD5_TAG, GIT_COMMIT_TAG, GIT_DIRTY_TAG, PARAMS_SHA_TAG
    from fraudguard.registry import get_version
    from fraudguard.signing import load_verifier
    from fraudguard.verification import verify_registry

    # Wide enough that a problem line is never split mid-sentence when piped to a file or a test.
    console = Console(width=max(Console().width, 160))
    try:
        client, settings = _open(root)
        name = settings.registry.model_name
        for line in _recover_if_possible(client, name):
            console.print(f"[yellow]recovered:[/] {line}")
        report = verify_registry(client, name, load_verifier())
        console.print(f"model: [bold]{name}[/]   champion: [bold]{report.champion if report.champion is not None else '(none)'}[/]")
        if report.champion is not None:
            mv = get_version(client, name, report.champion)
            console.print(f"run: {mv.run_id}")
            for key, value in sorted((mv.tags or {}).items()):
                if key in (GIT_COMMIT_TAG, GIT_DIRTY_TAG, DATA_MD5_TAG, PARAMS_SHA_TAG) or \
                        key.startswith(ARTIFACT_TAG_PREFIX):
                    console.print(f"  {key} = {value}")
            if report.champion_attestation is not None:
                predicate = report.champion_attestation.predicate
                gates = ", ".join(f"{g} {'passed' if v.get('passed') else 'FAILED'}"
                                  for g, v in sorted(report.champion_attestation.gates.items()))
                console.print(f"attestation {report.champion_attestation.digest[:16]}: {gates}; policy "
                              f"{predicate.get('policy', {}).get('source', '?')}")
                checks = predicate.get("lineage_check") or {}
                for key, claimed in sorted((predicate.get("lineage") or {}).items()):
                    # Signed: the tags' claim at promotion, and whether the gated checkout agreed with it.
                    console.print(f"  signed lineage.{key} = {claimed} "
                                  f"({checks.get(key, 'not checked')} against the gated checkout)")
                provenance = predicate.get("provenance")
                console.print(f"  build provenance {provenance[:16]} checked before the gates" if provenance else
                              "  build provenance: none recorded (promoted before provenance was checked)")
        console.print(_history_table(report))
        for note in report.notes:
            console.print(f"[dim]note: {note}[/]")
        if report.ok:
            console.print(f"[green]record verified[/]: {report.entries} audit entries, signatures, history, "
                          "alias, attestations and served files hold")
            return
        for problem in report.problems:
            console.print(f"[red]PROBLEM[/]: {problem}")
        raise typer.Exit(code=1)
    except FraudGuardError as exc:
        _fail(exc)


@audit_app.command("verify")
def audit_verify(root: Path = _ROOT) -> None:
    """Check signatures, history, alias, attestations and served files; exit 1 naming what fails."""
    from fraudguard.errors import FraudGuardError
    from fraudguard.signing import load_verifier
    from fraudguard.verification import verify_registry

    try:
        client, settings = _open(root)
        report = verify_registry(client, settings.registry.model_name, load_verifier())
    except FraudGuardError as exc:
        _fail(exc)
        return
    for note in report.notes:
        typer.echo(f"note: {note}")
    if not report.ok:
        for problem in report.problems:
            typer.secho(f"error: {problem}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1)
    typer.echo(f"audit log intact: {report.entries} entries; champion {report.champion} verified")


@audit_app.command("recover")
def audit_recover(root: Path = _ROOT) -> None:
    """Finish or revert a move interrupted by a crash, and put a hand-moved `champion` back; audited."""
    from fraudguard.errors import FraudGuardError
    from fraudguard.registry import recover
    from fraudguard.signing import load_signer

    try:
        client, settings = _open(root)
        signer = load_signer(create=False)
        done = recover(client, settings.registry.model_name, signer, signer.verifier(), restore_alias=True)
    except FraudGuardError as exc:
        _fail(exc)
        return
    for outcome in done:
        typer.echo(f"recovered: {outcome.describe()}")
    if not done:
        typer.echo("nothing to recover: no half-done move, alias matches the record")


@audit_app.command("checkpoint")
def audit_checkpoint(
    root: Path = _ROOT,
    accept_head: bool = typer.Option(
        False, "--accept-head",
        help="The checkpoint is missing or expired: re-sign anyway, stating that the log's newest entry (shown "
             "by the refusal) is the newest you know of."),
) -> None:
    """Re-sign the audit log's newest entry with a fresh expiry, so that any host can tell a trimmed log.

    Run it on the host holding the signing key, more often than $FRAUDGUARD_AUDIT_CHECKPOINT_TTL_HOURS (168).
    """
    from fraudguard.errors import FraudGuardError
    from fraudguard.registry import refresh_checkpoint
    from fraudguard.signing import load_signer

    try:
        client, settings = _open(root)
        signer = load_signer(create=False)
        checkpoint = refresh_checkpoint(client, settings.registry.model_name, signer, signer.verifier(),
                                        accept_head=accept_head)
    except FraudGuardError as exc:
        _fail(exc)
        return
    if checkpoint is None:
        typer.echo("the audit log is empty: nothing to checkpoint")
        return
    typer.echo(f"audit checkpoint: entry {checkpoint.seq} signed, valid until "
               f"{checkpoint.expires_at.isoformat(timespec='seconds')}")


def approve(
    version: int = typer.Argument(..., help="The version whose promotion waits for approval."),
    approver: str = typer.Option(..., "--as", help="Who approves (must not be the change's author)."),
    reject: bool = typer.Option(False, "--reject", help="Reject the promotion instead."),
    comment: str = typer.Option("", "--comment", help="Why; recorded with the decision."),
    root: Path = _ROOT,
) -> None:
    """Answer the approval form of a train-and-promote run waiting on VERSION (as the Prefect UI does)."""
    from fraudguard.approval import ApprovalInput, change_authors, send_approval
    from fraudguard.errors import FraudGuardError

    try:
        answer = ApprovalInput(approver=approver, approve=not reject, comment=comment)
        flow_run_id = send_approval(version, answer, change_authors(root.resolve()))
    except FraudGuardError as exc:
        _fail(exc)
        return
    typer.echo(f"{'rejected' if reject else 'approved'} version {version} as {approver}: flow run {flow_run_id} resumes")


def register(app: typer.Typer) -> None:
    """Add promote, rollback, status, approve and `audit verify|recover|checkpoint` to the main `fraudguard` app."""
    app.command("approve")(approve)
    app.command("promote")(promote)
    app.command("rollback")(rollback)
    app.command("status")(status)
    app.add_typer(audit_app, name="audit")
