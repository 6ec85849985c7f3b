"""Signed evidence: an Ed25519 key kept outside the registry, DSSE envelopes over in-toto statements.

Why this shape: the registry (MLflow tags, aliases, artifacts) is writable by anyone with write access to
the tracking store, so nothing stored there can vouch for itself. Evidence is signed with a private key
that lives on the pipeline's host (path in $FRAUDGUARD_SIGNING_KEY, created on first use with 0600
permissions); verifiers need only the public key ($FRAUDGUARD_VERIFY_KEY, or the public half of the
signing key). Statements follow in-toto Statement v1 and are wrapped in a DSSE envelope, the format
sigstore and in-toto tools read; `cryptography` (already installed with MLflow) does the Ed25519 maths.
The OpenSSF `model-signing` package signs only a model directory and needs an undeclared pyopenssl; the
evidence here also covers gates, policy and lineage, so one small signer serves both.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fraudguard.errors import SignatureError

SIGNING_KEY_ENV = "FRAUDGUARD_SIGNING_KEY"
VERIFY_KEY_ENV = "FRAUDGUARD_VERIFY_KEY"
DEFAULT_SIGNING_KEY = Path("~/.config/fraudguard/signing-key.pem")
IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"
IN_TOTO_STATEMENT_TYPE = "https://in-toto.io/Statement/v1"


def canonical_json(data: Any) -> str:
    """Key-sorted, whitespace-free JSON: one byte string per value, so digests and signatures reproduce."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def sha256_text(text: str) -> str:
    """Hex sha256 of a string's UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def signing_key_path() -> Path:
    """Where the private key lives: $FRAUDGUARD_SIGNING_KEY, else ~/.config/fraudguard/signing-key.pem."""
    return Path(os.environ.get(SIGNING_KEY_ENV) or DEFAULT_SIGNING_KEY).expanduser()


def _key_id(public_key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class Verifier:
    """A public key: checks signatures made by the matching Signer."""

    public_key: Any
    key_id: str

    def verify(self, message: bytes, signature_b64: str) -> bool:
        from cryptography.exceptions import InvalidSignature

        try:
            self.public_key.verify(base64.b64decode(signature_b64, validate=True), message)
        except (InvalidSignature, ValueError):
            return False
        return True


@dataclass(frozen=True)
class Signer:
    """A private key and its key id; signs bytes."""

    private_key: Any
    key_id: str

    def sign(self, message: bytes) -> str:
        return base64.b64encode(self.private_key.sign(message)).decode("ascii")

    def verifier(self) -> Verifier:
        return Verifier(self.private_key.public_key(), self.key_id)


def load_signer(path: Path | None = None, create: bool = True) -> Signer:
    """The pipeline's signing key; created (0600, parent 0700) on first use when `create`.

    SignatureError names the path when the key is missing (and not to be created) or unreadable.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path = path or signing_key_path()
    if not path.exists():
        if not create:
            raise SignatureError(f"signing key {path} not found; set ${SIGNING_KEY_ENV} to the pipeline's key")
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        # O_EXCL: two processes creating the key at once must not end with two different keys.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return load_signer(path, create=False)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        public = path.with_name(path.stem + ".pub")
        if not public.exists():
            public.write_bytes(key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SignatureError(f"signing key {path} is unreadable: {exc}") from exc
    if not isinstance(loaded, Ed25519PrivateKey):
        raise SignatureError(f"signing key {path} is not an Ed25519 key")
    return Signer(loaded, _key_id(loaded.public_key()))


def load_verifier() -> Verifier:
    """The public key that checks evidence: $FRAUDGUARD_VERIFY_KEY, else the signing key's public half."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    configured = os.environ.get(VERIFY_KEY_ENV)
    if configured:
        path = Path(configured).expanduser()
        try:
            key = serialization.load_pem_public_key(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise SignatureError(f"verify key {path} is unreadable: {exc}") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise SignatureError(f"verify key {path} is not an Ed25519 public key")
        return Verifier(key, _key_id(key))
    path = signing_key_path()
    if not path.exists():
        raise SignatureError(
            f"no key to verify evidence with: set ${VERIFY_KEY_ENV} to the pipeline's public key "
            f"(or ${SIGNING_KEY_ENV} to its private key; {path} does not exist)"
        )
    return load_signer(path, create=False).verifier()


def _pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: what is actually signed."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def in_toto_statement(subjects: dict[str, str], predicate_type: str, predicate: dict[str, Any]) -> dict[str, Any]:
    """An in-toto Statement v1: subjects are name -> sha256 hex."""
    return {
        "_type": IN_TOTO_STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": digest}} for name, digest in sorted(subjects.items())],
        "predicateType": predicate_type,
        "predicate": predicate,
    }


def sign_envelope(signer: Signer, statement: dict[str, Any]) -> str:
    """The statement in a signed DSSE envelope, as canonical JSON text."""
    payload = canonical_json(statement).encode("utf-8")
    return canonical_json({
        "payloadType": IN_TOTO_PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode("ascii"),
        "signatures": [{"keyid": signer.key_id, "sig": signer.sign(_pae(IN_TOTO_PAYLOAD_TYPE, payload))}],
    })


def open_envelope(verifier: Verifier, envelope_text: str, what: str) -> dict[str, Any]:
    """The statement inside a DSSE envelope whose signature checks with `verifier`; SignatureError names `what`."""
    try:
        envelope = json.loads(envelope_text)
        payload = base64.b64decode(envelope["payload"], validate=True)
        payload_type = str(envelope["payloadType"])
        signatures = list(envelope["signatures"])
    except (ValueError, KeyError, TypeError) as exc:
        raise SignatureError(f"{what}: not a readable DSSE envelope ({exc.__class__.__name__})") from exc
    message = _pae(payload_type, payload)
    if not any(isinstance(s, dict) and s.get("keyid") == verifier.key_id
               and verifier.verify(message, str(s.get("sig", ""))) for s in signatures):
        raise SignatureError(f"{what}: signature does not verify with key {verifier.key_id}: forged or altered")
    try:
        statement = json.loads(payload)
    except ValueError as exc:
        raise SignatureError(f"{what}: signed payload is not JSON") from exc
    if not isinstance(statement, dict) or statement.get("_type") != IN_TOTO_STATEMENT_TYPE:
        raise SignatureError(f"{what}: signed payload is not an in-toto statement")
    return statement


def subject_digests(statement: dict[str, Any]) -> dict[str, str]:
    """name -> sha256 of an in-toto statement's subjects."""
    return {str(s.get("name")): str((s.get("digest") or {}).get("sha256")) for s in statement.get("subject", [])}
