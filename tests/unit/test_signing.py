"""Keys, DSSE envelopes and in-toto statements (fraudguard.signing)."""

from __future__ import annotations

import base64
import json
import stat

import pytest

from fraudguard.errors import SignatureError
from fraudguard.signing import (
    in_toto_statement,
    load_signer,
    load_verifier,
    open_envelope,
    sign_envelope,
    subject_digests,
)


def test_key_is_created_on_first_use_with_owner_only_permissions(tmp_path):
    path = tmp_path / "keys" / "signing-key.pem"
    signer = load_signer(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_signer(path).key_id == signer.key_id  # the same key on the next use
    assert (tmp_path / "keys" / "signing-key.pub").is_file()


def test_missing_key_is_an_error_naming_the_path_when_not_to_be_created(tmp_path):
    with pytest.raises(SignatureError, match="nokey.pem"):
        load_signer(tmp_path / "nokey.pem", create=False)


def test_verifier_can_come_from_the_public_key_alone(tmp_path, monkeypatch):
    signer = load_signer(tmp_path / "k.pem")
    monkeypatch.setenv("FRAUDGUARD_VERIFY_KEY", str(tmp_path / "k.pub"))
    monkeypatch.setenv("FRAUDGUARD_SIGNING_KEY", str(tmp_path / "absent.pem"))
    envelope = sign_envelope(signer, in_toto_statement({"model.pt": "ab" * 32}, "t", {"x": 1}))
    assert open_envelope(load_verifier(), envelope, "test")["predicate"] == {"x": 1}


def test_envelope_round_trip_keeps_subjects(tmp_path):
    signer = load_signer(tmp_path / "k.pem")
    statement = in_toto_statement({"model/artifacts/model.pt": "a" * 64}, "https://example/p", {"version": 3})
    opened = open_envelope(signer.verifier(), sign_envelope(signer, statement), "v3")
    assert subject_digests(opened) == {"model/artifacts/model.pt": "a" * 64}


def test_edited_payload_fails_verification_naming_what(tmp_path):
    signer = load_signer(tmp_path / "k.pem")
    envelope = json.loads(sign_envelope(signer, in_toto_statement({}, "t", {"gates": {"quality": False}})))
    payload = json.loads(base64.b64decode(envelope["payload"]))
    payload["predicate"]["gates"]["quality"] = True
    envelope["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    with pytest.raises(SignatureError, match="version 7 attestation.*forged or altered"):
        open_envelope(signer.verifier(), json.dumps(envelope), "version 7 attestation")


def test_envelope_signed_by_another_key_is_refused(tmp_path):
    mine, theirs = load_signer(tmp_path / "a.pem"), load_signer(tmp_path / "b.pem")
    with pytest.raises(SignatureError, match="does not verify"):
        open_envelope(mine.verifier(), sign_envelope(theirs, in_toto_statement({}, "t", {})), "x")
