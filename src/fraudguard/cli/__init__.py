"""The `fraudguard` command. Sub-command modules import heavy libraries inside their functions,
so `fraudguard --help` stays fast."""

import typer

from fraudguard.cli import data as data_commands

app = typer.Typer(
    name="fraudguard",
    help="Train, secure, gate and ship the card-fraud model.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(data_commands.app, name="data", help="DVC-versioned transaction data.")


def main() -> None:
    app()
