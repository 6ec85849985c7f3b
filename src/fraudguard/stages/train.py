"""DVC stage `train`: training features -> model bundle, training metrics and per-epoch history.

Reads data/features/train.parquet; writes models/model.pt (state_dict), models/preprocess.json,
models/metrics.json (final loss, seconds per epoch, train AP, threshold, rows, fraud rate, weights sha256)
and models/training_history.json (one dict per epoch, keyed by `epoch`, for `dvc plots`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fraudguard.files import finite_or_null, write_json
from fraudguard.config import Settings, load_settings
from fraudguard.logs import configure_logging
from fraudguard.paths import ProjectPaths

logger = logging.getLogger(__name__)


def run_train(paths: ProjectPaths, settings: Settings, progress: bool = True) -> dict[str, Any]:
    """Train on the featurized train split under `paths`, write the model and its metrics; return them."""
    from fraudguard.data.io import read_transactions
    from fraudguard.model import save_bundle
    from fraudguard.training import train_model

    train_frame = read_transactions(paths.train_features)
    result = train_model(train_frame, settings, progress=progress)
    sha256 = save_bundle(result.bundle, paths.model_weights, paths.preprocess)
    metrics = {**result.metrics(), "weights_sha256": sha256}
    write_json(paths.metrics, finite_or_null(metrics), sort_keys=True)
    write_json(paths.training_history, finite_or_null(result.history), sort_keys=True)
    logger.info(
        "wrote %s (sha256 %s), %s, %s and %s",
        paths.model_weights, sha256[:12], paths.preprocess, paths.metrics, paths.training_history,
    )
    return metrics


def main(root: Path | str = ".") -> dict[str, Any]:
    """Run the stage inside the checkout at root, with its params.yaml `model`, `threat_model`, `train`."""
    paths = ProjectPaths.at(root)
    settings = load_settings(paths.params)
    return run_train(paths, settings)


if __name__ == "__main__":
    configure_logging()
    main()
