"""DVC stage `featurize`: validated transactions -> calendar-split train/test feature tables.

Reads data/validated/transactions.parquet, writes data/features/{train,test,recent}.parquet and
data/features/summary.json (the dates, rows and fraud rate of each period). recent.parquet holds every
transaction after the training period, unfiltered: the drift gate's and the monitor's target traffic.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fraudguard.config import FeaturizeSettings, Settings
from fraudguard.data.io import read_transactions, write_transactions
from fraudguard.features import compute_features, plan_split, recent_traffic, split_train_test, summarize_split
from fraudguard.files import write_json
from fraudguard.paths import ProjectPaths
from fraudguard.stages import stage_main

logger = logging.getLogger(__name__)

PARAMS = ("featurize",)


def section_of(settings: Settings) -> FeaturizeSettings:
    return settings.featurize


@dataclass(frozen=True)
class FeaturizePaths:
    """The featurize stage's files: the validated transactions in; the three feature tables and the split
    summary out."""

    validated: Path
    train: Path
    test: Path
    recent: Path
    summary: Path

    @classmethod
    def of(cls, project: ProjectPaths) -> "FeaturizePaths":
        return cls(project.validated, project.train_features, project.test_features, project.recent_features,
                   project.features_summary)

    @property
    def outputs(self) -> tuple[Path, ...]:
        return self.train, self.test, self.recent, self.summary


@dataclass(frozen=True)
class FeaturizeSummary:
    """The split the stage wrote: `report` is summary.json's content (dates, rows, fraud rate per period)."""

    report: dict[str, Any]

    @property
    def train_rows(self) -> int:
        return int(self.report["train"]["rows"])

    @property
    def test_rows(self) -> int:
        return int(self.report["test"]["rows"])


def run(paths: FeaturizePaths, section: FeaturizeSettings) -> FeaturizeSummary:
    """Featurize and split the validated transactions, write the tables and the summary; return the summary.
    Nothing is written when the data cannot be split (DataError)."""
    transactions = read_transactions(paths.validated)
    logger.info("featurizing %d transactions from %s", len(transactions), paths.validated)
    features = compute_features(transactions, section)
    plan = plan_split(features, section)
    train, test = split_train_test(features, section, plan)
    recent = recent_traffic(features, plan)
    summary = summarize_split(train, test, features, section, plan)

    # The transactions writer: byte-stable Parquet (no version metadata), so DVC hashes are reproducible.
    write_transactions(train, paths.train)
    write_transactions(test, paths.test)
    write_transactions(recent, paths.recent)
    write_json(paths.summary, summary, sort_keys=True)
    logger.info(
        "%s; train: %d rows (fraud rate %.4f); test: %d rows (fraud rate %.4f), %d dropped as known compromised "
        "(test_filter=%s)", plan.describe(), summary["train"]["rows"], summary["train"]["fraud_rate"],
        summary["test"]["rows"], summary["test"]["fraud_rate"], summary["test"]["rows_dropped_known_compromised"],
        section.test_filter,
    )
    return FeaturizeSummary(summary)


def main(root: Path | str = ".") -> None:
    """Stage entry point: params.yaml's `featurize` section and the file layout of the project at `root`."""
    stage_main(root, lambda project, settings: run(FeaturizePaths.of(project), section_of(settings)))


if __name__ == "__main__":
    main()
