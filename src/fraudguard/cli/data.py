"""`fraudguard data ...`: simulate, import, remote, push, pull, validate.

Heavy modules are imported inside each command so `fraudguard --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import typer

from fraudguard.errors import FraudGuardError

app = typer.Typer(no_args_is_help=True)

ROOT_OPTION = typer.Option(Path("."), "--root", help="Project checkout (holds params.yaml and data.dvc).")


# Messages are built short; this is the last guard against one carrying a file's content.
MAX_MESSAGE_CHARS = 2000


def _fail(exc: FraudGuardError) -> None:
    message = str(exc)
    if len(message) > MAX_MESSAGE_CHARS:
        message = f"{message[:MAX_MESSAGE_CHARS]}... [{len(message) - MAX_MESSAGE_CHARS} more characters]"
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=1)


def _echo_reasons(report: dict, err: bool = False) -> None:
    """The quarantine reasons with their counts, and the fraud rows flagged instead of quarantined."""
    reasons = report.get("reasons") or {}
    if reasons:
        typer.echo("quarantine reasons: " + ", ".join(f"{code} {n}" for code, n in reasons.items()), err=err)
    flagged = report.get("flagged") or {}
    if flagged:
        typer.echo("fraud-labelled rows flagged, not quarantined: "
                   + ", ".join(f"{code} {n}" for code, n in flagged.items()), err=err)
    if "velocity_check" in report:
        typer.echo(f"velocity check: {report['velocity_check']}", err=err)


@app.command()
def simulate(root: Path = ROOT_OPTION) -> None:
    """Write the seeded simulator's transactions (params.yaml `simulate`) to data/raw."""
    from fraudguard.config import load_settings
    from fraudguard.data.io import file_md5, read_transactions
    from fraudguard.data.versioning import simulate_raw_data
    from fraudguard.logs import configure_logging
    from fraudguard.paths import ProjectPaths

    configure_logging()
    try:
        paths = ProjectPaths.at(root)
        target = simulate_raw_data(paths, load_settings(paths.params))
        frame = read_transactions(target)
    except FraudGuardError as exc:
        _fail(exc)
    typer.echo(f"{target}: {len(frame)} rows, fraud rate {frame['TX_FRAUD'].mean():.4f}, md5 {file_md5(target)}")
    typer.echo("version it with `dvc add data/raw` (or `fraudguard data import`), then git commit data.dvc")


@app.command("import")
def import_(path: Path = typer.Argument(..., help="CSV or Parquet file in the raw schema."),
            root: Path = ROOT_OPTION,
            force: bool = typer.Option(False, "--force",
                                       help="Allow a file that removes more than "
                                            "validate.max_import_row_loss_share of data/raw's rows."),
            follow_symlinks: bool = typer.Option(False, "--follow-symlinks",
                                                 help="Read PATH even if it is a symbolic link.")) -> None:
    """Validate a transactions file, make it data/raw/transactions.parquet and version it with DVC.
    The quarantined rows and report go to reports/import/, also when the import is refused."""
    from fraudguard.config import load_settings
    from fraudguard.data.validation import QuarantineShareExceeded
    from fraudguard.data.versioning import import_data
    from fraudguard.logs import configure_logging
    from fraudguard.paths import ProjectPaths

    configure_logging()
    try:
        paths = ProjectPaths.at(root)
        outcome = import_data(path, paths, load_settings(paths.params), force=force,
                              follow_symlinks=follow_symlinks)
    except QuarantineShareExceeded as exc:
        _echo_reasons(exc.result.report, err=True)
        _fail(exc)
    except FraudGuardError as exc:
        _fail(exc)
    report = outcome.validation_report
    typer.echo(f"imported {path}: {outcome.rows} rows ({report['rows_quarantined']} will be quarantined), "
               f"data/raw is now {outcome.md5}")
    _echo_reasons(report)
    typer.echo(f"quarantined rows: {outcome.quarantine_file}; report: {outcome.report_file}")
    typer.echo("run `git add data.dvc && git commit` to record this version, `fraudguard data push` to share it")


@app.command()
def remote(root: Path = ROOT_OPTION) -> None:
    """Apply params.yaml's data_remote.url as this checkout's default DVC remote (.dvc/config.local), so
    plain `dvc push`/`dvc pull` use it too; print the default remote and its URL."""
    from fraudguard.config import load_settings
    from fraudguard.data.versioning import ensure_default_remote, run_dvc
    from fraudguard.logs import configure_logging
    from fraudguard.paths import ProjectPaths

    configure_logging()
    try:
        paths = ProjectPaths.at(root)
        name = ensure_default_remote(paths, load_settings(paths.params).data_remote)
        url = run_dvc(["config", f"remote.{name}.url"], paths.root).stdout.strip()
    except FraudGuardError as exc:
        _fail(exc)
    typer.echo(f"default DVC remote '{name}': {url}")


@app.command()
def push(root: Path = ROOT_OPTION) -> None:
    """Upload data.dvc's version of data/raw to the default DVC remote (params.yaml's data_remote.url
    when set)."""
    from fraudguard.config import load_settings
    from fraudguard.data.versioning import push_data
    from fraudguard.logs import configure_logging
    from fraudguard.paths import ProjectPaths

    configure_logging()
    try:
        paths = ProjectPaths.at(root)
        remote = push_data(paths, load_settings(paths.params).data_remote)
    except FraudGuardError as exc:
        _fail(exc)
    typer.echo(f"pushed data/raw to remote '{remote}'")


@app.command()
def pull(root: Path = ROOT_OPTION) -> None:
    """Fetch data.dvc's version of data/raw, or regenerate it (md5-checked) when no remote holds it."""
    from fraudguard.config import load_settings
    from fraudguard.data.versioning import pull_data
    from fraudguard.logs import configure_logging
    from fraudguard.paths import ProjectPaths

    configure_logging()
    try:
        paths = ProjectPaths.at(root)
        outcome = pull_data(paths, load_settings(paths.params))
    except FraudGuardError as exc:
        _fail(exc)
    typer.echo(f"data/raw {outcome.md5}: {outcome.source}")


@app.command()
def validate(root: Path = ROOT_OPTION) -> None:
    """Run the validate stage: data/raw -> data/validated, data/quarantine, reports/validation.json."""
    from fraudguard.config import load_settings
    from fraudguard.logs import configure_logging
    from fraudguard.paths import ProjectPaths
    from fraudguard.stages.validate import run_validation

    configure_logging()
    try:
        paths = ProjectPaths.at(root)
        result = run_validation(paths, load_settings(paths.params))
    except FraudGuardError as exc:
        _fail(exc)
    report = result.report
    typer.echo(f"{report['rows_in']} rows: {report['rows_accepted']} accepted, "
               f"{report['rows_quarantined']} quarantined {report['reasons']}; "
               f"fraud rate {report['fraud_rate']:.4f}")
