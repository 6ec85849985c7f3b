"""MLflow tracking: where the store is, one run per trained model (params, metrics, reports, lineage),
the pyfunc model registered as a new version, and loading a version's bundle and reference data back.

Run artifact layout (what gates, rollback and reviewers find under a version's run):
  bundle/model.pt, bundle/preprocess.json      the weights (sha256 = version tag `artifact.sha256`)
  reference/train_features.parquet             a seeded sample of the training features (drift reference)
  reports/validation.json                      the data-validation report
  config/params.yaml, config/dvc.lock, config/features.json, config/threat_model.json
  metrics/{metrics,evaluation,training_history}.json, plots/{pr_curve.png,pr_curve.json,loss_curve.png}
  model/                                       the pyfunc model (logged model "model")
Metrics: `train.*` (models/metrics.json), `eval.*` (models/evaluation.json), `epoch.*` per epoch (step=epoch).
Run name `train v<version> seed<train.seed> <short commit>`; dataset input `data/raw` (digest: the md5 DVC recorded
in data.dvc, source: that data.dvc), so the UI's Dataset column links the run to the DVC data version.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from fraudguard.errors import ModelError, RegistryError
from fraudguard.lineage import collect_lineage
from fraudguard.names import (  # noqa: F401 - re-exported: tracking.WEIGHTS_ARTIFACT etc. are imported elsewhere
    BUNDLE_DIR,
    DATA_MD5_TAG,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    GIT_COMMIT_TAG,
    GIT_DIRTY_TAG,
    MODEL_NAME_IN_RUN,
    PARAMS_SHA_TAG,
    PREPROCESS_ARTIFACT,
    PREPROCESS_SHA_TAG,
    REFERENCE_ARTIFACT,
    REGISTERED_VERSION_TAG,
    RUN_ID_TAG,
    TRAINING_DATA_CONTEXT,
    TRAINING_DATA_NAME,
    WEIGHTS_ARTIFACT,
    WEIGHTS_PATH_TAG,
    WEIGHTS_SHA_TAG,
)
from fraudguard.paths import ProjectPaths

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient

    from fraudguard.config import RegistrySettings, Settings
    from fraudguard.model import ModelBundle
    from fraudguard.provenance import BuiltModel
    from fraudguard.signing import Signer

logger = logging.getLogger(__name__)

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
DB_FILENAME = "mlflow.db"
ARTIFACTS_DIRNAME = "mlartifacts"


# The tracking server's own limit (mlflow.utils.validation.MAX_PARAM_VAL_LENGTH in MLflow 3).
PARAM_VALUE_MAX = 6000
_BAD_KEY_CHARS = re.compile(r"[^\w\-. /:]")


@dataclass(frozen=True)
class TrainingRunRecord:
    """What log_training_run recorded: the run, the registered version, its lineage tags and metrics."""

    run_id: str
    version: int
    lineage: dict[str, str]
    metrics: dict[str, float] = field(default_factory=dict)
    model_uri: str = ""       # models:/<name>/<version>
    model_id: str = ""        # MLflow 3 logged-model id (artifacts under <artifact root>/models/<id>)


def resolve_tracking_uri(root: Path | str) -> str:
    """$MLFLOW_TRACKING_URI when set, else the project's SQLite store `sqlite:///<abs root>/mlflow.db`."""
    from_env = os.environ.get(TRACKING_URI_ENV, "").strip()
    if from_env:
        return from_env
    return f"sqlite:///{(Path(root).resolve() / DB_FILENAME).as_posix()}"


