"""Chain logic of the signed audit log on in-memory entries (no registry)."""

from __future__ import annotations

import dataclasses

import pytest

from fraudguard.audit import (
    GENESIS_HASH,
    MAX_ENTRY_CHARS,
    AuditEvent,
    chain_entry,
    entry_hash,
    parse_entry,
    verify_chain,
)
from fraudguard.errors import AuditError
from fraudguard.signing import load_signer


@pytest.fixture
def signer(tmp_path):
    return load_signer(tmp_path / "key.pem")


def _chain(signer, n: int) -> list:
    entries, prev = [], None
    for i in range(n):
        prev = chain_entry(prev, AuditEvent("promote", "commit", i or None, i + 1, txid=f"t{i}", reasons=("ok",),
                                            gates={"drift": "passed"}, actor="alice"),
                           signer, now=f"2026-01-01T00:00:0{i}.000+00:00")
        entries.append(prev)
    return entries


def test_chain_links_each_entry_to_the_previous_hash(signer):
    entries = _chain(signer, 3)
    assert entries[0].prev_hash == GENESIS_HASH
    assert [e.prev_hash for e in entries[1:]] == [e.hash for e in entries[:-1]]


def test_hash_is_sha256_of_canonical_payload_and_survives_a_round_trip(signer):
    entry = _chain(signer, 1)[0]
    assert entry.hash == entry_hash(entry.payload())
    assert parse_entry(entry.to_json()) == entry


def test_intact_signed_chain_verifies(signer):
    result = verify_chain(_chain(signer, 4), signer.verifier())
    assert result.ok and result.entries == 4


def test_edited_entry_is_detected_at_its_seq(signer):
    entries = _chain(signer, 3)
    entries[1] = dataclasses.replace(entries[1], actor="mallory")
    result = verify_chain(entries, signer.verifier())
    assert not result.ok and result.bad_seq == 2 and "edited" in result.problem


def test_chain_rewritten_consistently_without_the_key_is_detected(signer, tmp_path):
    """An insider re-hashes every entry (valid links) but can only sign with a key of their own."""
    forger = load_signer(tmp_path / "insider.pem")
    forged = _chain(forger, 3)
    result = verify_chain(forged, signer.verifier())
    assert not result.ok and result.bad_seq == 1 and "signature" in result.problem


def test_entry_with_recomputed_hash_but_old_signature_is_detected(signer):
    entries = _chain(signer, 2)
    edited = dataclasses.replace(entries[0], reasons=("nothing to see",))
    entries[0] = dataclasses.replace(edited, hash=entry_hash(edited.payload()))
    result = verify_chain(entries, signer.verifier())
    assert not result.ok and result.bad_seq == 1 and "signature" in result.problem


def test_removed_middle_entry_is_detected(signer):
    entries = _chain(signer, 3)
    result = verify_chain([entries[0], entries[2]], signer.verifier(), key_seqs=[1, 3])
    assert not result.ok and result.bad_seq == 2


def test_reordered_entries_are_detected(signer):
    entries = _chain(signer, 3)
    result = verify_chain([entries[0], entries[2], entries[1]], signer.verifier())
    assert not result.ok and result.bad_seq == 2


def test_raise_if_broken_names_the_seq(signer):
    entries = _chain(signer, 2)
    entries[0] = dataclasses.replace(entries[0], actor="mallory")
    with pytest.raises(AuditError, match="seq 1"):
        verify_chain(entries, signer.verifier()).raise_if_broken()


def test_long_reasons_are_compacted_under_the_tag_limit(signer):
    event = AuditEvent("block", "record", 1, 2, reasons=tuple("x" * 5000 for _ in range(20)),
                       gates={f"g{i}": "failed" for i in range(10)})
    entry = chain_entry(None, event, signer)
    assert len(entry.to_json()) <= MAX_ENTRY_CHARS and entry.reasons


def test_unknown_action_or_phase_is_refused(signer):
    with pytest.raises(AuditError, match="action"):
        chain_entry(None, AuditEvent("delete", "record", 1, 2), signer)  # type: ignore[arg-type]
    with pytest.raises(AuditError, match="phase"):
        chain_entry(None, AuditEvent("promote", "maybe", 1, 2), signer)  # type: ignore[arg-type]


def test_actor_defaults_to_fraudguard_actor_env(monkeypatch, signer):
    monkeypatch.setenv("FRAUDGUARD_ACTOR", "ci-bot")
    assert chain_entry(None, AuditEvent("promote", "intent", None, 1), signer).actor == "ci-bot"


def test_a_checkpoint_is_refused_when_forged_for_another_log_unreached_rewritten_or_expired(signer, tmp_path,
                                                                                           monkeypatch):
    import datetime as dt

    from fraudguard.audit import CHECKPOINT_TTL_ENV, checkpoint_problem, checkpoint_ttl_hours, sign_checkpoint
    from fraudguard.errors import ConfigError

    entries = _chain(signer, 3)
    verifier = signer.verifier()
    now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    at_head = sign_checkpoint("fraudguard", entries[-1], signer, now=now, ttl_hours=24)
    assert checkpoint_problem("fraudguard", entries, at_head, verifier, now=now) == ""
    assert checkpoint_problem("fraudguard", entries + _chain(signer, 4)[3:], at_head, verifier, now=now) == ""
    assert "no signed checkpoint" in checkpoint_problem("fraudguard", entries, None, verifier, now=now)
    assert checkpoint_problem("fraudguard", [], None, verifier, now=now) == ""
    assert "newest entries removed" in checkpoint_problem("fraudguard", entries[:2], at_head, verifier, now=now)
    rewritten = _chain(load_signer(tmp_path / "other.pem"), 3)
    assert "rewritten" in checkpoint_problem("fraudguard", entries[:2] + rewritten[2:], at_head, verifier, now=now)
    assert "not a checkpoint of this model" in checkpoint_problem("other-model", entries, at_head, verifier, now=now)
    forged = sign_checkpoint("fraudguard", entries[-1], load_signer(tmp_path / "insider.pem"), now=now)
    assert "forged or altered" in checkpoint_problem("fraudguard", entries, forged, verifier, now=now)
    later = now + dt.timedelta(hours=25)
    assert "expired" in checkpoint_problem("fraudguard", entries, at_head, verifier, now=later)
    assert checkpoint_problem("fraudguard", entries, at_head, verifier, now=later, accept_expired=True) == ""
    # `inf` and 1e9 overflowed the expiry date after the registry write; 1e-9 expired checkpoints as they were made.
    for unusable in ("0", "-3", "nan", "inf", "1e9", "1e-9", "a week"):
        monkeypatch.setenv(CHECKPOINT_TTL_ENV, unusable)
        with pytest.raises(ConfigError, match=f"{CHECKPOINT_TTL_ENV} must be a number of hours from 0.25 to 2160"):
            checkpoint_ttl_hours()
    monkeypatch.setenv(CHECKPOINT_TTL_ENV, "720")
    assert checkpoint_ttl_hours() == 720.0
