"""DVC stage `featurize`: validated transactions -> calendar-split train/test feature tables.

Reads data/validated/transactions.parquet, writes data/features/{train,test,recent}.parquet and
data/features/summary.json (the dates, rows and fraud rate of each period). recent.parquet holds every
transaction after the training period, unfiltered: the drift gate's and the monitor's target traffic.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fraudguard.files import write_json
from fraudguard.config import FeaturizeSettings, load_settings
from fraudguard.data.io import read_transactions, write_transactions
from fraudguard.features import compute_features, plan_split, recent_traffic, split_train_test, summarize_split
from fraudguard.logs import configure_logging
from fraudguard.paths import ProjectPaths

logger = logging.getLogger(__name__)

TRAIN_FILE = "train.parquet"
TEST_FILE = "test.parquet"
RECENT_FILE = "recent.parquet"
SUMMARY_FILE = "summary.json"


def run_featurize(input_path: Path, output_dir: Path, settings: FeaturizeSettings) -> dict:
    """Featurize and split the transactions at input_path into output_dir; return the summary written."""
    transactions = read_transactions(input_path)
    logger.info("featurizing %d transactions from %s", len(transactions), input_path)
    features = compute_features(transactions, settings)
    plan = plan_split(features, settings)
    train, test = split_train_test(features, settings, plan)
    recent = recent_traffic(features, plan)
    summary = summarize_split(train, test, features, settings, plan)

    output_dir.mkdir(parents=True, exist_ok=True)
    # The transactions writer: byte-stable Parquet (no version metadata), so DVC hashes are reproducible.
    write_transactions(train, output_dir / TRAIN_FILE)
    write_transactions(test, output_dir / TEST_FILE)
    write_transactions(recent, output_dir / RECENT_FILE)
    write_json(output_dir / SUMMARY_FILE, summary, sort_keys=True)
    logger.info(
        "%s; train: %d rows (fraud rate %.4f); test: %d rows (fraud rate %.4f), %d dropped as known compromised "
        "(test_filter=%s)", plan.describe(), summary["train"]["rows"], summary["train"]["fraud_rate"],
        summary["test"]["rows"], summary["test"]["fraud_rate"], summary["test"]["rows_dropped_known_compromised"],
        settings.test_filter,
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
