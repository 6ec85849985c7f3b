"""`fraudguard redteam`: run the red-team catalogue (fraudguard.redteam) against the candidate or the
champion in a scratch copy of the project; print the scorecard, write it as JSON, log it to MLflow."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Optional

import typer


def redteam(
    root: Annotated[Path, typer.Option(help="Project checkout (params.yaml, data/raw, models/).")] = Path("."),
    target: Annotated[str, typer.Option(help="Model attacked: candidate (models/) or champion (registry).")]
        = "candidate",
    attack: Annotated[Optional[list[str]], typer.Option(
        "--attack", help="Run only this attack (repeatable; default: the whole catalogue).")] = None,
    out: Annotated[Path, typer.Option(help="Scorecard JSON, relative to the root.")]
        = Path("reports/redteam/scorecard.json"),
    report_only: Annotated[bool, typer.Option(
        "--report-only", help="Exit 0 even when an attack is not caught.")] = False,
    mlflow: Annotated[bool, typer.Option("--mlflow/--no-mlflow",
                                         help="Log the scorecard as a run of the redteam experiment.")] = True,
    keep_scratch: Annotated[bool, typer.Option(
        "--keep-scratch", help="Keep the scratch project (poisoned data, gate reports) and print where.")] = False,
) -> None:
    """Attack the model (poisoning, evasion, split payments) and report what caught each attack.

    Exits 1 when any attack is not caught, unless --report-only.
    """
    from rich.console import Console

    from fraudguard.config import load_settings
    from fraudguard.errors import FraudGuardError
    from fraudguard.logs import configure_logging
    from fraudguard.redteam.scorecard import log_scorecard, render_scorecard, write_scorecard
    from fraudguard.redteam.suite import run_redteam

    configure_logging()
    root = root.resolve()
    console = Console(width=max(Console().width, 140))
    work = Path(tempfile.mkdtemp(prefix="fraudguard-redteam-"))
    try:
        card = run_redteam(root, work, target=target, attacks=attack, progress=console.is_terminal)
        json_path = write_scorecard(card, out if out.is_absolute() else root / out)
        render_scorecard(card, console)
        typer.echo(f"scorecard: {json_path}")
        if mlflow:
            from fraudguard.tracking import configure_mlflow

            settings = load_settings(root / "params.yaml")
            run_id = log_scorecard(configure_mlflow(root, settings.registry), settings.redteam.experiment, card, json_path)
            typer.echo(f"MLflow run {run_id} in experiment {settings.redteam.experiment!r}")
    except FraudGuardError as exc:
        typer.echo(f"error: {str(exc)[:2000]}", err=True)
        raise typer.Exit(code=1) from None
    finally:
        if keep_scratch:
            typer.echo(f"scratch project kept at {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if not card.all_caught and not report_only:
        typer.echo(f"error: not caught: {', '.join(card.not_caught)}", err=True)
        raise typer.Exit(code=1)
