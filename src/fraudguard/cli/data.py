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
    history = (report.get("intake") or {}).get("history") or {}
    if history.get("changed_history") or history.get("label_changes"):
        typer.echo(f"history: {history.get('changed_history', 0)} changed transaction(s) kept at their previous "
                   f"values (changed_history), {history.get('label_changes', 0)} reviewed label change(s) applied",
                   err=err)
    unresolved = int(history.get("changed_history_unresolved_duplicate", 0) or 0)
    if unresolved:
        typer.echo(f"history: {unresolved} of those row(s) give an id the previous version held more than once; "
                   "its previous copies are kept and stay quarantined as duplicate_transaction_id", err=err)
    if history.get("replaced"):
        intake = report.get("intake") or {}
        typer.echo(f"history: replaced (--new-history): the previous version {intake.get('previous_md5')} "
                   f"({intake.get('previous_rows')} rows) was not diffed against this file", err=err)
    missing = int(history.get("previous_transactions_missing", 0) or 0)
    if missing:
        typer.echo(f"warning: history: {missing} transaction(s) of the previous version are not in this file "
                   "(deleted from data/raw): promotion is blocked until `fraudguard data acknowledge`", err=True)
    change = (report.get("intake") or {}).get("fraud_rate_change") or {}
    if change.get("exceeded"):
        typer.echo(f"warning: fraud rate {change['previous']:.4f} -> {change['current']:.4f} (factor "
                   f"{change['factor']}, above validate.max_fraud_rate_change_factor {change['max_factor']}): "
                   "promotion is blocked until `fraudguard data acknowledge`", err=True)
    bursts = report.get("volume_bursts") or {}
    if bursts.get("customer_days") or bursts.get("terminal_days"):
        typer.echo(f"volume bursts flagged: {bursts['terminal_days']} terminal-day(s), "
                   f"{bursts['customer_days']} customer-day(s) (see the report)", err=err)
    dilution = report.get("terminal_dilution") or {}
    if dilution.get("rows"):
        typer.echo(f"terminal dilution flagged: {dilution['rows']} legitimate row(s) at {dilution['terminals']} "
                   "terminal(s) before their frauds, not quarantined (see the report's flagged_transaction_ids)",
                   err=err)


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
        target = simulate_raw_data(paths, load_settings(paths.params).simulate)
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
                                                 help="Read PATH even if it is a symbolic link."),
            relabel: Path | None = typer.Option(None, "--relabel",
                                                help="Reviewed relabel list (CSV: TRANSACTION_ID,TX_FRAUD"
                                                     "[,TX_FRAUD_SCENARIO]): the label changes of existing "
                                                     "transactions it names are applied, not quarantined "
                                                     "as changed_history."),
            new_history: bool = typer.Option(False, "--new-history",
                                             help="Replace data/raw's history with this file without diffing "
                                                  "it (other data under the same TRANSACTION_IDs, e.g. a "
                                                  "bank's own export over the simulated default data); "
                                                  "recorded in the intake record.")) -> None:
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
        outcome = import_data(path, paths, load_settings(paths.params).validate_, force=force,
                              follow_symlinks=follow_symlinks, relabels=relabel, new_history=new_history)
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
    from fraudguard.data.versioning import ensure_default_remote
    from fraudguard.tools import run_dvc
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
        settings = load_settings(paths.params)
        outcome = pull_data(paths, settings.data_remote, settings.simulate)
    except FraudGuardError as exc:
        _fail(exc)
    typer.echo(f"data/raw {outcome.md5}: {outcome.source}")


@app.command()
def validate(root: Path = ROOT_OPTION) -> None:
    """Run the validate stage: data/raw -> data/validated, data/quarantine, reports/validation.json."""
    from fraudguard.config import load_settings
    from fraudguard.logs import configure_logging
    from fraudguard.paths import ProjectPaths
    from fraudguard.stages import validate as stage

    configure_logging()
    try:
        paths = ProjectPaths.at(root)
        result = stage.run(stage.ValidatePaths.of(paths), stage.section_of(load_settings(paths.params)))
    except FraudGuardError as exc:
        _fail(exc)
    report = result.report
    typer.echo(f"{report['rows_in']} rows: {report['rows_accepted']} accepted, "
               f"{report['rows_quarantined']} quarantined {report['reasons']}; "
               f"fraud rate {report['fraud_rate']:.4f}")


@app.command()
def acknowledge(by: str = typer.Option(..., "--as", help="Reviewer's name, recorded with the acknowledgement."),
                reason: str = typer.Option(..., "--reason", help="Why the fraud-rate change or deletions are genuine."),
                root: Path = ROOT_OPTION) -> None:
    """Acknowledge the fraud-rate change and deleted transactions reports/validation.json records (data_changes
    gate): appends it to gates.data_changes.acknowledgements; commit that file so the acknowledgement is reviewed."""
    import json

    from fraudguard.config import load_settings
    from fraudguard.gates.data_changes import acknowledge_data_changes
    from fraudguard.paths import ProjectPaths

    try:
        paths = ProjectPaths.at(root)
        settings = load_settings(paths.params)
        if not paths.validation_report.is_file():
            raise FraudGuardError(f"{paths.validation_report}: no validation report; run `fraudguard data validate`")
        report = json.loads(paths.validation_report.read_text(encoding="utf-8"))
        target = settings.gates.data_changes.acknowledgements
        target = target if target.is_absolute() else paths.root / target
        entry = acknowledge_data_changes(report, target, by, reason)
    except FraudGuardError as exc:
        _fail(exc)
    what = [f"fraud rate {entry['previous']:.4f} -> {entry['current']:.4f}"] \
        if entry["previous"] is not None and entry["current"] is not None else []
    if entry["deleted_transactions"]:
        what.append(f"{entry['deleted_transactions']} deleted transaction(s)")
    if entry["history_unchecked"]:
        what.append("data whose history `fraudguard data import` did not check")
    typer.echo(f"acknowledged {', '.join(what)} in {target}; commit it for review")
