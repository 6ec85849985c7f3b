"""DVC stage `featurize`: validated transactions -> time-ordered train/test feature tables.

Reads data/validated/transactions.parquet, writes data/features/{train,test}.parquet and
data/features/summary.json (rows, fraud rate and date range per split).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from fraudguard.config import FeaturizeSettings, load_settings
from fraudguard.data.io import read_transactions, write_transactions
from fraudguard.features import compute_features, split_train_test, summarize_split
from fraudguard.logs import configure_logging
from fraudguard.paths import ProjectPaths

logger = logging.getLogger(__name__)

TRAIN_FILE = "train.parquet"
TEST_FILE = "test.parquet"
SUMMARY_FILE = "summary.json"


def run_featurize(input_path: Path, output_dir: Path, settings: FeaturizeSettings) -> dict:
    """Featurize and split the transactions at input_path into output_dir; return the summary written."""
    transactions = read_transactions(input_path)
    logger.info("featurizing %d transactions from %s", len(transactions), input_path)
    features = compute_features(transactions, settings)
    train, test = split_train_test(features, settings)
    summary = summarize_split(train, test, features, settings)

    output_dir.mkdir(parents=True, exist_ok=True)
    # The transactions writer: byte-stable Parquet (no version metadata), so DVC hashes are reproducible.
    write_transactions(train, output_dir / TRAIN_FILE)
    write_transactions(test, output_dir / TEST_FILE)
    (output_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    logger.info(
        "train: %d rows (fraud rate %.4f); test: %d rows (fraud rate %.4f), %d dropped as known compromised",
        summary["train"]["rows"], summary["train"]["fraud_rate"],
        summary["test"]["rows"], summary["test"]["fraud_rate"], summary["test"]["rows_dropped_known_compromised"],
    )
    return summary


def main(root: Path | str = ".") -> dict:
    """Run the stage inside the checkout at root, with its params.yaml `featurize` section."""
    paths = ProjectPaths.at(root)
    settings = load_settings(paths.params)
    return run_featurize(paths.validated, paths.features_dir, settings.featurize)


if __name__ == "__main__":
    configure_logging()
    main()
