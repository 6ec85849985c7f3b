"""Prefect flow `train-and-promote`: DVC data -> stages -> MLflow version -> gates -> champion.

Thin by design: every task calls one fraudguard library function. Heavy libraries (torch, ART,
Evidently, MLflow) are imported inside the tasks, so loading this file for a deployment is cheap.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import Completed, Failed
from prefect.utilities.annotations import quote


def _project_root() -> Path:
    # The deployment's pull step sets the working directory to the project checkout.
    return Path(os.environ.get("FRAUDGUARD_PROJECT_DIR", ".")).resolve()


@task(name="validate-params", cache_policy=NO_CACHE)
def validate_params(root: Path, params_overrides: dict[str, Any] | None):
    from fraudguard.pipeline import validate_overrides

    return validate_overrides(root / "params.yaml", params_overrides)


@task(name="pull-data", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def pull_data(root: Path, settings, data_revision: str | None) -> str:
    """The only task with retries: it is the one doing remote I/O."""
    from fraudguard.data.versioning import pull_data as pull
    from fraudguard.paths import ProjectPaths
    from fraudguard.pipeline import checkout_data_revision

    checkout_data_revision(root, data_revision)
    outcome = pull(ProjectPaths.at(root), settings)
    get_run_logger().info("data/raw %s (%s)", outcome.md5, outcome.source)
    return outcome.md5


@task(name="dvc-repro", cache_policy=NO_CACHE)
def reproduce(root: Path, params_overrides: dict[str, Any] | None) -> dict[str, Any]:
    from fraudguard.pipeline import params_overridden, reproduce_stages

    with params_overridden(root / "params.yaml", params_overrides):
        outcome = reproduce_stages(root)
    get_run_logger().info("stages run: %s; up to date: %s", list(outcome.ran), list(outcome.skipped))
    return {"ran": list(outcome.ran), "skipped": list(outcome.skipped), "seconds": outcome.seconds}


@task(name="register-model", cache_policy=NO_CACHE)
def register(root: Path, settings, flow_run_id: str | None) -> dict[str, Any]:
    from fraudguard.tracking import configure_mlflow, find_identical_version, log_training_run

    client = configure_mlflow(root, settings)
    existing = find_identical_version(client, root, settings)
    if existing is not None:
        mv = client.get_model_version(settings.registry.model_name, str(existing))
        run = client.get_run(mv.run_id)
        get_run_logger().info("same weights, params and data as version %s: reusing it", existing)
        return {"version": existing, "run_id": mv.run_id, "experiment_id": run.info.experiment_id,
                "metrics": dict(run.data.metrics), "reused": True,
                "is_champion": "champion" in (mv.aliases or [])}
    record = log_training_run(root, settings, flow_run_id=flow_run_id)
    experiment_id = client.get_run(record.run_id).info.experiment_id
    return {"version": record.version, "run_id": record.run_id, "experiment_id": experiment_id,
            "metrics": dict(record.metrics), "reused": False, "is_champion": False}


@task(name="prepare-gates", cache_policy=NO_CACHE)
def prepare_gates(root: Path, settings, version: int):
    """Candidate + champion bundles and the feature frames every gate reads, loaded once."""
    from fraudguard.paths import ProjectPaths
    from fraudguard.promotion import STANDARD_HEAVY_IMPORTS, build_gate_context, discover_gates, warm_imports
    from fraudguard.tracking import configure_mlflow

    client = configure_mlflow(root, settings)
    report_dir = ProjectPaths.at(root).reports_dir / "gates" / f"v{version}"
    report_dir.mkdir(parents=True, exist_ok=True)
    candidate, context = build_gate_context(client, root, settings, version, report_dir)
    gates = discover_gates(settings)
    # Importing ART/torch from several gate threads at once deadlocks: import them here, first.
    warm_imports(gates, STANDARD_HEAVY_IMPORTS)
    return candidate, context, list(gates)


@task(name="gate", task_run_name="gate-{name}", cache_policy=NO_CACHE)
def run_gate(name: str, candidate, context, settings):
    from fraudguard.promotion import discover_gates, run_gate as run_one

    result, seconds = run_one(name, discover_gates(settings)[name], candidate, context, settings)
    log = get_run_logger()
    (log.info if result.passed else log.warning)("%s: %s (%.1f s)", "passed" if result.passed else "FAILED",
                                                 result.reason, seconds)
    return result, seconds


@task(name="record-and-promote", cache_policy=NO_CACHE)
def record_and_promote(root: Path, settings, version: int, gate_runs: list, report_dir: Path, promote: bool):
    from fraudguard.errors import PromotionBlocked
    from fraudguard.promotion import apply_gate_results
    from fraudguard.tracking import configure_mlflow

    client = configure_mlflow(root, settings)
    results = tuple(result for result, _ in gate_runs)
    durations = {result.name: round(seconds, 3) for result, seconds in gate_runs}
    try:
        return apply_gate_results(client, settings, version, results, durations, report_dir, promote=promote,
                                  actor=f"prefect:{flow_run.get_id() or 'local'}")
    except PromotionBlocked as blocked:
        return blocked.outcome  # type: ignore[attr-defined]


@flow(name="train-and-promote", log_prints=True)
def train_and_promote(
    data_revision: str | None = None,
    params_overrides: dict[str, Any] | None = None,
    promote: bool = True,
):
    """Train a candidate from the DVC-versioned data and promote it to `champion` if every gate passes.

    data_revision: git revision of data.dvc to train on (default: the work tree's).
    params_overrides: nested or dotted params.yaml keys, validated against the typed settings.
    promote: false runs the gates only (a dry run); `champion` never moves.
    """
    from fraudguard.reporting import promotion_markdown

    root = _project_root()
    settings = validate_params(root, params_overrides)
    data_md5 = pull_data(root, settings, data_revision)
    stages = reproduce(root, params_overrides)
    record = register(root, settings, flow_run.get_id())
    if record["is_champion"]:
        return Completed(message=f"nothing changed: version {record['version']} (same weights, params and "
                                 "data) is already the champion")
    candidate, context, gate_names = prepare_gates(root, settings, record["version"])
    # Each gate is its own task, all running at once; quote() keeps Prefect from walking the frames.
    futures = [run_gate.submit(name, quote(candidate), quote(context), settings) for name in gate_names]
    gate_runs = [future.result() for future in futures]
    outcome = record_and_promote(root, settings, record["version"], quote(gate_runs), context.report_dir, promote)

    markdown = promotion_markdown(outcome, record, data_md5, stages)
    create_markdown_artifact(markdown=markdown, key="train-and-promote",
                             description=f"gates for fraudguard version {record['version']}")
    if outcome.failed_gates:
        return Failed(name="Blocked", message=(
            f"promotion of version {outcome.version} blocked by gate(s): {', '.join(outcome.failed_gates)}; "
            "champion unchanged"))
    if not promote:
        return Completed(message=f"dry run: version {outcome.version} passed every gate; champion unchanged")
    return Completed(message=f"version {outcome.version} is the new champion "
                             f"(was {outcome.champion_before})")


if __name__ == "__main__":
    train_and_promote()
