"""`fraudguard serve` (the scoring gateway) and `fraudguard serve-bootstrap` (fill its state store)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

RootOption = Annotated[Path, typer.Option("--root", help="Project checkout (holds params.yaml and data/).")]


def serve(
    root: RootOption = Path("."),
    host: Annotated[Optional[str], typer.Option(help="Bind address (default: serve.host).")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port (default: serve.port).")] = None,
) -> None:
    """Serve the verified champion: POST /score, /score/batch, /feedback; GET /health, /metrics."""
    import uvicorn

    from fraudguard.config import load_settings
    from fraudguard.errors import FraudGuardError
    from fraudguard.logs import configure_logging
    from fraudguard.serving.runner import build_app

    configure_logging()
    root = root.resolve()
    try:
        settings = load_settings(root / "params.yaml")
        import torch

        torch.set_num_threads(settings.serve.torch_threads)
        app = build_app(root, settings)
    except FraudGuardError as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1) from None
    uvicorn.run(app, host=host or settings.serve.host, port=port if port is not None else settings.serve.port,
                log_level="info", access_log=False)


def serve_bootstrap(
    root: RootOption = Path("."),
    source: Annotated[Optional[Path], typer.Option(help="Transactions file (default: serve.bootstrap_from).")] = None,
    until: Annotated[Optional[str], typer.Option(help="Only transactions before this date-time.")] = None,
) -> None:
    """Load history (raw schema with TX_FRAUD) into the gateway's state store; labels count after the delay."""
    import pandas as pd

    from fraudguard.config import load_settings
    from fraudguard.data.io import read_transactions
    from fraudguard.logs import configure_logging
    from fraudguard.serving.stores import open_state_store

    configure_logging()
    root = root.resolve()
    settings = load_settings(root / "params.yaml")
    source = source or settings.serve.bootstrap_from
    if source is None:
        typer.secho("error: no source: give --source or set serve.bootstrap_from", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1)
    source = source if source.is_absolute() else root / source
    store = open_state_store(settings.serve, settings.featurize, root)
    try:
        added = store.bootstrap(read_transactions(source), pd.Timestamp(until) if until else None)
        typer.echo(f"{store.location}: added {added} transaction(s) from {source}; {store.count()} in the store")
    finally:
        store.close()
