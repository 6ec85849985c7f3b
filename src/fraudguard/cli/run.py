"""`fraudguard run`: the main job, the train-and-promote flow in-process (Prefect's ephemeral mode)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import typer

ROOT_OPTION = typer.Option(Path("."), "--root", help="Project root (holds params.yaml, dvc.yaml, flows/).")


def load_flow(root: Path, module: str, attribute: str) -> Any:
    """Import a flow object from <root>/flows/<module>.py (flows/ is not an installed package)."""
    path = root / "flows" / f"{module}.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: flow file not found (is --root the project root?)")
    spec = importlib.util.spec_from_file_location(f"fraudguard_flows_{module}", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return getattr(mod, attribute)


def _prepare_local_prefect(root: Path) -> None:
    # A laptop run needs no Prefect server: an ephemeral one with its state inside the project.
    os.environ.setdefault("PREFECT_HOME", str(root / ".prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    # Prefect waits 20 s for its temporary server; on a busy 2-core machine it needed up to ~70 s.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def run(
    root: Path = ROOT_OPTION,
    promote: bool = typer.Option(True, "--promote/--dry-run", help="Move `champion` if every gate passes."),
    params_override: list[str] = typer.Option(
        [], "--set", "-S", help="params.yaml override as dotted.key=YAML value, e.g. -S train.epochs=3."),
) -> None:
    """Pull or simulate the data, run the DVC stages, register the model, run every gate, promote."""
    import yaml

    from fraudguard.logs import configure_logging
    from fraudguard.reporting import LOCAL_UI, UI_VIEW_QUERY

    root = root.resolve()
    configure_logging()
    _prepare_local_prefect(root)
    overrides = {}
    for item in params_override:
        key, sep, value = item.partition("=")
        if not sep:
            typer.echo(f"--set {item!r}: expected dotted.key=value", err=True)
            raise typer.Exit(2)
        overrides[key] = yaml.safe_load(value)
    os.environ["FRAUDGUARD_PROJECT_DIR"] = str(root)
    flow = load_flow(root, "train_and_promote", "train_and_promote")
    state = flow(promote=promote, params_overrides=overrides or None, return_state=True)
    summary = {"data": summarize_data(root), "registry": summarize_registry(root)}
    typer.echo("")
    typer.echo(f"flow run: {state.name}: {state.message or ''}")
    typer.echo(json.dumps(summary, indent=2, default=str))
    typer.echo("\nOpen the MLflow UI on this project's store:\n"
               f"  mlflow ui --backend-store-uri sqlite:///{root / 'mlflow.db'}\n"
               f"then {LOCAL_UI}/#/experiments/{summary['registry'].get('experiment_id', '')}{UI_VIEW_QUERY} (runs) "
               f"or {LOCAL_UI}/#/models (versions, gate tables and lineage).")
    if state.is_failed() or state.is_crashed():
        if state.name != "Blocked":
            try:
                state.result()
            except Exception as exc:  # show the cause, not a Prefect traceback
                typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1)


def summarize_data(root: Path) -> dict[str, Any]:
    """Rows, fraud rate and quarantine counts by reason from the validate and featurize reports."""
    from fraudguard.paths import ProjectPaths

    paths = ProjectPaths.at(root)
    out: dict[str, Any] = {}
    if paths.validation_report.is_file():
        report = json.loads(paths.validation_report.read_text(encoding="utf-8"))
        out.update(rows_in=report.get("rows_in"), rows_accepted=report.get("rows_accepted"),
                   fraud_rate=round(float(report.get("fraud_rate", 0.0)), 5),
                   quarantined_by_reason=report.get("reasons", {}))
    split = paths.features_summary
    if split.is_file():
        doc = json.loads(split.read_text(encoding="utf-8"))
        for part in ("train", "test"):
            if isinstance(doc.get(part), dict):
                out[f"{part}_rows"] = doc[part].get("rows")
                out[f"{part}_fraud_rate"] = round(float(doc[part].get("fraud_rate", 0.0)), 5)
    return out


def summarize_registry(root: Path) -> dict[str, Any]:
    """Newest version, champion, gate verdicts and headline metrics from the registry."""
    from fraudguard.config import load_settings
    from fraudguard.names import GATE_TAG_PREFIX, STATUS_TAG
    from fraudguard.registry import get_champion_version, newest_version
    from fraudguard.tracking import configure_mlflow

    settings = load_settings(root / "params.yaml")
    client = configure_mlflow(root, settings)
    name = settings.registry.model_name
    try:
        newest = newest_version(client, name)
    except Exception as exc:  # no version registered: the flow failed before registration
        return {"error": f"no registered version: {exc}"}
    mv = client.get_model_version(name, str(newest))
    run = client.get_run(mv.run_id) if mv.run_id else None
    metrics = {k: round(v, 4) for k, v in (run.data.metrics if run else {}).items() if k.startswith("eval.")}
    return {
        "model": name,
        "newest_version": newest,
        "champion": get_champion_version(client, name),
        "gates": {k.removeprefix(GATE_TAG_PREFIX): v for k, v in (mv.tags or {}).items()
                  if k.startswith(GATE_TAG_PREFIX)},
        "status": (mv.tags or {}).get(STATUS_TAG),
        "metrics": metrics,
        "run_id": mv.run_id,
        "experiment_id": run.info.experiment_id if run else None,
    }


if __name__ == "__main__":  # pragma: no cover
    typer.run(run)
