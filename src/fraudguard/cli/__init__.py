"""The `fraudguard` command. Sub-command modules import heavy libraries inside their functions,
so `fraudguard --help` stays fast."""

import typer

from fraudguard.cli import data as data_commands
from fraudguard.cli import model as model_commands
from fraudguard.cli import run as run_command

app = typer.Typer(
    name="fraudguard",
    help="Train, secure, gate and ship the card-fraud model.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(data_commands.app, name="data", help="DVC-versioned transaction data.")
app.command("run")(run_command.run)
app.command("register")(model_commands.register)
app.add_typer(model_commands.app, name="model", help="MLflow runs, registered versions and their lineage.")


def main() -> None:
    app()
