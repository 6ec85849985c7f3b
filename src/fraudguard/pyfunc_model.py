"""The MLflow pyfunc wrapper of a FraudGuard ModelBundle, logged as "models from code" (no pickle).

`mlflow.pyfunc.load_model(uri).predict(frame)` takes a raw feature DataFrame (the `model.features`
columns, real units) and returns a DataFrame with two columns:
  - `fraud_probability`: P(fraud) in [0, 1], identical to `ModelBundle.predict_proba(frame)`;
  - `is_fraud`: True where `fraud_probability >= bundle.threshold` (the operating threshold).
Preprocessing (standardization) is inside the model. On load, the files are checked against the version's
signed pass attestation (fraudguard.attestation.verify_loaded_model); a mismatch refuses to load.
Input schema: the training frame's integer feature columns as `long`, the others as `double`;
MLflow accepts any lossless conversion (int32 -> long, float32 -> double) and refuses others.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import mlflow
import pandas as pd
from mlflow.pyfunc.model import PythonModel

from fraudguard.errors import ModelError

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo

    from fraudguard.model import ModelBundle

logger = logging.getLogger(__name__)

WEIGHTS_ARTIFACT = "weights"
PREPROCESS_ARTIFACT = "preprocess"
PROBABILITY_COLUMN = "fraud_probability"
DECISION_COLUMN = "is_fraud"

# Runtime needs of the model, pinned to what is installed: listing them avoids MLflow's 7-10 s
# requirement inference. fraudguard itself is not on PyPI; it travels as code_paths.
# Each package with the module it is imported as (MLflow's fallback when the metadata has no version).
_RUNTIME_MODULES = {"mlflow": "mlflow", "torch": "torch", "numpy": "numpy", "pandas": "pandas",
                    "pyarrow": "pyarrow", "pydantic": "pydantic", "pyyaml": "yaml"}
RUNTIME_PACKAGES = tuple(_RUNTIME_MODULES)

# The models-from-code entry MLflow executes on load; it must call set_model at its top level,
# which is why it is a generated file and not this module (no work at import time here).
_ENTRY_CODE = '''"""MLflow models-from-code entry of the FraudGuard pyfunc model (generated)."""
import mlflow

from fraudguard.pyfunc_model import FraudGuardPyfunc

mlflow.models.set_model(FraudGuardPyfunc())
'''


class FraudGuardPyfunc(PythonModel):
    """Scores raw feature frames with a ModelBundle loaded (sha256-checked) from the model's artifacts."""

    def __init__(self) -> None:
        self._bundle: ModelBundle | None = None
        self.verified_version: int | None = None

    def load_context(self, context: Any) -> None:
        from fraudguard.attestation import verify_loaded_model
        from fraudguard.model import load_bundle

        config = context.model_config or {}
        weights = Path(context.artifacts[WEIGHTS_ARTIFACT])
        # The files actually about to be loaded are checked against the version's signed attestation.
        self.verified_version = verify_loaded_model(weights.parent.parent)
        self._bundle = load_bundle(weights, Path(context.artifacts[PREPROCESS_ARTIFACT]),
                                   expected_sha256=config.get("weights_sha256"))

    # MLflow 3 reads these hints: pd.DataFrame keeps the input a frame (no conversion); the schema
    # comes from the logged signature.
    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        if self._bundle is None:
            raise ModelError("FraudGuard pyfunc model used before load_context loaded its bundle")
        return score_frame(self._bundle, pd.DataFrame(model_input))


def score_frame(bundle: "ModelBundle", frame: pd.DataFrame) -> pd.DataFrame:
    """The pyfunc output for a raw feature frame: P(fraud) and the decision at the bundle's threshold."""
    proba = bundle.predict_proba(frame)
    return pd.DataFrame(
        {
            PROBABILITY_COLUMN: proba.astype("float64"),
            DECISION_COLUMN: proba >= bundle.threshold,
        },
        index=frame.index,
    )


def _widened(frame: pd.DataFrame) -> pd.DataFrame:
    """Integer columns as int64 (schema "long"), the rest as float64 ("double").

    MLflow's schema enforcement only accepts lossless conversions, so the widest types accept the
    pipeline's int32 counts and float32 averages as well as hand-made int64 / float64 frames.
    """
    return pd.DataFrame({
        col: frame[col].astype("int64" if pd.api.types.is_integer_dtype(frame[col])
                               or pd.api.types.is_bool_dtype(frame[col]) else "float64")
        for col in frame.columns
    })


