"""Signed pass attestations: the evidence that a model version passed every gate under the policy of record.

One attestation is made at each promotion: an in-toto statement whose subjects are the files the pyfunc
model serves (weights, preprocess.json, and a manifest digest over every file of the model directory)
and whose predicate holds the lineage (data md5, git commit, params hash), the policy (source and hash
of the committed gate sections), each gate's verdict with its thresholds and headline metrics, the actor
and the approver. It is signed (fraudguard.signing) and stored as a version tag
`fraudguard.attestation.<digest prefix>`; the audit entry of the move records its sha256, so the tag
is only a carrier: an edited, swapped or forged one fails to verify.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fraudguard.errors import ModelError, SignatureError
from fraudguard.files import sha256_file
from fraudguard.names import REFERENCE_ARTIFACT
from fraudguard.signing import (
    Signer,
    Verifier,
    canonical_json,
    in_toto_statement,
    open_envelope,
    sha256_text,
    sign_envelope,
    subject_digests,
)
from fraudguard.store import resilient

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from fraudguard.gates.base import GateResult
    from fraudguard.model import ModelBundle
    from fraudguard.policy import GatePolicy

logger = logging.getLogger(__name__)

PROMOTION_PREDICATE_TYPE = "https://fraudguard.dev/attestation/promotion/v1"
ATTESTATION_TAG_PREFIX = "fraudguard.attestation."
WEIGHTS_SUBJECT = "model/artifacts/model.pt"
PREPROCESS_SUBJECT = "model/artifacts/preprocess.json"
MANIFEST_SUBJECT = "model/"
# The run's drift reference sample (not part of the served model): signed so the monitor can check it.
REFERENCE_SUBJECT = REFERENCE_ARTIFACT
# Written by MLflow's client into a model directory when it is downloaded through a models:/ URI: it
# names what was asked for, so it is not part of what was signed.
DOWNLOAD_ONLY_FILES = frozenset({"registered_model_meta"})
_METRICS_PER_GATE = 8


@dataclass(frozen=True)
class Attestation:
    """A verified pass attestation: its envelope's sha256 and the statement inside."""

    digest: str
    statement: dict[str, Any]

    @property
    def predicate(self) -> dict[str, Any]:
        return self.statement.get("predicate", {})

    @property
    def version(self) -> int:
        return int(self.predicate.get("version", -1))

    @property
    def gates(self) -> dict[str, dict[str, Any]]:
        return dict(self.predicate.get("gates", {}))

    @property
    def subjects(self) -> dict[str, str]:
        return subject_digests(self.statement)


# The lineage keys an attestation carries: claimed by the version's tags, checked against the gated checkout.
LINEAGE_SIGNED_KEYS = ("git_commit", "data_md5", "params_sha256", "dvc_lock_sha256")


def attestation_tag(digest: str) -> str:
    return f"{ATTESTATION_TAG_PREFIX}{digest[:16]}"


# --------------------------------------------------------------------------------- the served files

def file_manifest(model_dir: Path) -> dict[str, str]:
    """relative path -> sha256 of every file of a model directory (download-only files left out)."""
    model_dir = Path(model_dir)
    return {path.relative_to(model_dir).as_posix(): sha256_file(path)
            for path in sorted(model_dir.rglob("*"))
            if path.is_file() and path.relative_to(model_dir).as_posix() not in DOWNLOAD_ONLY_FILES
            and "__pycache__" not in path.parts}


def served_digests(model_dir: Path) -> dict[str, str]:
    """The subject digests of a model directory as the pyfunc would serve it."""
    manifest = file_manifest(model_dir)
    missing = [name for name in ("artifacts/model.pt", "artifacts/preprocess.json") if name not in manifest]
    if missing:
        raise ModelError(f"{model_dir}: model directory lacks {', '.join(missing)}")
    return {
        WEIGHTS_SUBJECT: manifest["artifacts/model.pt"],
        PREPROCESS_SUBJECT: manifest["artifacts/preprocess.json"],
        MANIFEST_SUBJECT: sha256_text(canonical_json(manifest)),
    }