def sqlite_db_path(tracking_uri: str) -> Path | None:
    """The database file of a `sqlite:///...` tracking URI; None for any other store."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme != "sqlite":
        return None
    # sqlite:////abs/path -> path "//abs/path"; sqlite:///rel/path -> "/rel/path"
    raw = unquote(parsed.path)
    if raw.startswith("//"):
        return Path(raw[1:])
    return Path(raw.lstrip("/")).resolve()


def artifact_root_for(tracking_uri: str) -> str | None:
    """Artifact location for new experiments: next to a SQLite store's file; the server's choice otherwise."""
    db = sqlite_db_path(tracking_uri)
    if db is None:
        return None
    return (db.parent / ARTIFACTS_DIRNAME).resolve().as_uri()


def configure_mlflow(root: Path | str, registry: "RegistrySettings") -> "MlflowClient":
    """Point MLflow (tracking and registry) at the project's store and make the experiment current.

    For entry points only (CLI commands, stage mains, flows): it sets process-wide MLflow state.
    """
    import mlflow
    from mlflow import MlflowClient

    from fraudguard.store import call_with_retries, resilient

    uri = resolve_tracking_uri(root)
    apply_mlflow_credentials()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    # Every call through the returned client is retried while the store is busy or unreachable.
    client = resilient(call_with_retries(MlflowClient, tracking_uri=uri, registry_uri=uri,
                                         what="opening the tracking store"))
    experiment = call_with_retries(ensure_experiment, client, registry.experiment,
                                   what=f"opening experiment {registry.experiment!r}")
    call_with_retries(mlflow.set_experiment, experiment_id=experiment, what="selecting the experiment")
    logger.info("MLflow store %s, experiment %r", uri, registry.experiment)
    return client


CREDENTIALS_ENV = "FRAUDGUARD_MLFLOW_CREDENTIALS"


def apply_mlflow_credentials() -> str | None:
    """Log in to an MLflow server with basic-auth: the identity in $FRAUDGUARD_MLFLOW_CREDENTIALS.

    That file has the format of MLflow's own `~/.mlflow/credentials` ([mlflow] mlflow_tracking_username /
    mlflow_tracking_password); its values go to MLFLOW_TRACKING_USERNAME/PASSWORD unless those are already
    set. Without it MLflow reads the environment or `~/.mlflow/credentials` itself. For entry points only.
    Returns the username taken from the file (None when none was).
    """
    import configparser

    path = os.environ.get(CREDENTIALS_ENV, "").strip()
    if not path or os.environ.get("MLFLOW_TRACKING_USERNAME"):
        return None
    parser = configparser.ConfigParser()
    try:
        with open(Path(path).expanduser(), encoding="utf-8") as handle:
            parser.read_file(handle)
        section = parser["mlflow"]
        user, password = section["mlflow_tracking_username"], section["mlflow_tracking_password"]
    except (OSError, KeyError, configparser.Error) as exc:
        raise RegistryError(f"${CREDENTIALS_ENV}={path}: cannot read MLflow credentials "
                            f"([mlflow] mlflow_tracking_username/password): {exc}") from exc
    os.environ["MLFLOW_TRACKING_USERNAME"] = user
    os.environ["MLFLOW_TRACKING_PASSWORD"] = password
    return user


def ensure_experiment(client: "MlflowClient", name: str) -> str:
    """Id of the named experiment, created (artifacts beside a SQLite store) when missing; tagged so that the
    MLflow UI opens it on its runs."""
    from mlflow.exceptions import MlflowException

    existing = client.get_experiment_by_name(name)
    if existing is not None:
        if (existing.tags or {}).get(EXPERIMENT_KIND_TAG) is None:  # made before the tag existed, or by hand
            try:
                client.set_experiment_tag(existing.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            except MlflowException as exc:  # a READ-only user (a reviewer on the team server): display only
                logger.debug("experiment %r left without %s: %s", name, EXPERIMENT_KIND_TAG, exc)
        return existing.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_root_for(client.tracking_uri),
                                        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except MlflowException:
        # Another process may have created it between the lookup and the create.
        existing = client.get_experiment_by_name(name)
        if existing is None:
            raise
        return existing.experiment_id


def flatten_params(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested params as `a.b.c -> str(value)`; lists become JSON; values cut to the server's length limit."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, prefix=f"{name}."))
            continue
        text = json.dumps(value) if isinstance(value, (list, tuple, Mapping)) else str(value)
        if len(text) > PARAM_VALUE_MAX:
            logger.warning("param %s is %d characters; truncated (params.yaml is logged whole)",
                           name, len(text))
            text = text[: PARAM_VALUE_MAX - 3] + "..."
        flat[name] = text
    return flat


def flatten_metrics(data: Any, prefix: str) -> dict[str, float]:
    """Finite numeric leaves of a JSON document as `prefix.a.b -> float` (strings, lists, NaN skipped)."""
    flat: dict[str, float] = {}
    if isinstance(data, Mapping):
        for key, value in data.items():
            flat.update(flatten_metrics(value, f"{prefix}.{key}"))
    elif isinstance(data, (int, float)):
        value = float(data)
        if math.isfinite(value):
            flat[_BAD_KEY_CHARS.sub("_", prefix)] = value
    return flat


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: cannot read pipeline output as JSON: {exc}") from exc


def history_rows(history: Any, source: Path) -> list[dict[str, Any]]:
    """Per-epoch rows of training_history.json (a list of dicts with `epoch`, or one list inside a dict)."""
    if isinstance(history, Mapping):
        lists = [value for value in history.values() if isinstance(value, list)]
        if len(lists) != 1:
            raise ModelError(f"{source}: expected a list of per-epoch dicts")
        history = lists[0]
    if not isinstance(history, list) or not all(isinstance(row, Mapping) for row in history):
        raise ModelError(f"{source}: expected a list of per-epoch dicts")
    for index, row in enumerate(history):
        if "epoch" not in row:
            raise ModelError(f"{source}: row {index} has no 'epoch' field")
    return [dict(row) for row in history]


def plot_loss_curve(rows: list[dict[str, Any]], out_path: Path) -> Path:
    """PNG of every loss-like series (keys containing "loss", else every numeric series) per epoch."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    numeric = sorted({key for row in rows for key, value in row.items()
                      if key != "epoch" and isinstance(value, (int, float))})
    series = [key for key in numeric if "loss" in key.lower()] or numeric
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    for key in series:
        points = [(row["epoch"], row[key]) for row in rows if isinstance(row.get(key), (int, float))]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=key)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss" if any("loss" in key.lower() for key in series) else "value")
    ax.set_title("Training history")
    if series:
        ax.legend()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=100)
    return out_path


