"""The `fraudguard` command. Sub-command modules import heavy libraries inside their functions,
so `fraudguard --help` stays fast."""

import os

import typer

from fraudguard.cli import ci as ci_commands
from fraudguard.cli import data as data_commands
from fraudguard.cli import model as model_commands
from fraudguard.cli import redteam as redteam_command
from fraudguard.cli import registry as registry_commands
from fraudguard.cli import run as run_command
from fraudguard.cli import serve as serve_commands

app = typer.Typer(
    name="fraudguard",
    help="Train, secure, gate and ship the card-fraud model.",
    no_args_is_help=True,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"fraudguard {version('fraudguard')}")
        raise typer.Exit()


@app.callback()
def _options(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress (INFO) to stderr."),
    show_version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                      help="Print the version and exit."),
) -> None:
    """Train, secure, gate and ship the card-fraud model."""
    # Quiet by default: a command prints its answer; -v (or $FRAUDGUARD_LOG_LEVEL) adds the log lines.
    if verbose:
        os.environ["FRAUDGUARD_LOG_LEVEL"] = "INFO"
    else:
        os.environ.setdefault("FRAUDGUARD_LOG_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


app.command("run")(run_command.run)
app.command("register")(model_commands.register)
registry_commands.register(app)  # promote, rollback, status, audit verify
app.command("serve")(serve_commands.serve)
app.command("redteam")(redteam_command.redteam)
app.command("serve-bootstrap")(serve_commands.serve_bootstrap)
app.add_typer(data_commands.app, name="data", help="DVC-versioned transaction data.")
app.add_typer(model_commands.app, name="model", help="MLflow runs, registered versions and their lineage.")
app.add_typer(ci_commands.app, name="ci", help="What the pull-request workflow runs.")


def _is_operational(exc: BaseException) -> bool:
    """A store, network or file-system failure: the user gets its cause in one line, not a traceback."""
    from fraudguard.store import is_transient

    names = {cls.__module__.split(".")[0] + "." + cls.__name__ for cls in type(exc).__mro__}
    return is_transient(exc) or isinstance(exc, OSError) or any(
        name.startswith(("sqlalchemy.", "requests.", "urllib3.")) or name == "mlflow.MlflowException"
        for name in names)


def main() -> None:
    """Run the CLI; an operational error (busy store, unreachable server, disk) ends in one line, exit 1."""
    from fraudguard.errors import FraudGuardError

    try:
        app()
    except (FraudGuardError, Exception) as exc:  # classified: anything else keeps its traceback
        if not isinstance(exc, FraudGuardError) and not _is_operational(exc):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        typer.secho(f"error: {type(exc).__name__}: {first}", fg=typer.colors.RED, err=True)
        typer.secho("  the tracking store or a file it needs is unavailable; nothing half-done is left "
                    "unrecorded (`fraudguard status` checks): retry when it is back", err=True)
        raise SystemExit(1) from None