def download_served_model(client: "MlflowClient", model_name: str, version: int, dst: Path) -> Path:
    """Download the files `models:/<name>/<version>` serves into dst; returns the model directory."""
    import mlflow.artifacts

    from fraudguard.errors import RegistryError

    try:
        # What models:/<name>/<version> resolves to, asked of this client's registry (not the global URI).
        uri = resilient(client).get_model_version_download_uri(model_name, str(version))
        inner = getattr(client, "inner", client)
        # Both URIs explicit: MLflow's process-wide defaults may name another store.
        model_dir = Path(resilient(mlflow.artifacts).download_artifacts(
            artifact_uri=uri, dst_path=str(dst), tracking_uri=inner.tracking_uri,
            registry_uri=getattr(inner, "_registry_uri", None) or inner.tracking_uri))
    except Exception as exc:  # MLflow raises its own and OS errors for a missing or unreadable model
        raise RegistryError(f"model {model_name!r} version {version}: cannot download the served model "
                            f"({type(exc).__name__}: {str(exc)[:200]})") from exc
    refuse_unlisted_files(model_dir, f"model {model_name!r} version {version}")
    return model_dir


def refuse_unlisted_files(model_dir: Path, where: str) -> None:
    """ModelError when a downloaded model directory holds files the manifest leaves out (compiled Python under
    `__pycache__`). No logged model has them (MLflow leaves `__pycache__` out of a model's code), and Python
    runs an unchecked-hash .pyc there in place of its checked source: such a file planted in the store would
    reach a pulled model unseen by every digest check."""
    model_dir = Path(model_dir)
    unlisted = sorted(path.relative_to(model_dir).as_posix() for path in model_dir.rglob("__pycache__"))
    if unlisted:
        shown = ", ".join(unlisted[:3]) + (f" and {len(unlisted) - 3} more" if len(unlisted) > 3 else "")
        raise ModelError(f"{where}: the store's copy holds compiled Python ({shown}), which no logged model has "
                         "and no signature covers; refusing it")


# ------------------------------------------------------------------------------------ make and read

def _compact_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in list(metrics.items())[:_METRICS_PER_GATE]:
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        if number == number and abs(number) != float("inf"):
            out[str(key)] = float(f"{number:.4g}")
    return out


