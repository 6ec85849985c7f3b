"""`fraudguard data ...`: simulate, import, push, pull."""

import typer

app = typer.Typer(no_args_is_help=True)
