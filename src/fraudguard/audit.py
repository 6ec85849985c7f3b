"""Append-only, hash-chained audit log of promotions, blocks and rollbacks, kept in the MLflow registry.

Each entry is one registered-model tag `audit.NNNNNN` holding canonical JSON; `hash` is the sha256 of the
entry's canonical JSON without `hash`, and `prev_hash` links it to the entry before. The tag `audit.head`
("<seq>:<hash>") pins the newest entry so that deleting the last entry is detected too.
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from fraudguard.errors import AuditError, RegistryError

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

AUDIT_TAG_PREFIX = "audit."
AUDIT_HEAD_TAG = "audit.head"
GENESIS_HASH = "0" * 64
ACTIONS = ("promote", "block", "rollback")
# SQL registries store registered-model tag values in a VARCHAR(5000) column (MLflow's validator allows
# 100k, the schema does not): entries stay well under it.
MAX_ENTRY_CHARS = 4000
_MAX_REASON_CHARS = 300
_KEY_RE = re.compile(r"^audit\.(\d{6,})$")

AuditAction = Literal["promote", "block", "rollback"]


@dataclass(frozen=True)
class AuditEvent:
    """What a caller records; seq, time, actor and the hashes are filled in when it is appended."""

    action: AuditAction
    from_version: int | None
    to_version: int | None
    reasons: tuple[str, ...] = ()
    gates: Mapping[str, str] = field(default_factory=dict)
    actor: str | None = None


@dataclass(frozen=True)
class AuditEntry:
    """One chained audit entry, exactly as stored."""

    seq: int
    time: str
    actor: str
    action: str
    from_version: int | None
    to_version: int | None
    reasons: tuple[str, ...]
    gates: Mapping[str, str]
    prev_hash: str
    hash: str

    def payload(self) -> dict[str, Any]:
        """The hashed fields (everything but `hash`), as plain JSON data."""
        return {
            "seq": self.seq,
            "time": self.time,
            "actor": self.actor,
            "action": self.action,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "reasons": list(self.reasons),
            "gates": dict(self.gates),
            "prev_hash": self.prev_hash,
        }

    def to_json(self) -> str:
        """The canonical JSON stored in the tag."""
        return canonical_json({**self.payload(), "hash": self.hash})


@dataclass(frozen=True)
class AuditVerification:
    """Outcome of checking the chain: ok, how many entries, and the first seq at fault with why."""

    ok: bool
    entries: int
    bad_seq: int | None = None
    problem: str = ""

    def raise_if_broken(self) -> None:
        """Raise AuditError naming the seq at fault when the chain is broken."""
        if not self.ok:
            raise AuditError(f"audit log broken at seq {self.bad_seq}: {self.problem}")


def canonical_json(data: Any) -> str:
    """Key-sorted, whitespace-free JSON: one byte string per value, so hashes are reproducible."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def entry_hash(payload: Mapping[str, Any]) -> str:
    """sha256 hex of the canonical JSON of an entry's payload (the entry without `hash`)."""
    return hashlib.sha256(canonical_json(dict(payload)).encode("utf-8")).hexdigest()


def current_actor() -> str:
    """Who acts: $FRAUDGUARD_ACTOR, else the OS user."""
    actor = os.environ.get("FRAUDGUARD_ACTOR", "").strip()
    if actor:
        return actor
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry in some containers
        return "unknown"


def _utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


