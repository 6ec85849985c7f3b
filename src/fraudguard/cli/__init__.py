"""The `fraudguard` command. Sub-command modules import heavy libraries inside their functions,
so `fraudguard --help` stays fast."""

import typer

from fraudguard.cli import ci as ci_commands
from fraudguard.cli import data as data_commands
from fraudguard.cli import model as model_commands
from fraudguard.cli import registry as registry_commands
from fraudguard.cli import run as run_command

app = typer.Typer(
    name="fraudguard",
    help="Train, secure, gate and ship the card-fraud model.",
    no_args_is_help=True,
    add_completion=False,
)
app.command("run")(run_command.run)
app.command("register")(model_commands.register)
registry_commands.register(app)  # promote, rollback, status, audit verify
app.add_typer(data_commands.app, name="data", help="DVC-versioned transaction data.")
app.add_typer(model_commands.app, name="model", help="MLflow runs, registered versions and their lineage.")
app.add_typer(ci_commands.app, name="ci", help="What the pull-request workflow runs.")


def main() -> None:
    app()
