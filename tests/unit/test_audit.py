"""Chain logic of the audit log on in-memory entries (no registry)."""

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


def _chain(n: int) -> list:
    entries, prev = [], None
    for i in range(n):
        prev = chain_entry(prev, AuditEvent("promote", i or None, i + 1, ("ok",), {"drift": "passed"}, "alice"),
                           now=f"2026-01-01T00:00:0{i}.000+00:00")
        entries.append(prev)
    return entries


def _head(entries) -> str:
    return f"{entries[-1].seq}:{entries[-1].hash}"


def test_chain_links_each_entry_to_the_previous_hash():
    entries = _chain(3)
    assert entries[0].prev_hash == GENESIS_HASH
    assert [e.prev_hash for e in entries[1:]] == [e.hash for e in entries[:-1]]
    assert [e.seq for e in entries] == [1, 2, 3]


def test_hash_is_sha256_of_canonical_payload():
    entry = _chain(1)[0]
    assert entry.hash == entry_hash(entry.payload())
    assert parse_entry(entry.to_json()) == entry


def test_intact_chain_verifies():
    entries = _chain(4)
    result = verify_chain(entries, head=_head(entries))
    assert result.ok and result.entries == 4 and result.bad_seq is None


def test_edited_entry_is_detected_at_its_seq():
    entries = _chain(4)
    entries[1] = dataclasses.replace(entries[1], actor="mallory")
    result = verify_chain(entries, head=_head(entries))
    assert not result.ok and result.bad_seq == 2 and "edited" in result.problem


def test_edited_entry_with_recomputed_hash_breaks_the_next_link():
    entries = _chain(4)
    forged = dataclasses.replace(entries[1], to_version=99)
    entries[1] = dataclasses.replace(forged, hash=entry_hash(forged.payload()))
    result = verify_chain(entries, head=_head(entries))
    assert not result.ok and result.bad_seq == 3


def test_removed_middle_entry_is_detected():
    entries = _chain(4)
    kept = [entries[0], entries[2], entries[3]]
    result = verify_chain(kept, key_seqs=[1, 3, 4], head=_head(entries))
    assert not result.ok and result.bad_seq == 2 and "removed" in result.problem


def test_removed_last_entry_is_detected_by_the_head():
    entries = _chain(3)
    result = verify_chain(entries[:2], head=_head(entries))
    assert not result.ok and result.bad_seq == 3


def test_reordered_entries_are_detected():
    entries = _chain(3)
    swapped = [entries[0], entries[2], entries[1]]
    result = verify_chain(swapped, key_seqs=[1, 2, 3], head=_head(entries))
    assert not result.ok and result.bad_seq == 2 and "reordered" in result.problem


def test_raise_if_broken_names_the_seq():
    entries = _chain(2)
    entries[0] = dataclasses.replace(entries[0], reasons=("changed",))
    with pytest.raises(AuditError, match="seq 1"):
        verify_chain(entries, head=_head(entries)).raise_if_broken()


def test_long_reasons_are_compacted_under_the_tag_limit():
    event = AuditEvent("block", 1, 2, tuple("x" * 5000 for _ in range(30)), {"quality": "failed"}, "bob")
    entry = chain_entry(None, event)
    assert len(entry.to_json()) <= MAX_ENTRY_CHARS
    assert entry.hash == entry_hash(entry.payload())


def test_unknown_action_is_refused():
    with pytest.raises(AuditError, match="action"):
        chain_entry(None, AuditEvent("delete", 1, 2))  # type: ignore[arg-type]


def test_actor_defaults_to_fraudguard_actor_env(monkeypatch):
    monkeypatch.setenv("FRAUDGUARD_ACTOR", "ci-bot")
    assert chain_entry(None, AuditEvent("promote", None, 1)).actor == "ci-bot"