def promotion_statement(
    mv: "ModelVersion", digests: Mapping[str, str], results: Sequence["GateResult"], policy: "GatePolicy",
    *, actor: str, approver: str, champion_before: int | None, gated_workspace: Mapping[str, str] | None = None,
    provenance: str | None = None,
) -> dict[str, Any]:
    """The in-toto statement that `mv` passed every gate in `results` under `policy`.

    `lineage` is what the version's tags claim (anyone with write access to the store can edit them), so the
    signer also records what it saw itself: `gated_workspace`, the lineage of the checkout the gates read
    (commit, data, params, dvc.lock), and `lineage_check`, per key whether the claim equals it.
    """
    tags = mv.tags or {}
    claimed = {key: tags.get(f"lineage.{key}", "unknown") for key in LINEAGE_SIGNED_KEYS}
    observed = dict(gated_workspace or {})
    predicate = {
        "model_name": mv.name,
        "version": int(mv.version),
        "run_id": mv.run_id,
        "lineage": claimed,
        "gated_workspace": observed,
        "lineage_check": {key: ("unknown" if observed.get(key, "unknown") == "unknown"
                                else "matches" if observed[key] == claimed[key] else "differs")
                          for key in LINEAGE_SIGNED_KEYS},
        "policy": {"source": policy.source, "sha256": policy.sha256},
        "gates": {r.name: {"passed": bool(r.passed),
                           "thresholds": _compact_metrics(r.thresholds),
                           "metrics": _compact_metrics(r.metrics)} for r in results},
        "actor": actor,
        "approver": approver,
        "champion_before": champion_before,
        # The sha256 of the signed build provenance the candidate's files were checked against (fraudguard.provenance).
        "provenance": provenance,
        "time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return in_toto_statement(dict(digests), PROMOTION_PREDICATE_TYPE, predicate)


def sign_and_store(client: "MlflowClient", mv: "ModelVersion", statement: dict[str, Any], signer: Signer) -> str:
    """Sign the statement, store the envelope on the version, return the envelope's sha256."""
    envelope = sign_envelope(signer, statement)
    digest = sha256_text(envelope)
    resilient(client).set_model_version_tag(mv.name, str(mv.version), attestation_tag(digest), envelope)
    return digest


def load_attestation(mv: "ModelVersion", digest: str, verifier: Verifier) -> Attestation:
    """The version's attestation with envelope sha256 `digest`, verified: signature, version, every gate passed."""
    where = f"model {mv.name!r} version {mv.version}"
    envelope = (mv.tags or {}).get(attestation_tag(digest))
    if not envelope:
        raise SignatureError(f"{where}: attestation {digest[:16]} is missing (tag {attestation_tag(digest)})")
    if sha256_text(envelope) != digest:
        raise SignatureError(f"{where}: attestation {digest[:16]} was altered (its sha256 differs from the audit's)")
    statement = open_envelope(verifier, envelope, f"{where} attestation {digest[:16]}")
    attestation = Attestation(digest, statement)
    if statement.get("predicateType") != PROMOTION_PREDICATE_TYPE:
        raise SignatureError(f"{where}: attestation {digest[:16]} is not a promotion attestation")
    if attestation.version != int(mv.version) or attestation.predicate.get("model_name") != mv.name:
        raise SignatureError(f"{where}: attestation {digest[:16]} is for version {attestation.version}")
    failed = sorted(name for name, gate in attestation.gates.items() if not gate.get("passed"))
    if failed or not attestation.gates:
        raise SignatureError(f"{where}: attestation {digest[:16]} does not record a pass "
                             f"({'failed: ' + ', '.join(failed) if failed else 'no gates'})")
    return attestation


def check_digests(attestation: Attestation, actual: Mapping[str, str], where: str) -> None:
    """ModelError naming each served file whose digest differs from the attested one."""
    expected = attestation.subjects
    bad = [name for name in (WEIGHTS_SUBJECT, PREPROCESS_SUBJECT, MANIFEST_SUBJECT)
           if name in actual and expected.get(name) != actual[name]]
    if bad:
        # The manifest subject is one digest over every file: name the files it can be, not only "model/".
        only_manifest = bad == [MANIFEST_SUBJECT]
        what = ("model/ (a file other than model.pt and preprocess.json: the code/ copy of fraudguard, MLmodel, "
                "python_env.yaml or requirements.txt)" if only_manifest else ", ".join(bad))
        raise ModelError(f"{where}: {what} differ from the signed attestation {attestation.digest[:16]} "
                         f"of version {attestation.version}; refusing to serve altered files")


def served_copy_digests(client: "MlflowClient", model_name: str, version: int) -> dict[str, str]:
    """The subject digests of what `models:/<name>/<version>` serves now (downloaded to a temporary folder)."""
    with tempfile.TemporaryDirectory(prefix="fraudguard-served-") as tmp:
        return served_digests(download_served_model(client, model_name, int(version), Path(tmp)))


def check_served_copy(client: "MlflowClient", mv: "ModelVersion", attestation: Attestation) -> dict[str, str]:
    """Download what `models:/<name>/<version>` serves and check every file against the attestation."""
    actual = served_copy_digests(client, mv.name, int(mv.version))
    check_digests(attestation, actual, f"model {mv.name!r} version {mv.version}")
    return actual


def load_served_bundle(client: "MlflowClient", model_name: str, version: int, dst: Path,
                       expected_weights_sha256: str | None = None) -> tuple["ModelBundle", dict[str, str]]:
    """The bundle `models:/<name>/<version>` serves, loaded from a copy in dst, with that copy's subject digests.

    What the gates test must be what gets signed: the promotion gates this bundle and signs these digests, so
    no other copy of the model (the run's bundle/ folder, a file swapped in the store meanwhile) can stand in
    for it. `expected_weights_sha256` (the version's artifact tag) is a consistency check only.
    """
    model_dir = download_served_model(client, model_name, int(version), Path(dst))
    digests = served_digests(model_dir)
    where = f"model {model_name!r} version {version}"
    if expected_weights_sha256 and digests[WEIGHTS_SUBJECT] != expected_weights_sha256:
        raise ModelError(f"{where}: the served model.pt differs from the version's weights sha256 tag "
                         "(artifact altered)")
    return load_model_dir_bundle(model_dir, digests[WEIGHTS_SUBJECT], digests[PREPROCESS_SUBJECT], where), digests


def pull_attested_model(client: "MlflowClient", mv: "ModelVersion", digest: str, verifier: Verifier,
                        dst: Path) -> tuple[Path, Attestation]:
    """(the model directory `models:/<name>/<version>` serves, downloaded into dst; the attestation), once every
    file matches the signed attestation `digest`, before anything in it is read or run (errors as for
    load_attested_bundle). The directory is an MLflow model (`mlflow.pyfunc.load_model(dir)`) whose code/ copy of
    fraudguard and MLmodel are the ones the gates passed, which a `models:/` load cannot promise."""
    attestation = load_attestation(mv, digest, verifier)
    model_dir = download_served_model(client, mv.name, int(mv.version), Path(dst))
    check_digests(attestation, served_digests(model_dir), f"model {mv.name!r} version {mv.version}")
    return model_dir, attestation


def load_attested_bundle(client: "MlflowClient", mv: "ModelVersion", digest: str, verifier: Verifier,
                         dst: Path) -> tuple["ModelBundle", Attestation]:
    """The bundle `models:/<name>/<version>` serves, downloaded into dst and loaded only once every served file
    matches the signed attestation `digest` (the one the audit log commits for the version).

    SignatureError when the attestation is missing, altered, forged or not a pass; ModelError when a served file
    differs from it. The one way to load a version that has been promoted: the gateway, the monitor, the quality
    gate's champion and the red-team suite's champion all come through here, never through editable tags.
    """
    where = f"model {mv.name!r} version {mv.version}"
    model_dir, attestation = pull_attested_model(client, mv, digest, verifier, dst)
    subjects = attestation.subjects
    if WEIGHTS_SUBJECT not in subjects or PREPROCESS_SUBJECT not in subjects:
        raise ModelError(f"{where}: attestation {digest[:16]} does not cover the weights and preprocess.json")
    return load_model_dir_bundle(model_dir, subjects[WEIGHTS_SUBJECT], subjects[PREPROCESS_SUBJECT], where), \
        attestation


def load_model_dir_bundle(model_dir: Path, weights_sha256: str, preprocess_sha256: str, where: str) -> "ModelBundle":
    """The bundle of a downloaded model directory: the weights checked as they are read, preprocess.json after
    (so no file swapped between the digest check and the load goes unnoticed)."""
    from fraudguard.model import load_bundle

    preprocess = Path(model_dir) / "artifacts" / "preprocess.json"
    try:
        bundle = load_bundle(Path(model_dir) / "artifacts" / "model.pt", preprocess, expected_sha256=weights_sha256)
    except ModelError as exc:
        raise ModelError(f"{where}: {exc}") from exc
    if sha256_file(preprocess) != preprocess_sha256:
        raise ModelError(f"{where}: preprocess.json changed while it was loaded")
    return bundle


def check_policy_coverage(attestation: Attestation, required_gates: Sequence[str], where: str) -> None:
    """SignatureError unless the attestation records a pass of every gate configured today."""
    missing = sorted(set(required_gates) - set(attestation.gates))
    if missing:
        raise SignatureError(f"{where}: its attestation covers {', '.join(sorted(attestation.gates))} but today's "
                             f"policy also requires {', '.join(missing)}: re-gate it with `fraudguard promote`")


def verify_loaded_model(model_dir: Path, verifier: Verifier | None = None) -> int | None:
    """Check the model directory the pyfunc is loading against the attestation the audit log commits.

    The version comes from the `registered_model_meta` file MLflow's client writes when it downloads a
    `models:/` URI. The registry state is read with the audit chain checked (registry.read_state). The champion
    must be the committed one (no half-done move, no alias moved by hand, not blocked since); any other version
    must not be blocked. A version the log committed a promotion of must match that attestation file for file
    (ModelError otherwise). Returns the verified version, or None for a model loaded outside the registry or a
    version the log never judged (a candidate; logged). An attestation tag alone, without a committed move that
    names it, verifies nothing.
    """
    import yaml
    from mlflow import MlflowClient

    from fraudguard.errors import FraudGuardError
    from fraudguard.registry import committed_attestation_for, read_state
    from fraudguard.signing import load_verifier

    meta_file = Path(model_dir) / "registered_model_meta"
    if not meta_file.is_file():
        logger.info("%s was not loaded through the model registry: no attestation checked", model_dir)
        return None
    try:
        meta = yaml.safe_load(meta_file.read_text(encoding="utf-8")) or {}
        name, version = str(meta["model_name"]), int(meta["model_version"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{meta_file}: unreadable registered_model_meta ({exc})") from exc
    client = resilient(MlflowClient())
    where = f"model {name!r} version {version} loaded from {model_dir}"
    verifier = verifier or load_verifier()
    try:
        digest = committed_attestation_for(read_state(client, name, verifier), version)
    except FraudGuardError as exc:  # a broken or trimmed audit chain, a hand-moved alias, a block
        raise ModelError(f"{where}: refusing to load: {exc}") from exc
    if digest is None:
        logger.warning("%s: never promoted (no committed move names it), no attestation to check", where)
        return None
    mv = client.get_model_version(name, str(version))
    try:
        attestation = load_attestation(mv, digest, verifier)
    except SignatureError as exc:
        raise ModelError(f"{where}: no valid signed attestation ({exc}); refusing to load") from exc
    check_digests(attestation, served_digests(Path(model_dir)), where)
    logger.info("%s: files match signed attestation %s", where, digest[:16])
    return version
