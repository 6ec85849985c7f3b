"""Real MLflow round trips on a SQLite store under tmp_path: run logging, registration, lineage tags,
the pyfunc model served from the registry, and integrity checks on downloaded weights."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from conftest import small_params
from fraudguard.config import parse_settings
from fraudguard.errors import ModelError, RegistryError
from fraudguard.lineage import LINEAGE_KEYS
from fraudguard.model import FraudMLP, ModelBundle, Standardizer, save_bundle
from fraudguard.paths import ProjectPaths
from fraudguard.tracking import (
    REFERENCE_ARTIFACT,
    WEIGHTS_ARTIFACT,
    configure_mlflow,
    load_bundle_for_version,
    load_reference_features,
    log_training_run,
    resolve_tracking_uri,
)

N_ROWS = 400
N_EPOCHS = 3


def _feature_frame(features: list[str], n_rows: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    # The featurize stage's dtypes: int32 flags and counts, float32 averages and risks, float64 amount.
    frame = pd.DataFrame({
        name: (rng.integers(0, 6, n_rows).astype("int32") if "_NB_TX_" in name or "DURING" in name
               else rng.gamma(2.0, 20.0, n_rows).astype("float32"))
        for name in features
    })
    frame["TX_AMOUNT"] = rng.gamma(2.0, 40.0, n_rows)
    frame["TX_DATETIME"] = pd.date_range("2024-04-01", periods=n_rows, freq="h")
    frame["TX_FRAUD"] = (rng.random(n_rows) < 0.1).astype("int64")
    return frame


def _write_pipeline_outputs(root: Path) -> ModelBundle:
    """The files the DVC stages leave behind, with a small random-weight model; returns its bundle."""
    raw = small_params()
    settings = parse_settings(raw)
    paths = ProjectPaths.at(root)
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.params.write_text(yaml.safe_dump(raw))
    paths.raw_dvc_file.write_text("outs:\n- md5: feedfacefeedfacefeedfacefeedface.dir\n  path: data/raw\n")
    paths.dvc_lock.write_text("schema: '2.0'\nstages: {}\n")
    features = list(settings.model.features)
    train = _feature_frame(features, N_ROWS, seed=1)
    paths.features_dir.mkdir(parents=True)
    train.to_parquet(paths.train_features)
    _feature_frame(features, 100, seed=2).to_parquet(paths.test_features)

    torch.manual_seed(0)
    module = FraudMLP(len(features), settings.model.hidden_sizes, settings.model.dropout).eval()
    bundle = ModelBundle(module, Standardizer.fit(train, features), tuple(settings.model.hidden_sizes),
                         settings.model.dropout, threshold=0.5)
    save_bundle(bundle, paths.model_weights, paths.preprocess)
    paths.metrics.write_text(json.dumps({"final_loss": 0.42, "threshold": 0.5, "n_rows": N_ROWS}))
    paths.training_history.write_text(json.dumps(
        [{"epoch": e, "loss": 1.0 / e, "val_average_precision": 0.1 * e} for e in range(1, N_EPOCHS + 1)]
    ))
    paths.evaluation.write_text(json.dumps({"average_precision": 0.61, "recall_at_fpr": 0.33}))
    paths.plots_dir.mkdir(parents=True)
    (paths.plots_dir / "pr_curve.json").write_text(json.dumps([{"recall": 0.0, "precision": 1.0}]))
    (paths.plots_dir / "pr_curve.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    paths.reports_dir.mkdir(parents=True)
    paths.validation_report.write_text(json.dumps({"n_rows": N_ROWS, "n_quarantined": 0}))
    return bundle


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """One project, one SQLite store, one registered version shared by the read-only tests."""
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("tracking")
    root = base / "project"
    bundle = _write_pipeline_outputs(root)
    settings = parse_settings(small_params())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{base / 'store' / 'mlflow.db'}")
        (base / "store").mkdir()
        client = configure_mlflow(root, settings.registry)
        record = log_training_run(root, settings)
        yield {"root": root, "base": base, "client": client, "record": record, "bundle": bundle,
               "settings": settings}


def test_default_tracking_uri_is_absolute_sqlite_in_project(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


def test_tracking_uri_env_var_overrides_default(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri(tmp_path) == "http://127.0.0.1:5000"


def test_registered_version_carries_every_lineage_tag(registered):
    rec, client = registered["record"], registered["client"]
    tags = client.get_model_version("fraudguard", str(rec.version)).tags
    missing = [key for key in (*LINEAGE_KEYS, "lineage.run_id") if key not in tags]
    assert missing == []
    assert tags["lineage.run_id"] == rec.run_id
    assert tags["lineage.data_md5"] == "feedfacefeedfacefeedfacefeedface.dir"
    assert tags["lineage.git_commit"] == "unknown"  # tmp_path is outside any git repo


def test_run_carries_the_same_lineage_tags_as_the_version(registered):
    rec, client = registered["record"], registered["client"]
    run_tags = client.get_run(rec.run_id).data.tags
    version_tags = client.get_model_version("fraudguard", str(rec.version)).tags
    assert {k: run_tags.get(k) for k in LINEAGE_KEYS} == {k: version_tags[k] for k in LINEAGE_KEYS}


def test_artifact_sha256_tag_matches_weights_file(registered):
    rec, client, root = registered["record"], registered["client"], registered["root"]
    tag = client.get_model_version("fraudguard", str(rec.version)).tags["artifact.sha256"]
    assert tag == hashlib.sha256((root / "models" / "model.pt").read_bytes()).hexdigest()


def test_registry_model_scores_raw_frame_like_in_memory_bundle(registered):
    import mlflow

    rec, bundle = registered["record"], registered["bundle"]
    frame = pd.read_parquet(registered["root"] / "data" / "features" / "test.parquet")
    features = list(registered["settings"].model.features)
    served = mlflow.pyfunc.load_model(f"models:/fraudguard/{rec.version}").predict(frame[features])
    expected = bundle.predict_proba(frame)
    assert np.allclose(served["fraud_probability"].to_numpy(), expected, atol=1e-6)
    assert (served["is_fraud"].to_numpy() == (expected >= bundle.threshold)).all()


def test_run_params_are_flattened_with_dots(registered):
    params = registered["client"].get_run(registered["record"].run_id).data.params
    assert params["train.adversarial.attack"] == "fgsm_random_start"
    assert params["threat_model.controlled_features.TX_AMOUNT.max"] == "5000.0"
    assert json.loads(params["model.features"]) == list(registered["settings"].model.features)
    assert params["registry.model_name"] == "fraudguard"


def test_per_epoch_metrics_are_logged_at_their_epoch(registered):
    history = registered["client"].get_metric_history(registered["record"].run_id, "epoch.loss")
    assert sorted((m.step, round(m.value, 6)) for m in history) == [
        (e, round(1.0 / e, 6)) for e in range(1, N_EPOCHS + 1)
    ]


def test_final_training_and_evaluation_metrics_are_logged(registered):
    metrics = registered["client"].get_run(registered["record"].run_id).data.metrics
    assert metrics["train.final_loss"] == pytest.approx(0.42)
    assert metrics["eval.average_precision"] == pytest.approx(0.61)


def test_run_holds_reports_config_plots_and_bundle(registered):
    import mlflow

    run_id = registered["record"].run_id
    listed = set()
    for folder in ("bundle", "config", "plots", "reports", "reference", "metrics"):
        listed |= {a.path for a in mlflow.artifacts.list_artifacts(run_id=run_id, artifact_path=folder)}
    assert {
        WEIGHTS_ARTIFACT, "bundle/preprocess.json", "config/params.yaml", "config/dvc.lock",
        "config/features.json", "config/threat_model.json", "plots/loss_curve.png",
        "plots/pr_curve.png", "reports/validation.json", REFERENCE_ARTIFACT,
        "metrics/evaluation.json",
    } <= listed


def test_artifacts_live_beside_the_sqlite_store(registered):
    run_id = registered["record"].run_id
    stored = registered["base"] / "store" / "mlartifacts" / run_id / "artifacts" / WEIGHTS_ARTIFACT
    assert stored.read_bytes() == (registered["root"] / "models" / "model.pt").read_bytes()


def test_reference_features_are_the_training_rows(registered):
    reference = load_reference_features(registered["client"], "fraudguard", registered["record"].version)
    train = pd.read_parquet(registered["root"] / "data" / "features" / "train.parquet")
    pd.testing.assert_frame_equal(reference, train)  # fewer rows than the sample size: kept whole


def test_load_bundle_for_version_returns_the_registered_bundle(registered, tmp_path):
    rec = registered["record"]
    loaded = load_bundle_for_version(registered["client"], "fraudguard", rec.version, tmp_path)
    frame = pd.read_parquet(registered["root"] / "data" / "features" / "test.parquet")
    assert np.array_equal(loaded.predict_proba(frame), registered["bundle"].predict_proba(frame))


def test_load_bundle_for_unknown_version_raises_registry_error(registered, tmp_path):
    with pytest.raises(RegistryError, match="version 999"):
        load_bundle_for_version(registered["client"], "fraudguard", 999, tmp_path)


def test_load_bundle_for_version_refuses_tampered_weights(registered, tmp_path):
    # A version of its own, so the shared one stays intact for the other tests.
    record = log_training_run(registered["root"], registered["settings"])
    stored = (registered["base"] / "store" / "mlartifacts" / record.run_id / "artifacts"
              / WEIGHTS_ARTIFACT)
    state = torch.load(stored, weights_only=True)
    first = next(iter(state))
    state[first] = state[first] + 0.01
    torch.save(state, stored)
    with pytest.raises(ModelError, match=f"version {record.version}.*sha256"):
        load_bundle_for_version(registered["client"], "fraudguard", record.version, tmp_path)


def test_register_command_prints_version_and_ui_hint(registered):
    from typer.testing import CliRunner

    from fraudguard.cli.model import app

    result = CliRunner().invoke(app, ["register", "--root", str(registered["root"])])
    assert result.exit_code == 0, result.output
    assert "registered fraudguard version" in result.output
    assert "mlflow ui --backend-store-uri" in result.output
    assert "?workflowType=machine_learning" in result.output  # MLflow 3's "Model training" view


def test_registry_model_accepts_hand_made_int64_and_float64_frames(registered):
    import mlflow

    features = list(registered["settings"].model.features)
    frame = pd.read_parquet(registered["root"] / "data" / "features" / "test.parquet")[features]
    widened = frame.astype({c: "int64" if frame[c].dtype.kind == "i" else "float64" for c in features})
    served = mlflow.pyfunc.load_model(f"models:/fraudguard/{registered['record'].version}").predict(widened)
    assert np.allclose(served["fraud_probability"].to_numpy(),
                       registered["bundle"].predict_proba(frame), atol=1e-6)


def test_registry_model_refuses_to_load_tampered_weights(registered):
    import mlflow
    from mlflow.exceptions import MlflowException

    record = log_training_run(registered["root"], registered["settings"])
    stored = next((registered["base"] / "store" / "mlartifacts" / "models" / record.model_id)
                  .rglob("model.pt"))
    stored.write_bytes(stored.read_bytes() + b"\0")
    with pytest.raises((ModelError, MlflowException), match="sha256"):
        mlflow.pyfunc.load_model(f"models:/fraudguard/{record.version}")


@pytest.mark.slow
def test_lineage_records_the_prefect_flow_run_it_runs_in(registered):
    from prefect import flow
    from prefect.testing.utilities import prefect_test_harness

    from fraudguard.lineage import collect_lineage

    @flow
    def lineage_flow() -> tuple[str, str]:
        from prefect.runtime import flow_run

        lineage = collect_lineage(registered["root"], registered["settings"],
                                  registered["root"] / "models" / "model.pt")
        return lineage["lineage.prefect_flow_run_id"], str(flow_run.id)

    with prefect_test_harness(server_startup_timeout=90):
        recorded, actual = lineage_flow()
    assert recorded == actual != "none"


_LOAD_WITHOUT_INSTALLED_PACKAGE = """
import sys
sys.path = [p for p in sys.path if not p.rstrip("/").endswith("src")]
sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
try:
    import fraudguard
    raise SystemExit("fraudguard still importable from " + fraudguard.__file__)
