"""Signed build provenance: which pipeline host registered a model version's files, from which lineage.

`fraudguard register` (tracking.log_training_run) signs, right after registering a version, an in-toto statement
whose subjects are the digests of the files `models:/<name>/<version>` serves (weights, preprocess.json and the
manifest of the whole model directory) and whose predicate is the lineage it registered them with. It signs them
only once they are the files it built itself (`check_served_as_built`: the same model directory saved locally
before the upload), so an edit made in the store while registration runs is refused, not signed. It is stored
as the version tag `fraudguard.provenance`. A promotion refuses a candidate without a valid one, or whose served
files differ from it, before any gate runs: anyone with write access to the tracking store but not the signing key
can register a version (or edit a registered one's files), but cannot make it promotable. The gates then decide
whether a pipeline-built model is good enough; this decides whether it is the pipeline's at all.
"""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from fraudguard.attestation import file_manifest
from fraudguard.errors import ModelError, SignatureError
from fraudguard.signing import Signer, Verifier, in_toto_statement, open_envelope, sha256_text, sign_envelope, \
    subject_digests
from fraudguard.store import resilient

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

PROVENANCE_PREDICATE_TYPE = "https://fraudguard.dev/provenance/register/v1"
PROVENANCE_TAG = "fraudguard.provenance"
BUILDER = "fraudguard register"
MLMODEL_FILE = "MLmodel"
# MLmodel keys MLflow fills in per log call (a local save leaves them unset or different). Those naming this
# registration (model_id, model_uuid, run_id) must name it; where and when MLflow logged it are informational
# and not read when the model is loaded or served.
_MLMODEL_IDENTITY_KEYS = ("model_id", "model_uuid", "run_id")
_MLMODEL_INFORMATIONAL_KEYS = ("artifact_path", "utc_time_created")


@dataclass(frozen=True)
class BuiltModel:
    """A model directory as this process built it before uploading it: every file's sha256 and the MLmodel."""

    files: dict[str, str]
    mlmodel: dict[str, Any]

    @classmethod
    def read(cls, build_dir: Path) -> "BuiltModel":
        return cls(file_manifest(build_dir), _read_mlmodel(Path(build_dir) / MLMODEL_FILE))


def _read_mlmodel(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ModelError(f"{path}: unreadable MLmodel ({type(exc).__name__})") from exc
    if not isinstance(doc, dict):
        raise ModelError(f"{path}: MLmodel is not a mapping")
    return doc


def check_served_as_built(model_dir: Path, built: BuiltModel, *, run_id: str, model_id: str, where: str) -> None:
    """ModelError naming each file of the served copy `model_dir` that is not what this process built.

    Every file must be byte for byte the built one, except MLmodel, where MLflow's per-log keys differ: those
    naming the logged model and run must name this registration's; the rest must equal the built MLmodel."""
    served = file_manifest(model_dir)
    differ = sorted(name for name in set(served) | set(built.files)
                    if name != MLMODEL_FILE and served.get(name) != built.files.get(name))
    if MLMODEL_FILE not in served:
        differ.append(f"{MLMODEL_FILE} (missing)")
    else:
        mlmodel = _read_mlmodel(Path(model_dir) / MLMODEL_FILE)
        expected = {"model_id": model_id, "model_uuid": model_id, "run_id": run_id}
        ignored = (*_MLMODEL_IDENTITY_KEYS, *_MLMODEL_INFORMATIONAL_KEYS)
        same_content = ({k: v for k, v in mlmodel.items() if k not in ignored}
                        == {k: v for k, v in built.mlmodel.items() if k not in ignored})
        if not same_content or any(mlmodel.get(key) != value for key, value in expected.items()):
            differ.append(MLMODEL_FILE)
    if differ:
        raise ModelError(f"{where}: the tracking store's copy is not what this registration built and uploaded "
                         f"({', '.join(differ)}): altered in the store while it was registered; its build "
                         "provenance is not signed, so no promotion will accept this version; register again")


def provenance_statement(model_name: str, version: int, run_id: str | None, digests: Mapping[str, str],
                         lineage: Mapping[str, str]) -> dict[str, Any]:
    """The in-toto statement that this host registered `digests` as `model_name` version `version`."""
    predicate = {
        "builder": BUILDER,
        "host": socket.gethostname(),
        "model_name": model_name,
        "version": int(version),
        "run_id": run_id,
        "lineage": {str(key): str(value) for key, value in sorted(lineage.items())},
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return in_toto_statement(dict(digests), PROVENANCE_PREDICATE_TYPE, predicate)


def sign_provenance(client: "MlflowClient", model_name: str, version: int, run_id: str | None,
                    digests: Mapping[str, str], lineage: Mapping[str, str], signer: Signer) -> str:
    """Sign and store the version's provenance; returns the envelope's sha256."""
    envelope = sign_envelope(signer, provenance_statement(model_name, version, run_id, digests, lineage))
    resilient(client).set_model_version_tag(model_name, str(version), PROVENANCE_TAG, envelope)
    return sha256_text(envelope)


def verify_provenance(mv: "ModelVersion", served: Mapping[str, str], verifier: Verifier) -> str:
    """The sha256 of the version's provenance once it verifies and names exactly the `served` digests.

    SignatureError when it is missing, forged or for another version; ModelError naming each served file that
    differs from what registration signed."""
    where = f"model {mv.name!r} version {mv.version}"
    envelope = (mv.tags or {}).get(PROVENANCE_TAG)
    if not envelope:
        raise SignatureError(f"{where} has no signed build provenance (tag {PROVENANCE_TAG}): it was not registered "
                             "by `fraudguard register` on a host with the pipeline's key (or before provenance "
                             "existed); register it again from its checkout")
    statement = open_envelope(verifier, envelope, f"{where} build provenance")
    predicate = statement.get("predicate") or {}
    if statement.get("predicateType") != PROVENANCE_PREDICATE_TYPE:
        raise SignatureError(f"{where}: its {PROVENANCE_TAG} tag is not a build provenance")
    if predicate.get("model_name") != mv.name or str(predicate.get("version")) != str(mv.version):
        raise SignatureError(f"{where}: its build provenance is for {predicate.get('model_name')!r} version "
                             f"{predicate.get('version')} (copied from another version)")
    signed = subject_digests(statement)
    differ = sorted(name for name, digest in served.items() if signed.get(name) != digest)
    if differ:
        raise ModelError(f"{where}: {', '.join(differ)} differ from what `fraudguard register` signed "
                         f"(host {predicate.get('host')}, {predicate.get('time')}): altered in the tracking store "
                         "after registration; refusing to gate them")
    return sha256_text(envelope)
