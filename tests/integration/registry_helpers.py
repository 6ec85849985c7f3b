"""Real-MLflow helpers for the registry/promotion tests: a sqlite store under tmp_path and registered
versions carrying a weights file and the tags the tracking side sets (no mocks, no training)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from fraudguard.config import GatesSettings, Settings
from fraudguard.gates.base import GateContext, GateResult, ModelUnderTest

EXPERIMENT = "fraudguard-test"


def make_client(root: Path) -> MlflowClient:
    """A client on a fresh sqlite store (and local artifact root) under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_experiment(EXPERIMENT, artifact_location=(root / "artifacts").as_uri())
    return client


def register_version(client: MlflowClient, name: str, workdir: Path, weights: bytes,
                     gates: dict[str, str] | None = None, provenance: bool = True) -> int:
    """Log `weights` as model/model.pt in a new run, register it, tag lineage + sha256 (+ gate verdicts), and sign
    its build provenance with the session's key (provenance=False: a version an insider registered by hand)."""
    exp = client.get_experiment_by_name(EXPERIMENT)
    run = client.create_run(exp.experiment_id)
    workdir.mkdir(parents=True, exist_ok=True)
    weights_file = workdir / "model.pt"
    weights_file.write_bytes(weights)
    client.log_artifact(run.info.run_id, str(weights_file), "bundle")
    # The served copy, shaped like the pyfunc model directory fraudguard logs (MLmodel + artifacts/).
    model_dir = workdir / "model"
    (model_dir / "artifacts").mkdir(parents=True, exist_ok=True)
    (model_dir / "MLmodel").write_text("flavors: {}\n")
    (model_dir / "artifacts" / "model.pt").write_bytes(weights)
    (model_dir / "artifacts" / "preprocess.json").write_text('{"threshold": 0.5}\n')
    client.log_artifacts(run.info.run_id, str(model_dir), "model")
    client.set_terminated(run.info.run_id)
    try:
        client.create_registered_model(name)
    except MlflowException:
        pass  # already registered by an earlier call
    tags = {
        "artifact.sha256": hashlib.sha256(weights).hexdigest(),
        "fraudguard.model_weights_path": "bundle/model.pt",
        "lineage.run_id": run.info.run_id,
        "lineage.git_commit": "0123abcd",
        "lineage.data_md5": "d41d8cd98f00b204e9800998ecf8427e",
    }
    tags.update({f"gate.{g}": v for g, v in (gates or {}).items()})
    mv = client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id,
                                     tags=tags)
    if provenance:  # as `fraudguard register` signs it: a promotion refuses a version without one
        from fraudguard.attestation import served_copy_digests
        from fraudguard.provenance import sign_provenance
        from fraudguard.signing import load_signer

        sign_provenance(client, name, int(mv.version), run.info.run_id,
                        served_copy_digests(client, name, int(mv.version)), tags, load_signer())
    return int(mv.version)


def artifact_file(client: MlflowClient, name: str, version: int, served: bool = False) -> Path:
    """The stored weights file of a version on the local artifact root (to tamper with it).

    served: the copy `models:/<name>/<version>` serves (model/artifacts/), else the run's bundle/ copy.
    """
    mv = client.get_model_version(name, str(version))
    run = client.get_run(mv.run_id)
    root = Path(run.info.artifact_uri.removeprefix("file://"))
    return root / "model" / "artifacts" / "model.pt" if served else root / "bundle" / "model.pt"


# Every gate params.yaml configures (the default rollback requires a pass of each).
GATE_NAMES = tuple(GatesSettings.model_fields)


def all_passing_gates(report_dir: Path | None = None) -> dict:
    """A passing stand-in for every configured gate (for tests about the registry, not the gates)."""
    return {name: passing_gate(name, report_dir) for name in GATE_NAMES}


def promote_with_gates(client: MlflowClient, name: str, version: int, settings: Settings, workdir: Path,
                       gates: dict, actor: str = "tester", policy=None):
    """promote_version with stand-in gates, a synthetic context and an explicit policy (no git needed)."""
    from fraudguard.policy import policy_from_settings
    from fraudguard.promotion import promote_version

    report_dir = workdir / "reports" / f"v{version}"
    report_dir.mkdir(parents=True, exist_ok=True)
    return promote_version(client, workdir, settings, version=version, actor=actor, gates=gates,
                           candidate=candidate_for(client, name, version),
                           context=simple_context(settings, workdir, report_dir),
                           policy=policy or policy_from_settings(settings, "test"))


def feature_frame(settings: Settings, n: int, seed: int, amount_scale: float = 1.0) -> pd.DataFrame:
    """A synthetic frame of the model features (amount and spend columns scaled by `amount_scale`)."""
    rng = np.random.default_rng(seed)
    data = {}
    for feature in settings.model.features:
        if feature in ("TX_DURING_WEEKEND", "TX_DURING_NIGHT"):
            data[feature] = rng.integers(0, 2, n).astype(float)
        elif "AMOUNT" in feature or "SPEND" in feature:  # money-valued: scaled with the amounts
            data[feature] = rng.gamma(2.0, 50.0, n) * amount_scale
        elif "RISK" in feature:
            data[feature] = rng.beta(1.0, 20.0, n)
        elif feature.startswith("CUSTOMER_ID_NB_TX"):  # a customer's window holds the transaction itself: >= 1
            data[feature] = 1.0 + rng.poisson(2.0, n)
        else:
            data[feature] = rng.poisson(3.0, n).astype(float)
    return pd.DataFrame(data)