except ImportError:
    pass
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
frame = pd.read_parquet(sys.argv[2])[model.metadata.get_input_schema().input_names()]
model.predict(frame)["fraud_probability"].to_frame().to_parquet(sys.argv[3])
import fraudguard
print(fraudguard.__file__)
"""


@pytest.mark.slow
def test_registry_model_carries_its_own_fraudguard_code(registered, tmp_path):
    import subprocess  # nosec B404
    import sys

    test_file = registered["root"] / "data" / "features" / "test.parquet"
    out = tmp_path / "scores.parquet"
    done = subprocess.run(  # nosec B603
        [sys.executable, "-c", _LOAD_WITHOUT_INSTALLED_PACKAGE,
         f"models:/fraudguard/{registered['record'].version}", str(test_file), str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "mlartifacts" in done.stdout  # fraudguard came from the model's code_paths
    expected = registered["bundle"].predict_proba(pd.read_parquet(test_file))
    assert np.allclose(pd.read_parquet(out)["fraud_probability"].to_numpy(), expected, atol=1e-6)


def test_run_is_named_after_its_version_seed_and_commit(registered):
    rec, client, settings = registered["record"], registered["client"], registered["settings"]
    # tmp_path is outside any git repo: no commit to name
    assert client.get_run(rec.run_id).info.run_name == f"train v{rec.version} seed{settings.train.seed} no-git"


def test_run_name_shows_the_short_commit_and_uncommitted_code():
    from fraudguard.tracking import training_run_name

    lineage = {"lineage.git_commit": "4f64441b0c0ffee0" + "0" * 24, "lineage.git_dirty": "true"}
    assert training_run_name(7, 3, lineage) == "train v7 seed3 4f64441b+dirty"
    assert training_run_name(None, 3, {**lineage, "lineage.git_dirty": "false"}) == "train seed3 4f64441b"


def test_training_data_is_a_run_input_with_the_dvc_md5_as_digest(registered):
    rec, client, root = registered["record"], registered["client"], registered["root"]
    inputs = client.get_run(rec.run_id).inputs.dataset_inputs
    assert len(inputs) == 1
    dataset = inputs[0].dataset
    assert (dataset.name, dataset.digest) == ("data/raw", "feedfacefeedfacefeedfacefeedface.dir")
    assert json.loads(dataset.source) == {"uri": str((root / "data.dvc").resolve())}
    assert {t.key: t.value for t in inputs[0].tags}["mlflow.data.context"] == "training"


def test_experiment_opens_on_its_runs_in_the_mlflow_ui(registered):
    client, settings = registered["client"], registered["settings"]
    experiment = client.get_experiment_by_name(settings.registry.experiment)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_experiment_made_elsewhere_gets_the_kind_tag_on_first_use(registered, tmp_path):
    from fraudguard.tracking import ensure_experiment

    client = registered["client"]
    made = client.create_experiment("by-hand", artifact_location=(tmp_path / "art").as_uri())
    assert ensure_experiment(client, "by-hand") == made
    assert client.get_experiment(made).tags["mlflow.experimentKind"] == "custom_model_development"


def test_registered_model_pins_exactly_the_installed_runtime_packages(registered):
    import mlflow

    from fraudguard.pyfunc_model import pinned_requirements

    requirements = mlflow.pyfunc.get_model_dependencies(f"models:/fraudguard/{registered['record'].version}")
    pins = [line.strip() for line in Path(requirements).read_text().splitlines() if line.strip()]
    assert sorted(pins) == sorted(pinned_requirements())


def test_short_package_map_still_reports_a_pin_the_environment_does_not_satisfy_and_is_undone(caplog):
    from mlflow.utils import requirements_utils

    from fraudguard.pyfunc_model import _pinned_packages_map, pinned_requirements

    built = requirements_utils._MODULES_TO_PACKAGES
    requirements_utils._MODULES_TO_PACKAGES = None  # as in a fresh `fraudguard register` process
    try:
        with caplog.at_level("WARNING", logger="mlflow.utils.requirements_utils"), _pinned_packages_map():
            requirements_utils.warn_dependency_requirement_mismatches(["numpy==0.0.1", *pinned_requirements()])
            assert set(requirements_utils._MODULES_TO_PACKAGES) == {"mlflow", "torch", "numpy", "pandas",
                                                                     "pyarrow", "pydantic", "yaml"}
        assert "numpy (current: " in caplog.text and "required: numpy==0.0.1" in caplog.text
        assert "pandas (current" not in caplog.text  # the installed pins are satisfied
        assert requirements_utils._MODULES_TO_PACKAGES is None  # the full map is built as usual later
    finally:
        requirements_utils._MODULES_TO_PACKAGES = built