def sample_reference(frame: "pd.DataFrame", rows: int, seed: int) -> "pd.DataFrame":
    """At most `rows` rows of frame, drawn with a fixed seed, kept in their original (time) order."""
    if len(frame) <= rows:
        return frame.reset_index(drop=True)
    return frame.sample(n=rows, random_state=seed).sort_index().reset_index(drop=True)


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise ModelError(f"{path}: {what} not found; run `dvc repro` first")
    return path


def log_training_run(
    root: Path | str,
    settings: "Settings",
    *,
    flow_run_id: str | None = None,
    git_root: Path | str | None = None,
    signer: "Signer | None" = None,
) -> TrainingRunRecord:
    """Log the pipeline outputs under root as one run of the experiment and register its pyfunc model.

    git_root: the checkout whose code revision the lineage records when root is a scratch copy of it.
    signer: the pipeline key that signs the version's build provenance (default: this host's, created on first
    use as a promotion would); a promotion refuses a version without one (fraudguard.provenance).

    Uses the current MLflow tracking URI (entry points call configure_mlflow first). The new version
    of settings.registry.model_name and its run both carry every lineage tag and `artifact.sha256`.
    """
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient

    from fraudguard.files import sha256_file
    from fraudguard.provenance import BuiltModel

    paths = ProjectPaths.at(root)
    _require(paths.model_weights, "model weights")
    _require(paths.preprocess, "preprocessing file")
    metrics_doc = _read_json(_require(paths.metrics, "training metrics"))
    history = history_rows(_read_json(_require(paths.training_history, "training history")),
                           paths.training_history)
    evaluation_doc = _read_json(paths.evaluation) if paths.evaluation.is_file() else {}
    train_features = pd.read_parquet(_require(paths.train_features, "training features"))
    metrics = flatten_metrics(metrics_doc, "train")
    metrics.update(flatten_metrics(evaluation_doc, "eval"))

    client = MlflowClient()
    experiment_id = ensure_experiment(client, settings.registry.experiment)
    with tempfile.TemporaryDirectory(prefix="fraudguard-run-") as tmp_dir:
        tmp = Path(tmp_dir)
        # Hash, load and log private copies, so that a concurrent `dvc repro` cannot make the logged
        # weights differ from the hash in the tags.
        (tmp / BUNDLE_DIR).mkdir()
        weights = Path(shutil.copy2(paths.model_weights, tmp / WEIGHTS_ARTIFACT))
        preprocess = Path(shutil.copy2(paths.preprocess, tmp / PREPROCESS_ARTIFACT))
        lineage = collect_lineage(paths.root, settings, weights, flow_run_id=flow_run_id, git_root=git_root)
        with mlflow.start_run(experiment_id=experiment_id,
                              run_name=training_run_name(None, settings.train.seed, lineage)) as run:
            run_id = run.info.run_id
            tags = {**lineage, RUN_ID_TAG: run_id, PREPROCESS_SHA_TAG: sha256_file(preprocess),
                    WEIGHTS_PATH_TAG: WEIGHTS_ARTIFACT}
            mlflow.set_tags(tags)
            mlflow.log_params(flatten_params(settings.as_params_dict()))
            mlflow.log_input(training_data_input(paths.raw_dvc_file, lineage[DATA_MD5_TAG]),
                             context=TRAINING_DATA_CONTEXT)
            _log_metrics(history, metrics)
            _log_files(paths, settings, weights, preprocess, history, tmp, run_id)
            reference = sample_reference(train_features, settings.registry.reference_sample_rows,
                                         settings.registry.reference_sample_seed)
            reference.to_parquet(tmp / "train_features.parquet", index=False)
            mlflow.log_artifact(str(tmp / "train_features.parquet"), Path(REFERENCE_ARTIFACT).parent.name)
            version, model_id = _register_model(client, settings.registry, weights, preprocess, tags,
                                                train_features.head(5), build_dir=tmp / "built")
            built = BuiltModel.read(tmp / "built")
            mlflow.set_tag(REGISTERED_VERSION_TAG, str(version))
            client.update_run(run_id, name=training_run_name(version, settings.train.seed, lineage))

    model_name = settings.registry.model_name
    _sign_registered_files(client, model_name, version, run_id, model_id, lineage, signer, built)
    logger.info("run %s registered as %s version %d", run_id, model_name, version)
    return TrainingRunRecord(run_id=run_id, version=version, lineage=lineage, metrics=metrics,
                             model_uri=f"models:/{model_name}/{version}", model_id=model_id)


