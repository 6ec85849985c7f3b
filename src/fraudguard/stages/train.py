"""DVC stage `train`: training features -> model bundle, training metrics and per-epoch history.

Reads data/features/train.parquet; writes models/model.pt (state_dict), models/preprocess.json,
models/metrics.json (final loss, seconds per epoch, train AP, threshold, rows, fraud rate, weights sha256)
and models/training_history.json (one dict per epoch, keyed by `epoch`, for `dvc plots`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fraudguard.config import Settings, section_keys
from fraudguard.errors import DataError
from fraudguard.files import finite_or_null, write_json
from fraudguard.paths import ProjectPaths
from fraudguard.stages import stage_main
from fraudguard.training import TrainingParams, TrainingResult, train_model

logger = logging.getLogger(__name__)

PARAMS = section_keys(TrainingParams)


def section_of(settings: Settings) -> TrainingParams:
    return TrainingParams.of(settings)


@dataclass(frozen=True)
class TrainPaths:
    """The train stage's files: the training features in; the bundle (weights, preprocessing), the training
    metrics and the per-epoch history out."""

    train_features: Path
    weights: Path
    preprocess: Path
    metrics: Path
    history: Path

    @classmethod
    def of(cls, project: ProjectPaths) -> "TrainPaths":
        return cls(project.train_features, project.model_weights, project.preprocess, project.metrics,
                   project.training_history)


@dataclass(frozen=True)
class TrainSummary:
    """The trained model: the training result, the sha256 of the weights written, and metrics.json's content."""

    result: TrainingResult
    weights_sha256: str
    metrics: dict[str, Any]


def run(paths: TrainPaths, section: TrainingParams, progress: bool | None = None) -> TrainSummary:
    """Train on the training features, write the bundle, its metrics and history; return them.

    progress: the per-epoch progress bar; default only when stderr is a terminal (under `fraudguard run` or
    a CI log it would be hundreds of redrawn lines among the log lines)."""
    import sys

    from fraudguard.data.io import read_transactions
    from fraudguard.model import save_bundle

    if not paths.train_features.is_file():
        raise DataError(f"{paths.train_features}: training features not found; run the featurize stage first")
    progress = sys.stderr.isatty() if progress is None else progress
    result = train_model(read_transactions(paths.train_features), section, progress=progress)
    sha256 = save_bundle(result.bundle, paths.weights, paths.preprocess)
    metrics = {**result.metrics(), "weights_sha256": sha256}
    write_json(paths.metrics, finite_or_null(metrics), sort_keys=True)
    write_json(paths.history, finite_or_null(result.history), sort_keys=True)
    logger.info(
        "wrote %s (sha256 %s), %s, %s and %s",
        paths.weights, sha256[:12], paths.preprocess, paths.metrics, paths.history,
    )
    return TrainSummary(result, sha256, metrics)


def main(root: Path | str = ".") -> None:
    """Stage entry point: params.yaml's `model`, `threat_model`, `train` and `evaluate.fpr_for_recall`, and
    the file layout of the project at `root`."""
    stage_main(root, lambda project, settings: run(TrainPaths.of(project), section_of(settings)))


if __name__ == "__main__":
    main()
