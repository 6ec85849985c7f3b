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
from fraudguard.names import CHAMPION_ALIAS
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
    from fraudguard.policy import GatePolicy

logger = logging.getLogger(__name__)

PROMOTION_PREDICATE_TYPE = "https://fraudguard.dev/attestation/promotion/v1"
ATTESTATION_TAG_PREFIX = "fraudguard.attestation."
WEIGHTS_SUBJECT = "model/artifacts/model.pt"
PREPROCESS_SUBJECT = "model/artifacts/preprocess.json"
MANIFEST_SUBJECT = "model/"
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
        return Path(resilient(mlflow.artifacts).download_artifacts(
            artifact_uri=uri, dst_path=str(dst), tracking_uri=inner.tracking_uri,
            registry_uri=getattr(inner, "_registry_uri", None) or inner.tracking_uri))
    except Exception as exc:  # MLflow raises its own and OS errors for a missing or unreadable model
        raise RegistryError(f"model {model_name!r} version {version}: cannot download the served model "
                            f"({type(exc).__name__}: {str(exc)[:200]})") from exc


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
    *, actor: str, approver: str, champion_before: int | None,
) -> dict[str, Any]:
    """The in-toto statement that `mv` passed every gate in `results` under `policy`."""
    tags = mv.tags or {}
    predicate = {
        "model_name": mv.name,
        "version": int(mv.version),
        "run_id": mv.run_id,
        "lineage": {key: tags.get(f"lineage.{key}", "unknown")
                    for key in ("git_commit", "data_md5", "params_sha256", "dvc_lock_sha256")},
        "policy": {"source": policy.source, "sha256": policy.sha256},
        "gates": {r.name: {"passed": bool(r.passed),
                           "thresholds": _compact_metrics(r.thresholds),
                           "metrics": _compact_metrics(r.metrics)} for r in results},
        "actor": actor,
        "approver": approver,
        "champion_before": champion_before,
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


def version_attestations(mv: "ModelVersion", verifier: Verifier) -> list[Attestation]:
    """Every attestation on the version that verifies (newest last by statement time)."""
    found = []
    for key, envelope in (mv.tags or {}).items():
        if key.startswith(ATTESTATION_TAG_PREFIX):
            try:
                found.append(load_attestation(mv, sha256_text(envelope), verifier))
            except SignatureError as exc:
                logger.warning("%s", exc)
    return sorted(found, key=lambda a: str(a.predicate.get("time", "")))


def check_digests(attestation: Attestation, actual: Mapping[str, str], where: str) -> None:
    """ModelError naming each served file whose digest differs from the attested one."""
    expected = attestation.subjects
    bad = [name for name in (WEIGHTS_SUBJECT, PREPROCESS_SUBJECT, MANIFEST_SUBJECT)
           if name in actual and expected.get(name) != actual[name]]
    if bad:
        raise ModelError(f"{where}: {', '.join(bad)} differ from the signed attestation {attestation.digest[:16]} "
                         f"of version {attestation.version}; refusing to serve altered files")


def check_served_copy(client: "MlflowClient", mv: "ModelVersion", attestation: Attestation) -> dict[str, str]:
    """Download what `models:/<name>/<version>` serves and check every file against the attestation."""
    with tempfile.TemporaryDirectory(prefix="fraudguard-served-") as tmp:
        model_dir = download_served_model(client, mv.name, int(mv.version), Path(tmp))
        actual = served_digests(model_dir)
    check_digests(attestation, actual, f"model {mv.name!r} version {mv.version}")
    return actual


def check_policy_coverage(attestation: Attestation, required_gates: Sequence[str], where: str) -> None:
    """SignatureError unless the attestation records a pass of every gate configured today."""
    missing = sorted(set(required_gates) - set(attestation.gates))
    if missing:
        raise SignatureError(f"{where}: its attestation covers {', '.join(sorted(attestation.gates))} but today's "
                             f"policy also requires {', '.join(missing)}: re-gate it with `fraudguard promote`")


def verify_loaded_model(model_dir: Path, verifier: Verifier | None = None) -> int | None:
    """Check the model directory the pyfunc is loading against its version's signed attestation.

    The version comes from the `registered_model_meta` file MLflow's client writes when it downloads a
    `models:/` URI. A version with an attestation must match one of them file for file (ModelError
    otherwise); the current champion must have one. Returns the verified version, or None for a model
    loaded outside the registry or a never-promoted candidate (logged).
    """
    import yaml
    from mlflow import MlflowClient

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
    mv = client.get_model_version(name, str(version))
    where = f"model {name!r} version {version} loaded from {model_dir}"
    claimed = [key for key in (mv.tags or {}) if key.startswith(ATTESTATION_TAG_PREFIX)]
    aliases = {alias: int(v) for alias, v in (client.get_registered_model(name).aliases or {}).items()}
    if not claimed and aliases.get(CHAMPION_ALIAS) != version:
        logger.warning("%s: never promoted, no attestation to check", where)
        return None
    verifier = verifier or load_verifier()
    attestations = version_attestations(mv, verifier)
    if not attestations:
        raise ModelError(f"{where}: no valid signed attestation (it is the champion or claims one); refusing to load")
    actual = served_digests(Path(model_dir))
    problems = []
    for attestation in reversed(attestations):
        try:
            check_digests(attestation, actual, where)
            logger.info("%s: files match signed attestation %s", where, attestation.digest[:16])
            return version
        except ModelError as exc:
            problems.append(str(exc))
    raise ModelError(problems[0])
