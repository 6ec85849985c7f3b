"""The names fraudguard writes to MLflow and reads back: aliases, tags and run artifact paths.

One definition each, so a writer and its readers (CLI, flows, gates, serving) cannot drift apart.
Modules that defined these before (registry, tracking) re-export them under their old names.
"""

# ------------------------------------------------------------------------------------- aliases
CHAMPION_ALIAS = "champion"          # the version served; moved only by promotion and rollback

# -------------------------------------------------------------------- model-version and run tags
LINEAGE_TAG_PREFIX = "lineage."
VALIDATION_TAG_PREFIX = "lineage.validation."  # what data validation found (rows quarantined, label changes)
ARTIFACT_TAG_PREFIX = "artifact."
GATE_TAG_PREFIX = "gate."            # gate.<name> = passed | failed
GIT_COMMIT_TAG = "lineage.git_commit"
GIT_DIRTY_TAG = "lineage.git_dirty"
DATA_MD5_TAG = "lineage.data_md5"
DVC_LOCK_SHA_TAG = "lineage.dvc_lock_sha256"
PARAMS_SHA_TAG = "lineage.params_sha256"
FLOW_RUN_TAG = "lineage.prefect_flow_run_id"
RUN_ID_TAG = "lineage.run_id"
WEIGHTS_SHA_TAG = "artifact.sha256"
PREPROCESS_SHA_TAG = "artifact.preprocess_sha256"
WEIGHTS_PATH_TAG = "fraudguard.model_weights_path"
REGISTERED_VERSION_TAG = "fraudguard.registered_version"   # on the run: the version it became
STATUS_TAG = "fraudguard.status"                           # display only, never trusted
BLOCKED_REASONS_TAG = "fraudguard.blocked_reasons"
APPROVER_TAG = "fraudguard.approver"

# Read by the MLflow 3 UI: an experiment without it may open on the GenAI traces page; this kind opens on runs.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

# --------------------------------------------------------------------------- run artifact paths
BUNDLE_DIR = "bundle"
WEIGHTS_ARTIFACT = f"{BUNDLE_DIR}/model.pt"
PREPROCESS_ARTIFACT = f"{BUNDLE_DIR}/preprocess.json"
REFERENCE_ARTIFACT = "reference/train_features.parquet"
MODEL_NAME_IN_RUN = "model"          # the logged pyfunc model
TRAINING_DATA_NAME = "data/raw"      # the run's dataset input
TRAINING_DATA_CONTEXT = "training"