def _sign_registered_files(client: "MlflowClient", model_name: str, version: int, run_id: str, model_id: str,
                           lineage: Mapping[str, str], signer: "Signer | None", built: "BuiltModel") -> None:
    """Sign what `models:/<name>/<version>` serves, with the lineage it was registered with, once it is what this
    process built (ModelError otherwise: the version is left without provenance, so nothing promotes it)."""
    from fraudguard.attestation import download_served_model, served_digests
    from fraudguard.provenance import check_served_as_built, sign_provenance
    from fraudguard.signing import load_signer

    signer = signer or load_signer()
    with tempfile.TemporaryDirectory(prefix="fraudguard-served-") as tmp:
        served_dir = download_served_model(client, model_name, version, Path(tmp))
        check_served_as_built(served_dir, built, run_id=run_id, model_id=model_id,
                              where=f"model {model_name!r} version {version}")
        digests = served_digests(served_dir)
    sign_provenance(client, model_name, version, run_id, digests, lineage, signer)


def training_run_name(version: int | None, seed: int, lineage: Mapping[str, str]) -> str:
    """What a reviewer reads in the runs table: `train v7 seed7 4f64441b` (`+dirty` for uncommitted code);
    the version is left out until the run has been registered."""
    commit = lineage.get(GIT_COMMIT_TAG, "unknown")
    parts = ["train", *([f"v{version}"] if version is not None else []), f"seed{seed}",
             "no-git" if commit == "unknown" else commit[:8]]
    if lineage.get(GIT_DIRTY_TAG) == "true":
        parts[-1] += "+dirty"
    return " ".join(parts)


