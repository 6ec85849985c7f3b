"""The fraud model: a small MLP on standardized features, bundled with its preprocessing and threshold.

Artifacts: the weights file holds only a state_dict (loaded with `weights_only=True`, never unpickled);
preprocess.json holds the feature list, standardization, architecture and operating threshold. The
sha256 of the weights file is checked before loading whenever the caller knows it (registry tag).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from fraudguard.data.schema import CUSTOMER_ID, TX_AMOUNT
from fraudguard.errors import ModelError
from fraudguard.files import sha256_file, write_json

PREPROCESS_FORMAT_VERSION = 1
_PREDICT_CHUNK = 65536
# Bounds on a bundle's architecture, checked before anything is allocated: a signed preprocess.json of a few
# bytes with hidden_sizes [10**9] made the loader allocate ~96 GB before it compared the weights' shapes.
MAX_FEATURES = 1024
MAX_HIDDEN_LAYERS = 8
MAX_HIDDEN_WIDTH = 4096
_FLOAT32_MAX = float(np.finfo(np.float32).max)


# fraudguard.features' names: customer_avg_amount / customer_nb_tx (day windows), customer_spend_hours.
_CUSTOMER_WINDOW = re.compile(rf"^{CUSTOMER_ID}_AVG_AMOUNT_(\w+)_WINDOW$")
_HOUR_SPEND = re.compile(rf"^{CUSTOMER_ID}_SPEND_(\w+)_WINDOW$")


class HistoryInputs(torch.nn.Module):
    """The card's history before this transaction, computed exactly from the handbook's windows.

    The handbook's customer windows include the current transaction: a window's average is (past sum +
    amount) / count and the hour spend is past spend + amount. So the history before the transaction is a
    fixed function of features the model already reads: past average = (average x count - amount) / (count - 1),
    past spend = spend - amount. Those are what the fraudster cannot change (threat_model.derived_features: the
    averages and the spend move with the amount by exactly that share), but an MLP on standardized inputs
    approximates a product poorly. This layer hands them over: per day window the past average (in the
    amount's standardized units), per hour window the past spend (in the spend's). It holds no weights:
    everything comes from the standardizer (non-persistent buffers), so the state_dict keeps its keys and the
    attacks see the whole module (ART's gradients flow through this layer; nothing is masked).

    With `contrasts`, also the card's recent history against its longest window, as log ratios: per shorter
    day window log1p(past average) - log1p(longest past average), and log1p(past hour spend) - log1p(longest
    past average); 0 where a window holds no earlier payment. A compromised card's earlier fraudulent payments
    lift its recent averages against its month; the ratio says so on every spending scale, which a difference
    of standardized amounts does not, and none of it moves with the attacker's amount.
    """

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, features: Sequence[str], mean: np.ndarray, std: np.ndarray, contrasts: bool = False):
        super().__init__()
        index = {name: i for i, name in enumerate(features)}
        if TX_AMOUNT not in index:
            raise ModelError(f"history inputs need the {TX_AMOUNT} feature")
        averages: list[tuple[int, int]] = []
        window_days: list[int] = []
        spends: list[int] = []
        for name, i in index.items():
            day = _CUSTOMER_WINDOW.match(name)
            count_name = f"{CUSTOMER_ID}_NB_TX_{day.group(1)}_WINDOW" if day else None
            if day and count_name in index:
                averages.append((i, index[count_name]))
                window_days.append(_window_days(day.group(1)))
            elif _HOUR_SPEND.match(name):
                spends.append(i)
        if not averages and not spends:
            raise ModelError("history inputs need a customer average with its count, or a customer spend window")
        if contrasts and not averages:
            raise ModelError("history contrasts need a customer average with its count")
        self.contrasts = contrasts
        # The reference of the contrasts: the longest day window (the others and the hour spend against it).
        self.longest = max(range(len(averages)), key=window_days.__getitem__) if averages else -1
        n_contrasts = len(averages) - 1 + len(spends) if contrasts else 0  # every window but the reference
        self.n_outputs = len(averages) + len(spends) + n_contrasts
        self.register_buffer("mean", torch.from_numpy(np.asarray(mean, dtype=np.float32).copy()), persistent=False)
        self.register_buffer("std", torch.from_numpy(np.asarray(std, dtype=np.float32).copy()), persistent=False)
        self.amount = index[TX_AMOUNT]
        self.averages = averages
        self.spends = spends

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = x * self.std + self.mean
        amount = raw[:, self.amount]
        amount_mean, amount_std = self.mean[self.amount], self.std[self.amount]
        past_averages, has_past = [], []
        for average, count in self.averages:
            n = raw[:, count]
            past_sum = raw[:, average] * n - amount
            past_averages.append(torch.clamp(past_sum / torch.clamp(n - 1.0, min=1.0), min=0.0))
            has_past.append(n >= 1.5)  # counts are whole numbers; the current payment is one of them
        past_spends = [torch.clamp(raw[:, spend] - amount, min=0.0) for spend in self.spends]
        columns = [(past - amount_mean) / amount_std for past in past_averages]
        columns += [(past - self.mean[spend]) / self.std[spend] for past, spend in zip(past_spends, self.spends)]
        if self.contrasts:
            reference, reference_has = torch.log1p(past_averages[self.longest]), has_past[self.longest]
            for i, (past, has) in enumerate(zip(past_averages, has_past)):
                if i != self.longest:
                    columns.append(torch.where(has & reference_has, torch.log1p(past) - reference, 0.0))
            for past in past_spends:
                columns.append(torch.where((past > 0) & reference_has, torch.log1p(past) - reference, 0.0))
        return torch.stack(columns, dim=1)


def _window_days(label: str) -> int:
    """Days of a customer day window's label ("30DAY" -> 30)."""
    digits = re.match(r"\d+", label)
    if digits is None:
        raise ModelError(f"customer window {label!r}: no day count in its name")
    return int(digits.group(0))


class FraudMLP(torch.nn.Module):
    """ReLU MLP returning two logits (legit, fraud): ART handles 2-logit models with cross-entropy best.
    With `linear_term`, a linear term on every input is added to the logits (wide-and-deep): the model holds a
    logistic regression as a special case. With `history`, the MLP also reads the card's history before the
    transaction (`HistoryInputs`)."""

    linear: torch.nn.Linear | None
    history: HistoryInputs | None

    def __init__(self, n_features: int, hidden_sizes: Sequence[int], dropout: float, linear_term: bool = False,
                 history: HistoryInputs | None = None):
        super().__init__()
        if n_features <= 0:
            raise ValueError(f"n_features must be > 0, got {n_features}")
        layers: list[torch.nn.Module] = []
        width = n_features + (history.n_outputs if history is not None else 0)
        for size in hidden_sizes:
            layers += [torch.nn.Linear(width, int(size)), torch.nn.ReLU(), torch.nn.Dropout(dropout)]
            width = int(size)
        layers.append(torch.nn.Linear(width, 2))
        self.net = torch.nn.Sequential(*layers)
        self.linear = torch.nn.Linear(n_features, 2) if linear_term else None
        self.history = history
        self.n_features = n_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs = x if self.history is None else torch.cat([x, self.history(x)], dim=1)
        if self.linear is None:
            return self.net(inputs)
        return self.net(inputs) + self.linear(x)


def build_module(standardizer: "Standardizer", hidden_sizes: Sequence[int], dropout: float,
                 linear_term: bool = False, history_inputs: bool = False,
                 history_contrasts: bool = False) -> FraudMLP:
    """The MLP for these features (history inputs built from the standardizer when asked for)."""
    if history_contrasts and not history_inputs:
        raise ModelError("history_contrasts needs history_inputs")
    history = (HistoryInputs(standardizer.features, standardizer.mean, standardizer.std, contrasts=history_contrasts)
               if history_inputs else None)
    return FraudMLP(len(standardizer.features), hidden_sizes, dropout, linear_term=linear_term, history=history)


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
        """The frame's feature columns, standardized, as float32 (N, n_features). ModelError naming the feature
        when a value is finite in float64 but not once standardized in float32 (1e300 scored NaN: never flagged)."""
        values = _feature_matrix(frame, self.features, dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            out = ((values - self.mean) / self.std).astype(np.float32)
        bad = ~np.isfinite(out)
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise ModelError(f"feature {self.features[col]!r} = {float(values[row, col])!r} (row {row}) is out of the "
                             "model's range: it overflows once standardized")
        return out

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
        if mean.ndim != 1 or std.ndim != 1 or not (len(features) == mean.shape[0] == std.shape[0]):
            raise ModelError(
                f"standardizer: {len(features)} features but {mean.shape} means and {std.shape} stds"
            )
        if not 0 < len(features) <= MAX_FEATURES or len(set(features)) != len(features):
            raise ModelError(f"standardizer: features must be 1 to {MAX_FEATURES} distinct names, got "
                             f"{len(features)} ({len(features) - len(set(features))} repeated)")
        # Finite, and finite once standardized in float32: an infinite std passed `> 0`, a huge mean or a tiny std
        # overflowed float32, and every score came out NaN (never flagged).
        with np.errstate(over="ignore", divide="ignore"):
            scale = 1.0 / std
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)
                and np.all(np.abs(mean) < _FLOAT32_MAX) and np.all(std < _FLOAT32_MAX)
                and np.all(np.isfinite(scale)) and np.all(scale < _FLOAT32_MAX)):
            raise ModelError("standardizer: means and stds must be finite float32 numbers, stds > 0 with a finite "
                             "reciprocal")
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
    history_inputs: bool = False  # model.history_inputs: the card's history before the transaction (HistoryInputs)
    history_contrasts: bool = False  # model.history_contrasts: its recent history against its longest window

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
        """P(fraud) for each row of a feature frame, shape (N,); ModelError when the model gives no finite score
        (a NaN compared with the threshold reads as "not fraud")."""
        proba = self.predict_proba_standardized(self.standardizer.transform(frame))
        if not np.all(np.isfinite(proba)):
            raise ModelError(f"the model returned a non-finite score for {int((~np.isfinite(proba)).sum())} of "
                             f"{len(proba)} rows")
        return proba

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
        if self.history_inputs:
            out["history_inputs"] = True
        if self.history_contrasts:
            out["history_contrasts"] = True
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