def _compact_reasons(reasons: Sequence[str], budget: int) -> tuple[str, ...]:
    per_reason = max(40, min(_MAX_REASON_CHARS, budget // max(1, len(reasons))))
    out = []
    for reason in reasons:
        reason = " ".join(str(reason).split())
        out.append(reason if len(reason) <= per_reason else reason[: per_reason - 3] + "...")
    return tuple(out)


def chain_entry(prev: AuditEntry | None, event: AuditEvent, now: str | None = None) -> AuditEntry:
    """The entry that follows `prev` (or starts the chain) for `event`, hashed and compact."""
    if event.action not in ACTIONS:
        raise AuditError(f"audit action must be one of {ACTIONS}, got {event.action!r}")
    seq = 1 if prev is None else prev.seq + 1
    base = dict(
        seq=seq,
        time=now or _utc_now(),
        actor=(event.actor or current_actor())[:100],
        action=event.action,
        from_version=event.from_version,
        to_version=event.to_version,
        gates={str(k): str(v) for k, v in sorted(event.gates.items())},
        prev_hash=GENESIS_HASH if prev is None else prev.hash,
    )
    budget = MAX_ENTRY_CHARS - 400 - len(canonical_json(base["gates"]))
    reasons = _compact_reasons(list(event.reasons), budget)
    while True:
        payload = {**base, "reasons": list(reasons)}
        entry = AuditEntry(hash=entry_hash(payload), reasons=reasons, **base)
        if len(entry.to_json()) <= MAX_ENTRY_CHARS or not reasons:
            return entry
        reasons = reasons[:-1]  # drop trailing reasons rather than exceed the tag size


def parse_entry(text: str) -> AuditEntry:
    """An entry from its stored JSON; AuditError when it is not a well-formed entry."""
    try:
        raw = json.loads(text)
        return AuditEntry(
            seq=int(raw["seq"]),
            time=str(raw["time"]),
            actor=str(raw["actor"]),
            action=str(raw["action"]),
            from_version=None if raw["from_version"] is None else int(raw["from_version"]),
            to_version=None if raw["to_version"] is None else int(raw["to_version"]),
            reasons=tuple(str(r) for r in raw["reasons"]),
            gates={str(k): str(v) for k, v in raw["gates"].items()},
            prev_hash=str(raw["prev_hash"]),
            hash=str(raw["hash"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise AuditError(f"malformed audit entry ({exc.__class__.__name__}: {exc})") from exc


def verify_chain(
    entries: Sequence[AuditEntry],
    key_seqs: Sequence[int] | None = None,
    head: str | None = None,
) -> AuditVerification:
    """Check seq continuity, each entry's hash, each link, and the head pin; name the first seq at fault.

    `key_seqs` are the seqs of the tags the entries were read from (same order), `head` the `audit.head` value.
    """
    prev_hash = GENESIS_HASH
    for position, entry in enumerate(entries, start=1):
        stored_at = key_seqs[position - 1] if key_seqs is not None else entry.seq
        if stored_at != position:
            return AuditVerification(False, len(entries), position,
                                     f"entry {position} is missing (next stored entry is {stored_at}): removed")
        if entry.seq != position:
            return AuditVerification(False, len(entries), position,
                                     f"tag for seq {position} holds the entry with seq {entry.seq}: reordered")
        if entry_hash(entry.payload()) != entry.hash:
            return AuditVerification(False, len(entries), position,
                                     "content does not match its hash: edited")
        if entry.prev_hash != prev_hash:
            return AuditVerification(False, len(entries), position,
                                     "prev_hash does not match the previous entry's hash: "
                                     "an entry before it was edited, removed or reordered")
        prev_hash = entry.hash
    if head is not None:
        expected = f"{len(entries)}:{prev_hash}" if entries else ""
        if head != expected:
            head_seq = head.split(":", 1)[0]
            bad = int(head_seq) if head_seq.isdigit() else len(entries) + 1
            return AuditVerification(False, len(entries), bad,
                                     f"audit.head is {head!r} but the chain ends at {expected!r}: "
                                     "newest entries removed or the head was edited")
    elif entries:
        return AuditVerification(False, len(entries), len(entries),
                                 "audit.head tag is missing: the chain's end cannot be confirmed")
    return AuditVerification(True, len(entries))


def _audit_tags(tags: Mapping[str, str]) -> list[tuple[int, str]]:
    found = []
    for key, value in tags.items():
        match = _KEY_RE.match(key)
        if match:
            found.append((int(match.group(1)), value))
    return sorted(found)


def audit_entries_from_tags(tags: Mapping[str, str]) -> list[AuditEntry]:
    """The audit entries held in already-read registered-model tags, oldest first (unverified)."""
    entries = []
    for seq, text in _audit_tags(tags):
        try:
            entries.append(parse_entry(text))
        except AuditError as exc:
            raise AuditError(f"tag audit.{seq:06d}: {exc}") from exc
    return entries


def _registered_tags(client: "MlflowClient", model_name: str) -> dict[str, str]:
    from mlflow.exceptions import MlflowException

    try:
        return dict(client.get_registered_model(model_name).tags)
    except MlflowException as exc:
        raise RegistryError(f"registered model {model_name!r}: cannot read its tags: {exc.message}") from exc


def read_audit_log(client: "MlflowClient", model_name: str) -> list[AuditEntry]:
    """Every audit entry of the registered model, oldest first; AuditError names an unreadable entry."""
    entries = []
    for seq, text in _audit_tags(_registered_tags(client, model_name)):
        try:
            entries.append(parse_entry(text))
        except AuditError as exc:
            raise AuditError(f"registered model {model_name!r}, tag audit.{seq:06d}: {exc}") from exc
    return entries


def verify_audit_log(client: "MlflowClient", model_name: str) -> AuditVerification:
    """Check the registered model's whole audit chain; never raises for a broken chain, reports it."""
    return _verify_tags(_registered_tags(client, model_name))


def check_audit_tags(tags: Mapping[str, str]) -> AuditVerification:
    """Check the chain held in already-read registered-model tags."""
    return _verify_tags(tags)


def _verify_tags(tags: Mapping[str, str]) -> AuditVerification:
    stored = _audit_tags(tags)
    entries: list[AuditEntry] = []
    for seq, text in stored:
        try:
            entries.append(parse_entry(text))
        except AuditError as exc:
            return AuditVerification(False, len(stored), seq, f"unreadable: edited ({exc})")
    return verify_chain(entries, [seq for seq, _ in stored], tags.get(AUDIT_HEAD_TAG, ""))


def append_audit_entry(client: "MlflowClient", model_name: str, entry: AuditEvent) -> AuditEntry:
    """Chain `entry` after the newest stored entry and store it; runs under the registry lock.

    Refuses (AuditError) to extend a chain that no longer verifies, so tampering cannot be papered over.
    """
    from fraudguard.registry import registry_lock, registry_writer

    with registry_lock(client):
        tags = _registered_tags(client, model_name)
        return append_audit_entry_unlocked(registry_writer(client), model_name, tags, entry)


def append_audit_entry_unlocked(client: Any, model_name: str, tags: Mapping[str, str], entry: AuditEvent) -> AuditEntry:
    """Append given the registered model's current tags; the caller holds the registry lock.

    `client` is anything with MLflow's `set_registered_model_tag(name, key, value)`.
    """
    stored = _audit_tags(tags)
    prev = None
    if stored:
        _verify_tags(tags).raise_if_broken()
        prev = parse_entry(stored[-1][1])
    new = chain_entry(prev, entry)
    client.set_registered_model_tag(model_name, f"{AUDIT_TAG_PREFIX}{new.seq:06d}", new.to_json())
    client.set_registered_model_tag(model_name, AUDIT_HEAD_TAG, f"{new.seq}:{new.hash}")
    logger.info("audit %06d: %s %s -> %s by %s", new.seq, new.action, new.from_version, new.to_version, new.actor)
    return new
