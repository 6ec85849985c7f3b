"""Prefect flow `rollback`: move `champion` back to the previous good version, audited."""

from __future__ import annotations

import os
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run


@task(name="rollback-champion", cache_policy=NO_CACHE)
def rollback_champion(root: Path, to_version: int | None, reason: str | None):
    from fraudguard.config import load_settings
    from fraudguard.promotion import rollback as rollback_registry
    from fraudguard.tracking import configure_mlflow

    settings = load_settings(root / "params.yaml")
    client = configure_mlflow(root, settings.registry)
    return rollback_registry(client, settings, to_version=to_version, reason=reason,
                             actor=f"prefect:{flow_run.get_id() or 'local'}")


@flow(name="rollback", log_prints=True)
def rollback(to_version: int | None = None, reason: str | None = None):
    """Restore the previous champion (or `to_version`) if it passed its gates and its weights are intact."""
    root = Path(os.environ.get("FRAUDGUARD_PROJECT_DIR", ".")).resolve()
    outcome = rollback_champion(root, to_version, reason)
    create_markdown_artifact(
        key="rollback",
        markdown=(f"## Rollback\n\n| from | to | reason | audit seq |\n|---|---|---|---|\n"
                  f"| {outcome.from_version} | {outcome.to_version} | {outcome.reason} | "
                  f"{outcome.audit.seq if outcome.audit else '-'} |\n"),
        description="champion rollback",
    )
    print(f"champion moved back from version {outcome.from_version} to {outcome.to_version}")
    return {"from_version": outcome.from_version, "to_version": outcome.to_version}


if __name__ == "__main__":
    rollback()
