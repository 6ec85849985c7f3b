"""The fraud model: a small MLP on standardized features, bundled with its preprocessing and threshold.

Artifacts: the weights file holds only a state_dict (loaded with `weights_only=True`, never unpickled);
preprocess.json holds the feature list, standardization, architecture and operating threshold. The
sha256 of the weights file is checked before loading whenever the caller knows it (registry tag).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from fraudguard.errors import ModelError
from fraudguard.files import sha256_file, write_json

PREPROCESS_FORMAT_VERSION = 1
_PREDICT_CHUNK = 65536


class FraudMLP(torch.nn.Module):
    """ReLU MLP returning two logits (legit, fraud): ART handles 2-logit models with cross-entropy best.
    With `linear_term`, a linear term on every input is added to the logits (wide-and-deep): the model holds a
    logistic regression as a special case."""

    linear: torch.nn.Linear | None

    def __init__(self, n_features: int, hidden_sizes: Sequence[int], dropout: float, linear_term: bool = False):
        super().__init__()
        if n_features <= 0:
            raise ValueError(f"n_features must be > 0, got {n_features}")
        layers: list[torch.nn.Module] = []
        width = n_features
        for size in hidden_sizes:
            layers += [torch.nn.Linear(width, int(size)), torch.nn.ReLU(), torch.nn.Dropout(dropout)]
            width = int(size)
        layers.append(torch.nn.Linear(width, 2))
        self.net = torch.nn.Sequential(*layers)
        self.linear = torch.nn.Linear(n_features, 2) if linear_term else None
        self.n_features = n_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.linear is None:
            return self.net(x)
        return self.net(x) + self.linear(x)


@dataclass(frozen=True)
class Standardizer:
    """Per-feature (x - mean) / std, fitted on the training split only."""

    features: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, frame: pd.DataFrame, features: Sequence[str]) -> "Standardizer":
        """Mean and std of each feature column of `frame`; a constant column gets std 1."""
        features = tuple(features)
        values = _feature_matrix(frame, features, dtype=np.float64)
        mean = values.mean(axis=0)
        std = values.std(axis=0)
        std = np.where(std > 0, std, 1.0)
        return cls(features=features, mean=mean, std=std)

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        """The frame's feature columns, standardized, as float32 (N, n_features)."""
        values = _feature_matrix(frame, self.features, dtype=np.float64)
        return ((values - self.mean) / self.std).astype(np.float32)

    def inverse_transform(self, x: np.ndarray) -> np.ndarray:
        """Standardized values back to real units (float64)."""
        return np.asarray(x, dtype=np.float64) * self.std + self.mean

    def to_dict(self) -> dict[str, Any]:
        return {
            "features": list(self.features),
            "mean": [float(v) for v in self.mean],
            "std": [float(v) for v in self.std],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Standardizer":
        try:
            features = tuple(str(f) for f in data["features"])
            mean = np.asarray(data["mean"], dtype=np.float64)
            std = np.asarray(data["std"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"standardizer: malformed data ({exc})") from exc
        if not (len(features) == mean.shape[0] == std.shape[0]) or mean.ndim != 1:
            raise ModelError(
                f"standardizer: {len(features)} features but {mean.shape} means and {std.shape} stds"
            )
        if not np.all(np.isfinite(mean)) or not np.all(std > 0):
            raise ModelError("standardizer: means must be finite and stds > 0")
        return cls(features=features, mean=mean, std=std)


def _feature_matrix(frame: pd.DataFrame, features: Sequence[str], dtype: type) -> np.ndarray:
    missing = [f for f in features if f not in frame.columns]
    if missing:
        raise ModelError(f"feature frame lacks the model's feature columns: {missing}")
    try:
        values = frame.loc[:, list(features)].to_numpy(dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"feature columns {list(features)} are not all numeric: {exc}") from exc
    bad = [f for f, ok in zip(features, np.isfinite(values).all(axis=0)) if not ok]
    if bad:
        raise ModelError(f"feature columns hold NaN or infinite values: {bad}")
    return values


@dataclass
class ModelBundle:
    """A trained model ready to score: module (eval mode), its standardizer, architecture and threshold.

    `threshold` is the operating point: a transaction is flagged when P(fraud) >= threshold. Training
    chooses it on the training split as the score at which the false-positive rate among legitimate
    transactions equals settings.evaluate.fpr_for_recall.
    """

    module: FraudMLP
    standardizer: Standardizer
    hidden_sizes: tuple[int, ...]
    dropout: float
    threshold: float
    linear_term: bool = False  # model.linear_term: a linear term on every input added to the MLP's logits

    @property
    def features(self) -> tuple[str, ...]:
        return self.standardizer.features

    def predict_proba_standardized(self, x: np.ndarray) -> np.ndarray:
        """P(fraud) for already-standardized inputs, shape (N,), float64."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != len(self.features):
            raise ModelError(f"expected inputs of shape (N, {len(self.features)}), got {x.shape}")
        self.module.eval()
        out = np.empty(x.shape[0], dtype=np.float64)
        with torch.no_grad():
            for start in range(0, x.shape[0], _PREDICT_CHUNK):
                logits = self.module(torch.from_numpy(x[start:start + _PREDICT_CHUNK]))
                out[start:start + _PREDICT_CHUNK] = torch.softmax(logits, dim=1)[:, 1].double().numpy()
        return out

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """P(fraud) for each row of a feature frame, shape (N,)."""
        return self.predict_proba_standardized(self.standardizer.transform(frame))

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Boolean decision per row at the bundle's operating threshold."""
        return self.predict_proba(frame) >= self.threshold

    def preprocess_dict(self) -> dict[str, Any]:
        """What preprocess.json holds."""
        out = {
            "format_version": PREPROCESS_FORMAT_VERSION,
            **self.standardizer.to_dict(),
            "hidden_sizes": [int(h) for h in self.hidden_sizes],
            "dropout": float(self.dropout),
            "threshold": float(self.threshold),
        }
        if self.linear_term:  # written only when on: a plain MLP's file stays byte for byte what it was
            out["linear_term"] = True
        return out


def save_bundle(bundle: ModelBundle, weights_path: Path, preprocess_path: Path) -> str:
    """Write the state_dict and preprocess.json; return the sha256 of the weights file."""
    weights_path, preprocess_path = Path(weights_path), Path(preprocess_path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    preprocess_path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in bundle.module.state_dict().items()}
    torch.save(state, weights_path)
    write_json(preprocess_path, bundle.preprocess_dict())
    return sha256_file(weights_path)


def load_bundle(
    weights_path: Path, preprocess_path: Path, expected_sha256: str | None = None
) -> ModelBundle:
    """Load a bundle, checking the weights' sha256 first when given; weights are read with weights_only."""
    weights_path, preprocess_path = Path(weights_path), Path(preprocess_path)
    for path in (weights_path, preprocess_path):
        if not path.is_file():
            raise ModelError(f"{path}: model artifact not found")
    if expected_sha256 is not None:
        try:
            actual = sha256_file(weights_path)
        except OSError as exc:
            raise ModelError(f"{weights_path}: cannot read model artifact: {exc.strerror or exc}") from exc
        if actual.lower() != expected_sha256.lower():
            raise ModelError(
                f"{weights_path}: sha256 {actual} does not match the expected {expected_sha256}; "
                "refusing to load a model file that changed"
            )
    try:
        meta = json.loads(preprocess_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{preprocess_path}: not readable JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise ModelError(f"{preprocess_path}: top level must be an object")
    try:
        standardizer = Standardizer.from_dict(meta)
        hidden_sizes = tuple(int(h) for h in meta["hidden_sizes"])
        dropout = float(meta["dropout"])
        threshold = float(meta["threshold"])
        linear_term = meta.get("linear_term", False)
        if not isinstance(linear_term, bool):
            raise ModelError(f"linear_term must be true or false, got {linear_term!r}")
    except (KeyError, TypeError, ValueError, ModelError) as exc:
        raise ModelError(f"{preprocess_path}: malformed preprocessing file: {exc}") from exc
    if not math.isfinite(threshold):
        raise ModelError(f"{preprocess_path}: threshold must be finite, got {threshold}")
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types (pickle, zip, runtime) for a bad file
        raise ModelError(f"{weights_path}: not a loadable weights-only state_dict: {exc}") from exc
    module = FraudMLP(len(standardizer.features), hidden_sizes, dropout, linear_term=linear_term)
    try:
        module.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise ModelError(
            f"{weights_path}: weights do not fit the architecture in {preprocess_path}: {exc}"
        ) from exc
    module.eval()
    return ModelBundle(
        module=module,
        standardizer=standardizer,
        hidden_sizes=hidden_sizes,
        dropout=dropout,
        threshold=threshold,
        linear_term=linear_term,
    )
