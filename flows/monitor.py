"""Prefect flow `monitor`: drift of the newest data window against the champion's training reference;
on drift, the report goes to MLflow and (when configured) `train-and-promote` is triggered."""

from __future__ import annotations

import os
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.deployments import run_deployment


def _project_root() -> Path:
    return Path(os.environ.get("FRAUDGUARD_PROJECT_DIR", ".")).resolve()


@task(name="pull-data", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def pull_data(root: Path, settings) -> str:
    from fraudguard.data.versioning import pull_data as pull
    from fraudguard.paths import ProjectPaths

    return pull(ProjectPaths.at(root), settings.data_remote, settings.simulate).md5


@task(name="featurize", cache_policy=NO_CACHE)
def featurize(root: Path) -> list[str]:
    from fraudguard.pipeline import reproduce_stages

    return list(reproduce_stages(root, ("featurize",)).ran)


@task(name="check-drift", cache_policy=NO_CACHE)
def check_drift(root: Path, settings):
    from fraudguard.monitoring import check_champion_drift
    from fraudguard.tracking import configure_mlflow

    return check_champion_drift(configure_mlflow(root, settings.registry), root, settings)


@task(name="check-live-traffic", cache_policy=NO_CACHE)
def check_live(root: Path, settings):
    """The gateway's prediction log, when this host has one (serve.prediction_log)."""
    from fraudguard.monitoring import check_live_traffic, validated_history
    from fraudguard.tracking import configure_mlflow

    log = settings.serve.prediction_log
    log = log if log.is_absolute() else root / log
    if not log.is_file():
        get_run_logger().info("no prediction log at %s: live traffic not checked", log)
        return None
    return check_live_traffic(configure_mlflow(root, settings.registry), log, settings, root / "reports" / "monitor",
                              history=validated_history(root))


def _share(check) -> str:
    return f"too few rows to judge ({check.n_current if hasattr(check, 'n_current') else check.n_decisions})" \
        if check.too_few_rows else f"{check.drift_share:.0%}"


@flow(name="monitor", log_prints=True)
def monitor(retrain_on_drift: bool | None = None):
    """Check champion drift on the newest window; retrain through the train-and-promote deployment on drift.

    retrain_on_drift: overrides params.yaml monitor.retrain_on_drift for this run.
    """
    from fraudguard.config import load_settings

    root = _project_root()
    settings = load_settings(root / "params.yaml")
    pull_data(root, settings)
    featurize(root)
    check = check_drift(root, settings)
    live = check_live(root, settings)
    retrain = settings.monitor.retrain_on_drift if retrain_on_drift is None else retrain_on_drift
    triggered = None
    if check.drifted and retrain:
        run = run_deployment(settings.monitor.retrain_deployment, timeout=0, as_subflow=False)
        triggered = str(run.id)
        get_run_logger().warning("drift %.0f%% > %.0f%%: triggered %s (flow run %s)", 100 * check.drift_share,
                                 100 * check.threshold, settings.monitor.retrain_deployment, triggered)
    create_markdown_artifact(
        key="drift-monitor",
        description=f"drift of the newest window vs champion v{check.champion_version}",
        markdown=(
            "## Drift monitor\n\n| champion | drift share | threshold | drifted features | attacker-controlled "
            "| MLflow run | retrain run |\n|---|---|---|---|---|---|---|\n"
            f"| v{check.champion_version} | {_share(check)} | {check.threshold:.0%} | "
            f"{', '.join(check.drifted_columns) or '-'} | {', '.join(check.drifted_controlled) or '-'} | "
            f"{check.run_id} | {triggered or '-'} |\n"
            + ("" if live is None else
               "\n## Live traffic (gateway prediction log)\n\n| decisions | flag rate | drift share | drifted features "
               "| terminal bursts | beyond own history | attacker-controlled share of flagged attributions (training) | MLflow run |\n"
               "|---|---|---|---|---|---|---|---|\n"
               f"| {live.n_decisions} | {live.flag_rate:.2%} | {_share(live)} | "
               f"{', '.join(live.drifted_columns) or '-'} | {len(live.bursts)} | {len(live.relative_bursts)} | "
               f"{_attribution_cell(live)} | "
               f"{live.run_id} |\n")),
    )
    return {"drifted": check.drifted, "drift_share": check.drift_share, "retrain_flow_run": triggered,
            "live": None if live is None else {"decisions": live.n_decisions, "flag_rate": live.flag_rate,
                                               "drift_share": live.drift_share, "bursts": len(live.bursts),
                                               "relative_bursts": len(live.relative_bursts),
                                               "terminal_dilution": len(live.terminal_dilution),
                                               "controlled_attribution_alert": live.controlled_attribution_alert}}


def _attribution_cell(live) -> str:
    found = live.attribution
    if found is None:
        return "- (nothing flagged)"
    return (f"{found.live_share:.0%} ({found.reference_share:.0%})"
            + (" **ALERT**" if live.controlled_attribution_alert else ""))


if __name__ == "__main__":
    monitor()