def training_data_input(dvc_file: Path, md5: str):
    """The training data as an MLflow dataset (metadata only): name `data/raw`, digest the md5 DVC recorded
    in data.dvc (36 characters at most, the store's column width), source that data.dvc."""
    from mlflow.data.dataset_source_registry import get_dataset_source_from_json
    from mlflow.data.meta_dataset import MetaDataset

    source = get_dataset_source_from_json(json.dumps({"uri": str(Path(dvc_file).resolve())}), source_type="local")
    # MLflow declares `profile` abstract on its Dataset base yet MetaDataset is its concrete metadata-only dataset.
    return MetaDataset(source, name=TRAINING_DATA_NAME, digest=md5)  # type: ignore[abstract]


def _log_metrics(history: list[dict[str, Any]], metrics: dict[str, float]) -> None:
    import mlflow

    for row in history:
        epoch_metrics = flatten_metrics({k: v for k, v in row.items() if k != "epoch"}, "epoch")
        if epoch_metrics:
            mlflow.log_metrics(epoch_metrics, step=int(row["epoch"]))
    if metrics:
        mlflow.log_metrics(metrics)


def _log_files(paths: ProjectPaths, settings: "Settings", weights: Path, preprocess: Path,
               history: list[dict[str, Any]], tmp: Path, run_id: str) -> None:
    """The bundle, reports, configuration and plots of the active run (layout: module docstring)."""
    import mlflow

    mlflow.log_artifact(str(weights), BUNDLE_DIR)
    mlflow.log_artifact(str(preprocess), BUNDLE_DIR)
    mlflow.log_artifact(str(paths.metrics), "metrics")
    mlflow.log_artifact(str(paths.training_history), "metrics")
    for optional, artifact_dir in (
        (paths.evaluation, "metrics"),
        (paths.validation_report, "reports"),
        (paths.dvc_lock, "config"),
        (paths.pr_curve_png, "plots"),
        (paths.pr_curve_json, "plots"),
    ):
        if optional.is_file():
            mlflow.log_artifact(str(optional), artifact_dir)
        else:
            logger.warning("%s absent; not logged to run %s", optional, run_id)
    # The effective configuration (a run's overrides included), not the params.yaml on disk.
    mlflow.log_dict(settings.as_params_dict(), "config/params.yaml")
    mlflow.log_dict({"features": list(settings.model.features)}, "config/features.json")
    mlflow.log_dict(settings.threat_model.model_dump(mode="json"), "config/threat_model.json")
    mlflow.log_artifact(str(plot_loss_curve(history, tmp / "loss_curve.png")), "plots")