def simple_context(settings: Settings, root: Path, report_dir: Path) -> GateContext:
    """A GateContext over synthetic, undrifted features."""
    train = feature_frame(settings, 2000, seed=1)
    test = feature_frame(settings, 800, seed=2)
    return GateContext(settings=settings, train_features=train, test_features=test, newest_window=test,
                       source_root=root, report_dir=report_dir)


def candidate_for(client: MlflowClient, name: str, version: int) -> ModelUnderTest:
    """The candidate as the promotion tests' gates see it (they never score it)."""
    return ModelUnderTest(bundle=None, version=version, run_id=client.get_model_version(name, str(version)).run_id)


def passing_gate(name: str, report_dir: Path | None = None):
    """A gate that passes and (optionally) writes a small report file."""
    def run(candidate, context, settings) -> GateResult:
        paths = ()
        if report_dir is not None:
            report = report_dir / f"{name}_report.json"
            report.write_text('{"ok": true}')
            paths = (report,)
        return GateResult(name, True, {"score": 1.0}, {"min_score": 0.5}, f"{name} fine", paths)
    return run


def failing_gate(name: str):
    def run(candidate, context, settings) -> GateResult:
        return GateResult(name, False, {"score": 0.1}, {"min_score": 0.5}, f"{name} score 0.1 below 0.5")
    return run


def write_pipeline_outputs(root: Path, seed: int, train_features: pd.DataFrame | None = None) -> None:
    """The files the DVC stages leave in a project (features, a random-weight bundle, metrics, reports).

    `train_features` (real featurized rows) replaces the synthetic training split: the bundle is standardized
    on it and it becomes the version's drift reference."""
    import json

    import torch
    import yaml

    from conftest import small_params
    from fraudguard.config import parse_settings
    from fraudguard.model import FraudMLP, ModelBundle, Standardizer, save_bundle
    from fraudguard.paths import ProjectPaths

    raw = small_params()
    settings = parse_settings(raw)
    paths = ProjectPaths.at(root)
    for directory in (paths.features_dir, paths.plots_dir, paths.reports_dir):
        directory.mkdir(parents=True, exist_ok=True)
    paths.params.write_text(yaml.safe_dump(raw))
    paths.raw_dvc_file.write_text("outs:\n- md5: feedfacefeedfacefeedfacefeedface.dir\n  path: data/raw\n")
    features = list(settings.model.features)
    for path, n, frame_seed, start in ((paths.train_features, 600, 1, "2024-04-01"),
                                       (paths.test_features, 200, 2, "2024-05-15")):
        frame = feature_frame(settings, n, frame_seed)
        frame["TX_DATETIME"] = pd.date_range(start, periods=n, freq="2h")
        frame["TX_FRAUD"] = (np.random.default_rng(frame_seed).random(n) < 0.1).astype("int64")
        frame["CUSTOMER_ID"] = np.arange(n) % 50
        frame.to_parquet(path)
    if train_features is not None:
        train_features.to_parquet(paths.train_features)
    torch.manual_seed(seed)
    module = FraudMLP(len(features), settings.model.hidden_sizes, settings.model.dropout).eval()
    train = pd.read_parquet(paths.train_features)
    bundle = ModelBundle(module, Standardizer.fit(train, features), tuple(settings.model.hidden_sizes),
                         settings.model.dropout, threshold=0.5)
    save_bundle(bundle, paths.model_weights, paths.preprocess)
    paths.metrics.write_text(json.dumps({"final_loss": 0.42, "threshold": 0.5}))
    paths.training_history.write_text(json.dumps([{"epoch": 1, "loss": 0.5}]))
    paths.evaluation.write_text(json.dumps({"average_precision": 0.5}))
    (paths.plots_dir / "pr_curve.json").write_text(json.dumps([{"recall": 0.0, "precision": 1.0}]))
    paths.validation_report.write_text(json.dumps({"n_rows": 600, "n_quarantined": 0}))


def commit_params(root: Path) -> None:
    """Make the project a git checkout with params.yaml committed: the policy of record promotion reads."""
    import subprocess

    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    if not (root / ".git").exists():
        subprocess.run(["git", "init", "-q", "-b", "main"], cwd=root, check=True)
    subprocess.run([*git, "add", "params.yaml"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "params", "--allow-empty"], cwd=root, check=True)


def served_weights_file(client: MlflowClient, name: str, version: int) -> Path:
    """The weights file `models:/<name>/<version>` serves, inside the store (to tamper with it)."""
    import mlflow.artifacts

    uri = client.get_model_version_download_uri(name, str(version))
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, tracking_uri=client.tracking_uri,
                                                       registry_uri=client.tracking_uri))
    return local / "artifacts" / "model.pt"
