"""DVC stage `train`: training features -> model bundle, training metrics and per-epoch history.

Reads data/features/train.parquet; writes models/model.pt (state_dict), models/preprocess.json,
models/metrics.json (final loss, seconds per epoch, train AP, threshold, rows, fraud rate, weights sha256)
and models/training_history.json (one dict per epoch, keyed by `epoch`, for `dvc plots`).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from fraudguard.config import Settings, load_settings
from fraudguard.logs import configure_logging
from fraudguard.paths import ProjectPaths

logger = logging.getLogger(__name__)


def _json_ready(value: Any) -> Any:
    """NaN and infinities become null: JSON has no such numbers and DVC would reject the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_ready(v) for v in value]
    return value


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_json_ready(data), indent=2, sort_keys=True) + "\n", encoding="utf-8")


def run_train(paths: ProjectPaths, settings: Settings, progress: bool = True) -> dict[str, Any]:
    """Train on the featurized train split under `paths`, write the model and its metrics; return them."""
    from fraudguard.data.io import read_transactions
    from fraudguard.model import save_bundle
    from fraudguard.training import train_model

    train_frame = read_transactions(paths.train_features)
    result = train_model(train_frame, settings, progress=progress)
    sha256 = save_bundle(result.bundle, paths.model_weights, paths.preprocess)
    metrics = {**result.metrics(), "weights_sha256": sha256}
    _write_json(paths.metrics, metrics)
    _write_json(paths.training_history, result.history)
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
