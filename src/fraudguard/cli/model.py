"""`fraudguard register` and `fraudguard model ...`: log the pipeline's outputs to MLflow, register the
model, and show a version's lineage. mlflow and torch are imported inside the commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(no_args_is_help=True)

RootOption = Annotated[Path, typer.Option(help="Project checkout holding models/, data/ and params.yaml.")]
ParamsOption = Annotated[
    Optional[Path], typer.Option(help="params file (default: <root>/params.yaml).")
]


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(code=1)


def _ui_hint(root: Path, tracking_uri: str) -> str:
    """The command that opens the MLflow UI on this store (relative path when run from the root)."""
    from fraudguard.tracking import DB_FILENAME, sqlite_db_path

    db = sqlite_db_path(tracking_uri)
    if db is not None and db == (root / DB_FILENAME).resolve() and Path.cwd().resolve() == root:
        return f"mlflow ui --backend-store-uri sqlite:///{DB_FILENAME}"
    return f"mlflow ui --backend-store-uri {tracking_uri}"


@app.command("register")
def register(
    root: RootOption = Path("."),
    params: ParamsOption = None,
    flow_run_id: Annotated[
        Optional[str], typer.Option(help="Prefect flow run to record in the lineage (default: current, if any).")
    ] = None,
) -> None:
    """Log models/ outputs as an MLflow run and register them as a new version of the model."""
    from fraudguard.config import load_settings
    from fraudguard.errors import FraudGuardError
    from fraudguard.logs import configure_logging
    from fraudguard.pipeline import require_current_outputs
    from fraudguard.reporting import UI_VIEW_QUERY, ui_base
    from fraudguard.tracking import WEIGHTS_SHA_TAG, configure_mlflow, log_training_run, resolve_tracking_uri

    configure_logging()
    root = root.resolve()
    try:
        settings = load_settings(params or root / "params.yaml")
        require_current_outputs(root)
        if params is not None:
            _require_params_the_outputs_were_built_from(root, params, settings)
        configure_mlflow(root, settings.registry)
        record = log_training_run(root, settings, flow_run_id=flow_run_id)
    except FraudGuardError as exc:
        _fail(exc)
        return
    typer.echo(f"registered {settings.registry.model_name} version {record.version} (run {record.run_id})")
    typer.echo(f"model uri: {record.model_uri}")
    for name, value in sorted(record.metrics.items()):
        typer.echo(f"  {name} = {value:.6g}")
    typer.echo(f"weights sha256: {record.lineage[WEIGHTS_SHA_TAG]}")
    tracking_uri = resolve_tracking_uri(root)
    typer.echo(f"review: {_ui_hint(root, tracking_uri)}")
    typer.echo(f"  then {ui_base(tracking_uri)}/#/models/{settings.registry.model_name}/versions/"
               f"{record.version}{UI_VIEW_QUERY}")


def _require_params_the_outputs_were_built_from(root: Path, params: Path, settings) -> None:
    """ConfigError unless `--params` holds the settings of root's params.yaml, which the stages read: registering
    with another file logged, hashed and signed a config that did not produce the weights."""
    from fraudguard.config import flat_keys, load_settings
    from fraudguard.errors import ConfigError

    built, given = flat_keys(load_settings(root / "params.yaml").as_params_dict()), flat_keys(settings.as_params_dict())
    differing = sorted(key for key in set(built) | set(given) if built.get(key) != given.get(key))
    if differing:
        raise ConfigError(f"--params {params} is not the params.yaml the outputs in models/ were built from "
                          f"({root / 'params.yaml'}): {', '.join(differing[:5])}"
                          f"{f' and {len(differing) - 5} more' if len(differing) > 5 else ''} differ; the version "
                          "would record a config that did not produce its weights")


@app.command("lineage")
def lineage(
    version: Annotated[int, typer.Argument(help="Registered model version.")],
    root: RootOption = Path("."),
    params: ParamsOption = None,
) -> None:
    """Print a registered version's lineage and artifact tags."""
    from fraudguard.config import load_settings
    from fraudguard.errors import FraudGuardError
    from fraudguard.names import ARTIFACT_TAG_PREFIX, LINEAGE_TAG_PREFIX
    from fraudguard.tracking import configure_mlflow, registered_version_tags

    root = root.resolve()
    try:
        settings = load_settings(params or root / "params.yaml")
        client = configure_mlflow(root, settings.registry)
        tags = registered_version_tags(client, settings.registry.model_name, version)
    except FraudGuardError as exc:
        _fail(exc)
        return
    for key in sorted(tags):
        if key.startswith((LINEAGE_TAG_PREFIX, ARTIFACT_TAG_PREFIX)):
            typer.echo(f"{key} = {tags[key]}")


@app.command("pull")
def pull(
    dst: Annotated[Path, typer.Argument(help="New folder to write the verified MLflow model directory into.")],
    version: Annotated[
        Optional[int], typer.Option(help="Registered version (default: the committed champion).")
    ] = None,
    root: RootOption = Path("."),
    params: ParamsOption = None,
) -> None:
    """Download the champion (or a promoted version) with every file checked against its signed attestation."""
    from fraudguard.config import load_settings
    from fraudguard.errors import FraudGuardError
    from fraudguard.logs import configure_logging
    from fraudguard.serving.champion import pull_verified
    from fraudguard.signing import load_verifier
    from fraudguard.tracking import configure_mlflow

    configure_logging()
    root = root.resolve()
    try:
        settings = load_settings(params or root / "params.yaml")
        client = configure_mlflow(root, settings.registry)
        pulled = pull_verified(client, settings.registry.model_name, load_verifier(), dst.resolve(), version)
    except FraudGuardError as exc:
        _fail(exc)
        return
    typer.echo(f"pulled {settings.registry.model_name} version {pulled.version} into {pulled.model_dir}: every "
               f"file matches attestation {pulled.attestation[:16]}")
    typer.echo(f"serve it: mlflow models serve -m {pulled.model_dir} --env-manager local")