def _register_model(client: "MlflowClient", registry: "RegistrySettings", weights: Path, preprocess: Path,
                    tags: dict[str, str], input_example: "pd.DataFrame", build_dir: Path) -> tuple[int, str]:
    """Log the pyfunc model in the active run as a new version, tagged; returns (version, model id).

    build_dir receives the same model directory built locally first (what provenance compares the store with)."""
    from fraudguard.model import load_bundle
    from fraudguard.pyfunc_model import log_pyfunc_model

    model_name = registry.model_name
    bundle = load_bundle(weights, preprocess, expected_sha256=tags[WEIGHTS_SHA_TAG])
    model_info = log_pyfunc_model(
        bundle, weights, preprocess, tags[WEIGHTS_SHA_TAG], input_example,
        name=MODEL_NAME_IN_RUN, registered_model_name=model_name, build_dir=build_dir,
    )
    if model_info.registered_model_version is None:
        raise RegistryError(
            f"model {model_name!r}: run {tags[RUN_ID_TAG]} logged but no version was registered"
        )
    version = int(model_info.registered_model_version)
    for key, value in tags.items():
        client.set_model_version_tag(model_name, str(version), key, value)
    return version, model_info.model_id


def _version(client: "MlflowClient", model_name: str, version: int | str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(model_name, str(version))
    except MlflowException as exc:
        raise RegistryError(f"model {model_name!r} version {version}: not in the registry ({exc})") from exc


def registered_version_tags(client: "MlflowClient", model_name: str, version: int | str) -> dict[str, str]:
    """All tags of a registered version (lineage, artifact hashes, gate verdicts)."""
    return dict(_version(client, model_name, version).tags)


def load_bundle_for_version(
    client: "MlflowClient",
    model_name: str,
    version: int | str,
    dst_dir: Path | str,
) -> "ModelBundle":
    """The version's bundle, downloaded from its run into dst_dir and checked against its sha256 tags."""
    from fraudguard.files import sha256_file
    from fraudguard.model import load_bundle

    mv = _version(client, model_name, version)
    expected = mv.tags.get(WEIGHTS_SHA_TAG)
    if not expected:
        raise RegistryError(f"model {model_name!r} version {version}: no {WEIGHTS_SHA_TAG} tag")
    if not mv.run_id:
        raise RegistryError(f"model {model_name!r} version {version}: not linked to a run")
    dst = Path(dst_dir)
    dst.mkdir(parents=True, exist_ok=True)
    local = Path(client.download_artifacts(mv.run_id, BUNDLE_DIR, str(dst)))
    weights = local / Path(WEIGHTS_ARTIFACT).name
    preprocess = local / Path(PREPROCESS_ARTIFACT).name
    expected_preprocess = mv.tags.get(PREPROCESS_SHA_TAG)
    if expected_preprocess and preprocess.is_file() and sha256_file(preprocess) != expected_preprocess:
        raise ModelError(
            f"model {model_name!r} version {version}: {preprocess} sha256 differs from the "
            f"{PREPROCESS_SHA_TAG} tag (artifact altered)"
        )
    try:
        return load_bundle(weights, preprocess, expected_sha256=expected)
    except ModelError as exc:
        raise ModelError(f"model {model_name!r} version {version}: {exc}") from exc


def _download_reference(client: "MlflowClient", model_name: str, version: int | str, dst: str) -> Path:
    from mlflow.exceptions import MlflowException

    mv = _version(client, model_name, version)
    if not mv.run_id:
        raise RegistryError(f"model {model_name!r} version {version}: not linked to a run")
    try:
        return Path(client.download_artifacts(mv.run_id, REFERENCE_ARTIFACT, dst))
    except (MlflowException, OSError) as exc:
        raise RegistryError(
            f"model {model_name!r} version {version}: run {mv.run_id} has no {REFERENCE_ARTIFACT}"
        ) from exc


def reference_sha256(client: "MlflowClient", model_name: str, version: int | str) -> str | None:
    """sha256 of the version's drift reference sample as the store holds it now; None when its run has none."""
    from fraudguard.files import sha256_file

    with tempfile.TemporaryDirectory(prefix="fraudguard-ref-") as tmp:
        try:
            return sha256_file(_download_reference(client, model_name, version, tmp))
        except RegistryError as exc:
            logger.warning("%s", exc)
            return None


def checked_reference_sha256(client: "MlflowClient", model_name: str, version: int | str,
                             train_features: "pd.DataFrame", rows: int, seed: int) -> str:
    """reference_sha256, once the store's sample is the one registration draws from `train_features` (the checkout's
    training split: same rows, same values). What a promotion signs as the monitor's drift reference must be a
    sample of the data the gates read, not a file swapped into the run by anyone with write access to the store.
    RegistryError naming the mismatch, or when the run has no reference: signed without one, the champion's
    reference was whatever file appeared later (deleted before the promotion, planted after), and the monitor and
    the next drift gate compared with it."""
    import pandas as pd

    from fraudguard.files import sha256_file

    with tempfile.TemporaryDirectory(prefix="fraudguard-ref-") as tmp:
        try:
            local = _download_reference(client, model_name, version, tmp)
        except RegistryError as exc:
            raise RegistryError(f"{exc}: a version is promoted with its drift reference signed beside it; register "
                                "it again (`fraudguard register`) to log one") from exc
        try:
            stored = pd.read_parquet(local)
        except (OSError, ValueError) as exc:
            raise RegistryError(f"model {model_name!r} version {version}: unreadable {REFERENCE_ARTIFACT} "
                                f"({exc})") from exc
        expected = sample_reference(train_features, rows, seed)
        if list(stored.columns) != list(expected.columns) or not stored.reset_index(drop=True).equals(expected):
            raise RegistryError(
                f"model {model_name!r} version {version}: its {REFERENCE_ARTIFACT} in the store is not the sample "
                f"of this checkout's training features ({len(stored)} rows stored, {len(expected)} expected): "
                "altered in the store, or the version was trained on other data (gate it in a checkout of its data)")
        return sha256_file(local)


def load_reference_features(client: "MlflowClient", model_name: str, version: int | str,
                            expected_sha256: str | None = None) -> "pd.DataFrame":
    """The sample of training features logged with the version's run (the drift gate's reference).

    With `expected_sha256` (the digest a signed attestation holds) the file is checked before it is read:
    ModelError when it differs."""
    import pandas as pd

    from fraudguard.files import sha256_file

    with tempfile.TemporaryDirectory(prefix="fraudguard-ref-") as tmp:
        local = _download_reference(client, model_name, version, tmp)
        if expected_sha256 is not None and sha256_file(local) != expected_sha256:
            raise ModelError(f"model {model_name!r} version {version}: {REFERENCE_ARTIFACT} differs from the "
                             "digest its signed attestation holds (altered in the tracking store)")
        return pd.read_parquet(local)


def find_identical_version(client: "MlflowClient", root: Path | str, settings: "Settings") -> int | None:
    """The newest registered version built from exactly these weights, params and data, if any.

    A rerun in which DVC found every stage up to date produces no new model: the flow reuses that
    version instead of registering a duplicate. It takes the whole Settings because the params tag it
    matches is the hash of the whole effective configuration (lineage.params_sha256).
    """
    from fraudguard.lineage import data_md5, params_sha256
    from fraudguard.files import sha256_file

    paths = ProjectPaths.at(root)
    if not paths.model_weights.is_file():
        return None
    wanted = {
        WEIGHTS_SHA_TAG: sha256_file(paths.model_weights),
        PARAMS_SHA_TAG: params_sha256(settings),
        DATA_MD5_TAG: data_md5(paths.raw_dvc_file),
    }
    name = settings.registry.model_name
    try:
        versions = client.search_model_versions(f"name='{name}'")
    except Exception as exc:  # no registered model yet (MlflowException); nothing to reuse
        logger.debug("no versions of %s to reuse: %s", name, exc)
        return None
    from fraudguard.provenance import PROVENANCE_TAG

    # A version without build provenance (registered before it existed, or a registration killed before it
    # signed) could never be promoted: register afresh instead of reusing it.
    matches = [int(mv.version) for mv in versions
               if all((mv.tags or {}).get(key) == value for key, value in wanted.items())
               and PROVENANCE_TAG in (mv.tags or {})]
    return max(matches) if matches else None
