"""Signed build provenance: which pipeline host registered a model version's files, from which lineage.

`fraudguard register` (tracking.log_training_run) signs, right after registering a version, an in-toto statement
whose subjects are the digests of the files `models:/<name>/<version>` serves (weights, preprocess.json and the
manifest of the whole model directory) and whose predicate is the lineage it registered them with. It is stored
as the version tag `fraudguard.provenance`. A promotion refuses a candidate without a valid one, or whose served
files differ from it, before any gate runs: anyone with write access to the tracking store but not the signing key
can register a version (or edit a registered one's files), but cannot make it promotable. The gates then decide
whether a pipeline-built model is good enough; this decides whether it is the pipeline's at all.
"""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

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