def pinned_requirements() -> list[str]:
    """pip requirements of the logged model, pinned to the installed versions."""
    return [f"{pkg}=={importlib.metadata.version(pkg)}" for pkg in RUNTIME_PACKAGES]


@contextlib.contextmanager
def _pinned_packages_map() -> Iterator[None]:
    """Within the block, MLflow's module-to-package map holds only the pinned runtime packages.

    Even with explicit pip_requirements, log_model checks each pin against the installed version, and the
    first check in a process builds that map from every installed distribution
    (importlib_metadata.packages_distributions: 1.4 s of a 2.0 s log_model here, 3.3 s on a loaded machine,
    the largest part of `fraudguard register`). The check only looks up the pinned packages, so a map of
    those gives the same verdicts. MLflow has no switch for this; its private module global is seeded only
    while it is unbuilt, and reset afterwards, so nothing else in the process sees the short map. If a later
    MLflow renames it, this does nothing and log_model is just slower.
    """
    try:
        from mlflow.utils import requirements_utils
    except ImportError:  # pragma: no cover - MLflow reorganised: the slow path still works
        yield
        return
    if getattr(requirements_utils, "_MODULES_TO_PACKAGES", "absent") is not None:
        yield  # already built in this process (or no longer there): nothing to save
        return
    previous = getattr(requirements_utils, "_PACKAGES_TO_MODULES", None)
    short_map: Any = {module: [pkg] for pkg, module in _RUNTIME_MODULES.items()}  # MLflow types it as None
    requirements_utils._MODULES_TO_PACKAGES = short_map
    try:
        yield
    finally:
        requirements_utils._MODULES_TO_PACKAGES = None
        requirements_utils._PACKAGES_TO_MODULES = previous


def fraudguard_code_path() -> Path:
    """The fraudguard package directory, shipped with the model because it is not on PyPI."""
    import fraudguard

    return Path(fraudguard.__file__).resolve().parent


def log_pyfunc_model(
    bundle: "ModelBundle",
    weights_path: Path,
    preprocess_path: Path,
    weights_sha256: str,
    input_example: pd.DataFrame,
    *,
    name: str = "model",
    registered_model_name: str | None = None,
    build_dir: Path | None = None,
) -> "ModelInfo":
    """Log the bundle as a pyfunc model in the active run (optionally registering it); returns its ModelInfo.

    build_dir: where to save, first, the same model directory locally (`mlflow.pyfunc.save_model`, same inputs):
    what this process built, to compare with what the store then serves (fraudguard.provenance signs only that).
    """
    from mlflow.models import infer_signature

    features = list(bundle.features)
    missing = [col for col in features if col not in input_example.columns]
    if missing:
        raise ModelError(f"input example lacks model feature columns {missing}")
    example = _widened(input_example[features].reset_index(drop=True))
    with warnings.catch_warnings():
        # MLflow hints that integer columns cannot hold missing values: features never may (the
        # model refuses NaN), so integer columns are the right schema.
        warnings.filterwarnings("ignore", message=".*integer column", category=UserWarning)
        signature = infer_signature(example, score_frame(bundle, example))
    with tempfile.TemporaryDirectory(prefix="fraudguard-pyfunc-") as tmp:
        entry = Path(tmp) / "fraudguard_pyfunc_entry.py"
        entry.write_text(_ENTRY_CODE, encoding="utf-8")
        model_inputs: dict[str, Any] = {
            "python_model": str(entry),
            "artifacts": {WEIGHTS_ARTIFACT: str(weights_path), PREPROCESS_ARTIFACT: str(preprocess_path)},
            "model_config": {"weights_sha256": weights_sha256},
            "code_paths": [str(fraudguard_code_path())],
            "pip_requirements": pinned_requirements(),
            "signature": signature,
            "input_example": example,
        }
        with _pinned_packages_map():
            if build_dir is not None:
                mlflow.pyfunc.save_model(path=str(build_dir), **model_inputs)
            return mlflow.pyfunc.log_model(name=name, registered_model_name=registered_model_name, **model_inputs)
