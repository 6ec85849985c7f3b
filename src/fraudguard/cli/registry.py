"""`fraudguard promote | rollback | status | audit verify`: the registry side of the command line.

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

audit_app = typer.Typer(no_args_is_help=True, help="The hash-chained audit log kept in the registry.")

_ROOT = typer.Option(Path("."), "--root", help="Project checkout (holds params.yaml, data/, reports/).")


def _open(root: Path) -> tuple["MlflowClient", "Settings"]:
    from fraudguard.config import load_settings
    from fraudguard.logs import configure_logging
    from fraudguard.tracking import configure_mlflow

    configure_logging()
    root = root.resolve()
    settings = load_settings(root / "params.yaml")
    return configure_mlflow(root, settings), settings


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
    from fraudguard.errors import FraudGuardError, PromotionBlocked
    from fraudguard.promotion import promote_version

    try:
        client, settings = _open(root)
        outcome = promote_version(client, root.resolve(), settings, version=version, promote=not dry_run)
    except PromotionBlocked as exc:
        outcome = getattr(exc, "outcome", None)
        if outcome is not None:
            typer.echo(f"version {exc.version}: gates")
            _print_results(outcome.results)
        _fail(exc)
        return
    except FraudGuardError as exc:
        _fail(exc)
        return
    typer.echo(f"version {outcome.version}: gates")
    _print_results(outcome.results)
    if outcome.promoted:
        typer.echo(f"champion: {outcome.champion_before} -> {outcome.champion_after} "
                   f"(audit entry {outcome.audit.seq if outcome.audit else '-'})")
    else:
        typer.echo(f"dry run: all gates passed; champion stays {outcome.champion_before}")


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
    typer.echo(f"champion: {outcome.from_version} -> {outcome.to_version} "
               f"(weights sha256 {outcome.weights_sha256[:12]}, audit entry {outcome.audit.seq})")


def status(root: Path = _ROOT) -> None:
    """The champion, its lineage and gate verdicts, and the champion history."""
    from fraudguard.audit import verify_audit_log
    from fraudguard.errors import FraudGuardError
    from fraudguard.registry import (
        CHALLENGER_ALIAS,
        CHAMPION_ALIAS,
        gate_verdicts,
        get_registered_tags_and_aliases,
        get_version,
        history_from_tags,
    )

    try:
        client, settings = _open(root)
        name = settings.registry.model_name
        tags, aliases = get_registered_tags_and_aliases(client, name)
        champion = aliases.get(CHAMPION_ALIAS)
        typer.echo(f"model: {name}")
        typer.echo(f"champion: {champion if champion is not None else '(none)'}"
                   f"   challenger: {aliases.get(CHALLENGER_ALIAS, '(none)')}")
        if champion is not None:
            mv = get_version(client, name, champion)
            typer.echo(f"run: {mv.run_id}")
            for key, value in sorted((mv.tags or {}).items()):
                if key.startswith(("lineage.", "artifact.")):
                    typer.echo(f"  {key} = {value}")
            typer.echo("gates:")
            for gate, verdict in sorted(gate_verdicts(mv).items()):
                typer.echo(f"  {gate:<16} {verdict}")
        typer.echo("history:")
        history = history_from_tags(tags)
        for change in history:
            typer.echo(f"  {change.seq:>4}  {change.time}  {change.action:<8} {change.previous} -> "
                       f"{change.version}  by {change.actor}")
        if not history:
            typer.echo("  (empty)")
        elif history[-1].version != champion:
            # Alias and audit are separate MLflow writes: an interrupted move shows up here.
            typer.secho(f"warning: champion alias ({champion}) differs from the last recorded move "
                        f"({history[-1].version})", fg=typer.colors.YELLOW, err=True)
        verification = verify_audit_log(client, name)
        typer.echo(f"audit: {verification.entries} entries, "
                   + ("chain intact" if verification.ok else
                      f"BROKEN at seq {verification.bad_seq}: {verification.problem}"))
    except FraudGuardError as exc:
        _fail(exc)


@audit_app.command("verify")
def audit_verify(root: Path = _ROOT) -> None:
    """Check the audit log's hash chain; exit 1 naming the entry at fault."""
    from fraudguard.audit import verify_audit_log
    from fraudguard.errors import FraudGuardError

    try:
        client, settings = _open(root)
        verification = verify_audit_log(client, settings.registry.model_name)
        verification.raise_if_broken()
    except FraudGuardError as exc:
        _fail(exc)
        return
    typer.echo(f"audit log intact: {verification.entries} entries")


def register(app: typer.Typer) -> None:
    """Add promote, rollback, status and `audit verify` to the main `fraudguard` app."""
    app.command("promote")(promote)
    app.command("rollback")(rollback)
    app.command("status")(status)
    app.add_typer(audit_app, name="audit")
