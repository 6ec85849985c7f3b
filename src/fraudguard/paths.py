"""Where the pipeline's files live inside a project checkout (DVC outs and reports)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProjectPaths:
    """The project's file layout, rooted at a checkout; stages and flows take one of these."""

    root: Path

    @classmethod
    def at(cls, root: Path | str = ".") -> "ProjectPaths":
        return cls(Path(root).resolve())

    @property
    def params(self) -> Path:
        return self.root / "params.yaml"

    @property
    def raw_dir(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def raw_dvc_file(self) -> Path:
        return self.root / "data.dvc"

    @property
    def validated(self) -> Path:
        return self.root / "data" / "validated" / "transactions.parquet"

    @property
    def quarantine(self) -> Path:
        return self.root / "data" / "quarantine" / "transactions.parquet"

    @property
    def features_dir(self) -> Path:
        return self.root / "data" / "features"

    @property
    def train_features(self) -> Path:
        return self.features_dir / "train.parquet"

    @property
    def test_features(self) -> Path:
        return self.features_dir / "test.parquet"

    @property
    def recent_features(self) -> Path:
        """Every featurized transaction after the training period, unfiltered (the drift target)."""
        return self.features_dir / "recent.parquet"

    @property
    def features_summary(self) -> Path:
        """The featurize stage's summary: dates, rows and fraud rate of each period."""
        return self.features_dir / "summary.json"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def import_quarantine(self) -> Path:
        """The last `fraudguard data import`'s quarantined rows (written even when it was refused)."""
        return self.reports_dir / "import" / "quarantine.parquet"

    @property
    def import_report(self) -> Path:
        """The last import's validation report (reasons with counts, flagged rows, verdict)."""
        return self.reports_dir / "import" / "validation.json"

    @property
    def validation_report(self) -> Path:
        return self.reports_dir / "validation.json"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def model_weights(self) -> Path:
        return self.models_dir / "model.pt"

    @property
    def preprocess(self) -> Path:
        return self.models_dir / "preprocess.json"

    @property
    def metrics(self) -> Path:
        return self.models_dir / "metrics.json"

    @property
    def training_history(self) -> Path:
        return self.models_dir / "training_history.json"

    @property
    def evaluation(self) -> Path:
        return self.models_dir / "evaluation.json"

    @property
    def plots_dir(self) -> Path:
        return self.models_dir / "plots"

    @property
    def pr_curve_json(self) -> Path:
        """The test split's precision-recall curve as points, for `dvc plots`."""
        return self.plots_dir / "pr_curve.json"

    @property
    def pr_curve_png(self) -> Path:
        return self.plots_dir / "pr_curve.png"

    @property
    def dvc_lock(self) -> Path:
        return self.root / "dvc.lock"
