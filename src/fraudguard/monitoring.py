"""Scheduled drift monitoring: the newest window of all traffic against the champion's training reference."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fraudguard.errors import DataError, RegistryError
from fraudguard.paths import ProjectPaths

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from fraudguard.config import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DriftCheck:
    """Outcome of one monitoring pass; `drifted` is True when the share exceeds the threshold."""

    champion_version: int
    drift_share: float
    threshold: float
    drifted_columns: tuple[str, ...]
    drifted_controlled: tuple[str, ...]
    n_reference: int
    n_current: int
    report_path: Path
    run_id: str

    @property
    def drifted(self) -> bool:
        return self.drift_share > self.threshold


def check_champion_drift(client: "MlflowClient", root: Path, settings: "Settings",
                         report_dir: Path | None = None) -> DriftCheck:
    """Compare the newest `monitor.window_days` of all featurized traffic after training (unfiltered) with the
    champion's training reference (found through its MLflow lineage); log the report and numbers to an MLflow run."""
    import mlflow
    import pandas as pd

    from fraudguard.features import newest_window
    from fraudguard.gates.drift import compare_features
    from fraudguard.registry import get_champion_version
    from fraudguard.tracking import ensure_experiment, load_reference_features

    name = settings.registry.model_name
    try:
        champion = get_champion_version(client, name)
    except RegistryError as exc:  # no registered model at all yet
        raise RegistryError(f"model {name!r} has no champion: nothing to monitor yet ({exc})") from exc
    if champion is None:
        raise RegistryError(f"model {name!r} has no champion: nothing to monitor yet")
    paths = ProjectPaths.at(root)
    # All traffic after training, unfiltered (featurize's recent.parquet): the evaluation test set lacks
    # known-compromised cards, and the training split's first days hold the feature warm-up.
    if not paths.recent_features.is_file():
        raise DataError(f"{paths.recent_features}: recent traffic not found; run `dvc repro featurize` first")
    current = newest_window(pd.read_parquet(paths.recent_features), settings.monitor.window_days)
    reference = load_reference_features(client, name, champion)
    report_dir = report_dir or paths.reports_dir / "monitor"
    threshold = settings.monitor.drift_share_threshold
    comparison = compare_features(reference, current, list(settings.model.features), threshold,
                                  report_dir / f"drift_champion_v{champion}.html", "newest_window")
    controlled = tuple(sorted(set(settings.threat_model.controlled_features) & set(comparison.drifted_columns)))

    experiment_id = ensure_experiment(client, settings.monitor.experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"drift-v{champion}") as run:
        mlflow.set_tags({"fraudguard.kind": "drift-monitor", "fraudguard.champion_version": str(champion)})
        mlflow.log_metrics({"drift_share": comparison.drift_share,
                            "drifted_columns": float(len(comparison.drifted_columns)),
                            "drifted_controlled": float(len(controlled))})
        mlflow.log_params({"window_days": settings.monitor.window_days, "threshold": threshold})
        mlflow.log_artifact(str(comparison.report_path), artifact_path="drift")
    check = DriftCheck(champion, comparison.drift_share, threshold, comparison.drifted_columns, controlled,
                       comparison.n_reference, comparison.n_current, comparison.report_path, run.info.run_id)
    logger.info("champion v%s: %.0f%% of features drifted over the last %s days (threshold %.0f%%)%s",
                champion, 100 * check.drift_share, settings.monitor.window_days, 100 * threshold,
                f"; attacker-controlled: {', '.join(controlled)}" if controlled else "")
    return check