def _number(value: Any, name: str, low: float, high: float, upper_open: bool = False) -> float:
    """A JSON number (not a boolean or a string) within [low, high] (or [low, high))."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not (low <= value < high if upper_open else low <= value <= high):
        raise ModelError(f"{name} must be a number in [{low:g}, {high:g}{')' if upper_open else ']'}, got {value!r}")
    return float(value)


def _hidden_sizes(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_HIDDEN_LAYERS or not all(
            isinstance(h, int) and not isinstance(h, bool) and 1 <= h <= MAX_HIDDEN_WIDTH for h in value):
        raise ModelError(f"hidden_sizes must be 1 to {MAX_HIDDEN_LAYERS} widths of 1 to {MAX_HIDDEN_WIDTH}, "
                         f"got {str(value)[:80]}")
    return tuple(value)


def _check_stored_archive(weights_path: Path) -> None:
    """torch.save writes an uncompressed zip; torch.load also inflates deflated entries, so a 600 KB file held a
    600 MB tensor. Only stored (uncompressed) entries are accepted: what is read is then at most the file's size."""
    import zipfile

    try:
        with zipfile.ZipFile(weights_path) as archive:
            packed = [info.filename for info in archive.infolist() if info.compress_type != zipfile.ZIP_STORED]
    except (OSError, zipfile.BadZipFile) as exc:
        raise ModelError(f"{weights_path}: not a torch.save archive: {exc}") from exc
    if packed:
        raise ModelError(f"{weights_path}: compressed entries ({', '.join(packed[:3])}): torch.save writes none")


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
    except (OSError, ValueError, RecursionError) as exc:
        raise ModelError(f"{preprocess_path}: not readable JSON: {exc.__class__.__name__}: {exc}") from exc
    if not isinstance(meta, dict):
        raise ModelError(f"{preprocess_path}: top level must be an object")
    try:
        standardizer = Standardizer.from_dict(meta)
        hidden_sizes = _hidden_sizes(meta["hidden_sizes"])
        dropout = _number(meta["dropout"], "dropout", 0.0, 1.0, upper_open=True)
        threshold = _number(meta["threshold"], "threshold", 0.0, 1.0)
        linear_term = meta.get("linear_term", False)
        history_inputs = meta.get("history_inputs", False)
        history_contrasts = meta.get("history_contrasts", False)
        for key, flag in (("linear_term", linear_term), ("history_inputs", history_inputs),
                          ("history_contrasts", history_contrasts)):
            if not isinstance(flag, bool):
                raise ModelError(f"{key} must be true or false, got {flag!r}")
        module = build_module(standardizer, hidden_sizes, dropout, linear_term=linear_term,
                              history_inputs=history_inputs, history_contrasts=history_contrasts)
    except (KeyError, TypeError, ValueError, ModelError) as exc:
        raise ModelError(f"{preprocess_path}: malformed preprocessing file: {exc}") from exc
    _check_stored_archive(weights_path)
    try:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several unrelated types (pickle, zip, runtime) for a bad file
        raise ModelError(f"{weights_path}: not a loadable weights-only state_dict: {exc}") from exc
    if isinstance(state, dict):
        for key, tensor in state.items():
            # load_state_dict casts: int64 weights changed the scores, a complex one lost its imaginary part.
            if isinstance(tensor, torch.Tensor) and (not tensor.is_floating_point() or not torch.isfinite(tensor).all()):
                raise ModelError(f"{weights_path}: weight {key!r} is not finite floating point ({tensor.dtype})")
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
        history_inputs=history_inputs,
        history_contrasts=history_contrasts,
    )
